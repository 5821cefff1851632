//! Pretrained weights: resolving a Hugging Face model (local directory or
//! the shared hub cache, offline) and loading its ViT tensors into the
//! supernet's leading slices.

use crate::error::{Error, Result};
use crate::train::checkpoint::read_safetensors;
use crate::train::step::Params;
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The hub cache directories searched, in order: `HF_HUB_CACHE`,
/// `HF_HOME/hub`, `~/.cache/huggingface/hub` (the layout hf-hub and
/// transformers share).
pub fn cache_dirs() -> Vec<PathBuf> {
    let mut v = vec![];
    if let Some(c) = std::env::var_os("HF_HUB_CACHE") {
        v.push(PathBuf::from(c));
    }
    if let Some(h) = std::env::var_os("HF_HOME") {
        v.push(PathBuf::from(h).join("hub"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".cache/huggingface/hub"));
    }
    v
}

/// Resolves `spec` (a local directory, or a hub id like `org/name`) to a
/// directory holding config.json and model.safetensors. Looks in the local
/// path first, then in the hub caches (the snapshot `refs/main` points to);
/// never touches the network. The error lists every place it looked.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let local = Path::new(spec);
    let mut looked = vec![local.display().to_string()];
    if local.join("config.json").is_file() {
        return Ok(local.to_path_buf());
    }
    if spec.contains('/') && !spec.starts_with('.') && !spec.starts_with('/') {
        let folder = format!("models--{}", spec.replace('/', "--"));
        for cache in cache_dirs() {
            let repo = cache.join(&folder);
            looked.push(repo.display().to_string());
            let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) else {
                continue;
            };
            let snap = repo.join("snapshots").join(rev.trim());
            if snap.join("config.json").is_file() {
                return Ok(snap);
            }
        }
    }
    Err(Error::Data {
        source_name: spec.to_string(),
        message: format!(
            "pretrained model not found (offline: no download attempted); looked in: {}",
            looked.join(", ")
        ),
    })
}

/// What loading pretrained weights did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Supernet tensors filled (fully or in their leading slice).
    pub loaded: Vec<String>,
    /// Supernet tensors the checkpoint does not have (kept as initialised).
    pub initialised: Vec<String>,
    /// Checkpoint tensors the supernet has no place for.
    pub ignored: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "loaded {} tensors, initialised {}, ignored {}",
            self.loaded.len(),
            self.initialised.len(),
            self.ignored.len()
        )?;
        for n in &self.initialised {
            writeln!(f, "  initialised {n}")?;
        }
        for n in &self.ignored {
            writeln!(f, "  ignored {n}")?;
        }
        Ok(())
    }
}

/// Copies a pretrained Hugging Face ViT (`dir`: config.json +
/// model.safetensors) into the supernet's variables: each pretrained tensor
/// fills the leading slice of the same-named supernet tensor (the whole of
/// it when the dims match). A pretrained tensor larger than the supernet's in
/// any dimension, or with another head size, is an error naming it.
pub fn load_vit_into(params: &Params, dir: &Path, head_dim: usize) -> Result<LoadReport> {
    let cfg = crate::models::vit::VitConfig::from_hf_config_file(&dir.join("config.json"))?;
    if cfg.head_dim != head_dim {
        return Err(Error::Tensor {
            name: format!(
                "{}: hidden_size / num_attention_heads",
                dir.join("config.json").display()
            ),
            message: format!(
                "pretrained head size {} differs from the space's head_dim {head_dim}",
                cfg.head_dim
            ),
        });
    }
    let file = dir.join("model.safetensors");
    let (mut tensors, _) = read_safetensors(&file, &Device::Cpu)?;
    let mut report = LoadReport::default();
    for (name, var) in params.names.iter().zip(&params.vars) {
        let Some(src) = tensors.remove(name) else {
            report.initialised.push(name.clone());
            continue;
        };
        let (full, part) = (var.dims().to_vec(), src.dims().to_vec());
        if full.len() != part.len() || full.iter().zip(&part).any(|(f, p)| p > f) {
            return Err(Error::Tensor {
                name: format!("{name} (in {})", file.display()),
                message: format!("pretrained shape {part:?} does not fit the supernet's {full:?}"),
            });
        }
        let src = src.to_dtype(var.dtype())?;
        let value = if full == part {
            src
        } else {
            let ranges: Vec<std::ops::Range<usize>> = part.iter().map(|&p| 0..p).collect();
            var.as_tensor().detach().slice_assign(&ranges, &src)?
        };
        var.set(&value)?;
        report.loaded.push(name.clone());
    }
    let mut ignored: Vec<String> = tensors.into_keys().collect();
    ignored.sort();
    report.ignored = ignored;
    Ok(report)
}
