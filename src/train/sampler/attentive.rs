//! AttentiveNAS-style sampling with a cheap proxy: like the sandwich rule,
//! but each of the `num_random` subnets is the best (largest FLOPs) or worst
//! (smallest FLOPs) of `num_candidates` uniform candidates. FLOPs stand in
//! for AttentiveNAS's accuracy predictor until one exists.

use super::{Plan, Sampler};
use crate::space::{flops, Space};
use crate::train::recipe::AttentivePick;
use rand::rngs::StdRng;

pub struct Attentive {
    pub num_random: usize,
    pub num_candidates: usize,
    pub pick: AttentivePick,
}

impl Sampler for Attentive {
    fn plan(&self, space: &Space, _step: usize, rng: &mut StdRng) -> Plan {
        let mut archs = vec![space.largest(), space.smallest()];
        for _ in 0..self.num_random {
            let cands: Vec<_> = (0..self.num_candidates.max(1))
                .map(|_| space.sample(rng))
                .collect();
            let chosen = match self.pick {
                AttentivePick::Best => cands.into_iter().max_by_key(|a| flops(space, a)),
                AttentivePick::Worst => cands.into_iter().min_by_key(|a| flops(space, a)),
            };
            archs.push(chosen.expect("at least one candidate"));
        }
        Plan {
            archs,
            teacher_first: true,
        }
    }
}
