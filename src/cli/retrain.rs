//! `vitnas retrain --space <file> --arch <arch.json> --recipe <recipe>` and
//! `vitnas retrain --resume <dir>`.

use super::train::report;
use clap::Args;
use std::path::{Path, PathBuf};
use vitnas::space::{Arch, Space};
use vitnas::train::{self, recipe::Recipe, standalone, RunOptions};

#[derive(Debug, Args)]
pub struct RetrainArgs {
    /// The search space the architecture belongs to.
    #[arg(long, required_unless_present = "resume")]
    space: Option<PathBuf>,
    /// The architecture: a JSON file (e.g. `vitnas search`'s arch-1.json),
    /// `largest` or `smallest`.
    #[arg(long, required_unless_present = "resume")]
    arch: Option<String>,
    /// Data, optimizer and schedule (its sampler and distillation are not
    /// used: one architecture, no teacher).
    #[arg(long, required_unless_present = "resume")]
    recipe: Option<PathBuf>,
    /// Continue the standalone run in this directory.
    #[arg(long, conflicts_with_all = ["space", "arch", "recipe"])]
    resume: Option<PathBuf>,
    /// Run directory [default: runs/retrain-<recipe name>-<arch file stem>].
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Override the recipe's epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Override the recipe's data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Override the recipe's seed (initialisation, data order, augmentation).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many steps in total (checkpointed; resumable).
    #[arg(long)]
    max_steps: Option<usize>,
}

/// `largest`, `smallest` or an architecture file, checked against the space.
pub fn arch_of(space: &Space, spec: &str) -> anyhow::Result<Arch> {
    let arch = match spec {
        "largest" => space.largest(),
        "smallest" => space.smallest(),
        path => Arch::from_json_file(path)?,
    };
    arch.check_fits(space)?;
    Ok(arch)
}

pub fn run(a: RetrainArgs) -> anyhow::Result<()> {
    let opts = RunOptions {
        resume: a.resume.is_some(),
        stop: super::stop_flag()?,
        progress: true,
        max_steps: a.max_steps,
    };
    if let Some(dir) = &a.resume {
        return report(&train::resume(dir, &opts)?, "retrain");
    }
    let space = Space::from_file(a.space.as_ref().expect("clap requires --space"))?;
    let spec = a.arch.as_deref().expect("clap requires --arch");
    let arch = arch_of(&space, spec)?;
    let mut recipe = Recipe::from_file(a.recipe.as_ref().expect("clap requires --recipe"))?;
    if let Some(e) = a.epochs {
        recipe.train.epochs = e;
    }
    if let Some(d) = a.data {
        recipe.data.path = Some(d);
    }
    if let Some(s) = a.seed {
        recipe.seed = s;
    }
    let stem = Path::new(spec)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string());
    let out = a
        .output_dir
        .unwrap_or_else(|| PathBuf::from(format!("runs/retrain-{}-{stem}", recipe.name)));
    report(
        &standalone::retrain(&space, &arch, &recipe, out, &opts)?,
        "retrain",
    )
}
