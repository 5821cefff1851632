//! The CPU engine: forward and hand-written backward of a (sub)net of a
//! transformer-encoder supernet, ViT or BERT, on plain f32 buffers, outside
//! candle's autograd.
//!
//! Why: on the benchmark workload candle's autograd spent as much time
//! zeroing, adding and allocating gradient buffers per graph node as the
//! matrix products themselves. Here every weight is read as the leading
//! slice of its supernet tensor (strided, no copy) and every weight
//! gradient is added by its `gemm` straight into the same slice of a
//! full-size gradient buffer; activations are kept once for the backward.
//!
//! One engine, one block type, settings in [`Config`] (burn's `norm_first`
//! idea): a model is a family (its Hugging Face tensor names, from
//! [`crate::engine::names`], and its norm placement: pre-norm ViT,
//! post-norm BERT), a [`Stem`] and a [`Head`]:
//! - stems: patch embedding + class token + positions (images); word +
//!   position + token-type-0 embeddings and their layer norm (text: the
//!   forward gathers the rows of the tables, the backward adds into the
//!   rows that were read);
//! - heads: the class token through a final norm (ViT), BERT's pooler
//!   (first token → dense → tanh), mean pooling over the unmasked tokens;
//!   then the classifier (a model without classes returns the pooled
//!   features: sentence embeddings);
//! - input ([`Input`]): images, or token ids with an attention mask,
//!   `[batch, t]` with `t` the batch's own length. Padding is masked out
//!   exactly as Hugging Face's additive `f32::MIN` mask does it, and never
//!   computed: a batch's rows are its unmasked tokens, each sequence its
//!   own length ([`Layout`]; fully padded sequences included, without NaN).
//!
//! Fast paths: a head that reads the first token alone (class token,
//! pooler) makes the last block compute the first rows only (see
//! `block.rs`); a batch is split into one chunk per thread ([`split`]), and
//! a single dense sequence (batch-1 inference) has its rows split over the
//! threads instead.
//!
//! The engine computes what [`crate::supernet::Supernet::forward`] and the
//! static [`crate::models::bert::Bert`] compute, and candle's backward
//! through them, up to float rounding (tested to 1e-4, tests/engine.rs and
//! tests/engine_text.rs); the architecture is an argument of every call, as
//! everywhere. Training steps (`train::step::accumulate`) and inference
//! ([`Model`]) run here, candle's autograd stays as the reference and the
//! fallback. A supernet and a static model (whose tensors are their own
//! full slices) run through the same code.
//!
//! [`ops`] holds the differentiable numeric building blocks (linear, layer
//! norm, softmax, GELU) the candle layers call; [`simd`] the SIMD level of
//! the vector math under both.

mod attention;
mod blas;
mod block;
mod head;
mod input;
pub mod names;
mod norm;
pub mod ops;
mod parallel;
pub mod scaling;
mod stem;
mod weights;

/// The SIMD level of the vector math (kept with the kernels; re-exported
/// here for the binary's `VITNAS_SIMD` check and benchmark reports).
pub use crate::kernels::simd;
pub use input::{check_input, Input, Layout, Seq};
pub use parallel::{
    backward_chunks, backward_chunks_hidden, forward_chunks, forward_chunks_infer_hidden,
    forward_chunks_train, split,
};
pub(crate) use parallel::{forward_chunks_features, par_ok, serial};
pub use weights::{Config, Head, LayerIdx, Pair, Stem, Weights};

use crate::error::{Error, Result};
use crate::kernels::vecmath;
use crate::space::Arch;
use candle_core::{CpuStorage, DType, Storage, Tensor};
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

/// What a training forward keeps of each block for the backward
/// (`[train] recompute` in a recipe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recompute {
    /// Every block's activations: the fastest backward, and memory that
    /// grows with depth × batch × tokens (attention probabilities with
    /// tokens²).
    #[default]
    None,
    /// Each block's input alone (the last block's activations excepted,
    /// which the backward reads first): the backward runs each block's
    /// forward again just before that block's backward (activation
    /// checkpointing per block, Chen et al. 2016; PyTorch's
    /// `torch.utils.checkpoint`). One block's activations are held at a
    /// time, for about one more forward of work; the gradients are the
    /// same, bit for bit, because the forward is deterministic.
    Blocks,
}

