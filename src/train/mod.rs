//! Training from a recipe: a supernet (image or text), a few-shot split of
//! one, or a single static model (retrain, finetune).
//!
//! The flow, one file per concern:
//! - [`recipe`]: the TOML recipe and its validation;
//! - [`data`]: the seeded train/validation split and the test split;
//! - `session.rs`: starting a run directory, or resuming one (locked);
//! - `run.rs`: the one training loop — batch, sample, step, optimise,
//!   log, validate, checkpoint, test — for every modality, through
//!   `task.rs`'s `TrainTask`: what a modality supplies (batches, the
//!   step's architectures, evaluation, checkpoint files);
//! - `image.rs`: the image task, on `trainee.rs`'s model (a supernet with
//!   its sampler, or one static model); [`text`]: the text task, its data
//!   and runs;
//! - [`step`]: one step's forward and backward over the sampled subnets;
//!   [`sampler`], [`gradient`], [`loss`] and [`optim`] are its strategies;
//! - `data_parallel.rs`: what training on several ranks adds (a shard of
//!   each batch, the step's one all-reduce, rank 0 writes), on the
//!   [`RunOptions::collective`] the caller passes;
//! - [`checkpoint`]: atomic checkpoint files and their restore;
//! - [`summary`]: what a run returns; [`TrainedRun`]: a run loaded for use.
//! - [`rundir`]: run and output directories (their kind, `--force`, the
//!   run lock); [`eval`]: accuracy, loss and confusion counts on a dataset;
//!   [`progress`]: elapsed time and ETA of long commands;
//! - [`predictor`]: accuracy predictors fitted on a trained supernet's
//!   scores (the attentive sampler and predictor-screened search use them).
//!
//! Every source of randomness is derived from the recipe seed: the
//! initialisation, the per-epoch data order `(seed, epoch)`, and per step
//! `(seed, step)` the augmentation and the sampled subnets. A resumed run
//! therefore replays exactly what an uninterrupted run would have done, and
//! every rank of a data-parallel run samples the same subnets.

pub mod checkpoint;
pub mod data;
mod data_parallel;
pub mod eval;
pub mod few_shot;
mod flat;
pub mod gradient;
mod image;
pub mod loss;
pub mod optim;
pub mod predictor;
pub mod progress;
pub mod recipe;
mod run;
pub mod rundir;
pub mod sampler;
mod session;
pub mod standalone;
pub mod step;
pub mod summary;
mod task;
pub mod teacher;
pub mod text;
mod trained;
mod trainee;

pub use data::{load_test, load_train_val, DataSplit, TrainData};
pub use data_parallel::GRAD_BUCKET_ELEMS;
pub use session::resume;
pub(crate) use session::start;
pub use summary::{DataParallelReport, Summary};
pub use trained::TrainedRun;
pub use trainee::{build_scaled_supernet, build_supernet, RunKind};

use crate::dist::Collective;
use crate::error::Result;
use crate::space::Space;
use rand::{rngs::StdRng, SeedableRng};
use recipe::Recipe;
use std::sync::atomic::AtomicBool;

pub const RECIPE_FILE: &str = "recipe.toml";
pub const SPACE_FILE: &str = "space.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUPERNET_FILE: &str = "supernet.safetensors";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const SPLIT_FILE: &str = "data-split.json";
/// A text run's label names in id order.
pub const LABELS_FILE: &str = "labels.json";
/// A text run's tokenizer, copied into the run directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Why `dir` cannot be resumed (it has no checkpoint), and the way out: a
/// run that stopped before its first checkpoint is started over with
/// `--force` (nothing trained is lost).
pub(crate) fn nothing_to_resume(dir: &std::path::Path) -> String {
    match crate::train::rundir::Artifact::of(dir) {
        Ok(crate::train::rundir::Artifact::UnstartedRun) => format!(
            "not found: the run stopped before its first checkpoint, so there is nothing to \
             resume; start it over in {} with the command that started it and --force (no \
             trained weights are lost)",
            dir.display()
        ),
        _ => "not found: nothing to resume (is this a run directory?)".into(),
    }
}

/// The run directory and supernet file that `path` names: a run directory
/// (its `supernet.safetensors`), or a `.safetensors` file inside one.
pub fn run_paths(path: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    if path.is_dir() {
        return (path.to_path_buf(), path.join(SUPERNET_FILE));
    }
    let dir = path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    (dir, path.to_path_buf())
}

/// That the labels `theirs` a model was trained on (read from `file`,
/// where the recipe or command names it by `field`) are `labels`, the same
/// names in the same order (its classifier's rows are those labels).
pub(crate) fn check_labels(
    file: &std::path::Path,
    field: &str,
    theirs: &[String],
    labels: &[String],
) -> Result<()> {
    if theirs == labels {
        return Ok(());
    }
    Err(crate::error::Error::InvalidConfig {
        file: file.display().to_string(),
        field: field.into(),
        message: format!(
            "the model's labels {theirs:?} are not this data's {labels:?} (same names in the \
             same order)"
        ),
    })
}

/// The RNG of step `step`: augmentation and sampling draw from it.
pub fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Where and how to run.
pub struct RunOptions<'a> {
    /// Continue the run in `recipe.output_dir` from its checkpoint.
    pub resume: bool,
    /// Set (e.g. by Ctrl-C) to finish the current step, checkpoint and return.
    pub stop: &'a AtomicBool,
    /// Show a progress bar (when stderr is a terminal) or plain log lines.
    pub progress: bool,
    /// Stop after this many steps in total, overriding the recipe's
    /// `train.max_steps` (also when resuming).
    pub max_steps: Option<usize>,
    /// Start a run in a non-empty directory that is not a run (never over
    /// an existing run).
    pub force: bool,
    /// The ranks that train together ([`crate::dist::Single`] for an
    /// ordinary run): each takes its share of every batch, rank 0 writes
    /// the run directory (see `data_parallel.rs`).
    pub collective: &'a dyn Collective,
}

/// Starts a supernet run from a recipe: creates the run directory with the
/// resolved recipe and the space, then trains.
///
/// Train the quickstart recipe for 25 steps into a directory of your
/// choice (`no_run`: even a few steps read the Fashion-MNIST sample and
/// evaluate on its validation and test splits, several seconds):
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use vitnas::dist::Single;
/// use vitnas::train::{recipe::Recipe, train, RunOptions};
///
/// # fn main() -> vitnas::Result<()> {
/// let mut recipe = Recipe::from_file("recipes/quickstart.toml")?;
/// recipe.output_dir = std::env::temp_dir().join("vitnas-quickstart");
/// let stop = AtomicBool::new(false); // set it (e.g. on Ctrl-C) to checkpoint and return
/// let opts = RunOptions {
///     resume: false,
///     stop: &stop,
///     progress: false,
///     max_steps: Some(25),
///     force: false,
///     collective: &Single, // one process; an MPI world trains data-parallel
/// };
/// let summary = train(&recipe, &opts)?;
/// assert_eq!(summary.steps, 25);
/// if let Some(v) = summary.val_largest {
///     println!("largest subnet: {:.2} % validation accuracy", 100.0 * v.accuracy);
/// }
/// # Ok(())
/// # }
/// ```
pub fn train(recipe: &Recipe, opts: &RunOptions) -> Result<Summary> {
    if opts.resume {
        return resume(&recipe.output_dir, opts);
    }
    let space = Space::from_file(&recipe.space)?;
    if space.is_text() {
        return text::start(recipe, &space, opts);
    }
    start(recipe, &space, RunKind::Supernet, opts)
}
