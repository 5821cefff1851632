//! What a run trains: the supernet with its sampler, or one architecture as
//! a static model; built fresh from the recipe's seed and initialisation.

use super::recipe::Recipe;
use super::sampler::{self, Plan, Sampler};
use super::standalone;
use super::step::{Forward, Params};
use super::summary::Reported;
use crate::engine::Model;
use crate::error::Result;
use crate::models::vit::Vit;
use crate::space::{Arch, Space};
use crate::supernet::init::{seeded_var_builder, InitScheme};
use crate::supernet::scaling::ScalingConfig;
use crate::supernet::Supernet;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use rand::rngs::StdRng;

/// What a run trains.
#[derive(Debug, Clone, PartialEq)]
pub enum RunKind {
    /// The supernet of the recipe's space, subnets drawn by its sampler.
    Supernet,
    /// One architecture as a plain static model (retrain, finetune).
    Standalone { arch: Arch, init: standalone::Init },
}

/// Builds the seeded supernet of a space (without scaling layers) and its
/// sorted parameters.
pub fn build_supernet(
    space: &Space,
    seed: u64,
    init: InitScheme,
) -> Result<(Supernet, VarMap, Params)> {
    build_scaled_supernet(space, seed, init, &ScalingConfig::default())
}

/// [`build_supernet`] with the switchable scaling layers of `scaling` when
/// it is enabled.
pub fn build_scaled_supernet(
    space: &Space,
    seed: u64,
    init: InitScheme,
    scaling: &ScalingConfig,
) -> Result<(Supernet, VarMap, Params)> {
    let vm = VarMap::new();
    let net = Supernet::with_scaling(
        space,
        init,
        scaling,
        seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu),
    )?;
    let params = Params::from_varmap(&vm);
    Ok((net, vm, params))
}

/// The model being trained, built from a [`RunKind`]. (One per run: the
/// variants' size difference, grown with the text fields of `Space`, costs
/// nothing.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Trainee {
    Supernet {
        net: Box<Supernet>,
        sampler: Box<dyn Sampler>,
    },
    Standalone {
        model: Box<Vit>,
        arch: Arch,
    },
}

impl Trainee {
    /// Builds the model of `kind` and its parameters from `recipe`'s seed,
    /// initialisation, sampler and scaling layers. `init` is the
    /// standalone model's origin (ignored for a supernet).
    pub(crate) fn build(
        kind: &RunKind,
        space: &Space,
        recipe: &Recipe,
        init: Option<standalone::Init>,
    ) -> Result<(Trainee, Params)> {
        let seed = recipe.seed;
        Ok(match kind {
            RunKind::Supernet => {
                let (net, _vm, params) =
                    build_scaled_supernet(space, seed, recipe.init, &recipe.scaling)?;
                let sampler = sampler::from_config(&recipe.sampler, space)?;
                (
                    Trainee::Supernet {
                        net: Box::new(net),
                        sampler,
                    },
                    params,
                )
            }
            RunKind::Standalone { arch, init: origin } => {
                let init = init.unwrap_or_else(|| origin.clone());
                let (model, _vm, params) = standalone::build(space, arch, seed, &init)?;
                let arch = arch.clone();
                (
                    Trainee::Standalone {
                        model: Box::new(model),
                        arch,
                    },
                    params,
                )
            }
        })
    }

    pub(crate) fn net(&self) -> &dyn Forward {
        match self {
            Trainee::Supernet { net, .. } => net.as_ref(),
            Trainee::Standalone { model, .. } => model.as_ref(),
        }
    }

    /// The architectures step `step` trains.
    pub(crate) fn plan(&self, space: &Space, step: usize, rng: &mut StdRng) -> Plan {
        match self {
            Trainee::Supernet { sampler, .. } => sampler.plan(space, step, rng),
            Trainee::Standalone { arch, .. } => Plan {
                archs: vec![arch.clone()],
                teacher_first: false,
            },
        }
    }

    /// The architectures reported at every epoch's end and at the end.
    pub(crate) fn reported(&self, space: &Space) -> Vec<(Reported, Arch)> {
        match self {
            Trainee::Supernet { .. } => vec![
                (Reported::Largest, space.largest()),
                (Reported::Smallest, space.smallest()),
            ],
            Trainee::Standalone { arch, .. } => vec![(Reported::Model, arch.clone())],
        }
    }

    /// The subnet `arch` (or the static model) ready for inference by the
    /// engine: built once per evaluation, not per batch.
    pub(crate) fn inference_model(&self, arch: &Arch) -> Result<Model> {
        match self {
            Trainee::Supernet { net, .. } => Model::from_vit(&net.extract(arch)?),
            Trainee::Standalone { model, .. } => Model::from_vit(model),
        }
    }
}
