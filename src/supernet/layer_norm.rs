//! Elastic layer norm: normalises over the first `dim` channels with the
//! first `dim` entries of gamma and beta.

use super::linear::detached_copy;
use crate::engine::ops;
use crate::models::layers::LayerNorm;
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct ElasticLayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

pub fn elastic_layer_norm(max_dim: usize, eps: f64, vb: VarBuilder) -> Result<ElasticLayerNorm> {
    Ok(ElasticLayerNorm {
        weight: vb.get_with_hints(max_dim, "weight", Init::Const(1.0))?,
        bias: vb.get_with_hints(max_dim, "bias", Init::Const(0.0))?,
        eps,
    })
}

impl ElasticLayerNorm {
    fn slice(&self, dim: usize) -> Result<(Tensor, Tensor)> {
        if dim == self.weight.dim(0)? {
            return Ok((self.weight.clone(), self.bias.clone()));
        }
        Ok((self.weight.narrow(0, 0, dim)?, self.bias.narrow(0, 0, dim)?))
    }

    /// `x: [.., dim]`, normalised over its last dimension.
    pub fn forward(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let (g, b) = self.slice(dim)?;
        ops::layer_norm(x, &g, &b, self.eps)
    }

    pub fn extract(&self, dim: usize) -> Result<LayerNorm> {
        let (g, b) = self.slice(dim)?;
        Ok(LayerNorm {
            weight: detached_copy(&g)?,
            bias: detached_copy(&b)?,
            eps: self.eps,
        })
    }
}
