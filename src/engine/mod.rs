//! The CPU engine: forward and hand-written backward of a (sub)net of the
//! ViT supernet on plain f32 buffers, outside candle's autograd.
//!
//! Why: on the benchmark workload candle's autograd spent as much time
//! zeroing, adding and allocating gradient buffers per graph node as the
//! matrix products themselves. Here every weight is read as the leading
//! slice of its supernet tensor (strided, no copy) and every weight
//! gradient is added by its `gemm` straight into the same slice of a
//! full-size gradient buffer; activations are kept once for the backward.
//! The last block computes only the class token's rows (see
//! `block.rs`), which the logits depend on.
//!
//! The engine computes what [`crate::supernet::Supernet::forward`] and
//! candle's backward compute, up to float rounding (tested against both to
//! 1e-4); the architecture is an argument of every call, as everywhere.
//! A batch is split into one chunk per thread ([`split`]); training steps
//! (`train::step::accumulate`) and inference ([`Model`]) run here, candle's
//! autograd stays as the reference and the fallback. Weights are
//! found by their Hugging Face names, so a supernet and a static
//! [`crate::models::vit::Vit`] (whose tensors are their own full slices) run
//! through the same code.

mod attention;
mod blas;
mod block;
mod norm;
mod parallel;
mod weights;

pub use parallel::{backward_chunks, forward_chunks, split};
pub(crate) use parallel::{par_ok, serial};
pub use weights::{Config, LayerIdx, Pair, Weights};

use crate::error::{Error, Result};
use crate::kernels::vecmath;
use crate::models::vit::Vit;
use crate::space::Arch;
use candle_core::Tensor;
use norm::Normed;
use rayon::prelude::*;

/// Element-wise work below this many elements stays on the calling thread.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;
const CHUNK: usize = 1 << 13;
/// `f(input chunk, output chunk)` over matching chunks of `u` and `out`, on
/// the thread pool when they are large enough.
fn chunked(u: &[f32], out: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
    if par_ok(u.len(), PAR_MIN_ELEMS) {
        out.par_chunks_mut(CHUNK)
            .zip(u.par_chunks(CHUNK))
            .for_each(|(o, u)| f(u, o));
    } else {
        f(u, out);
    }
}

fn gelu(u: &[f32], a: &mut [f32]) {
    chunked(u, a, vecmath::gelu);
}

fn gelu_backward(u: &[f32], g: &mut [f32]) {
    chunked(u, g, vecmath::gelu_backward);
}

/// What the backward needs of a forward.
pub struct Tape {
    batch: usize,
    patches: Vec<f32>,
    layers: Vec<block::Tape>,
    /// Whether the last block produced class-token rows only.
    cls_only: bool,
    norm: Normed,
}

