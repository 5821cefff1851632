//! Output directories: what kind of artifact a directory holds, the refusal
//! to write over another kind (or over anything, without `--force`), and
//! the exclusive lock a training process holds on its run directory.
//!
//! A run directory is self-locating: `--resume <dir>` writes into `<dir>`,
//! wherever it has been moved or copied, never where its recipe's
//! `output_dir` pointed when it started.

/// Atomic file writes (kept in the crate's low file-I/O module).
pub use crate::io::write_atomic;

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// The lock file a training process holds in its run directory.
pub const LOCK_FILE: &str = ".vitnas.lock";

/// The state file a search saves after every generation (its directory is
/// an [`Artifact::Search`]).
pub const SEARCH_STATE_FILE: &str = "search-state.json";

/// What a directory holds, judged by the files vitnas writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// Does not exist, or is empty.
    Empty,
    /// A training run (`train`, `retrain`, `finetune`): it has a
    /// checkpoint, a state file or trained weights.
    TrainingRun,
    /// A training run that stopped before its first checkpoint: the files
    /// written when it started (metrics, recipe) and nothing to resume. A
    /// new run may start over in it with `--force`: no trained weights
    /// are there to lose.
    UnstartedRun,
    /// An exported model (`export`): model.safetensors + config.json, or
    /// model.onnx + arch.json; no training state.
    ExportedModel,
    /// A search output directory (`search`): it has a search state.
    Search,
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
        // The lock file alone (left by a process killed before it wrote
        // anything) does not make a directory non-empty.
        if entries.all(|e| e.is_ok_and(|e| e.file_name() == LOCK_FILE)) {
            return Ok(Artifact::Empty);
        }
        let has = |f: &str| dir.join(f).exists();
        Ok(
            if has("checkpoint.safetensors") || has("state.json") || has("supernet.safetensors") {
                Artifact::TrainingRun
            } else if has("metrics.jsonl") {
                Artifact::UnstartedRun
            } else if (has("model.safetensors") && has("config.json"))
                || (has("model.onnx") && has("arch.json"))
            {
                Artifact::ExportedModel
            } else if has(SEARCH_STATE_FILE) {
                Artifact::Search
            } else {
                Artifact::Other
            },
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Artifact::Empty => "an empty directory",
            Artifact::TrainingRun => "a training run directory",
            Artifact::UnstartedRun => "a training run that stopped before its first checkpoint",
            Artifact::ExportedModel => "an exported model",
            Artifact::Search => "a search output directory",
            Artifact::Other => "a non-empty directory that vitnas did not write",
        }
    }
}

/// `path` as the OS will resolve it once the missing directories are
/// created: the deepest existing ancestor canonicalized (symbolic links and
/// `..` resolved by the OS), then the remaining components, which do not
/// exist and so cannot be links, applied lexically (`..` drops the one
/// before it). `runs/b/x/..` is `runs/b` even when `x` does not exist yet,
/// as `create_dir_all` followed by a write there would find.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|e| Error::io(path, e))?;
        cwd.join(path)
    };
    for base in abs.ancestors() {
        let Ok(mut resolved) = std::fs::canonicalize(base) else {
            continue;
        };
        let rest = abs.strip_prefix(base).expect("an ancestor is a prefix");
        for c in rest.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(n) => resolved.push(n),
                Component::RootDir | Component::Prefix(_) => resolved.push(c.as_os_str()),
            }
        }
        return Ok(resolved);
    }
    Ok(abs)
}

/// `spelled`, and where it resolves when that differs (for messages).
fn shown(spelled: &Path, resolved: &Path) -> PathBuf {
    let plain = std::path::absolute(spelled).unwrap_or_else(|_| spelled.to_path_buf());
    if plain == resolved {
        spelled.to_path_buf()
    } else {
        PathBuf::from(format!(
            "{} (resolves to {})",
            spelled.display(),
            resolved.display()
        ))
    }
}

