//! AttentiveNAS-style sampling: like the sandwich rule, but each of the
//! `num_random` subnets is the best or worst of `num_candidates` uniform
//! candidates by a proxy: FLOPs ([`Attentive`]: best = largest), or
//! AttentiveNAS's own choice, the predicted accuracy of an accuracy
//! predictor ([`AttentiveByPredictor`]).

use super::{Plan, Sampler};
use crate::space::{flops, Arch, Space};
use crate::train::predictor::AccuracyPredictor;
use crate::train::recipe::AttentivePick;
use rand::rngs::StdRng;

pub struct Attentive {
    pub num_random: usize,
    pub num_candidates: usize,
    pub pick: AttentivePick,
}

impl Attentive {
    /// The plan with candidates ranked by `key` (larger is better; of equal
    /// keys, the last drawn is the best and the first drawn the worst).
    fn plan_by<K: Ord>(&self, space: &Space, rng: &mut StdRng, key: impl Fn(&Arch) -> K) -> Plan {
        let mut archs = vec![space.largest(), space.smallest()];
        for _ in 0..self.num_random {
            let cands: Vec<_> = (0..self.num_candidates.max(1))
                .map(|_| space.sample(rng))
                .collect();
            let chosen = match self.pick {
                AttentivePick::Best => cands.into_iter().max_by_key(&key),
                AttentivePick::Worst => cands.into_iter().min_by_key(&key),
            };
            archs.push(chosen.expect("at least one candidate"));
        }
        Plan {
            archs,
            teacher_first: true,
        }
    }
}

impl Sampler for Attentive {
    fn plan(&self, space: &Space, _step: usize, rng: &mut StdRng) -> Plan {
        self.plan_by(space, rng, |a| flops(space, a))
    }
}

/// [`Attentive`] with the candidates ranked by predicted accuracy.
pub struct AttentiveByPredictor {
    pub attentive: Attentive,
    /// A predictor of the trained space ([`AccuracyPredictor::check_space`]).
    pub predictor: AccuracyPredictor,
}

/// An f64 ordered by [`f64::total_cmp`].
#[derive(PartialEq)]
struct Total(f64);

impl Eq for Total {}

impl PartialOrd for Total {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Total {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Sampler for AttentiveByPredictor {
    fn plan(&self, space: &Space, _step: usize, rng: &mut StdRng) -> Plan {
        self.attentive
            .plan_by(space, rng, |a| Total(self.predictor.predict(space, a)))
    }
}
