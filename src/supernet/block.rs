//! One elastic pre-norm transformer layer (HF `ViTLayer` names):
//! `x + attn(ln_before(x))`, then `x + mlp(ln_after(x))`; with scaling
//! layers each branch output is multiplied by its row of the block's
//! tables first ([`super::scaling`]).

use super::attention::{elastic_attention, ElasticAttention};
use super::layer_norm::{elastic_layer_norm, ElasticLayerNorm};
use super::mlp::{elastic_mlp, ElasticMlp};
use super::scaling::{fold, ElasticScaling};
use crate::engine::names::LayerNames;
use crate::models::vit::VitLayer;
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticBlock {
    pub layernorm_before: ElasticLayerNorm,
    pub attention: ElasticAttention,
    pub layernorm_after: ElasticLayerNorm,
    pub mlp: ElasticMlp,
    /// Switchable scaling tables (`scaling.attention`, `scaling.mlp`),
    /// when the supernet has them.
    pub scaling: Option<ElasticScaling>,
}

/// Shapes of one layer of a sampled architecture.
#[derive(Debug, Clone, Copy)]
pub struct BlockDims {
    /// Sequences in the batch (token activations are `[batch · T, embed]`).
    pub batch: usize,
    pub embed: usize,
    pub heads: usize,
    pub mlp_width: usize,
    /// The row of the scaling tables this layer uses (required when the
    /// block has tables, ignored otherwise).
    pub scale_row: Option<usize>,
}

/// The block without scaling tables (the supernet adds them when it has
/// scaling layers, under the block's `scaling` prefix), named by `names`;
/// `vb` at the root.
#[allow(clippy::too_many_arguments)]
pub fn elastic_block(
    max_embed: usize,
    max_heads: usize,
    head_dim: usize,
    max_mlp: usize,
    eps: f64,
    init: InitScheme,
    names: &LayerNames,
    vb: VarBuilder,
) -> Result<ElasticBlock> {
    Ok(ElasticBlock {
        layernorm_before: elastic_layer_norm(max_embed, eps, vb.pp(&names.norm1))?,
        attention: elastic_attention(max_embed, max_heads, head_dim, init, names, vb.clone())?,
        layernorm_after: elastic_layer_norm(max_embed, eps, vb.pp(&names.norm2))?,
        mlp: elastic_mlp(max_embed, max_mlp, init, names, vb)?,
        scaling: None,
    })
}

impl ElasticBlock {
    /// The block's tables and the row `d` selects, when it has tables.
    fn scaling(&self, d: BlockDims) -> Result<Option<(&ElasticScaling, usize)>> {
        match (&self.scaling, d.scale_row) {
            (None, _) => Ok(None),
            (Some(s), Some(row)) => Ok(Some((s, row))),
            (Some(_), None) => candle_core::bail!("a block with scaling tables needs a table row"),
        }
    }

    pub fn forward(&self, x: &Tensor, d: BlockDims) -> Result<Tensor> {
        let scaling = self.scaling(d)?;
        let h = self.layernorm_before.forward(x, d.embed)?;
        let mut a = self.attention.forward(&h, d.batch, d.embed, d.heads)?;
        if let Some((s, row)) = scaling {
            a = s.scale_attention(&a, row, d.embed)?;
        }
        let x = (x + a)?;
        let h = self.layernorm_after.forward(&x, d.embed)?;
        let mut m = self.mlp.forward(&h, d.embed, d.mlp_width)?;
        if let Some((s, row)) = scaling {
            m = s.scale_mlp(&m, row, d.embed)?;
        }
        x + m
    }

    /// The layer as a static ViT layer; the selected scales are folded
    /// into the attention output projection and fc2.
    pub fn extract(&self, d: BlockDims) -> Result<VitLayer> {
        let a = &self.attention;
        let qd = d.heads * a.head_dim;
        let mut attention_output = a.output.extract(d.embed, qd)?;
        let mut output = self.mlp.output.extract(d.embed, d.mlp_width)?;
        if let Some((s, row)) = self.scaling(d)? {
            let (sa, sm) = s.extract(row, d.embed)?;
            attention_output = fold(attention_output, &sa)?;
            output = fold(output, &sm)?;
        }
        Ok(VitLayer {
            layernorm_before: self.layernorm_before.extract(d.embed)?,
            query: a.query.extract(qd, d.embed)?,
            key: a.key.extract(qd, d.embed)?,
            value: a.value.extract(qd, d.embed)?,
            attention_output,
            layernorm_after: self.layernorm_after.extract(d.embed)?,
            intermediate: self.mlp.intermediate.extract(d.mlp_width, d.embed)?,
            output,
            num_heads: d.heads,
            head_dim: a.head_dim,
        })
    }
}
