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
