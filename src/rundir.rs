//! Output directories: what kind of artifact a directory holds, the refusal
//! to write over another kind (or over anything, without `--force`), and
//! the exclusive lock a training process holds on its run directory.
//!
//! A run directory is self-locating: `--resume <dir>` writes into `<dir>`,
//! wherever it has been moved or copied, never where its recipe's
//! `output_dir` pointed when it started.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock file a training process holds in its run directory.
pub const LOCK_FILE: &str = ".vitnas.lock";

/// What a directory holds, judged by the files vitnas writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// Does not exist, or is empty.
    Empty,
    /// A training run (`train`, `retrain`, `finetune`): it has a
    /// checkpoint, a state file or metrics.
    TrainingRun,
    /// An exported model (`export`): model.safetensors + config.json,
    /// no training state.
    ExportedModel,
    /// Anything else.
    Other,
}

impl Artifact {
    /// Classifies `dir`.
    pub fn of(dir: &Path) -> Result<Artifact> {
        let mut entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Artifact::Empty),
            Err(e) => return Err(Error::io(dir, e)),
        };
        if entries.next().is_none() {
            return Ok(Artifact::Empty);
        }
        let has = |f: &str| dir.join(f).exists();
        Ok(
            if has("checkpoint.safetensors") || has("state.json") || has("metrics.jsonl") {
                Artifact::TrainingRun
            } else if has("model.safetensors") && has("config.json") {
                Artifact::ExportedModel
            } else {
                Artifact::Other
            },
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Artifact::Empty => "an empty directory",
            Artifact::TrainingRun => "a training run directory",
            Artifact::ExportedModel => "an exported model",
            Artifact::Other => "a non-empty directory that vitnas did not write",
        }
    }
}

/// Checks that `dir` may receive a new artifact of kind `want`
/// ([`Artifact::TrainingRun`] or [`Artifact::ExportedModel`]):
/// - an empty or missing directory always may;
/// - a training run never does, not even with `force`: a new run would
///   replace its checkpoint (resume it instead), an export its recipe;
/// - anything else that is not empty needs `force`.
pub fn check_output(dir: &Path, want: Artifact, force: bool) -> Result<()> {
    let found = Artifact::of(dir)?;
    let refuse = |message: String| {
        Err(Error::OutputDir {
            dir: dir.to_path_buf(),
            message,
        })
    };
    match (found, want) {
        (Artifact::Empty, _) => Ok(()),
        (Artifact::TrainingRun, Artifact::TrainingRun) => refuse(
            "a run already exists here: continue it with --resume, or choose another output directory"
                .into(),
        ),
        (Artifact::TrainingRun, _) => refuse(
            "is a training run directory; writing there would replace its files (its recipe.toml among them); choose another directory"
                .into(),
        ),
        (_, _) if force => Ok(()),
        (found, want) if found == want => refuse(format!(
            "already holds {}; pass --force to replace it, or choose another directory",
            found.describe()
        )),
        (found, want) => refuse(format!(
            "is {}, not {}; refusing to write into it (pass --force to write anyway, or choose another directory)",
            found.describe(),
            want.describe()
        )),
    }
}

/// Refuses `out` when it is the same directory as `source` (e.g.
/// `finetune --model X --output-dir X` would overwrite its own input).
pub fn check_distinct(source: &Path, out: &Path) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canon(source) == canon(out) {
        return Err(Error::OutputDir {
            dir: out.to_path_buf(),
            message: format!(
                "is the input directory {}: writing there would overwrite the input; choose another output directory",
                source.display()
            ),
        });
    }
    Ok(())
}

/// An exclusive lock on a run directory, held while a process trains in it
/// (an OS advisory lock on [`LOCK_FILE`], which records the holder's pid).
/// The OS releases the lock when the process dies, so a lock file left by a
/// killed process is recognised as stale and taken over. Dropping the lock
/// removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    _file: File,
}

impl RunLock {
    /// Locks `dir` (which must exist), or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::OutputDir {
                    dir: dir.to_path_buf(),
                    message: format!(
                        "in use by another vitnas process ({}); wait for it to finish or stop it",
                        holder.trim()
                    ),
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let stale = std::fs::read_to_string(&path).unwrap_or_default();
        if !stale.trim().is_empty() {
            tracing::warn!(
                "{}: stale lock ({}) left by a process that no longer runs; taken over",
                path.display(),
                stale.trim()
            );
        }
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        writeln!(file, "pid {}", std::process::id()).map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { path, _file: file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
