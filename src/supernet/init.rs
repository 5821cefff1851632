//! Seeded parameter initialisation. candle's CPU device draws random
//! initial values from an unseeded thread RNG; this backend draws them from an
//! explicit seed instead, so the same seed builds the same supernet.
//!
//! [`InitScheme`] says which distribution each kind of tensor starts from;
//! the elastic layers ask it for their hints (the scheme is an argument of
//! the supernet's constructor, chosen by the recipe's `init`).

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder, VarMap};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// How a freshly built supernet's parameters are initialised (recipe field
/// `init`). Layer norms always start at weight 1, bias 0, and the patch
/// projection always at PyTorch's convolution default U(±1/√fan_in) (timm
/// keeps it too). `fan_in` is the supernet's largest input width: every
/// subnet inherits a slice of the same tensor.
///
/// The default was chosen by measurement
/// (`evaluate/studies/2026-11-29-parity-and-init.md`): on short schedules
/// of small ViTs, `torch_default` learns markedly faster than
/// `trunc_normal_0.02`, which is tuned for ImageNet-scale schedules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitScheme {
    /// PyTorch's `nn.Linear` default: weight and bias U(±1/√fan_in); class
    /// token zero, position embeddings N(0, 0.02) (truncated at ±2σ), as the
    /// plain PyTorch supernet (`torch_reference.py`) does.
    #[default]
    #[serde(rename = "torch_default")]
    TorchDefault,
    /// timm / Hugging Face ViT: linear weights N(0, 0.02) truncated at ±2σ,
    /// zero biases; class token and position embeddings N(0, 0.02).
    #[serde(rename = "trunc_normal_0.02")]
    TruncNormal002,
    /// Xavier/Glorot uniform linear weights U(±√(6 / (fan_in + fan_out))),
    /// zero biases (MAE, BEiT); class token and position embeddings
    /// N(0, 0.02).
    #[serde(rename = "xavier_uniform")]
    XavierUniform,
}

impl InitScheme {
    /// Every scheme, by its recipe name.
    pub const ALL: [InitScheme; 3] = [
        InitScheme::TorchDefault,
        InitScheme::TruncNormal002,
        InitScheme::XavierUniform,
    ];

    /// The name a recipe uses (`torch_default`, ...).
    pub fn name(self) -> &'static str {
        match self {
            InitScheme::TorchDefault => "torch_default",
            InitScheme::TruncNormal002 => "trunc_normal_0.02",
            InitScheme::XavierUniform => "xavier_uniform",
        }
    }

    /// `(weight, bias)` hints of a `[fan_out, fan_in]` linear layer.
    pub fn linear(self, fan_in: usize, fan_out: usize) -> (Init, Init) {
        match self {
            InitScheme::TorchDefault => {
                let u = uniform(1.0 / (fan_in.max(1) as f64).sqrt());
                (u, u)
            }
            InitScheme::TruncNormal002 => (normal_002(), Init::Const(0.0)),
            InitScheme::XavierUniform => (
                uniform((6.0 / (fan_in + fan_out).max(1) as f64).sqrt()),
                Init::Const(0.0),
            ),
        }
    }

    /// `(weight, bias)` hints of the patch projection (a convolution).
    pub fn patch_projection(self, fan_in: usize) -> (Init, Init) {
        let u = uniform(1.0 / (fan_in.max(1) as f64).sqrt());
        (u, u)
    }

    /// The class token's hint.
    pub fn cls_token(self) -> Init {
        match self {
            InitScheme::TorchDefault => Init::Const(0.0),
            _ => normal_002(),
        }
    }

    /// The position embeddings' hint.
    pub fn position_embeddings(self) -> Init {
        normal_002()
    }
}

impl std::fmt::Display for InitScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for InitScheme {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        InitScheme::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = InitScheme::ALL.iter().map(|i| i.name()).collect();
                format!("unknown init `{s}`; expected one of {}", names.join(", "))
            })
    }
}

fn uniform(bound: f64) -> Init {
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// N(0, 0.02); the seeded backend truncates every normal at ±2σ.
fn normal_002() -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    }
}

struct SeededVarMap {
    varmap: VarMap,
    rng: Mutex<StdRng>,
}

/// Normal(mean, std) truncated to ±2 std (timm's `trunc_normal_` in units of std).
fn trunc_normal(rng: &mut StdRng, mean: f64, std: f64) -> f32 {
    loop {
        let z: f64 = StandardNormal.sample(rng);
        if z.abs() <= 2.0 {
            return (mean + std * z) as f32;
        }
    }
}

impl SeededVarMap {
    fn init(
        &self,
        shape: &Shape,
        h: Init,
        dtype: DType,
        dev: &Device,
        name: &str,
    ) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().expect("init rng poisoned");
        let values: Vec<f32> = match h {
            Init::Const(c) => return Tensor::full(c as f32, shape, dev)?.to_dtype(dtype),
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| trunc_normal(&mut rng, mean, stdev))
                .collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            Init::Kaiming { .. } => {
                candle_core::bail!("{name}: Kaiming initialisation is not seeded by vitnas")
            }
        };
        Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap poisoned");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "{name}: shape mismatch, expected {s:?}, found {:?}",
                    v.shape()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let var = Var::from_tensor(&self.init(&s, h, dtype, dev, name)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.varmap.data().lock().expect("varmap poisoned");
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("{name}: no such variable"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap poisoned")
            .contains_key(name)
    }
}

/// A VarBuilder that creates trainable variables in `varmap`, initialised
/// from `seed` in construction order (the same model code and seed give the
/// same values).
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = SeededVarMap {
        varmap: varmap.clone(),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}
