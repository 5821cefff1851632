//! Search spaces and their architectures: a TOML file per space under
//! `search_spaces/`, deserialized straight into [`Space`], then checked by
//! [`Space::validate`]; architectures, their sampling and genes (`arch.rs`)
//! and their analytical params / FLOPs (`cost.rs`).

pub mod arch;
pub mod cost;

pub use arch::Arch;
pub use cost::{flops, params};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The images a ViT supernet reads (`[input]`) and the labels it predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub image_size: usize,
    pub patch_size: usize,
    pub channels: usize,
    pub num_classes: usize,
}

/// How a text encoder's token states become the classifier's input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// BERT's pooler: the `[CLS]` state through a dense layer and tanh
    /// (`BertForSequenceClassification`).
    #[default]
    Pooler,
    /// The mean of the token states over the attention mask
    /// (sentence-transformers).
    Mean,
}

/// The token sequences a BERT supernet reads (`[text]`) and the labels it
/// predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextInput {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// The classes; left out (or 0), taken from the training data's labels
    /// when a run starts (the run's own space.toml then states it). A
    /// number that the data's labels contradict is refused.
    #[serde(default)]
    pub num_classes: usize,
    /// The sequence length (tokens, special tokens included) at which FLOPs
    /// and latency are stated; batches themselves are as long as their
    /// longest sequence. A recipe's `data.text.cost_seq_len` replaces it
    /// in the run's space.
    pub seq_len: usize,
    #[serde(default)]
    pub pooling: Pooling,
}

fn two() -> usize {
    2
}

/// What a space's supernet reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Modality<'a> {
    Image(&'a Input),
    Text(&'a TextInput),
}

/// The supernet's largest dimensions: the shapes its weights are allocated with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupernetDims {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// MLP width as a multiple of the embedding dim (ViT spaces) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_ratio: Option<f64>,
    /// ... or as a number of neurons (text spaces: BERT's `intermediate_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_dim: Option<usize>,
    /// Fixed per-head dimension (AutoFormer: 64); q/k/v width = heads × head_dim.
    pub head_dim: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Which of the supernet's layers a shallower subnet runs (text
    /// spaces; image spaces keep the prefix).
    #[serde(default, skip_serializing_if = "DepthLayers::is_prefix")]
    pub depth_layers: DepthLayers,
}

fn default_layer_norm_eps() -> f64 {
    1e-6
}

/// Which of the supernet's `L` layers a subnet of depth `d < L` runs, in
/// order (`[supernet] depth_layers`). Either way the subnet is a plain
/// stack of `d` layers: it extracts and exports as one (its layer `i` is
/// the supernet's layer [`DepthLayers::layer`]`(i, d, L)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DepthLayers {
    /// The first `d` layers (AutoFormer, HAT, OFA).
    #[default]
    Prefix,
    /// The first `d − 1` layers and the supernet's last one. For a BERT
    /// pooler space started from a checkpoint whose `[CLS]` state carries
    /// the input only after its last layer (all-MiniLM-L6-v2, trained
    /// with mean pooling: its `[CLS]` state is the same for every input
    /// after layers 1–5), this gives every depth a `[CLS]` the pooler can
    /// read from the first step.
    PrefixAndLast,
    /// DynaBERT's depth choice: the layers kept evenly spread, starting at
    /// the first, layer `l` being the supernet's `floor(l · L / d)` (at
    /// half depth, every other layer: 0, 2, 4 of 6). DynaBERT's
    /// `kept_layers_index`. It never keeps the last layer below full depth,
    /// so with a pooler on a mean-pooling checkpoint it has the prefix's
    /// problem; see `every-other-to-last`.
    EveryOther,
    /// The same spread ending at the last layer: layer `l` is the
    /// supernet's `floor((l + 1) · L / d) − 1` (1, 3, 5 of 6 at half
    /// depth; PaddleNLP's DynaBERT). At `d = L − 1` it is
    /// `prefix-and-last`.
    EveryOtherToLast,
}

impl DepthLayers {
    fn is_prefix(&self) -> bool {
        *self == DepthLayers::Prefix
    }