/// Cuts `[B, C, H, W]` images into `[B · patches, C · p · p]` rows in
/// `(C, p, p)` order, the order of the convolution weight.
fn patchify(cfg: &Config, images: &[f32], batch: usize) -> Vec<f32> {
    let (c, p, g, hw) = (cfg.channels, cfg.patch, cfg.grid(), cfg.image_size);
    let mut out = Vec::with_capacity(batch * cfg.patches() * cfg.patch_len());
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

fn block_dims(cfg: &Config, arch: &Arch, l: usize, batch: usize, cls_only: bool) -> block::Dims {
    block::Dims {
        batch,
        t: cfg.seq_len(),
        embed: arch.embed_dim,
        heads: arch.num_heads[l],
        head_dim: cfg.head_dim,
        mlp: arch.mlp_width(l),
        eps: cfg.eps,
        cls_only: cls_only && l + 1 == arch.depth,
        scale_row: cfg.scaling.as_ref().and_then(|s| s.row(arch, l)),
    }
}

/// Logits `[batch, classes]` of `arch` for `images` (`[batch, C, H, W]`,
/// flat), and the tape for [`backward`]. `arch` must pass
/// [`Weights::check`].
pub fn forward(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    images: &[f32],
    batch: usize,
) -> (Vec<f32>, Tape) {
    forward_with(w, cfg, arch, images, batch, true)
}

/// [`forward`], choosing whether the last block computes the class token
/// only (`true`, the default) or every token (for tests).
pub fn forward_with(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    images: &[f32],
    batch: usize,
    cls_only: bool,
) -> (Vec<f32>, Tape) {
    let (e, t, x) = (arch.embed_dim, cfg.seq_len(), &w.idx);
    let (patches, mut h) = embed(w, cfg, arch, images, batch);
    let cls_only = cls_only && arch.depth > 0;
    let mut layers = Vec::with_capacity(arch.depth);
    for l in 0..arch.depth {
        let (out, tape) = block::forward(
            &h,
            w,
            &x.layers[l],
            &block_dims(cfg, arch, l, batch, cls_only),
        );
        h = out;
        layers.push(tape);
    }
    if !cls_only {
        h = block::gather_cls(&h, e, t);
    }
    let (norm, logits) = head(w, cfg, arch, &h);
    let tape = Tape {
        batch,
        patches,
        layers,
        cls_only,
        norm,
    };
    (logits, tape)
}

/// Patch rows and the token states after the embeddings (`[batch · t, e]`).
fn embed(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    images: &[f32],
    batch: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (e, t, x) = (arch.embed_dim, cfg.seq_len(), &w.idx);
    assert_eq!(
        images.len(),
        batch * cfg.channels * cfg.image_size * cfg.image_size
    );
    let patches = patchify(cfg, images, batch);
    let wp = w.mat(x.patch.0, e, cfg.patch_len());
    let yp = blas::forward(&patches, wp, &w.data[x.patch.1]);
    let (cls, pos, pw) = (&w.data[x.cls], &w.data[x.pos], w.width(x.pos));
    let mut h = Vec::with_capacity(batch * t * e);
    for b in 0..batch {
        h.extend(cls[..e].iter().zip(&pos[..e]).map(|(c, p)| c + p));
        for j in 0..t - 1 {
            let y = &yp[(b * (t - 1) + j) * e..][..e];
            h.extend(y.iter().zip(&pos[(j + 1) * pw..][..e]).map(|(y, p)| y + p));
        }
    }
    (patches, h)
}

/// Final norm of the class-token rows `h` (`[batch, e]`) and the logits.
fn head(w: &Weights, cfg: &Config, arch: &Arch, h: &[f32]) -> (Normed, Vec<f32>) {
    let (e, x) = (arch.embed_dim, &w.idx);
    let norm = norm::forward(h, e, &w.data[x.norm.0], &w.data[x.norm.1], cfg.eps);
    let wh = w.mat(x.head.0, cfg.classes, e);
    let logits = blas::forward(&norm.y, wh, &w.data[x.head.1]);
    (norm, logits)
}

/// Logits of one image with each block's token rows split over two
/// threads (see [`block::forward_split`]); the last block computes the
/// class token alone.
fn infer_one_split(w: &Weights, cfg: &Config, arch: &Arch, image: &[f32]) -> Vec<f32> {
    rayon::scope(|_| {
        let (_, mut h) = serial(|| embed(w, cfg, arch, image, 1));
        for l in 0..arch.depth {
            let d = block_dims(cfg, arch, l, 1, true);
            h = if d.cls_only {
                serial(|| block::forward(&h, w, &w.idx.layers[l], &d).0)
            } else {
                block::forward_split(&h, w, &w.idx.layers[l], &d)
            };
        }
        if arch.depth == 0 {
            h = block::gather_cls(&h, arch.embed_dim, cfg.seq_len());
        }
        serial(|| head(w, cfg, arch, &h).1)
    })
}

/// Adds the gradients of every tensor used by `arch` into `grads` (same
/// order as `w`), given `dlogits = ∂L/∂logits` (`[batch, classes]`).
pub fn backward(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    tape: &Tape,
    dlogits: &[f32],
    grads: &mut [Vec<f32>],
) {
    let (e, t, x, batch) = (arch.embed_dim, cfg.seq_len(), &w.idx, tape.batch);
    assert_eq!(grads.len(), w.data.len());
    let head = w.mat(x.head.0, cfg.classes, e);
    let (dw, db) = block::pair(grads, x.head);
    blas::backward_params(dlogits, &tape.norm.y, head, dw, db);
    let mut dn = vec![0f32; batch * e];
    blas::backward_input(dlogits, head, &mut dn, false);
    let mut dh = vec![0f32; batch * e];
    let (dg, db) = block::pair(grads, x.norm);
    norm::backward(&dn, &tape.norm, e, &w.data[x.norm.0], &mut dh, dg, db);
    if !tape.cls_only {
        let mut full = vec![0f32; batch * t * e];
        block::scatter_cls_add(&dh, e, t, &mut full);
        dh = full;
    }
    for l in (0..arch.depth).rev() {
        let d = block_dims(cfg, arch, l, batch, tape.cls_only);
        dh = block::backward(&dh, w, &x.layers[l], &d, &tape.layers[l], grads);
    }
    // embeddings: dh is [batch · t, e]
    let pw = w.width(x.pos);
    let mut dyp = Vec::with_capacity(batch * (t - 1) * e);
    for rows in dh.chunks(t * e) {
        for (j, r) in rows.chunks(e).enumerate() {
            for (a, v) in grads[x.pos][j * pw..][..e].iter_mut().zip(r) {
                *a += v;
            }
            if j == 0 {
                for (a, v) in grads[x.cls][..e].iter_mut().zip(r) {
                    *a += v;
                }
            } else {
                dyp.extend_from_slice(r);
            }
        }
    }
    let wp = w.mat(x.patch.0, e, cfg.patch_len());
    let (dw, db) = block::pair(grads, x.patch);
    blas::backward_params(&dyp, &tape.patches, wp, dw, db);
}

/// Multiply-adds the engine executes in one forward of one image: the
/// class-token-only last block skips the queries, attention output and MLP
/// of every other token. Compare [`crate::space::flops`], the full count.
pub fn forward_macs(cfg: &Config, arch: &Arch) -> u64 {
    use crate::space::cost::{block_macs, embedding_macs, head_macs};
    let (t, e) = (cfg.seq_len() as u64, arch.embed_dim as u64);
    let mut f = embedding_macs(t - 1, cfg.patch_len() as u64, e);
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * cfg.head_dim) as u64;
        let m = arch.mlp_width(l) as u64;
        // queries that go on through the block: all tokens, or the class token
        let tq = if l + 1 == arch.depth { 1 } else { t };
        f += block_macs(t, tq, e, q, m);
    }
    f + head_macs(e, cfg.classes as u64)
}

