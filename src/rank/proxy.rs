//! Zero-cost proxies: scores that rank architectures at initialisation,
//! from one batch and no training (Abdelfattah et al. 2021, "Zero-Cost
//! Proxies for Lightweight NAS", reference code SamsungLabs/zero-cost-nas;
//! Mellor et al. 2021, "Neural Architecture Search without Training").
//!
//! Each proxy scores a freshly initialised standalone model of the
//! architecture, initialised exactly as `vitnas retrain` starts one from
//! scratch ([`crate::train::standalone::build`] with [`Init::Scratch`]);
//! [`score_model`] scores any static [`Vit`] (e.g. an exported subnet with
//! inherited weights). Higher is predicted better. The model is never
//! changed: every proxy works on its own copy of the tensors.
//!
//! - [`Proxy::Naswot`]: log |det K| of the kernel of binary activation codes.
//! - [`Proxy::GradNorm`]: Σ over parameters of ‖∂ CE / ∂θ‖₂.
//! - [`Proxy::Synflow`]: Σ over parameters of Σ |θ ⊙ ∂R/∂θ| on |θ|, in f64.

use crate::error::{Error, Result};
use crate::models::vit::Vit;
use crate::space::{Arch, Space};
use crate::supernet::init::InitScheme;
use crate::train::loss::cross_entropy;
use crate::train::standalone::{self, Init};
use crate::train::step::Params;
use candle_core::{DType, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Which zero-cost proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Proxy {
    /// NASWOT (Mellor et al. 2021): how differently the MLPs' activation
    /// patterns tell the images of a batch apart. Forward only.
    Naswot,
    /// The summed L2 norms of the loss gradients at initialisation.
    GradNorm,
    /// SynFlow (Tanaka et al. 2020): synaptic flow of the all-ones input
    /// through the network with absolute-valued weights. Data-free.
    Synflow,
}

impl Proxy {
    /// Every proxy.
    pub const ALL: [Proxy; 3] = [Proxy::Naswot, Proxy::GradNorm, Proxy::Synflow];

    /// The name files and the command line use (`naswot`, `grad_norm`,
    /// `synflow`).
    pub fn name(&self) -> &'static str {
        match self {
            Proxy::Naswot => "naswot",
            Proxy::GradNorm => "grad_norm",
            Proxy::Synflow => "synflow",
        }
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The proxy's score of `arch` (higher = predicted better), computed on a
/// freshly initialised standalone model of `arch` (`vitnas retrain`'s
/// initialisation from scratch by `init` with `init_seed`) on one batch:
/// `images` `[N, C, H, W]` f32, already normalised, `labels` `[N]` u32.
/// Same arguments, same score, bit for bit.
pub fn score(
    proxy: Proxy,
    space: &Space,
    arch: &Arch,
    init: InitScheme,
    init_seed: u64,
    images: &Tensor,
    labels: &Tensor,
) -> Result<f64> {
    let (model, _, _) = standalone::build(space, arch, init_seed, &Init::Scratch(init))?;
    score_model(proxy, &model, images, labels)
}

/// The proxy's score of a static model as it is (see [`score`]).
///
/// - **naswot**: `log |det K|` of [`naswot_kernel`] (`−∞` when K is
///   singular, e.g. when the batch holds the same image twice).
/// - **grad_norm**: Σ over every trainable tensor of the L2 norm of
///   ∂L/∂θ, L the cross-entropy (no label smoothing) averaged over the
///   batch, computed by candle's autograd through the model's own forward
///   (vitnas's differentiable ops). zero-cost-nas sums over the weights of
///   `Conv2d` and `Linear` layers only; here biases, layer norms, the class
///   token and the position embeddings count too.
/// - **synflow**: every tensor replaced by its absolute value and
///   converted to f64, the input a single all-ones image, R the sum of the
///   logits; the score is Σ over every tensor of Σ |θ ⊙ ∂R/∂θ| (all
///   tensors, not only zero-cost-nas's `Conv2d`/`Linear` weights). Layer
///   norm is not positively homogeneous, so in a ViT synflow is not the
///   path norm of Tanaka et al.: as zero-cost-nas does for any network
///   (its `synflow` measure bypasses BatchNorm layers only), the layer
///   norms stay in, with |γ| and |β|. vitnas's ViT has no dropout, so
///   train and eval mode agree. f64 needs candle's unfused ops
///   ([`crate::engine::ops::composite`]), as the fused kernels are f32 only.
///
/// The batch is checked against the model's input shape and classes.
pub fn score_model(proxy: Proxy, model: &Vit, images: &Tensor, labels: &Tensor) -> Result<f64> {
    check_batch(model, images, labels)?;
    match proxy {
        Proxy::Naswot => {
            let k = naswot_kernel(model, images)?;
            Ok(slogdet(&k.k, k.n).1)
        }
        Proxy::GradNorm => grad_norm(model, images, labels),
        Proxy::Synflow => synflow(model),
    }
}

/// NASWOT's kernel of a batch: `K[i][j]` is the number of MLP hidden units
/// (over all layers, all tokens) whose pre-activation sign agrees between
/// images `i` and `j`: with binary codes `c` (`fc1` output `> 0`; a ViT's
/// GELU has no exact zero region, so the pre-activation is binarised as
/// NASWOT's ViT adaptations do), `K = c·cᵀ + (1 − c)·(1 − c)ᵀ` summed
/// over layers. Every entry is an exact integer.
#[derive(Debug, Clone, PartialEq)]
pub struct NaswotKernel {
    /// Batch size: K is `n × n`.
    pub n: usize,
    /// Hidden units per image, summed over layers (`Σ tokens · width`):
    /// K's diagonal.
    pub units: usize,
    /// K, row-major.
    pub k: Vec<f64>,
}

/// [`NaswotKernel`] of `images` under `model` (forward only, no autograd
/// graph).
pub fn naswot_kernel(model: &Vit, images: &Tensor) -> Result<NaswotKernel> {
    let dev = images.device();
    let n = images.dim(0)?;
    // A copy of plain tensors: no variables, so the forward records no graph.
    let ts: HashMap<String, Tensor> = model
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.detach()))
        .collect();
    let plain = Vit::load(&model.config, VarBuilder::from_tensors(ts, DType::F32, dev))?;
    let (_, hidden) = plain.forward_with_mlp_hidden(&images.to_dtype(DType::F32)?)?;
    // With s = 2c − 1 ∈ {±1}: c·cᵀ + (1 − c)(1 − c)ᵀ = (units + s·sᵀ) / 2,
    // exact in f64 (integers far below 2⁵³).
    let mut units = 0;
    let mut ssum = Tensor::zeros((n, n), DType::F64, dev)?;
    for h in hidden {
        let s = h
            .gt(0f32)?
            .to_dtype(DType::F64)?
            .affine(2.0, -1.0)?
            .reshape((n, ()))?;
        units += s.dim(1)?;
        ssum = (ssum + s.matmul(&s.t()?)?)?;
    }
    let k = ((ssum + units as f64)? * 0.5)?;
    Ok(NaswotKernel {
        n,
        units,
        k: k.flatten_all()?.to_vec1::<f64>()?,
    })
}

