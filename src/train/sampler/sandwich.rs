//! The sandwich rule (BigNAS, NASViT): largest, smallest and `num_random`
//! uniform subnets every step; the largest teaches the rest.

use super::{Plan, Sampler};
use crate::space::Space;
use rand::rngs::StdRng;

pub struct Sandwich {
    pub num_random: usize,
}

impl Sampler for Sandwich {
    fn plan(&self, space: &Space, _step: usize, rng: &mut StdRng) -> Plan {
        let mut archs = vec![space.largest(), space.smallest()];
        archs.extend((0..self.num_random).map(|_| space.sample(rng)));
        Plan {
            archs,
            teacher_first: true,
        }
    }
}
