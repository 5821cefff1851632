//! A static BERT encoder (post-layer-norm, absolute positions) with the
//! Hugging Face tensor layout: `bert.`-prefixed (`BertForSequenceClassification`,
//! `BertModel` saved by transformers) or bare names (sentence-transformers'
//! all-MiniLM-L6-v2). Computed with the same [`crate::engine::ops`] kernels as the
//! ViT; the attention takes the padding mask.

use super::layers::{LayerNorm, Linear};
use crate::engine::ops;
use crate::engine::{self, names::Family};
use crate::error::{Error, Result};
use crate::io::read_weights;
use crate::space::Arch;
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// Shapes of a static BERT. Per-layer lists, like [`super::vit::VitConfig`],
/// leave room for elastic subnets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub head_dim: usize,
    pub num_heads: Vec<usize>,
    pub intermediate_sizes: Vec<usize>,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    /// Classification labels (`BertForSequenceClassification`), if any.
    pub num_labels: Option<usize>,
    /// What the classifier reads: BERT's pooler on `[CLS]` (Hugging Face's
    /// layout) or the masked mean of the token states (vitnas subnets of a
    /// mean-pooling space).
    #[serde(default)]
    pub pooling: crate::space::Pooling,
}

/// The fields vitnas reads from a Hugging Face BERT `config.json`.
#[derive(Debug, Clone, Deserialize)]
struct HfBertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
}

fn two() -> usize {
    2
}

fn bert_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// The architecture this config describes (FFN widths as widths).
    pub fn arch(&self) -> Arch {
        Arch::with_dims(
            self.hidden_size,
            self.num_heads.len(),
            self.num_heads.clone(),
            self.intermediate_sizes.clone(),
        )
    }

    /// Reads a Hugging Face BERT config.json; unsupported variants (another
    /// activation, relative positions) and values no model can have (zero
    /// sizes, heads that do not divide the hidden size) are refused naming
    /// the file and the field.
    pub fn from_hf_config_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            Family::Bert.check_config(path, &v)?;
        }
        let c: HfBertConfig = serde_json::from_str(&text).map_err(|error| Error::Json {
            path: path.into(),
            error,
        })?;
        let bad = |field: &str, message: String| Error::InvalidConfig {
            file: path.display().to_string(),
            field: field.into(),
            message,
        };
        if let Some(act) = c.hidden_act.as_deref() {
            if act != "gelu" {
                return Err(bad(
                    "hidden_act",
                    format!("`{act}` is not supported (exact GELU, \"gelu\", is)"),
                ));
            }
        }
        if let Some(p) = c.position_embedding_type.as_deref() {
            if p != "absolute" {
                return Err(bad(
                    "position_embedding_type",
                    format!("`{p}` is not supported (\"absolute\" is)"),
                ));
            }
        }
        for (field, v) in [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("max_position_embeddings", c.max_position_embeddings),
            ("type_vocab_size", c.type_vocab_size),
        ] {
            if v == 0 {
                return Err(bad(field, "must be positive, is 0".into()));
            }
        }
        if !(c.layer_norm_eps.is_finite() && c.layer_norm_eps >= 0.0) {
            return Err(bad(
                "layer_norm_eps",
                format!("{} is not a non-negative number", c.layer_norm_eps),
            ));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    c.num_attention_heads, c.hidden_size
                ),
            ));
        }
        let classifier = c
            .architectures
            .iter()
            .flatten()
            .any(|a| a.ends_with("ForSequenceClassification"));
        let num_labels = match classifier {
            true => Some(
                c.num_labels
                    .or(c.id2label.as_ref().map(|m| m.len()))
                    .unwrap_or(2),
            ),
            false => None,
        };
        if num_labels == Some(0) {
            return Err(bad(
                "num_labels",
                "a sequence classifier needs at least 1 label, has 0".into(),
            ));
        }
        // Limits that refuse, before anything is allocated, models that no
        // machine could hold.
        for (field, v, max) in [
            (
                "num_hidden_layers",
                c.num_hidden_layers,
                crate::models::vit::MAX_LAYERS,
            ),
            ("vocab_size", c.vocab_size, 1 << 24),
            ("hidden_size", c.hidden_size, 1 << 16),
            ("intermediate_size", c.intermediate_size, 1 << 22),
            (
                "max_position_embeddings",
                c.max_position_embeddings,
                1 << 20,
            ),
            ("type_vocab_size", c.type_vocab_size, 1 << 16),
            ("num_labels", num_labels.unwrap_or(0), 1 << 20),
        ] {
            if v > max {
                return Err(bad(field, format!("{v} exceeds the limit {max}")));
            }
        }
        let (e, n) = (c.hidden_size as f64, c.num_hidden_layers);
        let params = n as f64 * (4.0 * e * e + 2.0 * e * c.intermediate_size as f64)
            + e * (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) as f64;
        if params * 4.0 > (1u64 << 36) as f64 {
            return Err(bad(
                "num_hidden_layers",
                format!("{params:.3e} parameters exceed the 64 GiB limit"),
            ));
        }
        Ok(Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            head_dim: c.hidden_size / c.num_attention_heads,
            num_heads: vec![c.num_attention_heads; n],
            intermediate_sizes: vec![c.intermediate_size; n],
            max_position_embeddings: c.max_position_embeddings,
            type_vocab_size: c.type_vocab_size,
            layer_norm_eps: c.layer_norm_eps,
            num_labels,
            pooling: crate::space::Pooling::Pooler,
        })
    }
}