/// What a training forward kept of one block.
enum Layer {
    /// The block's activations (boxed: the other variant is one vector).
    Tape(Box<block::Tape>),
    /// The block's input, to run its forward again in the backward.
    Input(Vec<f32>),
}

/// Which of its blocks' activations a forward keeps.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// None (inference).
    Nothing,
    /// Per [`Recompute`].
    Train(Recompute),
}

impl Keep {
    /// Every block's activations.
    const ALL: Keep = Keep::Train(Recompute::None);
}

/// What the backward needs of a forward.
pub struct Tape {
    stem: stem::Tape,
    layout: Layout,
    layers: Vec<Layer>,
    /// Whether the last block produced first-token rows only.
    first_only: bool,
    head: head::Tape,
    /// The hidden states at the layer boundaries, when the forward kept
    /// them ([`forward_hidden`]); else empty.
    hidden: Vec<Vec<f32>>,
}

impl Tape {
    /// The hidden states at the layer boundaries of a [`forward_hidden`]
    /// (empty after any other forward): `[0]` the stem's output (text: the
    /// embeddings after their layer norm), `[l + 1]` block `l`'s output,
    /// each `[layout rows, embed]`.
    pub fn hidden(&self) -> &[Vec<f32>] {
        &self.hidden
    }

    /// Moves the hidden states out of the tape (the backward does not read
    /// them).
    pub fn take_hidden(&mut self) -> Vec<Vec<f32>> {
        std::mem::take(&mut self.hidden)
    }

    /// The classifier's input, `[batch, embed]`: the pooled features.
    pub fn features(&self) -> &[f32] {
        &self.head.features
    }

    /// The rows of the forward's sequences.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

fn block_dims<'a>(
    cfg: &Config,
    arch: &Arch,
    l: usize,
    layout: &'a Layout,
    first_only: bool,
) -> block::Dims<'a> {
    block::Dims {
        layout,
        embed: arch.embed_dim,
        heads: arch.num_heads[l],
        head_dim: cfg.head_dim,
        mlp: arch.mlp_width(l),
        eps: cfg.eps,
        post_norm: cfg.post_norm(),
        first_only: first_only && l + 1 == arch.depth,
        scale_row: cfg.scaling.as_ref().and_then(|s| s.row(arch, l)),
    }
}

/// Logits `[batch, classes]` of `arch` for `input`, and the tape for
/// [`backward`]. `arch` must pass [`Weights::check`] and `input`
/// [`check_input`].
pub fn forward(w: &Weights, cfg: &Config, arch: &Arch, input: Input) -> (Vec<f32>, Tape) {
    forward_with(w, cfg, arch, input, true)
}

/// [`forward`] (or, with `hidden`, [`forward_hidden`]) keeping of each
/// block what `recompute` says: the same logits, hidden states and
/// gradients from [`backward`], bit for bit, whatever it is.
pub fn forward_train(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    hidden: bool,
    recompute: Recompute,
) -> (Vec<f32>, Tape) {
    forward_impl(w, cfg, arch, input, !hidden, hidden, Keep::Train(recompute))
}

/// [`forward`], choosing whether the last block computes the first token
/// only when the head reads nothing else (`true`, the default) or every
/// token (for tests).
pub fn forward_with(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    first_only: bool,
) -> (Vec<f32>, Tape) {
    forward_impl(w, cfg, arch, input, first_only, false, Keep::ALL)
}

/// [`forward`] for inference: each block's activations (attention
/// probabilities included) are dropped as soon as the next block has its
/// input, so memory holds one block's activations at a time instead of
/// every block's. The same logits as [`forward`], bit for bit; the tape
/// it returns has the stem, layout and head (its [`Tape::features`]) but
/// no blocks: it is no input to [`backward`].
pub fn forward_infer(w: &Weights, cfg: &Config, arch: &Arch, input: Input) -> (Vec<f32>, Tape) {
    forward_impl(w, cfg, arch, input, true, false, Keep::Nothing)
}

