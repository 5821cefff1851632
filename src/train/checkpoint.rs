//! Checkpoints: written atomically (temp file, fsync, rename, fsync of the
//! directory), so a kill at any moment leaves the previous checkpoint intact.
//!
//! * `supernet.safetensors`: the supernet weights only, Hugging Face names;
//!   what `eval`, `search` and `export` read.
//! * `checkpoint.safetensors`: weights + AdamW moments (`optimizer.m.<name>`,
//!   `optimizer.v.<name>`) + the [`TrainState`] as JSON metadata: what
//!   `train --resume` reads.
//! * `state.json`: the same state, for people.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub const STATE_KEY: &str = "vitnas.train_state";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed (including skipped ones).
    pub step: usize,
    /// AdamW updates applied.
    pub adam_t: u64,
    /// Steps skipped for a non-finite loss.
    pub skipped_steps: usize,
    pub total_steps: usize,
    pub recipe: String,
    /// The one architecture of a standalone run (retrain, finetune); absent
    /// for a supernet run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<crate::space::Arch>,
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let io = |e| Error::io(&tmp, e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Serializes named tensors (and optional string metadata) to safetensors bytes.
pub fn to_safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, Tensor)> = tensors.to_vec();
    safetensors::serialize(views, metadata).map_err(|e| Error::Checkpoint {
        path: "<memory>".into(),
        message: format!("cannot serialize: {e}"),
    })
}

/// Reads a safetensors file: its tensors and metadata. A truncated or
/// corrupt file is an error naming it, never a panic.
pub fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |message: String| Error::Checkpoint {
        path: path.into(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Copies `tensors[name]` into each variable, checking presence and shape.
pub fn load_into_vars(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    names: &[String],
    vars: &[candle_core::Var],
) -> Result<()> {
    for (name, var) in names.iter().zip(vars) {
        let t = tensors.get(name).ok_or_else(|| Error::Checkpoint {
            path: path.into(),
            message: format!("tensor `{name}` is missing"),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::Checkpoint {
                path: path.into(),
                message: format!(
                    "tensor `{name}`: expected shape {:?}, found {:?}",
                    var.dims(),
                    t.dims()
                ),
            });
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