#[derive(Debug, Clone)]
pub struct BertLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attention_output: Linear,
    pub attention_layer_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_layer_norm: LayerNorm,
    pub num_heads: usize,
    pub head_dim: usize,
}

/// Multi-head attention over `[B·T, H·D]` projections with an additive key
/// mask `[B, 1, 1, T]` (0 for tokens, a large negative for padding), as
/// transformers' BERT computes it.
pub(crate) fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    (b, t): (usize, usize),
    heads: usize,
    d: usize,
) -> candle_core::Result<Tensor> {
    let split = |x: &Tensor| x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let p = ops::softmax_last_scaled(&scores.broadcast_add(mask)?, 1.0)?;
    p.matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * t, heads * d))
}

impl BertLayer {
    /// `x: [B·T, hidden]` to the same shape.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        bt: (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let ctx = masked_attention(
            &self.query.forward(x)?,
            &self.key.forward(x)?,
            &self.value.forward(x)?,
            mask,
            bt,
            self.num_heads,
            self.head_dim,
        )?;
        let x = self
            .attention_layer_norm
            .forward(&(self.attention_output.forward(&ctx)? + x)?)?;
        let h = self
            .output
            .forward(&ops::gelu(&self.intermediate.forward(&x)?)?)?;
        self.output_layer_norm.forward(&(h + x)?)
    }
}

#[derive(Debug, Clone)]
pub struct Bert {
    pub config: BertConfig,
    pub word_embeddings: Tensor,
    pub position_embeddings: Tensor,
    pub token_type_embeddings: Tensor,
    pub embeddings_layer_norm: LayerNorm,
    pub layers: Vec<BertLayer>,
    /// `BertForSequenceClassification`: pooler (dense + tanh) and classifier.
    pub pooler: Option<Linear>,
    pub classifier: Option<Linear>,
}

/// What [`Bert::forward`] returns.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// Embeddings output, then every layer's output: `[B, T, hidden]` each.
    pub hidden_states: Vec<Tensor>,
    /// `[B, num_labels]` when the model has a classifier.
    pub logits: Option<Tensor>,
}

