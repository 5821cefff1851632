//! The numeric building blocks every layer calls: linear, layer norm,
//! softmax, GELU. Callers never know how they compute, so fused CPU kernels
//! (with backward) can replace these composites without touching the layers.
//!
//! All of them are differentiable: the fused kernels (private module `kernels`)
//! carry their own backward; [`composite`] holds the plain candle versions
//! they are tested against. No `candle_nn::LayerNorm` fast path and no
//! `candle_nn::ops::softmax_last_dim`: in candle 0.11 neither has a backward,
//! so gradients would silently stop at them.

use crate::kernels;
use candle_core::{DType, Result, Tensor};

/// `x · wᵀ + b` over the last dimension of `x`, computed as one 2-D matmul
/// over the flattened leading dimensions (`x`: `[.., in]`, `w`: `[out, in]`):
/// the fused linear kernel for f32 with a bias, candle's matmul (+ the
/// fused bias add) otherwise and in composite mode.
/// Token activations are kept 2-D (`[batch · tokens, dim]`) by the models, so
/// the usual call does no reshape at all.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if x.rank() == 2 {
        if let (Some(b), false, DType::F32) = (b, composite_on(), x.dtype()) {
            return kernels::linear(x, w, b);
        }
        let y = x.matmul(&w.t()?)?;
        return match b {
            Some(b) => bias_add(&y, b),
            None => Ok(y),
        };
    }
    let dims = x.dims();
    let k = *dims
        .last()
        .expect("linear input has at least one dimension");
    let y = linear(&x.reshape((x.elem_count() / k.max(1), k))?, w, b)?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().unwrap() = w.dim(0)?;
    y.reshape(out_dims)
}

thread_local! {
    static COMPOSITE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the unfused [`composite`] ops on this thread; the fused
/// kernels are the default. Callers choose it by value
/// ([`crate::train::step::Backend::Composite`]); the previous setting is
/// restored even if `f` panics.
pub(crate) fn with_composite<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSITE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPOSITE.with(|c| c.replace(true)));
    f()
}

pub(crate) fn composite_on() -> bool {
    COMPOSITE.with(|c| c.get())
}

/// Layer norm over the last dimension, with gamma and beta.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if composite_on() {
        return composite::layer_norm(x, gamma, beta, eps);
    }
    kernels::layer_norm(x, gamma, beta, eps)
}

/// `softmax(scale · x)` over the last dimension.
pub fn softmax_last_scaled(x: &Tensor, scale: f64) -> Result<Tensor> {
    if composite_on() {
        return composite::softmax_last(&(x * scale)?);
    }
    kernels::softmax_last_scaled(x, scale)
}

/// `x + b`, `b` broadcast over the leading dimensions of `x` (its shape is
/// `x`'s trailing dimensions).
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if composite_on() {
        return x.broadcast_add(b);
    }
    kernels::bias_add(x, b)
}

/// GELU, exact (erf) form, as Hugging Face's `hidden_act = "gelu"`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if composite_on() {
        return composite::gelu(x);
    }
    kernels::gelu(x)
}

/// The unfused candle composites the kernels replace: the reference for the
/// kernel tests.
pub mod composite {
    use candle_core::{Result, Tensor, D};

    /// Attention from candle ops (matmuls, softmax with its backward).
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        batch: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Tensor> {
        let t = q.dim(0)? / batch;
        let split = |x: &Tensor| -> Result<Tensor> {
            x.reshape((batch, t, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = 1.0 / (head_dim as f64).sqrt();
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let probs = softmax_last(&(q.matmul(&k.t()?)? * scale)?)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch * t, heads * head_dim))
    }

    pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let n = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / n)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / n)?;
        let inv = (var + eps)?.sqrt()?.recip()?;
        xc.broadcast_mul(&inv)?
            .broadcast_mul(gamma)?
            .broadcast_add(beta)
    }

    pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(x, D::Minus1)
    }

    pub fn gelu(x: &Tensor) -> Result<Tensor> {
        x.gelu_erf()
    }
}

/// Cuts images `[B, C, H, W]` into non-overlapping `p × p` patches, returning
/// `[B, (H/p)·(W/p), C·p·p]` with each patch flattened in `(C, p, p)` order,
/// the order of a `[E, C, p, p]` convolution weight. A stride-`p` convolution
/// is then one linear layer over these rows.
pub fn patchify(images: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = images.dims4()?;
    let (gh, gw) = (h / p, w / p);
    images
        .reshape(vec![b, c, gh, p, gw, p])?
        .permute(vec![0, 2, 4, 1, 3, 5])?
        .contiguous()?
        .reshape((b, gh * gw, c * p * p))
}

/// Multi-head scaled dot-product attention without masking over `batch`
/// sequences. `q`, `k`, `v`: `[batch · T, heads · head_dim]`; returns the
/// per-head weighted sums concatenated back to `[batch · T, heads · head_dim]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: usize,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    if composite_on() {
        return composite::attention(q, k, v, batch, heads, head_dim);
    }
    kernels::attention(q, k, v, batch, heads, head_dim)
}
