//! The Hugging Face tensor names of each model family, spelled once: the
//! supernets, the static models, export and the [`crate::engine`] all find
//! their tensors through this table. It lives in the engine, the lowest of
//! them, and [`crate::models::names`] re-exports it. Names are prefixes: a linear layer or
//! layer norm `p` holds `p.weight` and `p.bias`.
//!
//! ```
//! use vitnas::engine::names::Family;
//! let l = Family::Bert.layer(2);
//! assert_eq!(l.query, "bert.encoder.layer.2.attention.self.query");
//! assert_eq!(Family::Vit.layer(0).norm1, "vit.encoder.layer.0.layernorm_before");
//! ```

/// A transformer-encoder family with a Hugging Face layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `ViTForImageClassification`: pre-norm layers, patch embedding, class
    /// token, final layer norm, classifier.
    Vit,
    /// `BertForSequenceClassification`: post-norm layers, word / position /
    /// token-type embeddings with a layer norm, pooler, classifier.
    Bert,
}

/// One encoder layer's tensors. `norm1` belongs to the attention sub-layer
/// and `norm2` to the MLP sub-layer: before them in a pre-norm family
/// (ViT's `layernorm_before` / `layernorm_after`), after their residual add
/// in a post-norm one (BERT's `attention.output.LayerNorm` /
/// `output.LayerNorm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerNames {
    pub norm1: String,
    pub query: String,
    pub key: String,
    pub value: String,
    pub attention_output: String,
    pub norm2: String,
    pub intermediate: String,
    pub output: String,
    /// Switchable scaling tables (`.attention`, `.mlp`; vitnas's own).
    pub scaling: String,
}

/// The tensors outside the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StemNames {
    /// ViT: the class token (a tensor, no suffix).
    pub cls_token: String,
    /// ViT: position embeddings (a tensor, no suffix); BERT: a table
    /// (`.weight`).
    pub position_embeddings: String,
    /// ViT: the patch projection (a convolution).
    pub patch_projection: String,
    /// BERT: word and token-type embedding tables (`.weight`), the
    /// embedding layer norm.
    pub word_embeddings: String,
    pub token_type_embeddings: String,
    pub embeddings_norm: String,
    /// ViT: the final layer norm.
    pub final_norm: String,
    /// BERT: the pooler's dense layer.
    pub pooler: String,
    pub classifier: String,
}

impl Family {
    /// The family's name in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Family::Vit => "a ViT (image model)",
            Family::Bert => "a BERT (text model)",
        }
    }

    /// The family a config.json's `model_type` names, if one of these.
    pub fn of_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "vit" | "vitnas-vit" => Some(Family::Vit),
            "bert" | "vitnas-bert" => Some(Family::Bert),
            _ => None,
        }
    }

    /// Refuses a config.json (`config`, parsed) whose `model_type` names
    /// the other family, naming the file and the field: a ViT given where a
    /// BERT is expected is said to be one, not reported as a missing field.
    pub fn check_config(
        self,
        path: &std::path::Path,
        config: &serde_json::Value,
    ) -> crate::Result<()> {
        let Some(t) = config.get("model_type").and_then(|t| t.as_str()) else {
            return Ok(());
        };
        match Family::of_model_type(t) {
            Some(found) if found != self => Err(crate::Error::InvalidConfig {
                file: path.display().to_string(),
                field: "model_type".into(),
                message: format!(
                    "`{t}` is {}, but {} is expected here (a model directory of the other kind?)",
                    found.describe(),
                    self.describe()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The prefix of every encoder tensor (`vit`, `bert`).
    pub fn base(self) -> &'static str {
        match self {
            Family::Vit => "vit",
            Family::Bert => "bert",
        }
    }

    /// Whether the layers normalise after each residual add (BERT) rather
    /// than before each sub-layer (ViT).
    pub fn post_norm(self) -> bool {
        self == Family::Bert
    }

    /// The prefix of layer `l`.
    pub fn layer_prefix(self, l: usize) -> String {
        format!("{}.encoder.layer.{l}", self.base())
    }

    pub fn layer(self, l: usize) -> LayerNames {
        let p = self.layer_prefix(l);
        match self {
            Family::Vit => LayerNames {
                norm1: format!("{p}.layernorm_before"),
                query: format!("{p}.attention.attention.query"),
                key: format!("{p}.attention.attention.key"),
                value: format!("{p}.attention.attention.value"),
                attention_output: format!("{p}.attention.output.dense"),
                norm2: format!("{p}.layernorm_after"),
                intermediate: format!("{p}.intermediate.dense"),
                output: format!("{p}.output.dense"),
                scaling: format!("{p}.scaling"),
            },
            Family::Bert => LayerNames {
                norm1: format!("{p}.attention.output.LayerNorm"),
                query: format!("{p}.attention.self.query"),
                key: format!("{p}.attention.self.key"),
                value: format!("{p}.attention.self.value"),
                attention_output: format!("{p}.attention.output.dense"),
                norm2: format!("{p}.output.LayerNorm"),
                intermediate: format!("{p}.intermediate.dense"),
                output: format!("{p}.output.dense"),
                scaling: format!("{p}.scaling"),
            },
        }
    }

    pub fn stem(self) -> StemNames {
        let b = self.base();
        StemNames {
            cls_token: format!("{b}.embeddings.cls_token"),
            position_embeddings: format!("{b}.embeddings.position_embeddings"),
            patch_projection: format!("{b}.embeddings.patch_embeddings.projection"),
            word_embeddings: format!("{b}.embeddings.word_embeddings"),
            token_type_embeddings: format!("{b}.embeddings.token_type_embeddings"),
            embeddings_norm: format!("{b}.embeddings.LayerNorm"),
            final_norm: format!("{b}.layernorm"),
            pooler: format!("{b}.pooler.dense"),
            classifier: "classifier".into(),
        }
    }
}
