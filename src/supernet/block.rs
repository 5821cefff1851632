//! One elastic pre-norm transformer layer (HF `ViTLayer` names):
//! `x + attn(ln_before(x))`, then `x + mlp(ln_after(x))`.

use super::attention::{elastic_attention, ElasticAttention};
use super::layer_norm::{elastic_layer_norm, ElasticLayerNorm};
use super::mlp::{elastic_mlp, ElasticMlp};
use crate::init::InitScheme;
use crate::models::vit::VitLayer;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticBlock {
    pub layernorm_before: ElasticLayerNorm,
    pub attention: ElasticAttention,
    pub layernorm_after: ElasticLayerNorm,
    pub mlp: ElasticMlp,
}

/// Shapes of one layer of a sampled architecture.
#[derive(Debug, Clone, Copy)]
pub struct BlockDims {
    /// Sequences in the batch (token activations are `[batch · T, embed]`).
    pub batch: usize,
    pub embed: usize,
    pub heads: usize,
    pub mlp_width: usize,
}

pub fn elastic_block(
    max_embed: usize,
    max_heads: usize,
    head_dim: usize,
    max_mlp: usize,
    eps: f64,
    init: InitScheme,
    vb: VarBuilder,
) -> Result<ElasticBlock> {
    Ok(ElasticBlock {
        layernorm_before: elastic_layer_norm(max_embed, eps, vb.pp("layernorm_before"))?,
        attention: elastic_attention(max_embed, max_heads, head_dim, init, vb.pp("attention"))?,
        layernorm_after: elastic_layer_norm(max_embed, eps, vb.pp("layernorm_after"))?,
        mlp: elastic_mlp(max_embed, max_mlp, init, vb.clone())?,
    })
}

impl ElasticBlock {
    pub fn forward(&self, x: &Tensor, d: BlockDims) -> Result<Tensor> {
        let h = self.layernorm_before.forward(x, d.embed)?;
        let x = (x + self.attention.forward(&h, d.batch, d.embed, d.heads)?)?;
        let h = self.layernorm_after.forward(&x, d.embed)?;
        x + self.mlp.forward(&h, d.embed, d.mlp_width)?
    }

    pub fn extract(&self, d: BlockDims) -> Result<VitLayer> {
        let a = &self.attention;
        let qd = d.heads * a.head_dim;
        Ok(VitLayer {
            layernorm_before: self.layernorm_before.extract(d.embed)?,
            query: a.query.extract(qd, d.embed)?,
            key: a.key.extract(qd, d.embed)?,
            value: a.value.extract(qd, d.embed)?,
            attention_output: a.output.extract(d.embed, qd)?,
            layernorm_after: self.layernorm_after.extract(d.embed)?,
            intermediate: self.mlp.intermediate.extract(d.mlp_width, d.embed)?,
            output: self.mlp.output.extract(d.embed, d.mlp_width)?,
            num_heads: d.heads,
            head_dim: a.head_dim,
        })
    }
}
