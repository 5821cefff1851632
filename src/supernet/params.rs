//! A model's trainable variables in a stable order: what the optimizer,
//! checkpoints and [`super::rewire`] address by name.

use crate::error::Result;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

/// The supernet's trainable variables, sorted by name (a stable order for
/// the optimizer state and checkpoints).
#[derive(Debug, Clone)]
pub struct Params {
    pub names: Vec<String>,
    pub vars: Vec<Var>,
}

impl Params {
    pub fn from_varmap(vm: &VarMap) -> Self {
        let data = vm.data().lock().expect("varmap poisoned");
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, vars) = named.into_iter().unzip();
        Params { names, vars }
    }

    pub fn sizes(&self) -> Vec<usize> {
        self.vars.iter().map(|v| v.elem_count()).collect()
    }

    pub fn zero_grads(&self) -> Vec<Vec<f32>> {
        self.sizes().into_iter().map(|n| vec![0.0; n]).collect()
    }

    /// Sets every variable from flat buffers in the same order (after
    /// optimizer steps on the engine's copy, before candle reads them).
    pub fn store(&self, data: &[Vec<f32>]) -> Result<()> {
        for (var, d) in self.vars.iter().zip(data) {
            var.set(&Tensor::from_slice(d, var.shape(), var.device())?)?;
        }
        Ok(())
    }

    /// `(name, tensor)` pairs of the current values.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .cloned()
            .zip(self.vars.iter().map(|v| v.as_tensor().clone()))
            .collect()
    }
}
