//! Elastic classifier head: all classes, the first `embed` input columns.

use super::linear::{elastic_linear, ElasticLinear};
use crate::models::layers::Linear;
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticHead {
    pub linear: ElasticLinear,
    pub num_classes: usize,
}

/// `vb` is `classifier`.
pub fn elastic_head(
    max_embed: usize,
    num_classes: usize,
    init: InitScheme,
    vb: VarBuilder,
) -> Result<ElasticHead> {
    Ok(ElasticHead {
        linear: elastic_linear(max_embed, num_classes, init, vb)?,
        num_classes,
    })
}

impl ElasticHead {
    /// Pooled features `[B, embed]` to logits `[B, classes]`.
    pub fn forward(&self, x: &Tensor, embed: usize) -> Result<Tensor> {
        self.linear.forward(x, self.num_classes, embed)
    }

    pub fn extract(&self, embed: usize) -> Result<Linear> {
        self.linear.extract(self.num_classes, embed)
    }
}
