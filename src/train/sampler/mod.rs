//! Samplers: which subnets one optimizer step trains. Each is a small
//! strategy in its own file; the trainer only sees [`Sampler::plan`].

mod attentive;
mod fair;
mod sandwich;
mod uniform;

pub use attentive::{Attentive, AttentiveByPredictor};
pub use fair::Fair;
pub use sandwich::Sandwich;
pub use uniform::Uniform;

use super::recipe::{AttentiveProxy, SamplerConfig};
use crate::error::{Error, Result};
use crate::space::{Arch, Space};
use crate::train::predictor::AccuracyPredictor;
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

/// The sampler of a recipe's `[sampler]` for `space`. An attentive
/// sampler by predictor loads its predictor here and refuses one of another
/// space, naming the field and the file.
pub fn from_config(c: &SamplerConfig, space: &Space) -> Result<Box<dyn Sampler>> {
    Ok(match c {
        SamplerConfig::Uniform => Box::new(Uniform),
        SamplerConfig::Sandwich { num_random } => Box::new(Sandwich {
            num_random: *num_random,
        }),
        SamplerConfig::Fair => Box::new(Fair),
        SamplerConfig::Attentive {
            num_random,
            num_candidates,
            pick,
            proxy,
        } => {
            let attentive = Attentive {
                num_random: *num_random,
                num_candidates: *num_candidates,
                pick: *pick,
            };
            match proxy {
                AttentiveProxy::Flops => Box::new(attentive),
                AttentiveProxy::Predictor(path) => {
                    let predictor = AccuracyPredictor::load(path)
                        .and_then(|p| p.check_space(path, space).map(|_| p))
                        .map_err(|e| Error::InvalidRecipe {
                            file: "recipe [sampler]".into(),
                            field: "sampler.proxy.predictor".into(),
                            message: e.to_string(),
                        })?;
                    Box::new(AttentiveByPredictor {
                        attentive,
                        predictor,
                    })
                }
            }
        }
    })
}