impl Bert {
    /// Loads from tensors named with or without the `bert.` prefix
    /// (`prefix` is "bert" or "").
    pub fn load(config: &BertConfig, vb: VarBuilder, prefix: &str) -> candle_core::Result<Self> {
        let c = config;
        let e = c.hidden_size;
        let base = if prefix.is_empty() {
            vb.clone()
        } else {
            vb.pp(prefix)
        };
        let emb = base.pp("embeddings");
        let enc = base.pp("encoder").pp("layer");
        let mut layers = Vec::with_capacity(c.num_heads.len());
        for (i, (&h, &m)) in c.num_heads.iter().zip(&c.intermediate_sizes).enumerate() {
            let lb = enc.pp(i);
            let q = h * c.head_dim;
            let att = lb.pp("attention");
            layers.push(BertLayer {
                query: Linear::load(e, q, att.pp("self").pp("query"))?,
                key: Linear::load(e, q, att.pp("self").pp("key"))?,
                value: Linear::load(e, q, att.pp("self").pp("value"))?,
                attention_output: Linear::load(q, e, att.pp("output").pp("dense"))?,
                attention_layer_norm: LayerNorm::load(
                    e,
                    c.layer_norm_eps,
                    att.pp("output").pp("LayerNorm"),
                )?,
                intermediate: Linear::load(e, m, lb.pp("intermediate").pp("dense"))?,
                output: Linear::load(m, e, lb.pp("output").pp("dense"))?,
                output_layer_norm: LayerNorm::load(
                    e,
                    c.layer_norm_eps,
                    lb.pp("output").pp("LayerNorm"),
                )?,
                num_heads: h,
                head_dim: c.head_dim,
            });
        }
        let (pooler, classifier) = match (c.num_labels, c.pooling) {
            (Some(n), crate::space::Pooling::Pooler) => (
                Some(Linear::load(e, e, base.pp("pooler").pp("dense"))?),
                Some(Linear::load(e, n, vb.pp("classifier"))?),
            ),
            (Some(n), crate::space::Pooling::Mean) => {
                (None, Some(Linear::load(e, n, vb.pp("classifier"))?))
            }
            (None, _) => (None, None),
        };
        Ok(Self {
            config: c.clone(),
            word_embeddings: emb.get((c.vocab_size, e), "word_embeddings.weight")?,
            position_embeddings: emb
                .get((c.max_position_embeddings, e), "position_embeddings.weight")?,
            token_type_embeddings: emb
                .get((c.type_vocab_size, e), "token_type_embeddings.weight")?,
            embeddings_layer_norm: LayerNorm::load(e, c.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers,
            pooler,
            classifier,
        })
    }

    /// Loads a Hugging Face BERT directory (config.json + model.safetensors),
    /// `bert.`-prefixed or bare names; errors name the file and the tensor.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let config = BertConfig::from_hf_config_file(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        let (tensors, _) = read_weights(&weights, &Device::Cpu)?;
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert"
        } else if tensors.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            return Err(Error::Checkpoint {
                path: weights,
                message: "no BERT embeddings: neither `bert.embeddings.word_embeddings.weight` nor `embeddings.word_embeddings.weight` is present".into(),
            });
        };
        let (vb, used, names) = super::used::recording(tensors, DType::F32, &Device::Cpu);
        let model = Self::load(&config, vb, prefix).map_err(|e| Error::Checkpoint {
            path: weights.clone(),
            message: e.to_string(),
        })?;
        // A Hugging Face checkpoint may carry heads this model does not
        // read (`cls.*`), never encoder layers beyond its config's.
        let layers = match prefix {
            "" => "encoder.layer.".to_string(),
            p => format!("{p}.encoder.layer."),
        };
        super::used::refuse_unused(
            &weights,
            &names,
            &used,
            |n| n.starts_with(&layers),
            &format!(
                "config.json describes {} layers: the weights and the config do not belong together",
                config.num_heads.len()
            ),
        )?;
        Ok(model)
    }

    /// Token ids and attention mask `[B, T]` (u32; mask 1 = token, 0 = padding).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<BertOutput> {
        let (b, t) = input_ids.dims2()?;
        let c = &self.config;
        if t > c.max_position_embeddings {
            return Err(Error::Tensor {
                name: "input_ids".into(),
                message: format!(
                    "{t} tokens exceed max_position_embeddings {}",
                    c.max_position_embeddings
                ),
            });
        }
        if attention_mask.dims2()? != (b, t) {
            return Err(Error::Tensor {
                name: "attention_mask".into(),
                message: format!(
                    "shape {:?} differs from input_ids {:?}",
                    attention_mask.dims(),
                    input_ids.dims()
                ),
            });
        }
        let e = c.hidden_size;
        let words = self
            .word_embeddings
            .index_select(&input_ids.flatten_all()?, 0)?;
        let pos = self.position_embeddings.narrow(0, 0, t)?;
        let tt = self.token_type_embeddings.i(0)?;
        let x = words
            .reshape((b, t, e))?
            .broadcast_add(&pos)?
            .broadcast_add(&tt)?
            .reshape((b * t, e))?;
        let mut x = self.embeddings_layer_norm.forward(&x)?;
        // transformers: (1 - mask) * finfo(float32).min, added to the scores.
        let mask = ((1.0 - attention_mask.to_dtype(DType::F32)?)? * f32::MIN as f64)?
            .reshape((b, 1, 1, t))?;
        let mut hidden_states = vec![x.reshape((b, t, e))?];
        for layer in &self.layers {
            x = layer.forward(&x, &mask, (b, t))?;
            hidden_states.push(x.reshape((b, t, e))?);
        }
        let logits = match (&self.pooler, &self.classifier) {
            (Some(p), Some(cl)) => {
                let cls = x.reshape((b, t, e))?.i((.., 0))?.contiguous()?;
                Some(cl.forward(&p.forward(&cls)?.tanh()?)?)
            }
            (None, Some(cl)) => {
                Some(cl.forward(&mean_pool(&x.reshape((b, t, e))?, attention_mask)?)?)
            }
            _ => None,
        };
        Ok(BertOutput {
            hidden_states,
            logits,
        })
    }

    /// Every tensor with its Hugging Face name (`Family::Bert`), in a
    /// stable order.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let (f, s) = (Family::Bert, Family::Bert.stem());
        let mut out = vec![
            (
                format!("{}.weight", s.word_embeddings),
                self.word_embeddings.clone(),
            ),
            (
                format!("{}.weight", s.position_embeddings),
                self.position_embeddings.clone(),
            ),
            (
                format!("{}.weight", s.token_type_embeddings),
                self.token_type_embeddings.clone(),
            ),
        ];
        self.embeddings_layer_norm
            .push_tensors(&s.embeddings_norm, &mut out);
        for (l, layer) in self.layers.iter().enumerate() {
            let n = f.layer(l);
            layer.query.push_tensors(&n.query, &mut out);
            layer.key.push_tensors(&n.key, &mut out);
            layer.value.push_tensors(&n.value, &mut out);
            layer
                .attention_output
                .push_tensors(&n.attention_output, &mut out);
            layer.attention_layer_norm.push_tensors(&n.norm1, &mut out);
            layer.intermediate.push_tensors(&n.intermediate, &mut out);
            layer.output.push_tensors(&n.output, &mut out);
            layer.output_layer_norm.push_tensors(&n.norm2, &mut out);
        }
        if let Some(p) = &self.pooler {
            p.push_tensors(&s.pooler, &mut out);
        }
        if let Some(c) = &self.classifier {
            c.push_tensors(&s.classifier, &mut out);
        }
        out
    }
}

