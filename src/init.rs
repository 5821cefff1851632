//! Seeded parameter initialisation. candle's CPU device draws random
//! initial values from an unseeded thread RNG; this backend draws them from an
//! explicit seed instead, so the same seed builds the same supernet.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder, VarMap};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::sync::Mutex;

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
