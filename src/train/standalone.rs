//! Standalone training of one architecture as a plain static model (no
//! supernet code in the loop): `vitnas retrain` trains it from scratch
//! ([`Init::Scratch`]) or from a trained supernet's slice
//! ([`Init::Inherited`]), `vitnas finetune` continues from an exported
//! subnet's weights ([`Init::Exported`]). Images train a static ViT
//! (`image.rs`), text a static BERT ([`super::text`]), on the same loop.
//!
//! A standalone run directory is also an exported model directory
//! (`model.safetensors`, `config.json`, `arch.json`; for text also
//! `tokenizer.json` and the labels in config.json), updated at every
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
    /// (fan-in of the supernet's full tensors). A text supernet then takes
    /// the recipe's `init_from` (pretrained BERT) and rewiring, as a
    /// supernet run starts: text subnets are fine-tuned from pretrained
    /// weights, not trained from random ones (a recipe without `init_from`
    /// trains from random).
    Scratch(InitScheme),
    /// The subnet's slice of the trained supernet run in this directory
    /// (inherited weights).
    Inherited(PathBuf),
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
        Init::Inherited(dir) => {
            let run = super::TrainedRun::load(dir)?;
            arch.check_fits(&run.space)?;
            run.net.extract(arch)?.tensors()
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
    let vm = varmap_of(tensors)?;
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = Vit::load(&config, vb)?;
    let params = Params::from_varmap(&vm);
    Ok((model, vm, params))
}

/// Trainable copies of a static model's `tensors`: the model loaded from
/// them (`VarBuilder::from_varmap`) shares its variables with the
/// parameters the training loop updates ([`Params::from_varmap`]).
pub(super) fn varmap_of(tensors: Vec<(String, candle_core::Tensor)>) -> Result<VarMap> {
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().expect("varmap poisoned");
        for (name, t) in tensors {
            data.insert(name, Var::from_tensor(&t.contiguous()?.copy()?)?);
        }
    }
    Ok(vm)
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
/// (data, optimizer, schedule) as given. An image recipe's `init_from` is
/// dropped (the model starts from `init`); a text recipe keeps it, as
/// [`Init::Scratch`] says.
fn standalone_recipe(recipe: &Recipe, space: &Space, output_dir: PathBuf) -> Recipe {
    let mut r = recipe.clone();
    r.output_dir = output_dir;
    if !space.is_text() {
        r.init_from = None;
    }
    r.few_shot = None;
    r.loss.distill = DistillConfig::None;
    r.loss.hidden_distill = None;
    r.loss.teacher = None;
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
    retrain_from(
        space,
        arch,
        recipe,
        Init::Scratch(recipe.init),
        output_dir,
        opts,
    )
}

/// Trains `arch` of `space` alone from `init` with `recipe`'s data and
/// schedule: [`Init::Scratch`] as [`retrain`], or [`Init::Inherited`]
/// from a trained supernet run of `space` (for text, its tokenizer then
/// replaces the recipe's).
pub fn retrain_from(
    space: &Space,
    arch: &Arch,
    recipe: &Recipe,
    init: Init,
    output_dir: PathBuf,
    opts: &RunOptions,
) -> Result<Summary> {
    arch.check_fits(space)?;
    let mut r = standalone_recipe(recipe, space, output_dir);
    if let Init::Inherited(dir) | Init::Exported(dir) = &init {
        crate::train::rundir::check_distinct(dir, &r.output_dir)?;
        use_tokenizer_of(&mut r, dir);
    }
    super::start(
        &r,
        space,
        RunKind::Standalone {
            arch: arch.clone(),
            init,
        },
        opts,
    )
}

/// A text recipe reads the tokenizer the weights in `dir` were trained
/// with (its `tokenizer.json`, by absolute path), not the one it names:
/// token ids must mean what they meant to the model.
fn use_tokenizer_of(r: &mut Recipe, dir: &Path) {
    let file = dir.join(super::TOKENIZER_FILE);
    if let (Some(t), true) = (r.data.text.as_mut(), file.is_file()) {
        t.tokenizer = Some(
            std::path::absolute(&file)
                .unwrap_or(file)
                .display()
                .to_string(),
        );
    }
}

/// Continues training the exported model in `model_dir` with `recipe`.
pub fn finetune(
    model_dir: &Path,
    recipe: &Recipe,
    output_dir: PathBuf,
    opts: &RunOptions,
) -> Result<Summary> {
    let (arch, space) = read_arch_file(model_dir)?;
    retrain_from(
        &space,
        &arch,
        recipe,
        Init::Exported(model_dir.to_path_buf()),
        output_dir,
        opts,
    )
}
