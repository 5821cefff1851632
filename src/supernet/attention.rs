//! Elastic multi-head self-attention with separate query/key/value
//! projections. A subnet with `h` heads uses the first `h · head_dim` rows of
//! q/k/v (and their biases) and the same columns of the output projection;
//! the head dimension is fixed, so head `i` is the same weights in every
//! subnet (no interleaved-qkv slicing quirk).

use super::linear::{elastic_linear, ElasticLinear};
use crate::engine::names::LayerNames;
use crate::engine::ops;
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticAttention {
    pub query: ElasticLinear,
    pub key: ElasticLinear,
    pub value: ElasticLinear,
    pub output: ElasticLinear,
    pub head_dim: usize,
}

/// Named by the layer's `names` (query, key, value, attention output);
/// `vb` at the root.
pub fn elastic_attention(
    max_embed: usize,
    max_heads: usize,
    head_dim: usize,
    init: InitScheme,
    names: &LayerNames,
    vb: VarBuilder,
) -> Result<ElasticAttention> {
    let q = max_heads * head_dim;
    Ok(ElasticAttention {
        query: elastic_linear(max_embed, q, init, vb.pp(&names.query))?,
        key: elastic_linear(max_embed, q, init, vb.pp(&names.key))?,
        value: elastic_linear(max_embed, q, init, vb.pp(&names.value))?,
        output: elastic_linear(q, max_embed, init, vb.pp(&names.attention_output))?,
        head_dim,
    })
}

impl ElasticAttention {
    /// `x: [batch · T, embed]` to `[batch · T, embed]` with `heads` heads.
    pub fn forward(&self, x: &Tensor, batch: usize, embed: usize, heads: usize) -> Result<Tensor> {
        let qd = heads * self.head_dim;
        let ctx = ops::attention(
            &self.query.forward(x, qd, embed)?,
            &self.key.forward(x, qd, embed)?,
            &self.value.forward(x, qd, embed)?,
            batch,
            heads,
            self.head_dim,
        )?;
        self.output.forward(&ctx, embed, qd)
    }
}
