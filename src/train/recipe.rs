//! Training recipes: TOML files under `recipes/` that deserialize straight
//! into [`Recipe`]. Every run writes its fully resolved recipe next to its
//! artifacts.

pub mod search_config;

use super::loss::RankingConfig;
pub use super::loss::{AlphaSurrogate, DistillConfig, HiddenDistillConfig, LossConfig};
use crate::data::batch::{Augment, Normalize};
use crate::data::Format;
use crate::error::{Error, Result};
use crate::supernet::scaling::ScalingConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    /// Search-space file.
    pub space: PathBuf,
    /// Seeds initialisation, data order, augmentation, sampling.
    pub seed: u64,
    /// Run directory (created; `--resume` continues one).
    pub output_dir: PathBuf,
    /// Pretrained Hugging Face ViT to start from: a local directory or a hub
    /// id found in the local hub cache. Its tensors fill the supernet's
    /// leading slices. Image spaces: or a trained vitnas supernet run
    /// whose space has the same `[input]` and `[supernet]` (continued
    /// training, few-shot splitting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// How parameters start (`torch_default`, `trunc_normal_0.02`,
    /// `xavier_uniform`), seeded by `seed`. With `init_from`, the
    /// pretrained tensors overwrite the leading slices they cover; the rest
    /// of each tensor, and tensors the checkpoint lacks (e.g. a classifier
    /// for other classes), keep this initialisation.
    #[serde(default)]
    pub init: crate::supernet::init::InitScheme,
    pub data: DataConfig,
    pub sampler: SamplerConfig,
    /// How the step's subnet gradients combine (`sum` when left out).
    #[serde(default, skip_serializing_if = "GradientConfig::is_sum")]
    pub gradient: GradientConfig,
    /// Switchable scaling layers of the supernet (none when left out).
    #[serde(default, skip_serializing_if = "ScalingConfig::is_default")]
    pub scaling: ScalingConfig,
    pub loss: LossConfig,
    /// Ranking consistency between the step's subnets (none when left
    /// out): [`super::loss::RankingConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<RankingConfig>,
    pub optimizer: OptimizerConfig,
    pub train: TrainConfig,
    /// Split the supernet of `init_from` (a trained vitnas run) into
    /// few-shot sub-supernets and train each for this recipe's budget
    /// ([`super::few_shot`]); none when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub few_shot: Option<FewShotConfig>,
    /// Architecture search over the trained supernet (`vitnas search`).
    #[serde(default)]
    pub search: search_config::SearchConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub format: Format,
    /// Data directory; when absent for IDX data, Fashion-MNIST is looked for
    /// in $FASHION_MNIST_DIR, data/fashion-mnist and
    /// /usr/share/datasets/fashion-mnist ([`crate::data::FASHION_MNIST_DIRS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Examples held out of the training split for validation (seeded).
    pub val_size: usize,
    /// Seeds the validation split instead of `seed`: runs with different
    /// seeds (e.g. standalone reference runs) then share one split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
    /// Use only the first N training examples (after the validation split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    #[serde(default)]
    pub augment: Augment,
    /// Per-channel mean/std; computed from the training split when absent
    /// (the resolved recipe records the values used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalize>,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Text data (`format = "text"`): fields, tokenizer and length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextDataConfig>,
}

/// The shortest `data.text.max_len`: the special tokens (`[CLS]`, `[SEP]`) and
/// one token of text.
pub const MIN_TEXT_LEN: usize = 3;

