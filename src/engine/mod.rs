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
//! [`block`]), which the logits depend on.
//!
//! The engine computes exactly what [`crate::supernet::Supernet::forward`]
//! and candle's backward compute (tested against both to 1e-4); the
//! architecture is an argument of every call, as everywhere. Weights are
//! found by their Hugging Face names, so a supernet and a static
//! [`crate::models::vit::Vit`] (whose tensors are their own full slices) run
//! through the same code.

pub mod attention;
pub mod blas;
pub mod block;
pub mod norm;

use crate::error::{Error, Result};
use crate::kernels::vecmath;
use crate::models::vit::{Vit, VitConfig};
use crate::space::{Arch, Space};
use blas::W;
use candle_core::Tensor;
use norm::Normed;
use rayon::prelude::*;

thread_local! {
    static DISABLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether training steps on this thread use the engine (the default) or
/// candle's autograd (inside [`with_candle_autograd`], or with the unfused
/// composites of [`crate::ops::with_composite`]).
pub fn enabled() -> bool {
    !DISABLED.with(|c| c.get()) && !crate::ops::composite_on()
}

/// Runs `f` with training steps on this thread computed by candle's
/// autograd instead of the engine (tests, before/after measurements).
pub fn with_candle_autograd<T>(f: impl FnOnce() -> T) -> T {
    let prev = DISABLED.with(|c| c.replace(true));
    let out = f();
    DISABLED.with(|c| c.set(prev));
    out
}

/// Element-wise work below this many elements stays on the calling thread.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;
const CHUNK: usize = 1 << 13;
/// Fewest images per data-parallel chunk.
const MIN_CHUNK: usize = 1;
/// A whole forward smaller than this (`rows · embed² · depth`, about a
/// twelfth of its multiply-adds) runs on one thread: waking the pool for
/// each of its small ops costs more than it saves (batch-1 inference).
const SERIAL_MAX_WORK: usize = 1 << 25;

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every engine op on this thread single-threaded (inside a
/// data-parallel chunk, where the other threads have chunks of their own).
fn serial<T>(f: impl FnOnce() -> T) -> T {
    let prev = SERIAL.with(|c| c.replace(true));
    let out = f();
    SERIAL.with(|c| c.set(prev));
    out
}

/// Whether an op of `work` units (at least `min` to pay for the dispatch)
/// should use the thread pool.
pub(crate) fn par_ok(work: usize, min: usize) -> bool {
    work >= min && !SERIAL.with(|c| c.get()) && rayon::current_num_threads() > 1
}

fn gelu(u: &[f32], a: &mut [f32]) {
    if par_ok(u.len(), PAR_MIN_ELEMS) {
        a.par_chunks_mut(CHUNK)
            .zip(u.par_chunks(CHUNK))
            .for_each(|(a, u)| vecmath::gelu(u, a));
    } else {
        vecmath::gelu(u, a);
    }
}

fn gelu_backward(u: &[f32], g: &mut [f32]) {
    if par_ok(u.len(), PAR_MIN_ELEMS) {
        g.par_chunks_mut(CHUNK)
            .zip(u.par_chunks(CHUNK))
            .for_each(|(g, u)| vecmath::gelu_backward(u, g));
    } else {
        vecmath::gelu_backward(u, g);
    }
}

/// Fixed shapes of the model family (input, head size, classes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub channels: usize,
    pub image_size: usize,
    pub patch: usize,
    pub head_dim: usize,
    pub classes: usize,
    pub eps: f32,
}

impl Config {
    pub fn from_space(space: &Space) -> Self {
        Self {
            channels: space.input.channels,
            image_size: space.input.image_size,
            patch: space.input.patch_size,
            head_dim: space.supernet.head_dim,
            classes: space.input.num_classes,
            eps: space.supernet.layer_norm_eps as f32,
        }
    }

    pub fn from_vit(c: &VitConfig) -> Self {
        Self {
            channels: c.num_channels,
            image_size: c.image_size,
            patch: c.patch_size,
            head_dim: c.head_dim,
            classes: c.num_labels,
            eps: c.layer_norm_eps as f32,
        }
    }

    fn grid(&self) -> usize {
        self.image_size / self.patch
    }
    /// Patches per image.
    fn patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Tokens per image (patches + class token).
    pub fn seq_len(&self) -> usize {
        self.patches() + 1
    }
    fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
}

/// `(weight, bias)` or `(gamma, beta)` positions in [`Weights`].
pub type Pair = (usize, usize);

/// Positions of one block's tensors in [`Weights`].
#[derive(Debug, Clone)]
pub struct LayerIdx {
    pub ln1: Pair,
    pub query: Pair,
    pub key: Pair,
    pub value: Pair,
    pub output: Pair,
    pub ln2: Pair,
    pub fc1: Pair,
    pub fc2: Pair,
}

#[derive(Debug, Clone)]
struct Index {
    cls: usize,
    pos: usize,
    patch: Pair,
    layers: Vec<LayerIdx>,
    norm: Pair,
    head: Pair,
}

/// Copies of a model's tensors as flat f32 buffers, in the caller's order
/// (gradients are returned in the same order), found by Hugging Face name.
#[derive(Debug, Clone)]
pub struct Weights {
    pub names: Vec<String>,
    pub data: Vec<Vec<f32>>,
    pub dims: Vec<Vec<usize>>,
    /// Transposed copies of the weight matrices (see [`blas::W`]).
    transposed: Vec<Option<Vec<f32>>>,
    idx: Index,
}

impl Weights {
    pub fn from_tensors(named: &[(String, Tensor)]) -> Result<Self> {
        let mut names = Vec::with_capacity(named.len());
        let mut data = Vec::with_capacity(named.len());
        let mut dims = Vec::with_capacity(named.len());
        for (n, t) in named {
            names.push(n.clone());
            dims.push(t.dims().to_vec());
            data.push(
                t.flatten_all()
                    .and_then(|t| t.to_dtype(candle_core::DType::F32))
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| Error::Tensor {
                        name: n.clone(),
                        message: e.to_string(),
                    })?,
            );
        }
        let find = |name: &str| -> Result<usize> {
            names.iter().position(|n| n == name).ok_or_else(|| Error::Tensor {
                name: name.into(),
                message: "missing from the model's tensors".into(),
            })
        };
        let pair = |p: &str, a: &str, b: &str| -> Result<Pair> {
            Ok((find(&format!("{p}.{a}"))?, find(&format!("{p}.{b}"))?))
        };
        let lin = |p: &str| pair(p, "weight", "bias");
        let mut layers = Vec::new();
        while names
            .iter()
            .any(|n| n.starts_with(&format!("vit.encoder.layer.{}.", layers.len())))
        {
            let p = format!("vit.encoder.layer.{}", layers.len());
            layers.push(LayerIdx {
                ln1: lin(&format!("{p}.layernorm_before"))?,
                query: lin(&format!("{p}.attention.attention.query"))?,
                key: lin(&format!("{p}.attention.attention.key"))?,
                value: lin(&format!("{p}.attention.attention.value"))?,
                output: lin(&format!("{p}.attention.output.dense"))?,
                ln2: lin(&format!("{p}.layernorm_after"))?,
                fc1: lin(&format!("{p}.intermediate.dense"))?,
                fc2: lin(&format!("{p}.output.dense"))?,
            });
        }
        let idx = Index {
            cls: find("vit.embeddings.cls_token")?,
            pos: find("vit.embeddings.position_embeddings")?,
            patch: lin("vit.embeddings.patch_embeddings.projection")?,
            layers,
            norm: lin("vit.layernorm")?,
            head: lin("classifier")?,
        };
        let mut w = Self {
            transposed: vec![None; names.len()],
            names,
            data,
            dims,
            idx,
        };
        let x = &w.idx;
        let mut mats = vec![x.patch.0, x.head.0];
        for l in &x.layers {
            mats.extend([l.query.0, l.key.0, l.value.0, l.output.0, l.fc1.0, l.fc2.0]);
        }
        for i in mats {
            let (rows, cols) = (w.dims[i].first().copied().unwrap_or(0), w.row_len(i));
            if rows * cols != w.data[i].len() {
                continue;
            }
            let mut t = vec![0f32; rows * cols];
            for (r, row) in w.data[i].chunks_exact(cols.max(1)).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    t[c * rows + r] = *v;
                }
            }
            w.transposed[i] = Some(t);
        }
        Ok(w)
    }

    /// The leading `out × inp` block of matrix `i` (with its transpose).
    fn mat(&self, i: usize, out: usize, inp: usize) -> W<'_> {
        W {
            data: &self.data[i],
            out,
            inp,
            ld: self.row_len(i),
            t: self.transposed[i].as_deref(),
            ld_t: self.dims[i].first().copied().unwrap_or(0),
        }
    }

    /// Elements per row of tensor `i` read as a matrix (its last dims).
    fn row_len(&self, i: usize) -> usize {
        self.dims[i].iter().skip(1).product()
    }

    /// Rows of tensor `i` (its first dim), or its last dim for vectors and
    /// `[1, …, d]` embeddings.
    fn width(&self, i: usize) -> usize {
        *self.dims[i].last().unwrap_or(&0)
    }

    /// Checks that `arch` fits these tensors; the error names the tensor.
    pub fn check(&self, cfg: &Config, arch: &Arch) -> Result<()> {
        let too_small = |i: usize, need: String| Error::Tensor {
            name: self.names[i].clone(),
            message: format!("shape {:?} is too small for {need}", self.dims[i]),
        };
        let e = arch.embed_dim;
        if arch.depth > self.idx.layers.len() {
            return Err(Error::Tensor {
                name: format!("vit.encoder.layer.{}", self.idx.layers.len()),
                message: format!("missing: the architecture has depth {}", arch.depth),
            });
        }
        let x = &self.idx;
        for i in [x.cls, x.pos, x.norm.0, x.norm.1] {
            if self.width(i) < e {
                return Err(too_small(i, format!("embed dim {e}")));
            }
        }
        if self.data[x.pos].len() < cfg.seq_len() * self.width(x.pos) {
            return Err(too_small(x.pos, format!("{} tokens", cfg.seq_len())));
        }
        let mat = |p: Pair, out: usize, inp: usize| -> Result<()> {
            if self.dims[p.0].first().copied().unwrap_or(0) < out
                || self.row_len(p.0) < inp
                || self.data[p.1].len() < out
            {
                return Err(too_small(p.0, format!("a {out} x {inp} slice")));
            }
            Ok(())
        };
        mat(x.patch, e, cfg.patch_len())?;
        if self.row_len(x.patch.0) != cfg.patch_len() {
            return Err(too_small(x.patch.0, format!("patches of {}", cfg.patch_len())));
        }
        mat(x.head, cfg.classes, e)?;
        for l in 0..arch.depth {
            let (li, qd, m) = (&x.layers[l], arch.num_heads[l] * cfg.head_dim, arch.mlp_width(l));
            for p in [li.ln1, li.ln2] {
                mat((p.0, p.1), e, 0)?;
                if self.width(p.0) < e {
                    return Err(too_small(p.0, format!("embed dim {e}")));
                }
            }
            mat(li.query, qd, e)?;
            mat(li.key, qd, e)?;
            mat(li.value, qd, e)?;
            mat(li.output, e, qd)?;
            mat(li.fc1, m, e)?;
            mat(li.fc2, e, m)?;
        }
        Ok(())
    }

    /// Zeroed gradient buffers, one per tensor.
    pub fn zero_grads(&self) -> Vec<Vec<f32>> {
        self.data.iter().map(|d| vec![0.0; d.len()]).collect()
    }
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
        let (out, tape) = block::forward(&h, w, &x.layers[l], &block_dims(cfg, arch, l, batch, cls_only));
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
fn embed(w: &Weights, cfg: &Config, arch: &Arch, images: &[f32], batch: usize) -> (Vec<f32>, Vec<f32>) {
    let (e, t, x) = (arch.embed_dim, cfg.seq_len(), &w.idx);
    assert_eq!(images.len(), batch * cfg.channels * cfg.image_size * cfg.image_size);
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
    let (t, e) = (cfg.seq_len() as u64, arch.embed_dim as u64);
    let mut f = (t - 1) * cfg.patch_len() as u64 * e + e * cfg.classes as u64;
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * cfg.head_dim) as u64;
        let m = arch.mlp_width(l) as u64;
        // queries that go on through the block: all tokens, or the class token
        let tq = if l + 1 == arch.depth { 1 } else { t };
        f += 2 * t * e * q + tq * (e * q + 2 * t * q + q * e + 2 * e * m);
    }
    f
}