/// [`forward`] that keeps the hidden states at every layer boundary in
/// the tape ([`Tape::hidden`]), for hidden-state distillation: every
/// block computes every token (no first-token shortcut), and
/// [`backward_hidden`] takes gradients with respect to those states.
pub fn forward_hidden(w: &Weights, cfg: &Config, arch: &Arch, input: Input) -> (Vec<f32>, Tape) {
    forward_impl(w, cfg, arch, input, false, true, Keep::ALL)
}

/// [`forward_infer`] that keeps the hidden states at every layer boundary
/// ([`Tape::hidden`], as [`forward_hidden`] lays them out, the same values)
/// and no block's activations: a fixed teacher's forward, whose states are
/// constants.
pub fn forward_infer_hidden(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
) -> (Vec<f32>, Tape) {
    forward_impl(w, cfg, arch, input, false, true, Keep::Nothing)
}

fn forward_impl(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    first_only: bool,
    keep_hidden: bool,
    keep: Keep,
) -> (Vec<f32>, Tape) {
    let e = arch.embed_dim;
    let first_token = cfg.head.first_token_only();
    let (mut h, layout, mut stem) = stem::forward(w, cfg, e, input, first_token);
    if keep == Keep::Nothing {
        stem.drop_activations();
    }
    let first_only = first_only && first_token && arch.depth > 0;
    let mut layers = Vec::with_capacity(arch.depth);
    let mut hidden = Vec::new();
    for l in 0..arch.depth {
        if keep_hidden {
            hidden.push(h.clone());
        }
        let d = block_dims(cfg, arch, l, &layout, first_only);
        let li = &w.idx.layers[cfg.block(w, arch, l)];
        match keep {
            Keep::Train(Recompute::Blocks) if l + 1 < arch.depth => {
                layers.push(Layer::Input(h.clone()));
                h = block::forward_infer(h, w, li, &d);
            }
            Keep::Train(_) => {
                let (out, tape) = block::forward(h, w, li, &d);
                h = out;
                layers.push(Layer::Tape(Box::new(tape)));
            }
            Keep::Nothing => h = block::forward_infer(h, w, li, &d),
        }
    }
    if keep_hidden {
        hidden.push(h.clone());
    }
    if first_token && !first_only {
        h = layout.gather_first(&h, e);
    }
    let (logits, head) = head::forward(w, cfg, e, &layout, h);
    let tape = Tape {
        stem,
        layout,
        layers,
        first_only,
        head,
        hidden,
    };
    (logits, tape)
}

