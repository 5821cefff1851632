//! The weight-sharing BERT supernet of a text space: elastic hidden size,
//! depth, per-layer heads and FFN width, Hugging Face
//! `BertForSequenceClassification` tensor names. As for the ViT supernet,
//! the architecture is an argument of [`BertSupernet::forward`] and
//! [`BertSupernet::extract`] returns a plain static [`Bert`] computing the
//! same logits.

use super::bert_layer::{elastic_bert_layer, ElasticBertLayer, LayerDims};
use super::head::{elastic_head, ElasticHead};
use super::linear::{elastic_linear, ElasticLinear};
use super::text_embeddings::{elastic_text_embeddings, ElasticTextEmbeddings};
use crate::engine::names::Family;
use crate::error::{Error, Result};
use crate::models::bert::{mean_pool, Bert, BertConfig};
use crate::space::{Arch, Modality, Pooling, Space, TextInput};
use crate::supernet::init::InitScheme;
use candle_core::{DType, IndexOp, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct BertSupernet {
    pub space: Space,
    pub embeddings: ElasticTextEmbeddings,
    pub layers: Vec<ElasticBertLayer>,
    /// BERT's pooler (`bert.pooler.dense`), for spaces with `pooling = "pooler"`.
    pub pooler: Option<ElasticLinear>,
    pub classifier: ElasticHead,
}

/// Token ids and attention mask of a batch, `[B, T]` u32 each (mask 1 for a
/// token, 0 for padding).
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    pub ids: &'a Tensor,
    pub mask: &'a Tensor,
}