/// `(sign, log |det a|)` of the `n × n` row-major matrix `a`, by LU
/// decomposition with partial pivoting in f64, as numpy's `slogdet`:
/// `(0, −∞)` when a pivot is exactly zero.
///
/// # Panics
/// When `a.len() != n · n`.
pub fn slogdet(a: &[f64], n: usize) -> (f64, f64) {
    assert_eq!(a.len(), n * n, "slogdet of a {n} × {n} matrix");
    let mut m = a.to_vec();
    let (mut sign, mut logdet) = (1.0f64, 0.0f64);
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))
            .expect("c < n");
        let pivot = m[p * n + c];
        if pivot == 0.0 {
            return (0.0, f64::NEG_INFINITY);
        }
        if p != c {
            for k in 0..n {
                m.swap(p * n + k, c * n + k);
            }
            sign = -sign;
        }
        if pivot < 0.0 {
            sign = -sign;
        }
        logdet += pivot.abs().ln();
        for r in c + 1..n {
            let f = m[r * n + c] / pivot;
            if f != 0.0 {
                for k in c + 1..n {
                    m[r * n + k] -= f * m[c * n + k];
                }
            }
        }
    }
    (sign, logdet)
}

fn grad_norm(model: &Vit, images: &Tensor, labels: &Tensor) -> Result<f64> {
    let (net, params) = variables(model, DType::F32, |t| Ok(t.clone()))?;
    let logits = net.forward(&images.to_dtype(DType::F32)?)?;
    let loss = cross_entropy(&logits, labels, 0.0)?;
    let grads = loss.backward()?;
    let mut total = 0.0;
    for (name, var) in params.names.iter().zip(&params.vars) {
        let g = grads.get(var).ok_or_else(|| no_gradient(name))?;
        total += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?
            .sqrt();
    }
    Ok(total)
}

