//! Heads: from the last block's token rows to the features (the
//! classifier's input) and the logits, and back.
//!
//! - class token (ViT): the first row through the final layer norm;
//! - pooler (BERT): the first row through the pooler's dense layer and tanh;
//! - mean: the mean of each sequence's rows (its unmasked tokens; zero for
//!   a sequence without any).
//!
//! Then the classifier, when the model has classes.

use super::blas;
use super::block::pair;
use super::input::Layout;
use super::norm::{self, Normed};
use super::weights::{Config, Head};
use super::Weights;

/// What the backward needs of the head's forward.
pub struct Tape {
    /// The head's input rows: the first rows (`[batch, e]`; pooler).
    first: Option<Vec<f32>>,
    /// The final norm (class token).
    norm: Option<Normed>,
    /// The classifier's input, `[batch, e]`.
    pub features: Vec<f32>,
}

/// Features and logits of the rows `h`: `[batch, e]` first rows for a
/// first-token head, all `[layout rows, e]` for mean pooling.
pub fn forward(
    w: &Weights,
    cfg: &Config,
    e: usize,
    layout: &Layout,
    h: Vec<f32>,
) -> (Vec<f32>, Tape) {
    let x = &w.idx;
    let (first, norm, features) = match cfg.head {
        Head::ClassToken => {
            let (g, b) = x.final_norm.expect("checked: a final norm");
            let mut n = norm::forward(&h, e, &w.data[g], &w.data[b], cfg.eps);
            let f = std::mem::take(&mut n.y);
            (None, Some(n), f)
        }
        Head::Pooler => {
            let p = x.pooler.expect("checked: a pooler");
            let mut f = blas::forward(&h, w.mat(p.0, e, e), &w.data[p.1]);
            f.iter_mut().for_each(|v| *v = v.tanh());
            (Some(h), None, f)
        }
        Head::Mean => {
            let mut f = vec![0f32; layout.batch() * e];
            for (b, fb) in f.chunks_mut(e).enumerate() {
                let s = layout.seq(b);
                for r in h[s.start * e..(s.start + s.len) * e].chunks(e) {
                    fb.iter_mut().zip(r).for_each(|(a, v)| *a += v);
                }
                let inv = 1.0 / s.len.max(1) as f32;
                fb.iter_mut().for_each(|a| *a *= inv);
            }
            (None, None, f)
        }
    };
    let logits = match x.classifier.filter(|_| cfg.classes > 0) {
        Some(c) => blas::forward(&features, w.mat(c.0, cfg.classes, e), &w.data[c.1]),
        None => Vec::new(),
    };
    let tape = Tape {
        first,
        norm,
        features,
    };
    (logits, tape)
}

/// Adds the head's parameter gradients given `dlogits`, and returns the
/// gradient of its input rows (shaped as [`forward`]'s `h`).
pub fn backward(
    w: &Weights,
    cfg: &Config,
    e: usize,
    layout: &Layout,
    tape: &Tape,
    dlogits: &[f32],
    grads: &mut [Vec<f32>],
) -> Vec<f32> {
    let x = &w.idx;
    let c = x.classifier.expect("backward needs a classifier");
    let wc = w.mat(c.0, cfg.classes, e);
    let (dw, db) = pair(grads, c);
    blas::backward_params(dlogits, &tape.features, wc, dw, db);
    let mut df = vec![0f32; tape.features.len()];
    blas::backward_input(dlogits, wc, &mut df, false);
    match cfg.head {
        Head::ClassToken => {
            let n = x.final_norm.expect("checked: a final norm");
            let mut dh = vec![0f32; df.len()];
            let (dg, db) = pair(grads, n);
            let normed = tape.norm.as_ref().expect("class-token tape");
            norm::backward(&df, normed, e, &w.data[n.0], &mut dh, dg, db);
            dh
        }
        Head::Pooler => {
            let p = x.pooler.expect("checked: a pooler");
            df.iter_mut()
                .zip(&tape.features)
                .for_each(|(d, y)| *d *= 1.0 - y * y);
            let wp = w.mat(p.0, e, e);
            let first = tape.first.as_deref().expect("pooler tape");
            let (dw, db) = pair(grads, p);
            blas::backward_params(&df, first, wp, dw, db);
            let mut dh = vec![0f32; df.len()];
            blas::backward_input(&df, wp, &mut dh, false);
            dh
        }
        Head::Mean => {
            let mut dh = vec![0f32; layout.rows() * e];
            for (b, g) in df.chunks(e).enumerate() {
                let s = layout.seq(b);
                let inv = 1.0 / s.len.max(1) as f32;
                for r in dh[s.start * e..(s.start + s.len) * e].chunks_mut(e) {
                    r.iter_mut().zip(g).for_each(|(d, g)| *d = g * inv);
                }
            }
            dh
        }
    }
}
