//! One elastic post-norm BERT layer (Hugging Face `BertLayer` names):
//! `x = norm1(x + attention(x, mask))`, then `x = norm2(x + mlp(x))`. A
//! subnet with hidden `e`, `h` heads and FFN width `m` uses the leading
//! slices: q/k/v rows `[:h · head_dim]`, FFN rows `[:m]`, every input
//! column and norm entry `[:e]`.

use super::layer_norm::{elastic_layer_norm, ElasticLayerNorm};
use super::linear::{elastic_linear, ElasticLinear};
use crate::engine::names::LayerNames;
use crate::engine::ops;
use crate::models::bert::{masked_attention, BertLayer};
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticBertLayer {
    pub query: ElasticLinear,
    pub key: ElasticLinear,
    pub value: ElasticLinear,
    pub attention_output: ElasticLinear,
    pub norm1: ElasticLayerNorm,
    pub intermediate: ElasticLinear,
    pub output: ElasticLinear,
    pub norm2: ElasticLayerNorm,
    pub head_dim: usize,
}

/// Shapes of one layer of a sampled text architecture.
#[derive(Debug, Clone, Copy)]
pub struct LayerDims {
    /// Sequences and tokens per sequence of the batch.
    pub batch: usize,
    pub tokens: usize,
    pub hidden: usize,
    pub heads: usize,
    pub mlp: usize,
}

/// The layer at its largest shapes, named by `names` (`vb` at the root).
pub fn elastic_bert_layer(
    (max_hidden, max_heads, head_dim, max_mlp): (usize, usize, usize, usize),
    eps: f64,
    init: InitScheme,
    names: &LayerNames,
    vb: VarBuilder,
) -> Result<ElasticBertLayer> {
    let q = max_heads * head_dim;
    let lin = |i: usize, o: usize, name: &str| elastic_linear(i, o, init, vb.pp(name));
    Ok(ElasticBertLayer {
        query: lin(max_hidden, q, &names.query)?,
        key: lin(max_hidden, q, &names.key)?,
        value: lin(max_hidden, q, &names.value)?,
        attention_output: lin(q, max_hidden, &names.attention_output)?,
        norm1: elastic_layer_norm(max_hidden, eps, vb.pp(&names.norm1))?,
        intermediate: lin(max_hidden, max_mlp, &names.intermediate)?,
        output: lin(max_mlp, max_hidden, &names.output)?,
        norm2: elastic_layer_norm(max_hidden, eps, vb.pp(&names.norm2))?,
        head_dim,
    })
}

impl ElasticBertLayer {
    /// `x: [B · T, hidden]` to the same shape; `mask` is the additive key
    /// mask `[B, 1, 1, T]`. `head_mask`, when given, multiplies each head's
    /// context (`[heads]`, all ones for the plain forward): the gradient
    /// with respect to it is a head's importance (DynaBERT).
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        d: LayerDims,
        head_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (e, qd) = (d.hidden, d.heads * self.head_dim);
        let mut ctx = masked_attention(
            &self.query.forward(x, qd, e)?,
            &self.key.forward(x, qd, e)?,
            &self.value.forward(x, qd, e)?,
            mask,
            (d.batch, d.tokens),
            d.heads,
            self.head_dim,
        )?;
        if let Some(m) = head_mask {
            let rows = ctx.dim(0)?;
            ctx = ctx
                .reshape((rows, d.heads, self.head_dim))?
                .broadcast_mul(&m.reshape((1, d.heads, 1))?)?
                .reshape((rows, qd))?;
        }
        let a = self.attention_output.forward(&ctx, e, qd)?;
        let x = self.norm1.forward(&(a + x)?, e)?;
        let h = ops::gelu(&self.intermediate.forward(&x, d.mlp, e)?)?;
        let m = self.output.forward(&h, e, d.mlp)?;
        self.norm2.forward(&(m + x)?, e)
    }

    /// The layer as a static BERT layer (contiguous copies of the slices).
    pub fn extract(&self, d: LayerDims) -> Result<BertLayer> {
        let (e, qd) = (d.hidden, d.heads * self.head_dim);
        Ok(BertLayer {
            query: self.query.extract(qd, e)?,
            key: self.key.extract(qd, e)?,
            value: self.value.extract(qd, e)?,
            attention_output: self.attention_output.extract(e, qd)?,
            attention_layer_norm: self.norm1.extract(e)?,
            intermediate: self.intermediate.extract(d.mlp, e)?,
            output: self.output.extract(e, d.mlp)?,
            output_layer_norm: self.norm2.extract(e)?,
            num_heads: d.heads,
            head_dim: self.head_dim,
        })
    }
}
