//! Uniform single-path sampling (SPOS): one random subnet per step.

use super::{Plan, Sampler};
use crate::space::Space;
use rand::rngs::StdRng;

pub struct Uniform;

impl Sampler for Uniform {
    fn plan(&self, space: &Space, _step: usize, rng: &mut StdRng) -> Plan {
        Plan {
            archs: vec![space.sample(rng)],
            teacher_first: false,
        }
    }
}
