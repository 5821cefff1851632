//! `vitnas retrain --space <file> --arch <arch.json> --recipe <recipe>` and
//! `vitnas retrain --resume <dir>`.

use super::train::{report, RunArgs};
use clap::Args;
use std::path::{Path, PathBuf};
use vitnas::space::Space;
use vitnas::train::{self, recipe::Recipe, standalone};

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
    /// Accept an architecture whose values lie outside the space's choice
    /// lists but fit the supernet.
    #[arg(long)]
    off_grid: bool,
    /// Override the recipe's initialisation: torch_default,
    /// trunc_normal_0.02 or xavier_uniform.
    #[arg(long)]
    init: Option<vitnas::supernet::init::InitScheme>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(a: RetrainArgs, c: &dyn vitnas::dist::Collective) -> anyhow::Result<()> {
    let opts = a.run.options(a.resume.is_some(), c)?;
    if let Some(dir) = &a.resume {
        return report(&train::resume(dir, &opts)?, "retrain", c);
    }
    let space = Space::from_file(a.space.as_ref().expect("clap requires --space"))?;
    let spec = a.arch.as_deref().expect("clap requires --arch");
    let arch = space.arch_from_spec(spec, a.off_grid)?;
    let mut recipe = Recipe::from_file(a.recipe.as_ref().expect("clap requires --recipe"))?;
    if let Some(e) = a.epochs {
        recipe.train.epochs = e;
    }
    if let Some(i) = a.init {
        recipe.init = i;
    }
    a.run.apply(&mut recipe);
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
        c,
    )
}
