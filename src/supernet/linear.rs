//! Elastic linear layer: a subnet uses the first `out` rows and first `in`
//! columns of the full `[out_max, in_max]` weight, and the first `out` bias
//! entries (weight entanglement). Narrowing is differentiable, so the full
//! weight receives a full-shape gradient that is zero outside the slice.

use crate::engine::ops;
use crate::models::layers::Linear;
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticLinear {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// The full `[out_max, in_max]` layer, initialised by `init` (when `vb`
/// creates variables) with fan-in `in_max`.
pub fn elastic_linear(
    in_max: usize,
    out_max: usize,
    init: InitScheme,
    vb: VarBuilder,
) -> Result<ElasticLinear> {
    let (w_init, b_init) = init.linear(in_max, out_max);
    let weight = vb.get_with_hints((out_max, in_max), "weight", w_init)?;
    let bias = vb.get_with_hints(out_max, "bias", b_init)?;
    Ok(ElasticLinear { weight, bias })
}

impl ElasticLinear {
    /// The `[out, in]` weight and `[out]` bias slices a subnet uses.
    pub fn slice(&self, out: usize, inp: usize) -> Result<(Tensor, Tensor)> {
        let (out_max, in_max) = self.weight.dims2()?;
        let w = if out == out_max && inp == in_max {
            self.weight.clone()
        } else {
            self.weight.narrow(0, 0, out)?.narrow(1, 0, inp)?
        };
        let b = if out == out_max {
            self.bias.clone()
        } else {
            self.bias.narrow(0, 0, out)?
        };
        Ok((w, b))
    }

    /// `x: [.., inp]` to `[.., out]`.
    pub fn forward(&self, x: &Tensor, out: usize, inp: usize) -> Result<Tensor> {
        let (w, b) = self.slice(out, inp)?;
        ops::linear(x, &w, Some(&b))
    }

    /// A standalone copy of the slice, detached from the supernet.
    pub fn extract(&self, out: usize, inp: usize) -> Result<Linear> {
        let (w, b) = self.slice(out, inp)?;
        Ok(Linear {
            weight: detached_copy(&w)?,
            bias: detached_copy(&b)?,
        })
    }
}

/// A contiguous copy with its own storage and no autograd history.
pub(crate) fn detached_copy(t: &Tensor) -> Result<Tensor> {
    t.detach().contiguous()?.copy()
}