/// How text examples are read and tokenised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextDataConfig {
    /// The text and label field (JSON key or CSV column) names.
    #[serde(default)]
    pub fields: crate::data::text::TextFields,
    /// Sequences are truncated to this many tokens (special tokens
    /// included); batches are padded to their longest sequence.
    pub max_len: usize,
    /// The `tokenizer.json` to use, or a model directory / hub id holding
    /// one; when absent, the tokenizer of `init_from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The sequence length (tokens) at which the run states FLOPs and
    /// latency (search bounds, `vitnas eval`, exports): it replaces the
    /// space's `text.seq_len` in the run's space.toml. Left out: the
    /// space's value. Set it to `max_len` to state costs at the length the
    /// run trains on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_seq_len: Option<usize>,
    /// DynaBERT rewiring before training: heads and FFN neurons reordered
    /// by importance measured on this many training batches (0: none).
    #[serde(default)]
    pub rewire_batches: usize,
}

fn default_eval_batch() -> usize {
    256
}

/// A recipe's `[few_shot]` ([`super::few_shot`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewShotConfig {
    /// The global choice to split on: `"embed_dim"`, `"depth"`, or
    /// `"auto"` (GM-NAS's gradient matching picks one of them).
    pub split: Split,
    /// `"auto"`: training batches whose gradients are compared.
    #[serde(default = "default_gm_batches")]
    pub gm_batches: usize,
    /// `"auto"`: architectures sampled per option and batch.
    #[serde(default = "default_gm_archs")]
    pub gm_archs: usize,
}

fn default_gm_batches() -> usize {
    4
}

fn default_gm_archs() -> usize {
    4
}

/// What a few-shot recipe splits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    EmbedDim,
    Depth,
    Auto,
}

/// Which subnets one optimizer step trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SamplerConfig {
    /// One uniformly sampled subnet per step (SPOS).
    Uniform,
    /// Largest + smallest + `num_random` uniform subnets (BigNAS / NASViT).
    Sandwich { num_random: usize },
    /// FairNAS strict fairness: per step, every choice of every gene is used
    /// equally often across the step's subnets.
    Fair,
    /// AttentiveNAS-style: largest + smallest + `num_random` subnets, each the
    /// best (or worst) of `num_candidates` uniform candidates by a cheap proxy.
    Attentive {
        num_random: usize,
        num_candidates: usize,
        pick: AttentivePick,
        /// What ranks the candidates (`"flops"` when left out).
        #[serde(default, skip_serializing_if = "AttentiveProxy::is_flops")]
        proxy: AttentiveProxy,
    },
}

/// What the attentive sampler ranks its candidates by.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum AttentiveProxy {
    /// `proxy = "flops"`: multiply-adds, larger is better.
    #[default]
    Flops,
    /// `proxy = { predictor = "<file>" }`: predicted accuracy of an
    /// accuracy predictor of this space (`vitnas predictor fit`).
    Predictor(PathBuf),
}

impl AttentiveProxy {
    pub fn is_flops(&self) -> bool {
        *self == AttentiveProxy::Flops
    }
}

/// How the gradients of one step's subnets become the update (the
/// strategies of [`super::gradient`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GradientConfig {
    /// Their plain sum.
    #[default]
    Sum,
    /// NASViT's projection of the smaller subnets' summed gradient against
    /// the largest's (sandwich or attentive samplers: the largest first).
    Nasvit {
        /// First epoch, counted from 0, that projects (NASViT: 101 of 400);
        /// before it the update is the plain sum of the two groups.
        start_epoch: usize,
        /// Global norm the smaller subnets' summed gradient is clipped to
        /// first (NASViT: 1.0).
        #[serde(default = "default_clip_small")]
        clip_small: f64,
    },
    /// PCGrad between every pair of the step's subnets.
    Pcgrad,
}

fn default_clip_small() -> f64 {
    1.0
}

