//! Losses: label-smoothed cross-entropy for subnets that learn from labels,
//! in-place distillation losses (one per file) for subnets that learn
//! from the largest subnet's detached output, and the ranking-consistency
//! loss between the subnets of a step.

mod alpha;
mod config;
mod hidden;
mod kl;
mod ranking;

/// Defined with the evaluation that also reports it ([`crate::train::eval`]).
pub use crate::train::eval::cross_entropy;
pub use alpha::AlphaDivergence;
pub use config::{AlphaSurrogate, DistillConfig, HiddenDistillConfig, LayerMap, LossConfig};
pub use hidden::{hidden_mse, teacher_boundary, HiddenStates, WithHidden};
pub use kl::Kl;
pub use ranking::{Prior, Ranking, RankingConfig, RankingTerms};

use candle_core::{Result, Tensor};

/// A distillation loss of a student's logits against a teacher's (detached)
/// logits.
pub trait Distill: Send + Sync {
    /// `(loss to backpropagate, value to report)`; they differ for losses
    /// whose gradient is given by a surrogate (alpha-divergence).
    fn loss(&self, student: &Tensor, teacher: &Tensor) -> Result<(Tensor, f32)>;

    /// Statistics of the loss on one batch, for gradient diagnosis
    /// (`[train] diagnose_gradients`); none by default.
    fn diagnose(&self, _student: &Tensor, _teacher: &Tensor) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }

    /// The hidden-state term that goes with it, if any ([`WithHidden`]).
    fn hidden(&self) -> Option<&HiddenDistillConfig> {
        None
    }
}

/// The distillation of a recipe's `[loss]`: `distill`, with the
/// hidden-state term of `hidden_distill` beside it when given.
pub fn from_loss_config(c: &LossConfig) -> Option<Box<dyn Distill>> {
    let logits = from_config(&c.distill)?;
    Some(match c.hidden_distill {
        Some(config) => Box::new(WithHidden { logits, config }),
        None => logits,
    })
}

pub fn from_config(c: &DistillConfig) -> Option<Box<dyn Distill>> {
    match *c {
        DistillConfig::None => None,
        DistillConfig::Kl => Some(Box::new(Kl)),
        DistillConfig::Alpha {
            alpha_min,
            alpha_max,
            iw_clip,
            surrogate,
        } => Some(Box::new(AlphaDivergence {
            alpha_min,
            alpha_max,
            iw_clip,
            surrogate,
        })),
    }
}
