//! Starting a run directory, and resuming one. Both hold the directory's
//! [`RunLock`] for as long as they train. In a data-parallel run (several
//! ranks) rank 0 alone checks, locks and writes the directory; every rank
//! reads the data (and, resuming, the checkpoint), and they refuse to start
//! unless they hold the same build, resolved recipe and space.

use super::checkpoint::write_atomic;
use super::data::load_train_val;
use super::data_parallel::{check_batch, check_same_run};
use super::image::run;
use super::recipe::Recipe;
use super::summary::Summary;
use super::trainee::RunKind;
use super::{standalone, RunOptions};
use super::{CHECKPOINT_FILE, METRICS_FILE, RECIPE_FILE, SPACE_FILE, SPLIT_FILE};
use crate::dist;
use crate::error::{Error, Result};
use crate::space::Space;
use crate::train::rundir::{self, Artifact, RunLock};
use std::path::Path;

/// Starts a run of `kind` in `recipe.output_dir`: checks the recipe (with
/// every override applied) and the directory, writes the resolved recipe,
/// the space and the data split, then trains. A text space's run is
/// [`super::text`]'s.
pub(crate) fn start(
    recipe: &Recipe,
    space: &Space,
    kind: RunKind,
    opts: &RunOptions,
) -> Result<Summary> {
    if space.is_text() {
        return super::text::start_kind(recipe, space, kind, opts);
    }
    let dir = &recipe.output_dir;
    if opts.resume {
        return resume(dir, opts);
    }
    recipe.validate_resolved()?;
    check_batch(opts.collective, recipe)?;
    let root = dist::is_root(opts.collective);
    if root {
        rundir::check_output(dir, Artifact::TrainingRun, opts.force)?;
    }
    let data = load_train_val(recipe, space)?;
    if let Some(t) = &recipe.loss.teacher {
        // Refused before the directory is written (training loads it again).
        let hidden = recipe.loss.hidden_distill.is_some();
        super::teacher::FixedTeacher::load(t, space, None, hidden)?;
    }
    let mut resolved = recipe.clone();
    resolved.data.normalize = Some(data.norm.clone());
    // The data directory as found, so that a resume from anywhere reads
    // the same files.
    resolved.data.path = Some(data.split.data_dir.clone());
    resolved.resolve_teacher();
    check_same_run(opts.collective, &resolved, &space.to_toml_string())?;
    let _lock = match root {
        true => Some(write_run_dir(dir, &resolved, space, &data.split, opts)?),
        false => None,
    };
    run(&resolved, space, kind, &data.train, &data.val, None, opts)
}

/// Creates the run directory under its lock and writes the resolved
/// recipe, the space, the data split and an empty metrics file.
fn write_run_dir(
    dir: &Path,
    resolved: &Recipe,
    space: &Space,
    split: &super::DataSplit,
    opts: &RunOptions,
) -> Result<RunLock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock = RunLock::acquire(dir)?;
    // Checked again under the lock: another process may have started here.
    if dir.join(CHECKPOINT_FILE).exists() || dir.join(METRICS_FILE).exists() {
        rundir::check_output(dir, Artifact::TrainingRun, opts.force)?;
    }
    write_atomic(&dir.join(RECIPE_FILE), resolved.to_toml_string().as_bytes())?;
    write_atomic(&dir.join(SPACE_FILE), space.to_toml_string().as_bytes())?;
    let split = serde_json::to_string(split).expect("a split serializes");
    write_atomic(&dir.join(SPLIT_FILE), split.as_bytes())?;
    std::fs::write(dir.join(METRICS_FILE), b"")
        .map_err(|e| Error::io(dir.join(METRICS_FILE), e))?;
    Ok(lock)
}

/// Continues the run in `dir` from its last checkpoint, writing into `dir`
/// (wherever the run has moved; the recipe's `output_dir` is where it
/// started and is not used).
pub fn resume(dir: &Path, opts: &RunOptions) -> Result<Summary> {
    if !dir.join(CHECKPOINT_FILE).is_file() {
        return Err(Error::Checkpoint {
            path: dir.join(CHECKPOINT_FILE),
            message: super::nothing_to_resume(dir),
        });
    }
    if Space::from_file(dir.join(SPACE_FILE))?.is_text() {
        return super::text::resume(dir, opts);
    }
    let root = dist::is_root(opts.collective);
    let _lock = root.then(|| RunLock::acquire(dir)).transpose()?;
    let mut recipe = Recipe::from_file(dir.join(RECIPE_FILE))?;
    recipe.output_dir = dir.to_path_buf();
    check_batch(opts.collective, &recipe)?;
    let space = Space::from_file(dir.join(SPACE_FILE))?;
    let data = load_train_val(&recipe, &space)?;
    let ckpt = dir.join(CHECKPOINT_FILE);
    let (tensors, state) = super::checkpoint::read_checkpoint(&ckpt)?;
    check_same_run(opts.collective, &recipe, &space.to_toml_string())?;
    if root {
        truncate_metrics(&dir.join(METRICS_FILE), state.step)?;
    }
    let kind = match &state.arch {
        None => RunKind::Supernet,
        Some(arch) => RunKind::Standalone {
            arch: arch.clone(),
            init: standalone::Init::Scratch(recipe.init),
        },
    };
    run(
        &recipe,
        &space,
        kind,
        &data.train,
        &data.val,
        Some((tensors, state)),
        opts,
    )
}

/// Drops metric lines written after the checkpoint a run resumes from.
pub(crate) fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}