fn synflow(model: &Vit) -> Result<f64> {
    let (net, params) = variables(model, DType::F64, |t| t.abs())?;
    let c = &net.config;
    let ones = Tensor::ones(
        (1, c.num_channels, c.image_size, c.image_size),
        DType::F64,
        net.cls_token.device(),
    )?;
    let grads = crate::engine::ops::with_composite(|| -> Result<_> {
        Ok(net.forward(&ones)?.sum_all()?.backward()?)
    })?;
    let mut total = 0.0;
    for (name, var) in params.names.iter().zip(&params.vars) {
        let g = grads.get(var).ok_or_else(|| no_gradient(name))?;
        total += (var.as_tensor() * g)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(total)
}

/// A copy of `model` whose tensors are `f` of the originals, converted to
/// `dtype`, as fresh trainable variables (in name order in the `Params`).
fn variables(
    model: &Vit,
    dtype: DType,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<(Vit, Params)> {
    let dev = model.cls_token.device().clone();
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().expect("varmap poisoned");
        for (name, t) in model.tensors() {
            // `copy` makes a new tensor, never one of `model`'s variables.
            let t = f(&t.detach())?.to_dtype(dtype)?.contiguous()?.copy()?;
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    let net = Vit::load(&model.config, VarBuilder::from_varmap(&vm, dtype, &dev))?;
    Ok((net, Params::from_varmap(&vm)))
}

fn no_gradient(name: &str) -> Error {
    Error::Tensor {
        name: name.into(),
        message: "received no gradient (an op without backward on its path?)".into(),
    }
}

/// `images` `[N, C, H, W]` of the model's input size with `N ≥ 1`, and
/// `labels` `[N]` u32 below the model's class count.
fn check_batch(model: &Vit, images: &Tensor, labels: &Tensor) -> Result<()> {
    let c = &model.config;
    let want = [c.num_channels, c.image_size, c.image_size];
    let bad = |name: &str, message: String| Error::Tensor {
        name: name.into(),
        message,
    };
    match images.dims() {
        [n, rest @ ..] if *n >= 1 && rest == want => {}
        dims => {
            return Err(bad(
                "images",
                format!(
                    "expected [N ≥ 1, {}, {}, {}], found {dims:?}",
                    want[0], want[1], want[2]
                ),
            ))
        }
    }
    let n = images.dim(0)?;
    if labels.dims() != [n] || labels.dtype() != DType::U32 {
        return Err(bad(
            "labels",
            format!(
                "expected [{n}] u32, found {:?} {:?}",
                labels.dims(),
                labels.dtype()
            ),
        ));
    }
    if let Some(&y) = labels
        .to_vec1::<u32>()?
        .iter()
        .find(|&&y| y as usize >= c.num_labels)
    {
        return Err(bad(
            "labels",
            format!(
                "label {y} is not below the model's {} classes",
                c.num_labels
            ),
        ));
    }
    Ok(())
}
