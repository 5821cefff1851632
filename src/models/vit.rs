//! A static ViT with per-layer heads and MLP widths: the form an extracted or
//! exported subnet takes. Tensor names follow Hugging Face
//! `ViTForImageClassification`.

use super::layers::{LayerNorm, Linear};
use crate::engine::ops;
use crate::engine::{self, names::Family};
use crate::space::{Arch, Space};
use candle_core::{IndexOp, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Shapes of a static ViT. Per-layer lists allow non-uniform subnets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub num_labels: usize,
    pub hidden_size: usize,
    pub head_dim: usize,
    pub num_heads: Vec<usize>,
    pub intermediate_sizes: Vec<usize>,
    pub layer_norm_eps: f64,
}

/// The most transformer layers a model config may declare.
pub const MAX_LAYERS: usize = 1 << 10;

impl VitConfig {
    pub fn from_arch(space: &Space, arch: &Arch) -> Self {
        Self {
            image_size: space.image().image_size,
            patch_size: space.image().patch_size,
            num_channels: space.image().channels,
            num_labels: space.image().num_classes,
            hidden_size: arch.embed_dim,
            head_dim: space.supernet.head_dim,
            num_heads: arch.num_heads.clone(),
            intermediate_sizes: (0..arch.depth).map(|l| arch.mlp_width(l)).collect(),
            layer_norm_eps: space.supernet.layer_norm_eps,
        }
    }

    /// The architecture this config describes (MLP ratios recovered from
    /// the widths: `mlp_width(hidden, width / hidden) == width`).
    pub fn arch(&self) -> Arch {
        Arch::with_ratios(
            self.hidden_size,
            self.num_heads.len(),
            self.num_heads.clone(),
            self.intermediate_sizes
                .iter()
                .map(|&m| m as f64 / self.hidden_size.max(1) as f64)
                .collect(),
        )
    }

    pub fn seq_len(&self) -> usize {
        let g = self.image_size / self.patch_size;
        g * g + 1
    }
}

#[derive(Debug, Clone)]
pub struct VitLayer {
    pub layernorm_before: LayerNorm,
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attention_output: Linear,
    pub layernorm_after: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub num_heads: usize,
    pub head_dim: usize,
}

impl VitLayer {
    /// `x: [batch · T, hidden]` to the same shape.
    pub fn forward(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        Ok(self.forward_with_mlp_hidden(x, batch)?.0)
    }

    /// [`VitLayer::forward`] and the MLP's hidden pre-activation (the
    /// output of `intermediate`, the GELU's input: `[batch · T,
    /// intermediate]`), e.g. for activation-pattern proxies.
    pub fn forward_with_mlp_hidden(&self, x: &Tensor, batch: usize) -> Result<(Tensor, Tensor)> {
        let h = self.layernorm_before.forward(x)?;
        let ctx = ops::attention(
            &self.query.forward(&h)?,
            &self.key.forward(&h)?,
            &self.value.forward(&h)?,
            batch,
            self.num_heads,
            self.head_dim,
        )?;
        let x = (x + self.attention_output.forward(&ctx)?)?;
        let h = self.layernorm_after.forward(&x)?;
        let hidden = self.intermediate.forward(&h)?;
        let h = self.output.forward(&ops::gelu(&hidden)?)?;
        Ok(((x + h)?, hidden))
    }
}

#[derive(Debug, Clone)]
pub struct Vit {
    pub config: VitConfig,
    pub cls_token: Tensor,
    pub position_embeddings: Tensor,
    /// Convolution layout `[hidden, channels, patch, patch]`, as HF stores it.
    pub patch_weight: Tensor,
    pub patch_bias: Tensor,
    pub layers: Vec<VitLayer>,
    pub layernorm: LayerNorm,
    pub classifier: Linear,
}

