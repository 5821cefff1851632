//! A finished (or checkpointed) training run, loaded for evaluation, search
//! or export.

use super::checkpoint::read_weights;
use super::data::load_train_val;
use super::recipe::Recipe;
use super::{RECIPE_FILE, SPACE_FILE};
use crate::data::batch::Normalize;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::space::Space;
use crate::supernet::Supernet;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// A finished (or checkpointed) training run, loaded for evaluation,
/// search or export: its resolved recipe, its space and its supernet.
pub struct TrainedRun {
    pub dir: PathBuf,
    pub recipe: Recipe,
    pub space: Space,
    pub net: Supernet,
}

impl TrainedRun {
    /// Loads a run directory, or a supernet `.safetensors` file inside one.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: "not found: expected a training run directory (recipe.toml, space.toml, supernet.safetensors) or a supernet .safetensors inside one".into(),
            });
        }
        let (dir, file) = super::run_paths(path);
        let recipe = Recipe::from_file(dir.join(RECIPE_FILE))?;
        let space = Space::from_file(dir.join(SPACE_FILE))?;
        let (tensors, _) = read_weights(&file, &Device::Cpu)?;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let net =
            Supernet::with_scaling(&space, recipe.init, &recipe.scaling, vb).map_err(|e| {
                Error::Checkpoint {
                    path: file.clone(),
                    message: e.to_string(),
                }
            })?;
        Ok(Self {
            dir,
            recipe,
            space,
            net,
        })
    }

    /// The run at `path` and the architecture `spec` names in it
    /// ([`Self::arch`]). For a few-shot directory (`[few_shot]`), `spec` is
    /// read on the whole space and the run is the sub-supernet that holds
    /// that architecture.
    pub fn load_with_arch(
        path: &Path,
        spec: &str,
        off_grid: bool,
    ) -> Result<(Self, crate::space::Arch)> {
        if super::few_shot::FewShot::is_few_shot(path) {
            let fs = super::few_shot::FewShot::load(path)?;
            let arch = fs.manifest.space.arch_from_spec(spec, off_grid)?;
            let run = Self::load(&fs.part_for(&arch)?)?;
            return Ok((run, arch));
        }
        let run = Self::load(path)?;
        let arch = run.arch(spec, off_grid)?;
        Ok((run, arch))
    }

    /// `largest`, `smallest`, or an architecture JSON file on the space's
    /// grid (or, with `off_grid`, any that fits the supernet).
    pub fn arch(&self, spec: &str, off_grid: bool) -> Result<crate::space::Arch> {
        self.space.arch_from_spec(spec, off_grid)
    }

    /// The validation split of the run and the normalisation it trained with.
    pub fn validation(&self) -> Result<(Dataset, Normalize)> {
        let d = load_train_val(&self.recipe, &self.space)?;
        Ok((d.val, self.recipe.data.normalize.clone().unwrap_or(d.norm)))
    }
}
