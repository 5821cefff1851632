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
    /// Start from a pretrained Hugging Face model, local dir or hub id (the
    /// HF cache, else downloaded): a ViT for an image space (e.g.
    /// google/vit-base-patch16-224), a BERT for a text space (e.g.
    /// sentence-transformers/all-MiniLM-L6-v2).
    #[arg(long)]
    init_from: Option<String>,
    /// Override the recipe's initialisation: torch_default,
    /// trunc_normal_0.02 or xavier_uniform.
    #[arg(long)]
    init: Option<vitnas::supernet::init::InitScheme>,
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
    /// Log each subnet's gradient norms, and for distilled subnets the
    /// cross-entropy gradient they would get from the labels, every
    /// log_every steps to metrics.jsonl (sets the recipe's
    /// train.diagnose_gradients).
    #[arg(long)]
    diagnose_gradients: bool,
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
        if self.diagnose_gradients {
            r.train.diagnose_gradients = true;
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
        Some(dir) if train::few_shot::FewShot::is_few_shot(dir) => {
            return report_few_shot(&train::few_shot::resume(dir, &opts)?, c)
        }
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
            if r.few_shot.is_some() {
                return report_few_shot(&train::few_shot::train(&r, &opts)?, c);
            }
            train::train(&r, &opts)?
        }
    };
    report(&summary, "train", c)
}

/// Prints a few-shot training's summary (rank 0), and how to continue it
/// when interrupted.
fn report_few_shot(s: &train::few_shot::FewShotSummary, c: &dyn Collective) -> anyhow::Result<()> {
    let root = vitnas::dist::is_root(c);
    if root {
        println!("{}", serde_json::to_string_pretty(s)?);
    }
    if s.interrupted {
        if root {
            eprintln!(
                "interrupted: continue the few-shot run with `vitnas train --resume {}`",
                s.dir.display()
            );
        }
        return Err(super::Exit(EXIT_INTERRUPTED).into());
    }
    Ok(())
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