impl Vit {
    /// Loads a static ViT from tensors with Hugging Face names.
    pub fn load(config: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let c = config;
        let e = c.hidden_size;
        let (fam, stem) = (Family::Vit, Family::Vit.stem());
        let proj = vb.pp(&stem.patch_projection);
        let mut layers = Vec::with_capacity(c.num_heads.len());
        for (i, (&h, &m)) in c.num_heads.iter().zip(&c.intermediate_sizes).enumerate() {
            let n = fam.layer(i);
            let q = h * c.head_dim;
            layers.push(VitLayer {
                layernorm_before: LayerNorm::load(e, c.layer_norm_eps, vb.pp(&n.norm1))?,
                query: Linear::load(e, q, vb.pp(&n.query))?,
                key: Linear::load(e, q, vb.pp(&n.key))?,
                value: Linear::load(e, q, vb.pp(&n.value))?,
                attention_output: Linear::load(q, e, vb.pp(&n.attention_output))?,
                layernorm_after: LayerNorm::load(e, c.layer_norm_eps, vb.pp(&n.norm2))?,
                intermediate: Linear::load(e, m, vb.pp(&n.intermediate))?,
                output: Linear::load(m, e, vb.pp(&n.output))?,
                num_heads: h,
                head_dim: c.head_dim,
            });
        }
        Ok(Self {
            config: config.clone(),
            cls_token: vb.get((1, 1, e), &stem.cls_token)?,
            position_embeddings: vb.get((1, c.seq_len(), e), &stem.position_embeddings)?,
            patch_weight: proj.get((e, c.num_channels, c.patch_size, c.patch_size), "weight")?,
            patch_bias: proj.get(e, "bias")?,
            layers,
            layernorm: LayerNorm::load(e, c.layer_norm_eps, vb.pp(&stem.final_norm))?,
            classifier: Linear::load(e, c.num_labels, vb.pp(&stem.classifier))?,
        })
    }

    /// Token states after the embeddings (`[B, T, hidden]`).
    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        let e = self.config.hidden_size;
        let patches = ops::patchify(images, self.config.patch_size)?;
        let w = self.patch_weight.reshape((e, ()))?;
        let x = ops::linear(&patches, &w, Some(&self.patch_bias))?;
        let b = x.dim(0)?;
        let cls = self.cls_token.broadcast_as((b, 1, e))?;
        ops::bias_add(
            &Tensor::cat(&[&cls, &x], 1)?,
            &self.position_embeddings.squeeze(0)?,
        )
    }

    /// Logits `[B, num_labels]` for images `[B, C, H, W]`.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.run(images, None)
    }

    /// Logits like [`Vit::forward`] and each layer's MLP hidden
    /// pre-activation ([`VitLayer::forward_with_mlp_hidden`]), in layer
    /// order.
    pub fn forward_with_mlp_hidden(&self, images: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let mut hidden = Vec::with_capacity(self.layers.len());
        let logits = self.run(images, Some(&mut hidden))?;
        Ok((logits, hidden))
    }

    /// The forward pass, collecting the MLP hidden pre-activations into
    /// `hidden` when given (dropped layer by layer otherwise).
    fn run(&self, images: &Tensor, mut hidden: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let (b, t, e) = (
            images.dim(0)?,
            self.config.seq_len(),
            self.config.hidden_size,
        );
        let mut x = self.embed(images)?.reshape((b * t, e))?;
        for layer in &self.layers {
            let (y, h) = layer.forward_with_mlp_hidden(&x, b)?;
            if let Some(out) = hidden.as_deref_mut() {
                out.push(h);
            }
            x = y;
        }
        let cls = self.layernorm.forward(&x.reshape((b, t, e))?.i((.., 0))?)?;
        self.classifier.forward(&cls)
    }

    /// Logits like [`Vit::forward`], computed by the [`crate::engine`] (no
    /// autograd graph; copies the weights first, so for many calls on small
    /// batches build an [`crate::engine::Model`] once instead).
    pub fn infer(&self, images: &Tensor) -> crate::Result<Tensor> {
        engine::Model::from_vit(self)?.logits(images)
    }

    /// Every tensor with its Hugging Face name, in a stable order.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let (fam, stem) = (Family::Vit, Family::Vit.stem());
        let mut out = vec![
            (stem.cls_token.clone(), self.cls_token.clone()),
            (
                stem.position_embeddings.clone(),
                self.position_embeddings.clone(),
            ),
            (
                format!("{}.weight", stem.patch_projection),
                self.patch_weight.clone(),
            ),
            (
                format!("{}.bias", stem.patch_projection),
                self.patch_bias.clone(),
            ),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            let n = fam.layer(i);
            l.layernorm_before.push_tensors(&n.norm1, &mut out);
            l.query.push_tensors(&n.query, &mut out);
            l.key.push_tensors(&n.key, &mut out);
            l.value.push_tensors(&n.value, &mut out);
            l.attention_output
                .push_tensors(&n.attention_output, &mut out);
            l.layernorm_after.push_tensors(&n.norm2, &mut out);
            l.intermediate.push_tensors(&n.intermediate, &mut out);
            l.output.push_tensors(&n.output, &mut out);
        }
        self.layernorm.push_tensors(&stem.final_norm, &mut out);
        self.classifier.push_tensors(&stem.classifier, &mut out);
        out
    }

    pub fn num_params(&self) -> usize {
        self.tensors().iter().map(|(_, t)| t.elem_count()).sum()
    }
}