// The engine knows names, dims and buffers only; its view of a BERT is
// built here, beside the type.
impl engine::Config {
    /// A static BERT: with labels, its classifier on the pooler
    /// (`BertForSequenceClassification`) or on the masked mean (a subnet of
    /// a mean-pooling space); without, mean pooling and no classifier (the
    /// pooled states are the result, as sentence-transformers computes them).
    pub fn from_bert(c: &BertConfig) -> Self {
        Self {
            family: Family::Bert,
            stem: engine::Stem::Tokens {
                vocab_size: c.vocab_size,
                max_positions: c.max_position_embeddings,
            },
            head: match c.num_labels {
                Some(_) => c.pooling.into(),
                None => engine::Head::Mean,
            },
            head_dim: c.head_dim,
            classes: c.num_labels.unwrap_or(0),
            eps: c.layer_norm_eps as f32,
            scaling: None,
            depth_layers: Default::default(),
        }
    }
}

impl engine::Model {
    /// A static BERT: pooler and classifier when it has labels, else mean
    /// pooling and features only (see [`engine::Config::from_bert`]).
    pub fn from_bert(bert: &Bert) -> Result<Self> {
        let c = &bert.config;
        Self::new(
            engine::Weights::from_tensors(&bert.tensors())?,
            engine::Config::from_bert(c),
            c.arch(),
        )
    }
}

/// Mean of the token states over the unmasked positions (sentence-transformers'
/// mean pooling): `[B, T, H]`, mask `[B, T]` → `[B, H]`.
pub fn mean_pool(states: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let sum = states.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&n)?)
}
