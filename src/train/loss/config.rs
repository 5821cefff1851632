//! The recipe's `[loss]` table ([`LossConfig`]): label smoothing and the
//! in-place distillation loss. Defined here, beside the losses it selects,
//! so that the losses need nothing from [`crate::train::recipe`] (which
//! re-exports these types under their old paths).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Label smoothing of the cross-entropy on ground truth labels.
    #[serde(default)]
    pub label_smoothing: f64,
    /// In-place distillation of the non-largest subnets from the largest's
    /// detached output (when the sampler trains the largest first).
    pub distill: DistillConfig,
    /// Hidden-state distillation beside `distill` (DynaBERT): left out,
    /// the subnets distill the logits alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_distill: Option<HiddenDistillConfig>,
    /// A fixed teacher (DynaBERT's first stage): a trained vitnas run
    /// directory (e.g. the largest model fine-tuned alone) whose largest
    /// subnet teaches every subnet of every step, the largest included,
    /// by `distill` (and `hidden_distill`), instead of the step's own
    /// largest subnet; nothing learns from the labels then. Its input and
    /// classes must be this run's. Left out: in-place distillation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<std::path::PathBuf>,
}

/// `[loss] hidden_distill`: each distilled subnet also learns the
/// teacher's hidden states, a mean squared error per layer boundary over
/// the non-padding tokens and the student's channels, summed over the
/// boundaries ([`crate::train::loss::hidden_mse`]). Needs a logits
/// `distill` and runs on the engine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenDistillConfig {
    /// The term's weight beside the logits loss (DynaBERT: 1).
    pub weight: f64,
    /// Whether the embedding output (the first layer's input) is matched
    /// too (DynaBERT: yes).
    #[serde(default = "yes")]
    pub embeddings: bool,
    /// Which teacher layer each student layer learns from.
    #[serde(default)]
    pub layer_map: LayerMap,
}

fn yes() -> bool {
    true
}

/// Which teacher layer a student layer learns from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerMap {
    /// TinyBERT's and DynaBERT's uniform map: student layer `i` of `d`
    /// learns from teacher layer `ceil((i + 1) · L / d) − 1` of `L`, so
    /// the last meets the last.
    #[default]
    Uniform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DistillConfig {
    /// Every subnet trains on the labels.
    None,
    /// KL(teacher ‖ student), batch mean.
    Kl,
    /// AlphaNet's adaptive alpha-divergence.
    Alpha {
        alpha_min: f64,
        alpha_max: f64,
        iw_clip: f64,
        /// How its gradient is scaled (see [`AlphaSurrogate`]).
        #[serde(default)]
        surrogate: AlphaSurrogate,
    },
}

/// The gradient of the alpha-divergence distillation loss
/// ([`crate::train::loss::AlphaDivergence`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlphaSurrogate {
    /// AlphaNet's surrogate as published: the gradient of the divergence,
    /// `−(1/α) E_q[w ∇log q]` with `w = min((p/q)^α, iw_clip)`. Its size
    /// grows with `E_q[w]`, so with `iw_clip`: for α < 0, with how much
    /// mass the student puts where the teacher has little. It destabilised
    /// the 4-subnet sandwich (evaluate/studies/2026-12-06-alpha-divergence.md);
    /// kept to reproduce AlphaNet and the 2026-11-29 ablation.
    Alphanet,
    /// The same gradient divided by `E_q[w]` (per example): the gradient
    /// of the Rényi form `log E_q[w] / (α(α−1))` of the same divergence
    /// (same minimum, same branch choice and reported value). Per example
    /// it is `(π − q)/α` with `π ∝ q·w` a distribution, so its size is
    /// bounded like a KL gradient's (`√2/|α|`) whatever `iw_clip` is;
    /// α = 1 (KL) is unchanged. The default.
    #[default]
    Normalized,
}