// The engine knows names, dims and buffers only; its view of a ViT is
// built here, beside the type.
impl engine::Config {
    /// The engine's configuration of a static ViT.
    pub fn from_vit(c: &VitConfig) -> Self {
        Self {
            family: Family::Vit,
            stem: engine::Stem::Patches {
                channels: c.num_channels,
                image_size: c.image_size,
                patch: c.patch_size,
            },
            head: engine::Head::ClassToken,
            head_dim: c.head_dim,
            classes: c.num_labels,
            eps: c.layer_norm_eps as f32,
            scaling: None,
            depth_layers: Default::default(),
        }
    }
}

impl engine::Model {
    /// A static ViT copied into engine buffers.
    pub fn from_vit(vit: &Vit) -> crate::Result<Self> {
        Self::new(
            engine::Weights::from_tensors(&vit.tensors())?,
            engine::Config::from_vit(&vit.config),
            vit.config.arch(),
        )
    }
}

/// The fields vitnas reads from a Hugging Face ViT `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct HfVitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
}

impl VitConfig {
    /// Checks every value the model sizes a tensor with or divides by, so
    /// that a bad config is an error naming the file and the field, never a
    /// panic. `file` names the config (its path); `prefix` is where the
    /// fields sit in it (`""` at the top level, `"vitnas.config."` in an
    /// exported config.json).
    pub fn validate(&self, file: &str, prefix: &str) -> crate::Result<()> {
        let bad = |field: &str, message: String| crate::Error::InvalidConfig {
            file: file.to_string(),
            field: format!("{prefix}{field}"),
            message,
        };
        for (field, v) in [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
            ("num_labels", self.num_labels),
            ("hidden_size", self.hidden_size),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(bad(field, "must be positive, is 0".into()));
            }
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(bad(
                "patch_size",
                format!(
                    "{} does not divide image_size {} (patches must tile the image)",
                    self.patch_size, self.image_size
                ),
            ));
        }
        if self.intermediate_sizes.len() != self.num_heads.len() {
            return Err(bad(
                "intermediate_sizes",
                format!(
                    "{} entries for the {} layers of num_heads",
                    self.intermediate_sizes.len(),
                    self.num_heads.len()
                ),
            ));
        }
        for (l, (&h, &m)) in self
            .num_heads
            .iter()
            .zip(&self.intermediate_sizes)
            .enumerate()
        {
            if h == 0 {
                return Err(bad(
                    &format!("num_heads[{l}]"),
                    "must be positive, is 0".into(),
                ));
            }
            if m == 0 {
                return Err(bad(
                    &format!("intermediate_sizes[{l}]"),
                    "must be positive, is 0".into(),
                ));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err(bad(
                "layer_norm_eps",
                format!("{} is not a non-negative number", self.layer_norm_eps),
            ));
        }
        // Limits that refuse, before anything is allocated, models that no
        // machine could hold (the same limits as search spaces).
        let max_layer = |l: &[usize]| l.iter().copied().max().unwrap_or(0);
        for (field, v, max) in [
            ("image_size", self.image_size, 1 << 14),
            ("num_channels", self.num_channels, 1 << 10),
            ("num_labels", self.num_labels, 1 << 20),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("head_dim", self.head_dim, 1 << 12),
            ("num_heads", self.num_heads.len(), MAX_LAYERS),
            ("num_heads", max_layer(&self.num_heads), 1 << 10),
            (
                "intermediate_sizes",
                max_layer(&self.intermediate_sizes),
                1 << 22,
            ),
        ] {
            if v > max {
                return Err(bad(field, format!("{v} exceeds the limit {max}")));
            }
        }
        let tokens = (self.image_size / self.patch_size).pow(2) + 1;
        if tokens > 1 << 16 {
            return Err(bad(
                "patch_size",
                format!("{tokens} tokens exceed the limit {}", 1 << 16),
            ));
        }
        let e = self.hidden_size as f64;
        let params: f64 = self
            .num_heads
            .iter()
            .zip(&self.intermediate_sizes)
            .map(|(&h, &m)| 4.0 * e * (h * self.head_dim) as f64 + 2.0 * e * m as f64)
            .sum::<f64>()
            + e * (tokens + self.num_labels) as f64;
        if params * 4.0 > (1u64 << 36) as f64 {
            return Err(bad(
                "num_heads",
                format!("{params:.3e} parameters exceed the 64 GiB limit"),
            ));
        }
        Ok(())
    }

