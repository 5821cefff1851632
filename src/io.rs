//! Files every layer writes and reads: atomic writes (temporary file,
//! fsync, rename, fsync of the directory) and safetensors files, with the
//! checks that every command loading weights relies on. The lowest layer of
//! file I/O: it knows tensors and paths, no model, run or recipe.
//! [`crate::train::checkpoint`] re-exports it under its public path.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // A temporary name of this process and call alone, so that concurrent
    // writers of one file (e.g. the shards of a reference set) never
    // rename each other's half-written file: the last complete one wins.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!(
        "{}.{}-{n}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        // A partial temp file (e.g. on a full disk) must not keep the space.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
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

/// Writes named tensors (and optional string metadata) as a safetensors
/// file at `path`, atomically ([`write_atomic`]).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomic(path, &to_safetensors_bytes(tensors, metadata)?)
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

/// Integer buffers that Hugging Face checkpoints carry beside the weights.
pub(crate) const INTEGER_BUFFERS: &[&str] =
    &["position_ids", "token_type_ids", "num_batches_tracked"];

/// [`read_safetensors`] for model weights: an integer tensor (other than
/// the integer buffers Hugging Face checkpoints carry) is an error naming
/// it, not silently cast to float; so is a float tensor holding a NaN or an
/// infinity (checked once here, at load, for every command that reads
/// weights: a model would otherwise run to a `null` loss and chance
/// accuracy).
pub fn read_weights(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let (tensors, meta) = read_safetensors(path, device)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !t.dtype().is_float() {
            if INTEGER_BUFFERS.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            return Err(Error::Checkpoint {
                path: path.into(),
                message: format!(
                    "tensor `{name}` has dtype {:?}: weights must be floating point (f32, f16, bf16, f64)",
                    t.dtype()
                ),
            });
        }
        if let Some(bad) = first_non_finite(t)? {
            return Err(Error::Checkpoint {
                path: path.into(),
                message: format!(
                    "tensor `{name}` holds a non-finite value ({bad}): the weights are corrupt \
                     (or come from a run that diverged); use an earlier checkpoint or retrain"
                ),
            });
        }
    }
    Ok((tensors, meta))
}

/// The first NaN or infinity of a float tensor, if any.
fn first_non_finite(t: &Tensor) -> Result<Option<f64>> {
    // x − x is 0 for every finite x and NaN otherwise: one reduction tells
    // whether to look further.
    let probe = t.sub(t)?.sum_all()?.to_dtype(candle_core::DType::F64)?;
    if probe.to_scalar::<f64>()? == 0.0 {
        return Ok(None);
    }
    let v = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?;
    Ok(v.into_iter().find(|x| !x.is_finite()))
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

/// Reads the JSON file `path` into a `T`; errors name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|error| Error::Json {
        path: path.into(),
        error,
    })
}

/// [`read_json`] of a file that names its format: a `T` whose format,
/// `format_of(&t)`, must be `want`, else the error is `wrong` of the message
/// "format "found" is not `what` (`want`)" (the caller's variant naming the
/// file).
pub fn read_json_format<T: serde::de::DeserializeOwned>(
    path: &Path,
    (want, what): (&str, &str),
    format_of: impl Fn(&T) -> &str,
    wrong: impl FnOnce(String) -> Error,
) -> Result<T> {
    let t: T = read_json(path)?;
    match format_of(&t) {
        f if f == want => Ok(t),
        f => Err(wrong(format!("format {f:?} is not {what} ({want})"))),
    }
}