/// Logits of one sequence with each block split over two threads by heads
/// and MLP columns (see [`block::forward_split`]); the last block computes
/// the first token alone under a first-token head. A sequence with masked
/// tokens that stay (see [`Layout`]) runs unsplit.
fn infer_one_split(w: &Weights, cfg: &Config, arch: &Arch, input: Input) -> Vec<f32> {
    let e = arch.embed_dim;
    let first_token = cfg.head.first_token_only();
    rayon::scope(|_| {
        let (mut h, layout, _) = serial(|| stem::forward(w, cfg, e, input, first_token));
        if !layout.is_dense() {
            return forward_infer(w, cfg, arch, input).0;
        }
        let first_only = first_token && arch.depth > 0;
        for l in 0..arch.depth {
            let d = block_dims(cfg, arch, l, &layout, first_only);
            h = block::forward_split(&h, w, &w.idx.layers[cfg.block(w, arch, l)], &d);
        }
        if first_token && !first_only {
            h = layout.gather_first(&h, e);
        }
        serial(|| head::forward(w, cfg, e, &layout, h).0)
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
    backward_hidden(w, cfg, arch, tape, dlogits, &[], grads)
}

/// [`backward`] with gradients with respect to the hidden states of a
/// [`forward_hidden`] added at each layer boundary: `dhidden[j]` (laid
/// out as [`Tape::hidden`]`[j]`, or empty for none) joins the gradient
/// that flows back through boundary `j`; `dhidden` may be shorter than
/// the `depth + 1` boundaries. With `dhidden` empty this is [`backward`].
pub fn backward_hidden(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    tape: &Tape,
    dlogits: &[f32],
    dhidden: &[Vec<f32>],
    grads: &mut [Vec<f32>],
) {
    let (e, layout) = (arch.embed_dim, &tape.layout);
    assert_eq!(grads.len(), w.data.len());
    let add_hidden = |j: usize, dh: &mut Vec<f32>| {
        if let Some(g) = dhidden.get(j).filter(|g| !g.is_empty()) {
            assert_eq!(
                g.len(),
                dh.len(),
                "hidden-state gradient {j}: [rows, embed]"
            );
            dh.iter_mut().zip(g).for_each(|(d, g)| *d += g);
        }
    };
    let mut dh = head::backward(w, cfg, e, layout, &tape.head, dlogits, grads);
    if cfg.head.first_token_only() && !tape.first_only {
        let mut full = vec![0f32; layout.rows() * e];
        layout.scatter_first_add(&dh, e, &mut full);
        dh = full;
    }
    assert!(
        !tape.first_only || dhidden.get(arch.depth).is_none_or(Vec::is_empty),
        "hidden-state gradients need a forward_hidden tape"
    );
    add_hidden(arch.depth, &mut dh);
    for l in (0..arch.depth).rev() {
        let d = block_dims(cfg, arch, l, layout, tape.first_only);
        let li = &w.idx.layers[cfg.block(w, arch, l)];
        let again;
        let t = match &tape.layers[l] {
            Layer::Tape(t) => t,
            Layer::Input(x) => {
                again = block::forward(x.clone(), w, li, &d).1;
                &again
            }
        };
        dh = block::backward(&dh, w, li, &d, t, grads);
        add_hidden(l, &mut dh);
    }
    stem::backward(w, cfg, e, &tape.stem, &dh, grads);
}

/// Multiply-adds the engine executes in one forward of one sequence of
/// `t` tokens (its unmasked ones; images: [`Config::image_seq_len`]): under
/// a first-token head the last block skips the queries, attention output
/// and MLP of every other token. Compare [`crate::space::flops`], the full
/// count.
pub fn forward_macs(cfg: &Config, arch: &Arch, t: usize) -> u64 {
    use crate::space::cost::{block_macs, embedding_macs, head_macs};
    let (t, e) = (t as u64, arch.embed_dim as u64);
    let mut f = match cfg.stem {
        Stem::Patches { .. } => embedding_macs(t - 1, cfg.patch_len() as u64, e),
        Stem::Tokens { .. } => 0,
    };
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * cfg.head_dim) as u64;
        let m = arch.mlp_width(l) as u64;
        // queries that go on through the block: all tokens, or the first
        let last = l + 1 == arch.depth && cfg.head.first_token_only();
        f += block_macs(t, if last { 1 } else { t }, e, q, m);
    }
    if cfg.head == Head::Pooler {
        f += e * e;
    }
    f + head_macs(e, cfg.classes as u64)
}

/// The batch size of `images` if they are `[batch, C, H, W]` for `cfg`;
/// otherwise an error naming the expected and the found shape.
pub fn check_images(cfg: &Config, images: &Tensor) -> Result<usize> {
    let batch = images.dims().first().copied().unwrap_or(0);
    let Stem::Patches {
        channels,
        image_size,
        ..
    } = cfg.stem
    else {
        return Err(Error::Tensor {
            name: "input images".into(),
            message: "images given to a text model".into(),
        });
    };
    if images.dims() != [batch, channels, image_size, image_size] {
        return Err(Error::Tensor {
            name: "input images".into(),
            message: format!(
                "expected shape [batch, {channels}, {image_size}, {image_size}], found {:?}",
                images.dims()
            ),
        });
    }
    Ok(batch)
}

/// Token ids and attention mask (`[batch, t]` tensors of any integer type)
/// as the flat u32 buffers of an [`Input::Tokens`], checked against `cfg`
/// ([`check_input`]): `(ids, mask, t)`.
pub fn token_buffers(
    cfg: &Config,
    ids: &Tensor,
    mask: &Tensor,
) -> Result<(Vec<u32>, Vec<u32>, usize)> {
    let shape_err = |name: &str, t: &Tensor| Error::Tensor {
        name: name.into(),
        message: format!("expected shape [batch, tokens], found {:?}", t.dims()),
    };
    let (_, t) = ids.dims2().map_err(|_| shape_err("input_ids", ids))?;
    if mask.dims() != ids.dims() {
        return Err(Error::Tensor {
            name: "attention_mask".into(),
            message: format!(
                "shape {:?} differs from input_ids {:?}",
                mask.dims(),
                ids.dims()
            ),
        });
    }
    let flat = |x: &Tensor| -> Result<Vec<u32>> {
        Ok(x.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?)
    };
    let (ids, mask) = (flat(ids)?, flat(mask)?);
    check_input(
        cfg,
        &Input::Tokens {
            ids: &ids,
            mask: &mask,
            t,
        },
    )?;
    Ok((ids, mask, t))
}

