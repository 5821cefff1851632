//! Standalone training of one architecture as a plain static model (no
//! supernet code in the loop): `vitnas retrain` trains it from scratch,
//! `vitnas finetune` continues from an exported subnet's inherited weights.
//!
//! A standalone run directory is also an exported model directory
//! (`model.safetensors`, `config.json`, `arch.json`), updated at every
//! checkpoint, beside the run files `train` writes (`recipe.toml`,
//! `space.toml`, `metrics.jsonl`, `checkpoint.safetensors`, `state.json`).

use super::recipe::{DistillConfig, GradientConfig, Recipe};
use super::step::Params;
use super::{build_supernet, RunKind, RunOptions, Summary};
use crate::error::{Error, Result};
use crate::models::export::load_dir;
use crate::models::vit::{Vit, VitConfig};
use crate::space::{Arch, Space};
use crate::supernet::init::InitScheme;
use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use std::path::{Path, PathBuf};

/// The exported architecture record of a model directory.
pub const ARCH_FILE: &str = "arch.json";

/// Where a standalone model's first weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// The slices of a freshly seeded supernet initialised by this scheme
    /// (fan-in of the supernet's full tensors).
    Scratch(InitScheme),
    /// An exported model directory (inherited weights).
    Exported(PathBuf),
}

/// Builds the static model of `arch` with trainable variables (Hugging
/// Face tensor names, sorted in `Params`).
pub fn build(space: &Space, arch: &Arch, seed: u64, init: &Init) -> Result<(Vit, VarMap, Params)> {
    arch.check_fits(space)?;
    let config = VitConfig::from_arch(space, arch);
    let tensors = match init {
        Init::Scratch(scheme) => {
            let (net, _, _) = build_supernet(space, seed, *scheme)?;
            net.extract(arch)?.tensors()
        }
        Init::Exported(dir) => {
            let (model, _) = load_dir(dir)?;
            if model.config != config {
                return Err(Error::Checkpoint {
                    path: dir.join("config.json"),
                    message: format!(
                        "the model's shapes {:?} are not those of its arch.json {:?}",
                        model.config, config
                    ),
                });
            }
            model.tensors()
        }
    };
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().expect("varmap poisoned");
        for (name, t) in tensors {
            data.insert(name, Var::from_tensor(&t.contiguous()?.copy()?)?);
        }
    }
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = Vit::load(&config, vb)?;
    let params = Params::from_varmap(&vm);
    Ok((model, vm, params))
}

/// The architecture and space recorded in a model directory's arch.json.
pub fn read_arch_file(dir: &Path) -> Result<(Arch, Space)> {
    #[derive(serde::Deserialize)]
    struct Record {
        arch: Arch,
        space: Space,
    }
    let path = dir.join(ARCH_FILE);
    let r: Record = crate::io::read_json(&path)?;
    r.space.validate(&path.display().to_string())?;
    r.arch.check_fits(&r.space)?;
    Ok((r.arch, r.space))
}

/// A recipe made standalone: one architecture, no distillation (there is
/// no teacher), no supernet scaling layers, no gradient strategy (one
/// gradient per step) and no ranking loss (nothing to rank), the rest
/// (data, optimizer, schedule) as given.
fn standalone_recipe(recipe: &Recipe, output_dir: PathBuf) -> Recipe {
    let mut r = recipe.clone();
    r.output_dir = output_dir;
    r.init_from = None;
    r.few_shot = None;
    r.loss.distill = DistillConfig::None;
    r.gradient = GradientConfig::Sum;
    r.scaling = Default::default();
    r.ranking = None;
    r
}

/// Trains `arch` of `space` from scratch with `recipe`'s data and schedule.
pub fn retrain(
    space: &Space,
    arch: &Arch,
    recipe: &Recipe,
    output_dir: PathBuf,
    opts: &RunOptions,
) -> Result<Summary> {
    arch.check_fits(space)?;
    let r = standalone_recipe(recipe, output_dir);
    super::start(
        &r,
        space,
        RunKind::Standalone {
            arch: arch.clone(),
            init: Init::Scratch(r.init),
        },
        opts,
    )
}

/// Continues training the exported model in `model_dir` with `recipe`.
pub fn finetune(
    model_dir: &Path,
    recipe: &Recipe,
    output_dir: PathBuf,
    opts: &RunOptions,
) -> Result<Summary> {
    crate::train::rundir::check_distinct(model_dir, &output_dir)?;
    let (arch, space) = read_arch_file(model_dir)?;
    let r = standalone_recipe(recipe, output_dir);
    super::start(
        &r,
        &space,
        RunKind::Standalone {
            arch,
            init: Init::Exported(model_dir.to_path_buf()),
        },
        opts,
    )
}