    /// The supernet layer that layer `l` of a depth-`depth` subnet runs,
    /// in a supernet of `max_depth` layers (`l < depth ≤ max_depth`; a
    /// subnet as deep as the supernet runs every layer in order).
    pub fn layer(self, l: usize, depth: usize, max_depth: usize) -> usize {
        match self {
            DepthLayers::PrefixAndLast if l + 1 == depth => max_depth - 1,
            DepthLayers::EveryOther if depth > 0 => l * max_depth / depth,
            DepthLayers::EveryOtherToLast if depth > 0 => (l + 1) * max_depth / depth - 1,
            _ => l,
        }
    }
}

/// The global choices and the default per-layer choices. The MLP choice is
/// a list of ratios (`mlp_ratio`, ViT spaces) or of widths (`mlp_dim`, text
/// spaces), the same kind as the supernet's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choices {
    pub embed_dim: Vec<usize>,
    pub depth: Vec<usize>,
    pub num_heads: Vec<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mlp_ratio: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mlp_dim: Vec<usize>,
}

/// A layer with its own choice lists (`[[layer]]` tables in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerOverride {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_heads: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_ratio: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_dim: Option<Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Space {
    pub name: String,
    /// Images (ViT spaces); a space has this or `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Input>,
    /// Token sequences (text spaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextInput>,
    pub supernet: SupernetDims,
    pub choices: Choices,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer: Vec<LayerOverride>,
}

/// MLP hidden width for an embedding dim and ratio, as AutoFormer computes it
/// (`int(embed * ratio)`; the epsilon guards against 0.3 * 10 = 2.999...).
pub fn mlp_width(embed_dim: usize, ratio: f64) -> usize {
    (embed_dim as f64 * ratio + 1e-6).floor() as usize
}