/// Contiguous ranges of a batch, one per thread of the pool (at least
/// [`MIN_CHUNK`] images each), for data-parallel forward and backward: each
/// thread runs whole subnets on its images with single-threaded ops, which
/// beats splitting every small op across threads. Results are bit-identical
/// for the same seed and the same number of threads.
pub fn split(batch: usize) -> Vec<std::ops::Range<usize>> {
    let n = rayon::current_num_threads().min(batch / MIN_CHUNK).max(1);
    (0..n).map(|i| batch * i / n..batch * (i + 1) / n).collect()
}

/// [`forward`] of each chunk of [`split`] on its own thread; the logits of
/// the whole batch and one tape per chunk (none when `tape` is false, which
/// lets one image be split over the threads by rows).
pub fn forward_chunks(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    images: &[f32],
    chunks: &[std::ops::Range<usize>],
    tape: bool,
) -> (Vec<f32>, Vec<Tape>) {
    let per = cfg.channels * cfg.image_size * cfg.image_size;
    if let [r] = chunks {
        let run = || forward(w, cfg, arch, &images[r.start * per..r.end * per], r.len());
        if !tape && r.len() == 1 && par_ok(2, 2) {
            let l = infer_one_split(w, cfg, arch, &images[r.start * per..r.end * per]);
            return (l, Vec::new());
        }
        let work = r.len() * cfg.seq_len() * arch.embed_dim * arch.embed_dim * arch.depth;
        let (l, t) = if work < SERIAL_MAX_WORK {
            serial(run)
        } else {
            run()
        };
        return (l, vec![t]);
    }
    let outs: Vec<(Vec<f32>, Tape)> = chunks
        .par_iter()
        .map(|r| serial(|| forward(w, cfg, arch, &images[r.start * per..r.end * per], r.len())))
        .collect();
    let mut logits = Vec::with_capacity(images.len() / per * cfg.classes);
    let mut tapes = Vec::with_capacity(outs.len());
    for (l, t) in outs {
        logits.extend(l);
        tapes.push(t);
    }
    (logits, tapes)
}