/// The batch size of `images` if they are `[batch, C, H, W]` for `cfg`;
/// otherwise an error naming the expected and the found shape.
pub fn check_images(cfg: &Config, images: &Tensor) -> Result<usize> {
    let batch = images.dims().first().copied().unwrap_or(0);
    if images.dims() != [batch, cfg.channels, cfg.image_size, cfg.image_size] {
        return Err(Error::Tensor {
            name: "input images".into(),
            message: format!(
                "expected shape [batch, {}, {}, {}], found {:?}",
                cfg.channels,
                cfg.image_size,
                cfg.image_size,
                images.dims()
            ),
        });
    }
    Ok(batch)
}

/// Logits only (inference), as a `[batch, classes]` tensor.
pub fn logits(w: &Weights, cfg: &Config, arch: &Arch, images: &Tensor) -> Result<Tensor> {
    let batch = check_images(cfg, images)?;
    w.check(cfg, arch)?;
    let x = images
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let (l, _) = forward_chunks(w, cfg, arch, &x, &split(batch), false);
    Ok(Tensor::from_vec(l, (batch, cfg.classes), images.device())?)
}

/// A static model ready for repeated inference by the engine: its weights
/// copied once into engine buffers.
#[derive(Debug, Clone)]
pub struct Model {
    pub weights: Weights,
    pub cfg: Config,
    pub arch: Arch,
}

impl Model {
    pub fn from_vit(vit: &Vit) -> Result<Self> {
        let model = Self {
            weights: Weights::from_tensors(&vit.tensors())?,
            cfg: Config::from_vit(&vit.config),
            arch: vit.config.arch(),
        };
        model.weights.check(&model.cfg, &model.arch)?;
        Ok(model)
    }

    /// Logits `[batch, classes]` for images `[batch, C, H, W]`.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        logits(&self.weights, &self.cfg, &self.arch, images)
    }
}