impl BertSupernet {
    /// Builds (or loads, depending on `vb`'s backend) the supernet of a
    /// text space; new variables start from `init` (embeddings from
    /// N(0, 0.02), as BERT's).
    pub fn with_init(space: &Space, init: InitScheme, vb: VarBuilder) -> Result<Self> {
        let t = text_of(space)?;
        let s = &space.supernet;
        let fam = Family::Bert;
        let stem = fam.stem();
        let embeddings = elastic_text_embeddings(
            (t.vocab_size, t.max_position_embeddings, t.type_vocab_size),
            s.embed_dim,
            s.layer_norm_eps,
            init,
            &stem,
            vb.clone(),
        )?;
        let dims = (
            s.embed_dim,
            s.num_heads,
            s.head_dim,
            space.supernet_mlp_width(),
        );
        let layers = (0..s.depth)
            .map(|l| elastic_bert_layer(dims, s.layer_norm_eps, init, &fam.layer(l), vb.clone()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooler = match t.pooling {
            Pooling::Pooler => Some(elastic_linear(
                s.embed_dim,
                s.embed_dim,
                init,
                vb.pp(&stem.pooler),
            )?),
            Pooling::Mean => None,
        };
        Ok(Self {
            space: space.clone(),
            embeddings,
            layers,
            pooler,
            classifier: elastic_head(s.embed_dim, t.num_classes, init, vb.pp(&stem.classifier))?,
        })
    }

    fn text(&self) -> &TextInput {
        self.space.text_input()
    }

    /// The supernet layer that layer `l` of `arch` runs (the space's
    /// `supernet.depth_layers`).
    pub fn block(&self, arch: &Arch, l: usize) -> usize {
        let s = &self.space.supernet;
        s.depth_layers.layer(l, arch.depth, self.layers.len())
    }

    /// Checks `[B, T]` ids and mask of the same shape, T within the
    /// position table, ids within the vocabulary.
    pub fn check_input(&self, x: Tokens) -> Result<(usize, usize)> {
        let bad = |name: &str, message: String| Error::Tensor {
            name: name.into(),
            message,
        };
        let (b, t) = x.ids.dims2().map_err(|_| {
            bad(
                "input_ids",
                format!("expected [batch, tokens], found {:?}", x.ids.dims()),
            )
        })?;
        if x.mask.dims() != x.ids.dims() {
            return Err(bad(
                "attention_mask",
                format!(
                    "shape {:?} differs from input_ids {:?}",
                    x.mask.dims(),
                    x.ids.dims()
                ),
            ));
        }
        let tx = self.text();
        if t == 0 || t > tx.max_position_embeddings {
            return Err(bad(
                "input_ids",
                format!(
                    "{t} tokens: outside 1..={} (text.max_position_embeddings)",
                    tx.max_position_embeddings
                ),
            ));
        }
        let max_id = x.ids.max_all()?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
        if max_id as usize >= tx.vocab_size {
            return Err(bad(
                "input_ids",
                format!(
                    "token id {max_id} is outside the vocabulary of {}",
                    tx.vocab_size
                ),
            ));
        }
        Ok((b, t))
    }

    fn layer_dims(&self, arch: &Arch, l: usize, (batch, tokens): (usize, usize)) -> LayerDims {
        LayerDims {
            batch,
            tokens,
            hidden: arch.embed_dim,
            heads: arch.num_heads[l],
            mlp: arch.mlp_width(l),
        }
    }

    /// Logits `[B, classes]` of the subnet `arch`. `train` switches
    /// training-only behaviour (none: no dropout).
    pub fn forward(&self, x: Tokens, arch: &Arch, train: bool) -> Result<Tensor> {
        let _ = train;
        self.forward_masked(x, arch, None)
    }

    /// [`BertSupernet::forward`] with a head mask per layer (`[heads_l]`
    /// each, multiplying the heads' contexts), for head importance.
    pub fn forward_masked(
        &self,
        x: Tokens,
        arch: &Arch,
        head_masks: Option<&[Tensor]>,
    ) -> Result<Tensor> {
        arch.check_fits(&self.space)?;
        let (b, t) = self.check_input(x)?;
        let e = arch.embed_dim;
        let mut h = self.embeddings.forward(x.ids, e)?;
        let mask = additive_mask(x.mask)?;
        for l in 0..arch.depth {
            let d = self.layer_dims(arch, l, (b, t));
            let layer = &self.layers[self.block(arch, l)];
            h = layer.forward(&h, &mask, d, head_masks.map(|m| &m[l]))?;
        }
        let pooled = match &self.pooler {
            Some(p) => p
                .forward(&h.reshape((b, t, e))?.i((.., 0))?.contiguous()?, e, e)?
                .tanh()?,
            None => mean_pool(&h.reshape((b, t, e))?, x.mask)?,
        };
        Ok(self.classifier.forward(&pooled, e)?)
    }

    /// The static model's configuration for `arch`.
    pub fn bert_config(&self, arch: &Arch) -> BertConfig {
        let t = self.text();
        BertConfig {
            vocab_size: t.vocab_size,
            hidden_size: arch.embed_dim,
            head_dim: self.space.supernet.head_dim,
            num_heads: arch.num_heads.clone(),
            intermediate_sizes: (0..arch.depth).map(|l| arch.mlp_width(l)).collect(),
            max_position_embeddings: t.max_position_embeddings,
            type_vocab_size: t.type_vocab_size,
            layer_norm_eps: self.space.supernet.layer_norm_eps,
            num_labels: Some(t.num_classes),
            pooling: t.pooling,
        }
    }

    /// The subnet `arch` as a standalone static BERT: contiguous copies of
    /// the slices it uses, no link back to the supernet.
    pub fn extract(&self, arch: &Arch) -> Result<Bert> {
        arch.check_fits(&self.space)?;
        let e = arch.embed_dim;
        let (word, position, token_type, norm) = self.embeddings.extract(e)?;
        let layers = (0..arch.depth)
            .map(|l| self.layers[self.block(arch, l)].extract(self.layer_dims(arch, l, (0, 0))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Bert {
            config: self.bert_config(arch),
            word_embeddings: word,
            position_embeddings: position,
            token_type_embeddings: token_type,
            embeddings_layer_norm: norm,
            layers,
            pooler: match &self.pooler {
                Some(p) => Some(p.extract(e, e)?),
                None => None,
            },
            classifier: Some(self.classifier.extract(e)?),
        })
    }
}

/// transformers' additive key mask: `(1 − mask) · f32::MIN`, `[B, 1, 1, T]`.
pub fn additive_mask(mask: &Tensor) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    Ok(((1.0 - mask.to_dtype(DType::F32)?)? * f32::MIN as f64)?.reshape((b, 1, 1, t))?)
}

fn text_of(space: &Space) -> Result<&TextInput> {
    match space.modality() {
        Modality::Text(t) => Ok(t),
        Modality::Image(_) => Err(Error::InvalidSpace {
            file: space.name.clone(),
            field: "text".into(),
            message: "a BERT supernet needs a text space ([text]); this one reads images".into(),
        }),
    }
}