/// [`backward`] of each chunk on its own thread: chunk 0 adds into
/// `grads`, chunk `i` into `extra[i - 1]` (buffers of the same shapes, to be
/// summed into `grads` by the caller once per step).
#[allow(clippy::too_many_arguments)]
pub fn backward_chunks(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    tapes: &[Tape],
    dlogits: &[f32],
    chunks: &[std::ops::Range<usize>],
    grads: &mut [Vec<f32>],
    extra: &mut [Vec<Vec<f32>>],
) {
    assert!(tapes.len() == chunks.len() && extra.len() + 1 >= chunks.len());
    let c = cfg.classes;
    if let ([t], [r]) = (tapes, chunks) {
        return backward(w, cfg, arch, t, &dlogits[r.start * c..r.end * c], grads);
    }
    let mut targets: Vec<&mut [Vec<f32>]> = std::iter::once(grads)
        .chain(extra.iter_mut().map(|e| e.as_mut_slice()))
        .take(chunks.len())
        .collect();
    targets
        .par_iter_mut()
        .zip(tapes.par_iter())
        .zip(chunks.par_iter())
        .for_each(|((g, t), r)| {
            serial(|| backward(w, cfg, arch, t, &dlogits[r.start * c..r.end * c], g))
        });
}

/// Logits only (inference), as a `[batch, classes]` tensor.
pub fn logits(w: &Weights, cfg: &Config, arch: &Arch, images: &Tensor) -> Result<Tensor> {
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
    w.check(cfg, arch)?;
    let x = images.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
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
        let c = &vit.config;
        let arch = Arch {
            embed_dim: c.hidden_size,
            depth: c.num_heads.len(),
            num_heads: c.num_heads.clone(),
            mlp_ratio: c
                .intermediate_sizes
                .iter()
                .map(|&m| m as f64 / c.hidden_size.max(1) as f64)
                .collect(),
        };
        let model = Self {
            weights: Weights::from_tensors(&vit.tensors())?,
            cfg: Config::from_vit(c),
            arch,
        };
        model.weights.check(&model.cfg, &model.arch)?;
        Ok(model)
    }

    /// Logits `[batch, classes]` for images `[batch, C, H, W]`.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        logits(&self.weights, &self.cfg, &self.arch, images)
    }
}
