//! Stems: from the input to the first block's token rows, and back to the
//! embedding gradients.
//!
//! - Patches (ViT): images cut into patches, projected, the class token in
//!   front, position embeddings added.
//! - Tokens (BERT): for each kept token row (see [`Layout::of_tokens`]),
//!   `word[id] + position[j] + token_type[0]` through the embedding layer
//!   norm; the backward adds into the rows of the tables that were read.

use super::blas;
use super::block::pair;
use super::input::{Input, Layout};
use super::norm::{self, Normed};
use super::weights::{Config, StemIdx};
use super::Weights;

/// What the backward needs of the stem's forward.
pub enum Tape {
    /// The patch rows (`[batch · patches, C · p · p]`).
    Patches(Vec<f32>),
    /// The input row (`b · t + j`) of each kept token row, `t`, and the
    /// embedding norm.
    Tokens {
        rows: Vec<usize>,
        ids: Vec<u32>,
        t: usize,
        norm: Normed,
    },
}

impl Tape {
    /// Frees the patch rows (inference, where no backward reads them).
    pub fn drop_activations(&mut self) {
        if let Tape::Patches(p) = self {
            *p = Vec::new();
        }
    }
}

/// Cuts `[B, C, H, W]` images into `[B · patches, C · p · p]` rows in
/// `(C, p, p)` order, the order of the convolution weight.
fn patchify(cfg: &Config, images: &[f32]) -> Vec<f32> {
    let super::Stem::Patches {
        channels: c,
        image_size: hw,
        patch: p,
    } = cfg.stem
    else {
        unreachable!("an image stem")
    };
    let (g, batch) = (hw / p, images.len() / cfg.image_len());
    let mut out = Vec::with_capacity(batch * g * g * cfg.patch_len());
    for b in 0..batch {
        for gy in 0..g {
            for gx in 0..g {
                for ch in 0..c {
                    for py in 0..p {
                        let row = ((b * c + ch) * hw + gy * p + py) * hw + gx * p;
                        out.extend_from_slice(&images[row..row + p]);
                    }
                }
            }
        }
    }
    out
}

/// The token rows after the stem (`[layout rows, e]`), their layout, and
/// the tape. `first_token`: the head reads each sequence's first token.
pub fn forward(
    w: &Weights,
    cfg: &Config,
    e: usize,
    input: Input,
    first_token: bool,
) -> (Vec<f32>, Layout, Tape) {
    match (&w.idx.stem, input) {
        (&StemIdx::Patches { cls, pos, patch }, Input::Images(images)) => {
            let t = cfg.image_seq_len().expect("an image stem");
            let batch = images.len() / cfg.image_len();
            assert_eq!(images.len(), batch * cfg.image_len());
            let patches = patchify(cfg, images);
            let wp = w.mat(patch.0, e, cfg.patch_len());
            let yp = blas::forward(&patches, wp, &w.data[patch.1]);
            let (cls, pos, pw) = (&w.data[cls], &w.data[pos], w.width(pos));
            let mut h = Vec::with_capacity(batch * t * e);
            for b in 0..batch {
                h.extend(cls[..e].iter().zip(&pos[..e]).map(|(c, p)| c + p));
                for j in 0..t - 1 {
                    let y = &yp[(b * (t - 1) + j) * e..][..e];
                    h.extend(y.iter().zip(&pos[(j + 1) * pw..][..e]).map(|(y, p)| y + p));
                }
            }
            (h, Layout::regular(batch, t), Tape::Patches(patches))
        }
        (
            &StemIdx::Tokens {
                word,
                pos,
                token_type,
                norm: n,
            },
            Input::Tokens { ids, mask, t },
        ) => {
            assert_eq!(mask.len(), ids.len());
            let (layout, rows) = Layout::of_tokens(mask, t, first_token);
            let (ww, pw) = (w.width(word), w.width(pos));
            let (word, pos, tt) = (&w.data[word], &w.data[pos], &w.data[token_type][..e]);
            let mut x = Vec::with_capacity(rows.len() * e);
            let kept: Vec<u32> = rows.iter().map(|&r| ids[r]).collect();
            for (&r, &id) in rows.iter().zip(&kept) {
                let wr = &word[id as usize * ww..][..e];
                let pr = &pos[(r % t) * pw..][..e];
                x.extend(wr.iter().zip(pr).zip(tt).map(|((a, b), c)| a + b + c));
            }
            let mut norm = norm::forward(&x, e, &w.data[n.0], &w.data[n.1], cfg.eps);
            let h = std::mem::take(&mut norm.y);
            let tape = Tape::Tokens {
                rows,
                ids: kept,
                t,
                norm,
            };
            (h, layout, tape)
        }
        _ => panic!("the input does not match the model's stem (check_input refuses it)"),
    }
}

/// Adds the stem's parameter gradients, given `dh` (`[layout rows, e]`).
pub fn backward(
    w: &Weights,
    cfg: &Config,
    e: usize,
    tape: &Tape,
    dh: &[f32],
    grads: &mut [Vec<f32>],
) {
    match (&w.idx.stem, tape) {
        (&StemIdx::Patches { cls, pos, patch }, Tape::Patches(patches)) => {
            let t = cfg.image_seq_len().expect("an image stem");
            let pw = w.width(pos);
            let mut dyp = Vec::with_capacity(dh.len() / t * (t - 1));
            for rows in dh.chunks(t * e) {
                for (j, r) in rows.chunks(e).enumerate() {
                    for (a, v) in grads[pos][j * pw..][..e].iter_mut().zip(r) {
                        *a += v;
                    }
                    if j == 0 {
                        for (a, v) in grads[cls][..e].iter_mut().zip(r) {
                            *a += v;
                        }
                    } else {
                        dyp.extend_from_slice(r);
                    }
                }
            }
            let wp = w.mat(patch.0, e, cfg.patch_len());
            let (dw, db) = pair(grads, patch);
            blas::backward_params(&dyp, patches, wp, dw, db);
        }
        (
            &StemIdx::Tokens {
                word,
                pos,
                token_type,
                norm: n,
            },
            Tape::Tokens { rows, ids, t, norm },
        ) => {
            let mut dx = vec![0f32; dh.len()];
            let (dg, db) = pair(grads, n);
            norm::backward(dh, norm, e, &w.data[n.0], &mut dx, dg, db);
            let (ww, pw) = (w.width(word), w.width(pos));
            let mut dtype = vec![0f32; e];
            for ((&r, &id), g) in rows.iter().zip(ids).zip(dx.chunks(e)) {
                let add = |dst: &mut [f32]| dst.iter_mut().zip(g).for_each(|(d, g)| *d += g);
                add(&mut grads[word][id as usize * ww..][..e]);
                add(&mut grads[pos][(r % t) * pw..][..e]);
                add(&mut dtype);
            }
            for (d, g) in grads[token_type][..e].iter_mut().zip(&dtype) {
                *d += g;
            }
        }
        _ => unreachable!("the tape comes from this model's stem"),
    }
}