/// Logits only (inference), as a `[batch, classes]` tensor.
pub fn logits(w: &Weights, cfg: &Config, arch: &Arch, images: &Tensor) -> Result<Tensor> {
    let batch = check_images(cfg, images)?;
    w.check(cfg, arch)?;
    let run = |x: &[f32]| forward_chunks(w, cfg, arch, Input::Images(x), &split(batch), false).0;
    // Contiguous f32 images on the CPU are read in place (no copy of the
    // batch beside the caller's tensor); others are converted first.
    let in_place = {
        let (storage, layout) = images.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Some(run(&v[a..b])),
            _ => None,
        }
    };
    let l = match in_place {
        Some(l) => l,
        None => run(&images
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?),
    };
    Ok(Tensor::from_vec(l, (batch, cfg.classes), images.device())?)
}

/// The checks of a text model's entry points: its tensors, `arch` and a
/// classifier when logits are asked for.
fn check_text(w: &Weights, cfg: &Config, arch: &Arch, need_classes: bool) -> Result<()> {
    w.check(cfg, arch)?;
    if need_classes && cfg.classes == 0 {
        return Err(Error::Tensor {
            name: cfg.family.stem().classifier,
            message: "the model has no classifier (no classes): ask for its features".into(),
        });
    }
    Ok(())
}

/// Logits (inference) of token ids and attention mask (`[batch, t]`), as a
/// `[batch, classes]` tensor.
pub fn token_logits(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    ids: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    check_text(w, cfg, arch, true)?;
    let (i, m, t) = token_buffers(cfg, ids, mask)?;
    let batch = i.len() / t;
    let input = Input::Tokens {
        ids: &i,
        mask: &m,
        t,
    };
    let (l, _) = forward_chunks(w, cfg, arch, input, &split(batch), false);
    Ok(Tensor::from_vec(l, (batch, cfg.classes), ids.device())?)
}

/// The pooled features (the classifier's input: for a mean-pooling model
/// without classes, its sentence embeddings before normalisation) of token
/// ids and attention mask, `[batch, embed]`.
pub fn token_features(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    ids: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    check_text(w, cfg, arch, false)?;
    let (i, m, t) = token_buffers(cfg, ids, mask)?;
    let batch = i.len() / t;
    let input = Input::Tokens {
        ids: &i,
        mask: &m,
        t,
    };
    let (_, tapes) = forward_chunks_features(w, cfg, arch, input, &split(batch));
    let f: Vec<f32> = tapes.iter().flat_map(|t| t.features().to_vec()).collect();
    Ok(Tensor::from_vec(f, (batch, arch.embed_dim), ids.device())?)
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
    /// A model from its weights, configuration and dims, checked against
    /// each other. The constructors from the model types live beside those
    /// types: `Model::from_vit` in [`crate::models::vit`],
    /// `Model::from_bert` in [`crate::models::bert`]; the engine itself
    /// knows only names, dims and buffers.
    pub fn new(weights: Weights, cfg: Config, arch: Arch) -> Result<Self> {
        weights.check(&cfg, &arch)?;
        Ok(Self { weights, cfg, arch })
    }

    /// Logits `[batch, classes]` for images `[batch, C, H, W]`.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        logits(&self.weights, &self.cfg, &self.arch, images)
    }

    /// Logits `[batch, classes]` for token ids and attention mask `[batch, t]`.
    pub fn token_logits(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        token_logits(&self.weights, &self.cfg, &self.arch, ids, mask)
    }

    /// Pooled features `[batch, embed]` for token ids and attention mask.
    pub fn token_features(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        token_features(&self.weights, &self.cfg, &self.arch, ids, mask)
    }
}