impl GradientConfig {
    pub fn is_sum(&self) -> bool {
        *self == GradientConfig::Sum
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentivePick {
    /// The best candidate by the proxy (largest FLOPs, highest predicted accuracy).
    Best,
    /// The worst candidate by the proxy (smallest FLOPs, lowest predicted accuracy).
    Worst,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// If set, the peak is `lr × batch_size / lr_reference_batch` (AutoFormer: 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_reference_batch: Option<usize>,
    pub min_lr: f64,
    pub warmup_lr: f64,
    /// Linear warmup length in epochs (fractions allowed), then cosine decay.
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip the global gradient norm of each step to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinite {
    /// Stop the run, keeping the last good checkpoint.
    Stop,
    /// Skip the step (no update) and count it in the metrics.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Write a checkpoint every N optimizer steps (and at every epoch end).
    pub checkpoint_every: usize,
    /// Stop after this many steps in total (for smoke runs and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    #[serde(default = "default_nonfinite")]
    pub on_nonfinite_loss: NonFinite,
    /// Plain progress line every N steps when not on a terminal.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Gradient diagnosis: at the first step and every `log_every` steps,
    /// each subnet's gradient norm alone (parameters and logits) and, for
    /// each distilled subnet, the cross-entropy gradient the labels would
    /// give it on the same batch, written to the step's metrics.jsonl line
    /// as `diagnosis` (see [`crate::train::step::diagnose_subnets`]). It
    /// changes no update; it costs about one more step on each step it
    /// diagnoses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diagnose_gradients: bool,
    /// What the engine's forward keeps of each block for the backward:
    /// `"none"` (every block's activations, the fastest) or `"blocks"`
    /// (each block's input, its forward run again in the backward: a
    /// fraction of the memory for about a third more work; the same
    /// gradients bit for bit). See [`crate::engine::Recompute`].
    #[serde(default, skip_serializing_if = "is_default")]
    pub recompute: crate::engine::Recompute,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_nonfinite() -> NonFinite {
    NonFinite::Stop
}
fn default_log_every() -> usize {
    50
}

impl Recipe {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        let r: Recipe = toml::from_str(text).map_err(|e| Error::Toml {
            path: origin.into(),
            message: e.to_string(),
        })?;
        r.validate(origin)?;
        Ok(r)
    }

    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("a Recipe always serializes")
    }

    /// [`Recipe::validate`] of a recipe about to train, named as the
    /// recipe with the command line's overrides applied.
    pub fn validate_resolved(&self) -> Result<()> {
        self.validate(Path::new(&format!(
            "recipe `{}` (with command-line overrides)",
            self.name
        )))
    }

    /// Checks every value for sense. Every path that sets a value (the
    /// file, command-line overrides, retrain/finetune defaults) ends here
    /// before training starts; `origin` names where the values came from.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |field: &str, message: &str| Error::InvalidRecipe {
            file: origin.display().to_string(),
            field: field.into(),
            message: message.into(),
        };
        // Bounds that keep step counts and per-step work finite and sane.
        const MAX_EPOCHS: usize = 1_000_000;
        const MAX_SUBNETS: usize = 64;
        const MAX_CANDIDATES: usize = 10_000;
        let t = &self.train;
        if t.epochs == 0 || t.epochs > MAX_EPOCHS {
            return Err(bad("train.epochs", &format!("must be in 1..={MAX_EPOCHS}")));
        }
        if t.batch_size == 0 {
            return Err(bad("train.batch_size", "must be positive"));
        }
        if t.checkpoint_every == 0 {
            return Err(bad("train.checkpoint_every", "must be positive"));
        }
        if t.log_every == 0 {
            return Err(bad("train.log_every", "must be positive"));
        }
        if t.max_steps == Some(0) {
            return Err(bad("train.max_steps", "must be positive"));
        }
        let d = &self.data;
        if let Some(t) = &d.text {
            // [CLS], at least one token of the text, [SEP].
            if t.max_len < MIN_TEXT_LEN {
                return Err(bad(
                    "data.text.max_len",
                    &format!(
                        "{} leaves no room for the text: the minimum is {MIN_TEXT_LEN} ([CLS], one token, [SEP])",
                        t.max_len
                    ),
                ));
            }
            if t.cost_seq_len == Some(0) {
                return Err(bad("data.text.cost_seq_len", "must be positive"));
            }
        }
        if d.val_size == 0 {
            return Err(bad(
                "data.val_size",
                "must be positive: validation accuracy is reported every epoch",
            ));
        }
        if d.eval_batch_size == 0 {
            return Err(bad("data.eval_batch_size", "must be positive"));
        }
        if d.train_limit == Some(0) {
            return Err(bad("data.train_limit", "must be positive"));
        }
        if let Some(n) = &d.normalize {
            if n.mean.is_empty() || n.mean.len() != n.std.len() {
                return Err(bad(
                    "data.normalize",
                    "mean and std must have one value per channel each",
                ));
            }
            if n.mean.iter().any(|m| !m.is_finite()) {
                return Err(bad("data.normalize.mean", "must be finite"));
            }
            if n.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(bad("data.normalize.std", "must be positive and finite"));
            }
        }
        let o = &self.optimizer;
        let positive = |x: f64| x > 0.0 && x.is_finite();
        let non_negative = |x: f64| x >= 0.0 && x.is_finite();
        if !positive(o.lr) {
            return Err(bad("optimizer.lr", "must be a positive number"));
        }
        if o.lr_reference_batch == Some(0) {
            return Err(bad("optimizer.lr_reference_batch", "must be positive"));
        }
        if !non_negative(o.min_lr) || o.min_lr > self.peak_lr() {
            return Err(bad(
                "optimizer.min_lr",
                "must be a number in [0, the peak learning rate]",
            ));
        }
        if !non_negative(o.warmup_lr) {
            return Err(bad("optimizer.warmup_lr", "must be a non-negative number"));
        }
        if !non_negative(o.warmup_epochs) || o.warmup_epochs > t.epochs as f64 {
            return Err(bad(
                "optimizer.warmup_epochs",
                "must be a number in [0, train.epochs]",
            ));
        }
        if !non_negative(o.weight_decay) {
            return Err(bad(
                "optimizer.weight_decay",
                "must be a non-negative number",
            ));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(bad("optimizer.betas", "each must be in [0, 1)"));
        }
        if !positive(o.eps) {
            return Err(bad("optimizer.eps", "must be a positive number"));
        }
        if let Some(c) = o.clip_grad_norm {
            if !positive(c) {
                return Err(bad(
                    "optimizer.clip_grad_norm",
                    "must be a positive number (leave it out for no clipping)",
                ));
            }
        }
        if !(0.0..1.0).contains(&self.loss.label_smoothing) {
            return Err(bad("loss.label_smoothing", "must be in [0, 1)"));
        }
        match self.sampler {
            SamplerConfig::Sandwich { num_random }
            | SamplerConfig::Attentive { num_random, .. }
                if num_random > MAX_SUBNETS =>
            {
                return Err(bad(
                    "sampler.num_random",
                    &format!("must be at most {MAX_SUBNETS}: every one is a forward and backward pass per step"),
                ));
            }
            SamplerConfig::Attentive { num_candidates, .. }
                if num_candidates == 0 || num_candidates > MAX_CANDIDATES =>
            {
                return Err(bad(
                    "sampler.num_candidates",
                    &format!("must be in 1..={MAX_CANDIDATES}"),
                ));
            }
            SamplerConfig::Attentive {
                proxy: AttentiveProxy::Predictor(ref p),
                ..
            } if p.as_os_str().is_empty() => {
                return Err(bad(
                    "sampler.proxy.predictor",
                    "is empty: give an accuracy predictor file (`vitnas predictor fit`)",
                ));
            }
            _ => {}
        }
        match (&self.gradient, &self.sampler) {
            (GradientConfig::Nasvit { .. }, SamplerConfig::Uniform | SamplerConfig::Fair) => {
                return Err(bad(
                    "gradient.kind",
                    "`nasvit` needs the largest subnet first in every step: use the sandwich or attentive sampler",
                ));
            }
            (GradientConfig::Nasvit { start_epoch, .. }, _) if *start_epoch >= t.epochs => {
                return Err(bad(
                    "gradient.start_epoch",
                    &format!(
                        "{start_epoch} is past the last epoch ({}, counted from 0, of train.epochs = {}): it would never project",
                        t.epochs - 1,
                        t.epochs
                    ),
                ));
            }
            (GradientConfig::Nasvit { clip_small, .. }, _) if !positive(*clip_small) => {
                return Err(bad("gradient.clip_small", "must be a positive number"));
            }
            (GradientConfig::Pcgrad, SamplerConfig::Uniform) => {
                return Err(bad(
                    "gradient.kind",
                    "`pcgrad` compares the subnets of a step, and the uniform sampler trains one",
                ));
            }
            _ => {}
        }
        if let Some(rk) = &self.ranking {
            if !non_negative(rk.weight) {
                return Err(bad(
                    "ranking.weight",
                    &format!("{} must be a non-negative number (0: off)", rk.weight),
                ));
            }
            if !non_negative(rk.margin) {
                return Err(bad(
                    "ranking.margin",
                    &format!("{} must be a non-negative number", rk.margin),
                ));
            }
            if !non_negative(rk.warmup_epochs) || rk.warmup_epochs > t.epochs as f64 {
                return Err(bad(
                    "ranking.warmup_epochs",
                    &format!(
                        "{} must be a number in [0, train.epochs = {}]",
                        rk.warmup_epochs, t.epochs
                    ),
                ));
            }
            if rk.is_on() && self.sampler == SamplerConfig::Uniform {
                return Err(bad(
                    "ranking.weight",
                    "the ranking loss compares the subnets of a step, and the uniform sampler \
                     trains one: use the sandwich, fair or attentive sampler, or weight = 0",
                ));
            }
        }
        let sc = &self.scaling;
        if !non_negative(sc.init) {
            return Err(bad(
                "scaling.init",
                &format!("{} must be a non-negative number", sc.init),
            ));
        }
        if let DistillConfig::Alpha {
            alpha_min,
            alpha_max,
            iw_clip,
            ..
        } = self.loss.distill
        {
            if !(alpha_min.is_finite() && alpha_max.is_finite()) {
                return Err(bad(
                    "loss.distill.alpha_min",
                    "alpha_min and alpha_max must be finite",
                ));
            }
            if alpha_min > alpha_max {
                return Err(bad("loss.distill.alpha_min", "must not exceed alpha_max"));
            }
            if !positive(iw_clip) {
                return Err(bad("loss.distill.iw_clip", "must be positive"));
            }
        }
        if self.loss.teacher.is_some() && self.loss.distill == DistillConfig::None {
            return Err(bad(
                "loss.teacher",
                "a fixed teacher teaches by a logits distillation: set loss.distill (kind = \"kl\" \
                 or \"alpha\")",
            ));
        }
        if let Some(h) = &self.loss.hidden_distill {
            if !positive(h.weight) {
                return Err(bad(
                    "loss.hidden_distill.weight",
                    &format!(
                        "{} must be a positive number (leave the table out for none)",
                        h.weight
                    ),
                ));
            }
            if self.loss.distill == DistillConfig::None {
                return Err(bad(
                    "loss.hidden_distill",
                    "goes with a logits distillation: set loss.distill (kind = \"kl\" or \"alpha\")",
                ));
            }
        }
        Ok(())
    }

    /// The fixed teacher's run directory as an absolute path (when it
    /// exists), so that a resume from another directory finds it.
    pub fn resolve_teacher(&mut self) {
        if let Some(t) = &mut self.loss.teacher {
            if let Ok(abs) = std::fs::canonicalize(&*t) {
                *t = abs;
            }
        }
    }

    /// The peak learning rate after batch scaling.
    pub fn peak_lr(&self) -> f64 {
        match self.optimizer.lr_reference_batch {
            Some(r) => self.optimizer.lr * self.train.batch_size as f64 / r as f64,
            None => self.optimizer.lr,
        }
    }
}