/// Checks that `dir` may receive a new artifact of kind `want`
/// ([`Artifact::TrainingRun`], [`Artifact::ExportedModel`] or
/// [`Artifact::Search`]), judged on the directory it resolves to
/// ([`resolve`]: a path through `..` or a symbolic link is the directory it
/// reaches), and returns that resolved directory:
/// - an empty or missing directory always may;
/// - a training run never does, not even with `force`: a new run would
///   replace its checkpoint (resume it instead), an export its recipe;
/// - an existing search is continued with `--resume`, never replaced;
/// - anything else that is not empty needs `force`.
pub fn check_output(dir: &Path, want: Artifact, force: bool) -> Result<PathBuf> {
    let resolved = resolve(dir)?;
    let found = Artifact::of(&resolved)?;
    let refuse = |message: String| {
        Err(Error::OutputDir {
            dir: shown(dir, &resolved),
            message,
        })
    };
    match (found, want) {
        (Artifact::Empty, _) => Ok(resolved),
        (Artifact::TrainingRun, Artifact::TrainingRun) => refuse(
            "a run already exists here: continue it with --resume, or choose another output directory"
                .into(),
        ),
        (Artifact::UnstartedRun, Artifact::TrainingRun) if force => Ok(resolved),
        (Artifact::UnstartedRun, Artifact::TrainingRun) => refuse(
            "holds a run that stopped before its first checkpoint (nothing to resume): pass --force to start over in it (no trained weights are lost), or choose another directory"
                .into(),
        ),
        (Artifact::TrainingRun | Artifact::UnstartedRun, _) => refuse(
            "is a training run directory; writing there would replace its files (its recipe.toml among them); choose another directory"
                .into(),
        ),
        (Artifact::Search, _) => refuse(
            "a search already exists here: continue it with --resume, or choose another output directory"
                .into(),
        ),
        (_, _) if force => Ok(resolved),
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

/// Checks that the file `out` may be written (a latency CSV, a predictor),
/// judged on the path it resolves to ([`resolve`]), and returns that path:
/// - never one of `inputs` (the command's own input files), nor a
///   directory, nor a file inside a training run directory, not even with
///   `force`;
/// - a file inside an exported model only with `force`;
/// - an existing file only with `force`, or where the command `replaces`
///   it by design (`latency measure` continues its CSV after checking the
///   header; `eval --dump` rewrites its dump).
pub fn check_output_file(
    out: &Path,
    inputs: &[&Path],
    force: bool,
    replaces: bool,
) -> Result<PathBuf> {
    let resolved = resolve(out)?;
    let refuse = |message: String| {
        Err(Error::OutputDir {
            dir: shown(out, &resolved),
            message,
        })
    };
    for input in inputs {
        if resolve(input)? == resolved {
            return refuse(format!(
                "is the input {}: writing there would overwrite the input; choose another output file",
                input.display()
            ));
        }
    }
    if resolved.is_dir() {
        return refuse("is a directory; give a file name".into());
    }
    if let Some(parent) = resolved.parent() {
        match Artifact::of(parent)? {
            Artifact::TrainingRun | Artifact::UnstartedRun => {
                return refuse(format!(
                    "is inside the training run directory {}; writing there could replace its files; choose another directory",
                    parent.display()
                ))
            }
            Artifact::ExportedModel if !force => {
                return refuse(format!(
                    "is inside the exported model {}; pass --force to write there anyway, or choose another directory",
                    parent.display()
                ))
            }
            _ => {}
        }
    }
    if resolved.exists() && !force && !replaces {
        return refuse("already exists; pass --force to replace it, or choose another file".into());
    }
    Ok(resolved)
}

/// Refuses `out` when it is the same directory as `source` (e.g.
/// `finetune --model X --output-dir X` would overwrite its own input),
/// both compared as they resolve ([`resolve`]).
pub fn check_distinct(source: &Path, out: &Path) -> Result<()> {
    let resolved = resolve(out)?;
    if resolve(source)? == resolved {
        return Err(Error::OutputDir {
            dir: shown(out, &resolved),
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
        RunLock::acquire_at(dir.join(LOCK_FILE), dir)
    }

    /// Locks the file `out` that a process writes over time (e.g. a
    /// latency CSV) through `<out>.lock` beside it, or says which process
    /// holds it.
    pub fn acquire_file(out: &Path) -> Result<RunLock> {
        let mut name = out.as_os_str().to_owned();
        name.push(".lock");
        RunLock::acquire_at(PathBuf::from(name), out)
    }

    fn acquire_at(path: PathBuf, dir: &Path) -> Result<RunLock> {
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
