//! Losses: label-smoothed cross-entropy for subnets that learn from labels,
//! in-place distillation losses (one per file) for subnets that learn
//! from the largest subnet's detached output, and the ranking-consistency
//! loss between the subnets of a step.

mod alpha;
mod kl;
mod ranking;

pub use alpha::AlphaDivergence;
pub use kl::Kl;
pub use ranking::{Prior, Ranking, RankingConfig, RankingTerms};

use super::recipe::DistillConfig;
use candle_core::{DType, Result, Tensor, D};
use candle_nn::ops::log_softmax;

/// Cross-entropy with label smoothing `eps`:
/// `(1 − eps) · NLL + eps · mean over classes of −log p`, batch mean.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    let logp = log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    let nll = picked.neg()?.mean_all()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let smooth = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    (nll * (1.0 - eps))? + (smooth * eps)?
}

/// A distillation loss of a student's logits against a teacher's (detached)
/// logits.
pub trait Distill: Send + Sync {
    /// `(loss to backpropagate, value to report)`; they differ for losses
    /// whose gradient is given by a surrogate (alpha-divergence).
    fn loss(&self, student: &Tensor, teacher: &Tensor) -> Result<(Tensor, f32)>;
}

pub fn from_config(c: &DistillConfig) -> Option<Box<dyn Distill>> {
    match *c {
        DistillConfig::None => None,
        DistillConfig::Kl => Some(Box::new(Kl)),
        DistillConfig::Alpha {
            alpha_min,
            alpha_max,
            iw_clip,
        } => Some(Box::new(AlphaDivergence {
            alpha_min,
            alpha_max,
            iw_clip,
        })),
    }
}