impl Space {
    /// Reads, parses and validates a space file. Errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let space: Space = toml::from_str(text).map_err(|e| Error::Toml {
            path: origin.into(),
            message: e.to_string(),
        })?;
        space.validate(origin)?;
        Ok(space)
    }

    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("a Space always serializes")
    }

    /// Checks that the space is usable: one kind of input, non-empty choice
    /// lists, every choice within the supernet's maximum, sensible input
    /// geometry.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, message: String| Error::InvalidSpace {
            file: file.to_string(),
            field: field.to_string(),
            message,
        };
        let s = &self.supernet;
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        let mut positive = vec![
            ("supernet.embed_dim", s.embed_dim),
            ("supernet.depth", s.depth),
            ("supernet.num_heads", s.num_heads),
            ("supernet.head_dim", s.head_dim),
        ];
        match (&self.input, &self.text) {
            (Some(i), None) => {
                if s.depth_layers != DepthLayers::Prefix {
                    return Err(bad(
                        "supernet.depth_layers",
                        format!(
                            "{:?} is for text spaces so far; an image space's subnets run its \
                             first layers (leave the field out)",
                            s.depth_layers
                        ),
                    ));
                }
                positive.extend([
                    ("input.image_size", i.image_size),
                    ("input.patch_size", i.patch_size),
                    ("input.channels", i.channels),
                    ("input.num_classes", i.num_classes),
                ]);
            }
            (None, Some(t)) => {
                if s.depth_layers != DepthLayers::Prefix {
                    // The largest subnet must run every layer (rewiring
                    // and the full-depth teacher read them in order), and
                    // a `[[layer]]` index would name a subnet position
                    // that runs different supernet layers at each depth.
                    let deepest = self.choices.depth.iter().max().copied().unwrap_or(0);
                    if deepest != s.depth {
                        return Err(bad(
                            "supernet.depth_layers",
                            format!(
                                "{:?} needs the deepest choice to be the supernet's depth \
                                 ({}), not {deepest}: add it to choices.depth",
                                s.depth_layers, s.depth
                            ),
                        ));
                    }
                    if !self.layer.is_empty() {
                        return Err(bad(
                            "layer",
                            format!(
                                "[[layer]] choice lists name a subnet's layer by position, and \
                                 under depth_layers = {:?} a position runs another supernet \
                                 layer at each depth: use one choice list for every layer",
                                s.depth_layers
                            ),
                        ));
                    }
                }
                positive.extend([
                    ("text.vocab_size", t.vocab_size),
                    ("text.max_position_embeddings", t.max_position_embeddings),
                    ("text.type_vocab_size", t.type_vocab_size),
                    ("text.seq_len", t.seq_len),
                ]);
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "text",
                    "a space reads images ([input]) or text ([text]), not both".into(),
                ))
            }
            (None, None) => {
                return Err(bad(
                    "input",
                    "missing: an image space needs [input], a text space [text]".into(),
                ))
            }
        }
        for (field, v) in positive {
            if v == 0 {
                return Err(bad(field, "must be positive".into()));
            }
        }
        // One class is no classification: every example would be "right".
        // (A text space may leave the number to the data: 0.)
        let classes = match &self.text {
            Some(t) if t.num_classes == 0 => ("text.num_classes", 2),
            Some(t) => ("text.num_classes", t.num_classes),
            None => (
                "input.num_classes",
                self.input.as_ref().map_or(0, |i| i.num_classes),
            ),
        };
        if classes.1 < 2 {
            return Err(bad(
                classes.0,
                format!("{}: a classifier needs at least 2 classes", classes.1),
            ));
        }
        if let Some(i) = &self.input {
            if !i.image_size.is_multiple_of(i.patch_size) {
                return Err(bad(
                    "input.patch_size",
                    format!(
                        "{} does not divide the image size {}",
                        i.patch_size, i.image_size
                    ),
                ));
            }
        }
        if let Some(t) = &self.text {
            if t.seq_len > t.max_position_embeddings {
                return Err(bad(
                    "text.seq_len",
                    format!(
                        "{} exceeds text.max_position_embeddings {}",
                        t.seq_len, t.max_position_embeddings
                    ),
                ));
            }
        }
        match (s.mlp_ratio, s.mlp_dim) {
            (Some(r), None) => {
                if !(r.is_finite() && r > 0.0) {
                    return Err(bad(
                        "supernet.mlp_ratio",
                        format!("{r} is not a positive number"),
                    ));
                }
                if mlp_width(s.embed_dim, r) == 0 {
                    return Err(bad(
                        "supernet.mlp_ratio",
                        format!(
                            "{r} × supernet.embed_dim {} rounds to an MLP width of 0",
                            s.embed_dim
                        ),
                    ));
                }
            }
            (None, Some(m)) => {
                if m == 0 {
                    return Err(bad("supernet.mlp_dim", "must be positive".into()));
                }
            }
            _ => {
                return Err(bad(
                    "supernet.mlp_ratio",
                    "give exactly one of supernet.mlp_ratio (MLP width = ratio × embed_dim) \
                     and supernet.mlp_dim (MLP width in neurons)"
                        .into(),
                ))
            }
        }
        if !(s.layer_norm_eps.is_finite() && s.layer_norm_eps > 0.0) {
            return Err(bad(
                "supernet.layer_norm_eps",
                format!("{} is not a positive number", s.layer_norm_eps),
            ));
        }
        let c = &self.choices;
        check_list(&bad, "choices.embed_dim", &c.embed_dim, |&e| {
            if e == 0 || e > s.embed_dim {
                Some(format!(
                    "{e} is outside 1..={} (supernet.embed_dim)",
                    s.embed_dim
                ))
            } else {
                None
            }
        })?;
        check_list(&bad, "choices.depth", &c.depth, |&d| {
            if d == 0 || d > s.depth {
                Some(format!("{d} is outside 1..={} (supernet.depth)", s.depth))
            } else {
                None
            }
        })?;
        let max_embed = *c.embed_dim.iter().max().unwrap();
        let min_embed = *c.embed_dim.iter().min().unwrap();
        let super_mlp = self.supernet_mlp_width();
        let heads_ok = |field: &str, hs: &[usize]| {
            check_list(&bad, field, hs, |&h| {
                if h == 0 || h > s.num_heads {
                    Some(format!(
                        "{h} is outside 1..={} (supernet.num_heads)",
                        s.num_heads
                    ))
                } else {
                    None
                }
            })
        };
        let ratios = s.mlp_ratio.is_some();
        let mlp_ok = |field: &str, rs: &[f64]| {
            if !ratios {
                return Err(bad(
                    field,
                    "the supernet gives mlp_dim: MLP choices are widths (mlp_dim), not ratios"
                        .into(),
                ));
            }
            check_list(&bad, field, rs, |&r| {
                if !(r.is_finite() && r > 0.0) {
                    Some(format!("{r} is not a positive number"))
                } else if mlp_width(min_embed, r) == 0 {
                    // Every width must be at least 1: an MLP of 0 units
                    // has no matrix to multiply.
                    Some(format!(
                        "{r} × the smallest embed_dim choice {min_embed} rounds to an MLP width \
                         of 0"
                    ))
                } else if mlp_width(max_embed, r) > super_mlp {
                    Some(format!(
                        "{r} × embed {max_embed} = {} exceeds the supernet's MLP width {super_mlp} \
                         (supernet.embed_dim × supernet.mlp_ratio)",
                        mlp_width(max_embed, r)
                    ))
                } else {
                    None
                }
            })
        };
        let dims_ok = |field: &str, ms: &[usize]| {
            if ratios {
                return Err(bad(
                    field,
                    "the supernet gives mlp_ratio: MLP choices are ratios (mlp_ratio), not widths"
                        .into(),
                ));
            }
            check_list(&bad, field, ms, |&m| {
                if m == 0 || m > super_mlp {
                    Some(format!("{m} is outside 1..={super_mlp} (supernet.mlp_dim)"))
                } else {
                    None
                }
            })
        };
        heads_ok("choices.num_heads", &c.num_heads)?;
        if ratios || !c.mlp_ratio.is_empty() {
            mlp_ok("choices.mlp_ratio", &c.mlp_ratio)?;
        }
        if !ratios || !c.mlp_dim.is_empty() {
            dims_ok("choices.mlp_dim", &c.mlp_dim)?;
        }
        let mut seen = std::collections::HashSet::new();
        for (k, o) in self.layer.iter().enumerate() {
            if o.index >= s.depth {
                return Err(bad(
                    &format!("layer[{k}].index"),
                    format!(
                        "{} is past the supernet's last layer {}",
                        o.index,
                        s.depth - 1
                    ),
                ));
            }
            if !seen.insert(o.index) {
                return Err(bad(
                    &format!("layer[{k}].index"),
                    format!("layer {} is overridden twice", o.index),
                ));
            }
            if let Some(hs) = &o.num_heads {
                heads_ok(&format!("layer[{k}].num_heads"), hs)?;
            }
            if let Some(rs) = &o.mlp_ratio {
                mlp_ok(&format!("layer[{k}].mlp_ratio"), rs)?;
            }
            if let Some(ms) = &o.mlp_dim {
                dims_ok(&format!("layer[{k}].mlp_dim"), ms)?;
            }
        }
        self.check_size(&bad)
    }

    /// Refuses spaces whose supernet could not be allocated or whose costs
    /// would overflow, naming the field that makes it so (checked before
    /// anything is allocated).
    fn check_size(&self, bad: &impl Fn(&str, String) -> Error) -> Result<()> {
        let s = &self.supernet;
        let mut limits = vec![
            ("supernet.embed_dim", s.embed_dim, 1 << 16),
            ("supernet.depth", s.depth, 1 << 10),
            ("supernet.num_heads", s.num_heads, 1 << 10),
            ("supernet.head_dim", s.head_dim, 1 << 12),
            ("supernet.mlp_dim", s.mlp_dim.unwrap_or(0), 1 << 22),
        ];
        match self.modality() {
            Modality::Image(i) => limits.extend([
                ("input.image_size", i.image_size, 1 << 14),
                ("input.channels", i.channels, 1 << 10),
                ("input.num_classes", i.num_classes, 1 << 20),
            ]),
            Modality::Text(t) => limits.extend([
                ("text.vocab_size", t.vocab_size, 1 << 24),
                (
                    "text.max_position_embeddings",
                    t.max_position_embeddings,
                    1 << 16,
                ),
                ("text.type_vocab_size", t.type_vocab_size, 1 << 16),
                ("text.num_classes", t.num_classes, 1 << 20),
            ]),
        }
        for (field, v, max) in limits {
            if v > max {
                return Err(bad(field, format!("{v} exceeds the limit {max}")));
            }
        }
        if self.seq_len() > 1 << 16 {
            return Err(bad(
                "input.patch_size",
                format!(
                    "{} tokens ((image_size / patch_size)² + 1) exceed the limit {}",
                    self.seq_len(),
                    1 << 16
                ),
            ));
        }
        if let Some(r) = s.mlp_ratio {
            if r.is_nan() || r > 64.0 {
                return Err(bad(
                    "supernet.mlp_ratio",
                    format!("{r} exceeds the limit 64"),
                ));
            }
        }
        // Parameters of the full supernet, in f64 (no overflow), by part.
        let (e, t) = (s.embed_dim as f64, self.seq_len() as f64);
        let q = (s.num_heads * s.head_dim) as f64;
        let m = self.supernet_mlp_width() as f64;
        let (stem_field, stem, head_field, classes) = match self.modality() {
            Modality::Image(i) => (
                "input.patch_size",
                (i.channels * i.patch_size * i.patch_size) as f64 * e + t * e,
                "input.num_classes",
                i.num_classes,
            ),
            Modality::Text(x) => (
                "text.vocab_size",
                (x.vocab_size + x.max_position_embeddings + x.type_vocab_size) as f64 * e,
                "text.num_classes",
                x.num_classes,
            ),
        };
        let parts = [
            (stem_field, stem),
            (
                "supernet.depth",
                s.depth as f64 * (4.0 * e * q + 2.0 * e * m),
            ),
            (head_field, e * classes as f64 + e * e),
        ];
        let total: f64 = parts.iter().map(|p| p.1).sum();
        // Weights, gradients and two AdamW moments in f32.
        let train_bytes = 16.0 * total;
        const MAX_TRAIN_BYTES: f64 = (1u64 << 36) as f64;
        if train_bytes > MAX_TRAIN_BYTES {
            let field = parts
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map_or("supernet", |p| p.0);
            return Err(bad(
                field,
                format!(
                    "the supernet would hold {total:.3e} parameters, {:.0} GiB to train \
                     (weights, gradients, AdamW moments in f32); the limit is 64 GiB",
                    train_bytes / (1u64 << 30) as f64
                ),
            ));
        }
        // Multiply-adds of the largest forward must fit the u64 counters.
        let macs = s.depth as f64 * (4.0 * t * e * q + 2.0 * t * t * q + 2.0 * t * e * m);
        if macs > (1u64 << 60) as f64 {
            return Err(bad(
                "supernet.depth",
                format!("{macs:.3e} multiply-adds per input exceed the limit 2^60"),
            ));
        }
        Ok(())
    }

    /// What the supernet reads: images or token sequences.
    pub fn modality(&self) -> Modality<'_> {
        match (&self.input, &self.text) {
            (Some(i), _) => Modality::Image(i),
            (None, Some(t)) => Modality::Text(t),
            (None, None) => unreachable!("validated: a space has [input] or [text]"),
        }
    }

    /// Whether the space's supernet reads token sequences.
    pub fn is_text(&self) -> bool {
        self.text.is_some()
    }

    /// The image input of a ViT space. Panics for a text space: callers
    /// check [`Space::modality`] first (image-only code paths refuse text
    /// spaces with an error before reaching here).
    pub fn image(&self) -> &Input {
        self.input
            .as_ref()
            .expect("an image space (text spaces are refused before image-only code)")
    }

    /// The text input of a text space (see [`Space::image`]).
    pub fn text_input(&self) -> &TextInput {
        self.text
            .as_ref()
            .expect("a text space (image spaces are refused before text-only code)")
    }

    pub fn num_classes(&self) -> usize {
        match self.modality() {
            Modality::Image(i) => i.num_classes,
            Modality::Text(t) => t.num_classes,
        }
    }

    /// Width of the supernet's MLP hidden layer.
    pub fn supernet_mlp_width(&self) -> usize {
        match (self.supernet.mlp_dim, self.supernet.mlp_ratio) {
            (Some(m), _) => m,
            (None, r) => mlp_width(self.supernet.embed_dim, r.unwrap_or(0.0)),
        }
    }

    /// Width of the supernet's q/k/v projections (all heads).
    pub fn supernet_qkv_width(&self) -> usize {
        self.supernet.num_heads * self.supernet.head_dim
    }

    /// Image patches (0 for a text space).
    pub fn num_patches(&self) -> usize {
        match self.modality() {
            Modality::Image(i) => {
                let g = i.image_size / i.patch_size;
                g * g
            }
            Modality::Text(_) => 0,
        }
    }

    /// Tokens per input: the patches plus the cls token for images, the
    /// stated sequence length for text.
    pub fn seq_len(&self) -> usize {
        match self.modality() {
            Modality::Image(_) => self.num_patches() + 1,
            Modality::Text(t) => t.seq_len,
        }
    }

    /// Whether the space states its classes (a text space may leave them to
    /// the training data: see [`TextInput::num_classes`]).
    pub fn states_classes(&self) -> bool {
        self.num_classes() > 0
    }

    /// Refuses a space that leaves its classes to the data, for a command
    /// that builds models from the space file alone (`file` names it).
    pub fn require_classes(&self, file: &str) -> Result<()> {
        match self.states_classes() {
            true => Ok(()),
            false => Err(Error::InvalidSpace {
                file: file.to_string(),
                field: "text.num_classes".into(),
                message: "left to the training data, but this command has no data: give the \
                          number in the space, or use a trained run's space.toml"
                    .into(),
            }),
        }
    }

    /// Deepest architecture the choices allow (layers past it are never used).
    pub fn max_depth(&self) -> usize {
        *self
            .choices
            .depth
            .iter()
            .max()
            .expect("validated: depth choices not empty")
    }

    pub fn heads_choices(&self, layer: usize) -> &[usize] {
        self.override_for(layer)
            .and_then(|o| o.num_heads.as_deref())
            .unwrap_or(&self.choices.num_heads)
    }

    /// Whether MLP choices are widths (`mlp_dim`) rather than ratios.
    pub fn mlp_is_dim(&self) -> bool {
        self.supernet.mlp_dim.is_some()
    }

    /// Layer `layer`'s MLP ratio choices (empty in a space of widths).
    pub fn mlp_choices(&self, layer: usize) -> &[f64] {
        self.override_for(layer)
            .and_then(|o| o.mlp_ratio.as_deref())
            .unwrap_or(&self.choices.mlp_ratio)
    }

    /// Layer `layer`'s MLP width choices (empty in a space of ratios).
    pub fn mlp_dim_choices(&self, layer: usize) -> &[usize] {
        self.override_for(layer)
            .and_then(|o| o.mlp_dim.as_deref())
            .unwrap_or(&self.choices.mlp_dim)
    }

    /// Number of MLP choices of layer `layer`.
    pub fn mlp_choice_count(&self, layer: usize) -> usize {
        match self.mlp_is_dim() {
            true => self.mlp_dim_choices(layer).len(),
            false => self.mlp_choices(layer).len(),
        }
    }

    fn override_for(&self, layer: usize) -> Option<&LayerOverride> {
        self.layer.iter().find(|o| o.index == layer)
    }

    /// Number of distinct architectures in the space; `None` when it
    /// exceeds `u128::MAX` (about 3.4e38).
    pub fn size(&self) -> Option<u128> {
        let e = self.choices.embed_dim.len() as u128;
        let mut total: u128 = 0;
        for &d in &self.choices.depth {
            let per_layers = (0..d).try_fold(1u128, |a, l| {
                a.checked_mul((self.heads_choices(l).len() * self.mlp_choice_count(l)) as u128)
            })?;
            total = total.checked_add(e.checked_mul(per_layers)?)?;
        }
        Some(total)
    }
}

fn check_list<T: std::fmt::Debug + PartialEq>(
    bad: &impl Fn(&str, String) -> Error,
    field: &str,
    list: &[T],
    check: impl Fn(&T) -> Option<String>,
) -> Result<()> {
    if list.is_empty() {
        return Err(bad(field, "the choice list is empty".into()));
    }
    for (k, v) in list.iter().enumerate() {
        if let Some(msg) = check(v) {
            return Err(bad(&format!("{field}[{k}]"), msg));
        }
        // A repeated choice would be counted (and sampled) as a distinct
        // architecture.
        if let Some(j) = list[..k].iter().position(|w| w == v) {
            return Err(bad(
                &format!("{field}[{k}]"),
                format!("{v:?} repeats {field}[{j}]: each choice must be listed once"),
            ));
        }
    }
    Ok(())
}
