//! Samplers: which subnets one optimizer step trains. Each is a small
//! strategy in its own file; the trainer only sees [`Sampler::plan`].

mod attentive;
mod fair;
mod sandwich;
mod uniform;

pub use attentive::Attentive;
pub use fair::Fair;
pub use sandwich::Sandwich;
pub use uniform::Uniform;

use super::recipe::SamplerConfig;
use crate::space::{Arch, Space};
use rand::rngs::StdRng;

/// The subnets of one step, trained in order with gradients accumulated.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub archs: Vec<Arch>,
    /// `archs[0]` is the largest subnet: it trains on the labels and its
    /// detached output teaches the others (in-place distillation).
    pub teacher_first: bool,
}

pub trait Sampler: Send + Sync {
    /// The subnets of step `step`; `rng` is seeded from the recipe seed and
    /// the step, so a resumed run draws the same subnets.
    fn plan(&self, space: &Space, step: usize, rng: &mut StdRng) -> Plan;
}

pub fn from_config(c: &SamplerConfig) -> Box<dyn Sampler> {
    match *c {
        SamplerConfig::Uniform => Box::new(Uniform),
        SamplerConfig::Sandwich { num_random } => Box::new(Sandwich { num_random }),
        SamplerConfig::Fair => Box::new(Fair),
        SamplerConfig::Attentive {
            num_random,
            num_candidates,
            pick,
        } => Box::new(Attentive {
            num_random,
            num_candidates,
            pick,
        }),
    }
}
