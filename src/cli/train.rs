//! `vitnas train <recipe>` and `vitnas train --resume <dir>`.

use clap::Args;
use std::path::PathBuf;
use vitnas::dist::Collective;
use vitnas::train::{self, recipe::Recipe, RunOptions, Summary};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A recipe file, e.g. recipes/quickstart.toml.
    #[arg(required_unless_present = "resume")]
    recipe: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with = "recipe")]
    resume: Option<PathBuf>,
    /// Override the recipe's output_dir.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Start from a pretrained Hugging Face ViT (local dir or hub id, e.g.
    /// google/vit-base-patch16-224: the HF cache, else downloaded).
    #[arg(long)]
    init_from: Option<String>,
    /// Override the recipe's initialisation: torch_default,
    /// trunc_normal_0.02 or xavier_uniform.
    #[arg(long)]
    init: Option<vitnas::init::InitScheme>,
    #[command(flatten)]
    run: RunArgs,
}

/// The options of every training command (train, retrain, finetune).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Override the recipe's data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Override the recipe's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many steps in total (checkpointed; resumable), also
    /// with --resume.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Start in a non-empty output directory that is not a run (an
    /// existing run is never overwritten: resume it).
    #[arg(long)]
    force: bool,
}

impl RunArgs {
    /// Applies --data and --seed to a recipe.
    pub fn apply(&self, r: &mut Recipe) {
        if let Some(d) = &self.data {
            r.data.path = Some(d.clone());
        }
        if let Some(s) = self.seed {
            r.seed = s;
        }
    }

    /// Run options with Ctrl-C handling and --max-steps, training on the
    /// ranks of `collective`.
    pub fn options<'a>(
        &self,
        resume: bool,
        collective: &'a dyn Collective,
    ) -> anyhow::Result<RunOptions<'a>> {
        Ok(RunOptions {
            resume,
            stop: super::stop_flag()?,
            progress: true,
            max_steps: self.max_steps,
            force: self.force,
            collective,
        })
    }
}

pub fn run(a: TrainArgs, c: &dyn Collective) -> anyhow::Result<()> {
    let opts = a.run.options(a.resume.is_some(), c)?;
    let summary = match &a.resume {
        Some(dir) => train::resume(dir, &opts)?,
        None => {
            let path = a.recipe.as_ref().expect("clap requires a recipe");
            let mut r = Recipe::from_file(path)?;
            if let Some(d) = a.output_dir {
                r.output_dir = d;
            }
            if let Some(i) = a.init_from {
                r.init_from = Some(i);
            }
            if let Some(i) = a.init {
                r.init = i;
            }
            a.run.apply(&mut r);
            train::train(&r, &opts)?
        }
    };
    report(&summary, "train", c)
}

/// The exit code of a run stopped by Ctrl-C after writing its checkpoint
/// (EX_TEMPFAIL: resumable), so that scripts tell it from a finished run.
pub const EXIT_INTERRUPTED: u8 = 75;

/// Prints a run's summary (rank 0), and how to continue it when
/// interrupted (then every rank exits with [`EXIT_INTERRUPTED`]).
pub fn report(summary: &Summary, command: &str, c: &dyn Collective) -> anyhow::Result<()> {
    let root = vitnas::dist::is_root(c);
    if root {
        println!("{}", serde_json::to_string_pretty(summary)?);
    }
    if summary.interrupted {
        if root {
            let mpirun = match c.size() {
                1 => String::new(),
                n => format!("mpirun -np {n} "),
            };
            eprintln!(
                "interrupted at step {}/{}: continue with `{mpirun}vitnas {command} --resume {}`",
                summary.steps,
                summary.total_steps,
                summary.run_dir.display()
            );
        }
        return Err(super::Exit(EXIT_INTERRUPTED).into());
    }
    Ok(())
}
