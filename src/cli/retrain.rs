//! `vitnas retrain --space <file> --arch <arch.json> --recipe <recipe>`,
//! `vitnas retrain --supernet <run> --arch <arch.json> [--inherit]` and
//! `vitnas retrain --resume <dir>`.

use super::train::{report, RunArgs};
use clap::Args;
use std::path::{Path, PathBuf};
use vitnas::space::Space;
use vitnas::train::standalone::Init;
use vitnas::train::{self, recipe::Recipe, standalone, RECIPE_FILE, SPACE_FILE};

#[derive(Debug, Args)]
pub struct RetrainArgs {
    /// The search space the architecture belongs to (image or text).
    #[arg(long, required_unless_present_any = ["resume", "supernet"])]
    space: Option<PathBuf>,
    /// A trained supernet run directory (image or text): its space, and
    /// its recipe unless --recipe is given.
    #[arg(long, conflicts_with = "space")]
    supernet: Option<PathBuf>,
    /// Start from the supernet's trained weights of --arch (inherited)
    /// instead of the recipe's initialisation (needs --supernet).
    #[arg(long)]
    inherit: bool,
    /// The architecture: a JSON file (e.g. `vitnas search`'s arch-1.json),
    /// `largest` or `smallest`.
    #[arg(long, required_unless_present = "resume")]
    arch: Option<String>,
    /// Data, optimizer and schedule (its sampler and distillation are not
    /// used: one architecture, no teacher) [default with --supernet: the
    /// run's recipe]. A text recipe's `init_from` (pretrained BERT) is the
    /// start "from scratch": text subnets are fine-tuned, not trained from
    /// random weights.
    #[arg(long, required_unless_present_any = ["resume", "supernet"])]
    recipe: Option<PathBuf>,
    /// Continue the standalone run in this directory.
    #[arg(long, conflicts_with_all = ["space", "supernet", "inherit", "arch", "recipe"])]
    resume: Option<PathBuf>,
    /// Run directory [default: runs/retrain-<recipe name>-<arch file stem>,
    /// with -inherit appended under --inherit].
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
    if a.inherit && a.supernet.is_none() {
        anyhow::bail!("--inherit takes the weights of a trained supernet: add --supernet <run>");
    }
    let run_dir = a.supernet.as_deref().map(|p| train::run_paths(p).0);
    let space = match &run_dir {
        Some(dir) => Space::from_file(dir.join(SPACE_FILE))?,
        None => Space::from_file(a.space.as_ref().expect("clap requires --space"))?,
    };
    let spec = a.arch.as_deref().expect("clap requires --arch");
    let arch = space.arch_from_spec(spec, a.off_grid)?;
    let mut recipe = match (&a.recipe, &run_dir) {
        (Some(p), _) => Recipe::from_file(p)?,
        (None, Some(dir)) => Recipe::from_file(dir.join(RECIPE_FILE))?,
        (None, None) => unreachable!("clap requires --recipe without --supernet"),
    };
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
    let suffix = if a.inherit { "-inherit" } else { "" };
    let out = a
        .output_dir
        .unwrap_or_else(|| PathBuf::from(format!("runs/retrain-{}-{stem}{suffix}", recipe.name)));
    let init = match (&run_dir, a.inherit) {
        (Some(dir), true) => Init::Inherited(dir.clone()),
        _ => Init::Scratch(recipe.init),
    };
    report(
        &standalone::retrain_from(&space, &arch, &recipe, init, out, &opts)?,
        "retrain",
        c,
    )
}
