//! Ranking consistency between the subnets of one step, as in the strongest
//! entries of the CVPR 2022 lightweight-NAS supernet track: a cheap prior
//! (FLOPs or parameters) says which of two subnets should have the lower
//! loss, and a hinge penalises the pairs whose losses say otherwise. It needs
//! no standalone labels.
//!
//! The ranked quantity is each subnet's label loss on the step's batch (the
//! recipe's label-smoothed cross-entropy), also for subnets that train on a
//! teacher: distillation losses against the largest subnet are not
//! comparable with the largest's own loss. For every ordered pair `(a, b)`
//! of the step's subnets whose prior scores are strictly ordered, `a` the
//! one predicted better,
//!
//! ```text
//! L_rank = λ · mean over those pairs of max(0, CE_a − CE_b + margin)
//! ```
//!
//! Being piecewise linear in the CEs, its gradient with respect to subnet
//! `i`'s logits is `λ · c_i · ∂CE_i/∂logits_i`, where `c_i` is (the number
//! of active pairs in which `i` is the better one − the number in which it
//! is the worse one) / the number of pairs ([`Ranking::terms`]). The step
//! ([`crate::train::step`]) therefore adds `λ · c_i · CE_i` to each
//! subnet's loss once every subnet's CE is known: each subnet's gradient
//! still flows only into its own backward pass.
//!
//! The weight ramps linearly from 0 over `warmup_epochs`
//! ([`RankingConfig::weight_at`]): early in training every subnet is
//! equally bad and the prior's order is not yet meaningful.

use crate::space::{self, Arch, Space};
use serde::{Deserialize, Serialize};

/// The recipe's `[ranking]` table. A recipe without it, or with
/// `weight = 0`, trains exactly as without the loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankingConfig {
    /// λ, the weight of the ranking loss after the warm-up (0: off).
    pub weight: f64,
    /// Hinge margin on the loss difference, in nats (0: only pairs in the
    /// wrong order are penalised).
    #[serde(default)]
    pub margin: f64,
    /// Which subnet of a pair should have the lower loss.
    #[serde(default)]
    pub prior: Prior,
    /// λ ramps linearly from 0 over this many epochs (fractions allowed;
    /// 0: the full weight from the first step).
    #[serde(default)]
    pub warmup_epochs: f64,
}

/// The cheap prior that orders a step's subnets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prior {
    /// More FLOPs (multiply-adds per example) → lower loss.
    #[default]
    Flops,
    /// More parameters → lower loss.
    Params,
}

impl Prior {
    /// The score of `arch` in `space`: strictly higher says strictly lower
    /// loss.
    pub fn score(self, space: &Space, arch: &Arch) -> f64 {
        match self {
            Prior::Flops => space::flops(space, arch) as f64,
            Prior::Params => space::params(space, arch) as f64,
        }
    }
}

impl RankingConfig {
    /// Whether the loss contributes at all (`weight > 0`).
    pub fn is_on(&self) -> bool {
        self.weight > 0.0
    }

    /// λ at optimizer step `step` (counted from 0) of a run with
    /// `steps_per_epoch` steps an epoch: `weight · step / warm-up steps`
    /// during the warm-up (`round(warmup_epochs · steps_per_epoch)` steps,
    /// as the learning rate's), `weight` after it.
    pub fn weight_at(&self, step: usize, steps_per_epoch: usize) -> f64 {
        let warmup = (self.warmup_epochs * steps_per_epoch as f64).round() as usize;
        if step >= warmup {
            self.weight
        } else {
            self.weight * step as f64 / warmup as f64
        }
    }

    /// The term of one step: λ at `step`, the margin, and the prior scores
    /// of the step's subnets (`prior`, in plan order; see [`Prior::score`]).
    pub fn at<'a>(&self, step: usize, steps_per_epoch: usize, prior: &'a [f64]) -> Ranking<'a> {
        Ranking {
            weight: self.weight_at(step, steps_per_epoch),
            margin: self.margin,
            prior,
        }
    }
}

/// The ranking term of one step, as the step applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranking<'a> {
    /// λ of this step (after the warm-up).
    pub weight: f64,
    /// Hinge margin on the loss difference.
    pub margin: f64,
    /// Each subnet's prior score, in plan order: a strictly higher score
    /// predicts a strictly lower loss.
    pub prior: &'a [f64],
}

/// What the ranking term of one step came to.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingTerms {
    /// λ of the step.
    pub weight: f64,
    /// The mean hinge over the pairs, before λ (0 without pairs).
    pub loss: f64,
    /// `c_i` of each subnet, in plan order: the step adds
    /// `weight · c_i · CE_i` to subnet `i`'s loss.
    pub coefficients: Vec<f64>,
    /// Ordered pairs whose prior scores differ.
    pub pairs: usize,
    /// Pairs whose hinge is positive (they contribute a gradient).
    pub active: usize,
}

impl RankingTerms {
    /// The fraction of the pairs that are active (`None` without pairs).
    pub fn active_fraction(&self) -> Option<f64> {
        (self.pairs > 0).then(|| self.active as f64 / self.pairs as f64)
    }
}

impl Ranking<'_> {
    /// The loss, its coefficients and its pair counts for the subnets'
    /// label losses `ces` (plan order, as [`Ranking::prior`]).
    pub fn terms(&self, ces: &[f64]) -> RankingTerms {
        assert_eq!(ces.len(), self.prior.len(), "one prior score per subnet");
        let n = ces.len();
        let mut net = vec![0i64; n];
        let (mut pairs, mut active, mut sum) = (0usize, 0usize, 0f64);
        for a in 0..n {
            for b in 0..n {
                if self.prior[a] <= self.prior[b] {
                    continue;
                }
                pairs += 1;
                let hinge = ces[a] - ces[b] + self.margin;
                if hinge > 0.0 {
                    active += 1;
                    sum += hinge;
                    net[a] += 1;
                    net[b] -= 1;
                }
            }
        }
        let per_pair = if pairs > 0 { 1.0 / pairs as f64 } else { 0.0 };
        RankingTerms {
            weight: self.weight,
            loss: sum * per_pair,
            coefficients: net.iter().map(|&c| c as f64 * per_pair).collect(),
            pairs,
            active,
        }
    }
}