    /// Reads a Hugging Face `ViTForImageClassification` config.json; every
    /// value is checked ([`VitConfig::validate`]), errors name the field.
    pub fn from_hf_config_file(path: &std::path::Path) -> crate::Result<Self> {
        use crate::Error;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            crate::engine::names::Family::Vit.check_config(path, &v)?;
        }
        let c: HfVitConfig = serde_json::from_str(&text).map_err(|error| Error::Json {
            path: path.into(),
            error,
        })?;
        let file = path.display().to_string();
        let bad = |field: &str, message: String| Error::InvalidConfig {
            file: file.clone(),
            field: field.into(),
            message,
        };
        if let Some(act) = c.hidden_act.as_deref() {
            if act != "gelu" {
                return Err(bad(
                    "hidden_act",
                    format!("`{act}` is not supported (vitnas ViTs use exact GELU, \"gelu\")"),
                ));
            }
        }
        if c.num_hidden_layers > MAX_LAYERS {
            return Err(bad(
                "num_hidden_layers",
                format!("{} exceeds the limit {MAX_LAYERS}", c.num_hidden_layers),
            ));
        }
        let num_labels = c
            .num_labels
            .or(c.id2label.as_ref().map(|m| m.len()))
            .ok_or_else(|| {
                bad(
                    "num_labels",
                    "neither num_labels nor id2label is present".into(),
                )
            })?;
        if c.hidden_size == 0 {
            return Err(bad("hidden_size", "must be positive, is 0".into()));
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
        if c.intermediate_size == 0 {
            return Err(bad("intermediate_size", "must be positive, is 0".into()));
        }
        let config = Self {
            image_size: c.image_size,
            patch_size: c.patch_size,
            num_channels: c.num_channels,
            num_labels,
            hidden_size: c.hidden_size,
            head_dim: c.hidden_size / c.num_attention_heads,
            num_heads: vec![c.num_attention_heads; c.num_hidden_layers],
            intermediate_sizes: vec![c.intermediate_size; c.num_hidden_layers],
            layer_norm_eps: c.layer_norm_eps,
        };
        config.validate(&file, "")?;
        Ok(config)
    }
}
