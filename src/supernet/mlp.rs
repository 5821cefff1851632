//! Elastic MLP: `intermediate.dense` (embed → width), exact GELU,
//! `output.dense` (width → embed); a subnet uses the first `width` hidden units.

use super::linear::{elastic_linear, ElasticLinear};
use crate::engine::names::LayerNames;
use crate::engine::ops;
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticMlp {
    pub intermediate: ElasticLinear,
    pub output: ElasticLinear,
}

/// Named by the layer's `names` (`intermediate`, `output`); `vb` at the root.
pub fn elastic_mlp(
    max_embed: usize,
    max_width: usize,
    init: InitScheme,
    names: &LayerNames,
    vb: VarBuilder,
) -> Result<ElasticMlp> {
    Ok(ElasticMlp {
        intermediate: elastic_linear(max_embed, max_width, init, vb.pp(&names.intermediate))?,
        output: elastic_linear(max_width, max_embed, init, vb.pp(&names.output))?,
    })
}

impl ElasticMlp {
    pub fn forward(&self, x: &Tensor, embed: usize, width: usize) -> Result<Tensor> {
        let h = ops::gelu(&self.intermediate.forward(x, width, embed)?)?;
        self.output.forward(&h, embed, width)
    }
}
