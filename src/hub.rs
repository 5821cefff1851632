//! Pretrained weights: resolving a Hugging Face model (a local directory, a
//! snapshot in the Hugging Face hub cache, or a download into that cache)
//! and loading its ViT tensors into the supernet's leading slices.

use crate::error::{Error, Result};
use crate::io::read_weights;
use crate::supernet::params::Params;
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

/// Files fetched for a hub model when they are not cached: the first two
/// are required, the rest taken when the repository has them.
const HUB_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// True when `HF_HUB_OFFLINE` (or transformers' `TRANSFORMERS_OFFLINE`) is
/// set to 1/true: never touch the network, as huggingface_hub does.
pub fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
    })
}

/// Resolves `spec` (a local directory, or a hub id like `org/name`) to a
/// directory holding config.json and model.safetensors. Order: the local
/// path; the hub caches (the snapshot `refs/main` points to), with no
/// network; then a download through hf-hub into the first cache directory
/// (`HF_ENDPOINT` honoured), unless offline ([`offline`]). The error lists
/// every place it looked and why the download failed.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let local = Path::new(spec);
    let mut looked = vec![local.display().to_string()];
    if local.join("config.json").is_file() {
        return Ok(local.to_path_buf());
    }
    let is_hub_id = spec.contains('/') && !spec.starts_with('.') && !spec.starts_with('/');
    let mut download_note = String::new();
    if is_hub_id {
        let folder = format!("models--{}", spec.replace('/', "--"));
        for cache in cache_dirs() {
            let repo = cache.join(&folder);
            looked.push(repo.display().to_string());
            let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) else {
                continue;
            };
            let snap = repo.join("snapshots").join(rev.trim());
            if snap.join("config.json").is_file() && snap.join("model.safetensors").is_file() {
                return Ok(snap);
            }
        }
        match (offline(), cache_dirs().into_iter().next()) {
            (true, _) => {
                download_note = " (offline: HF_HUB_OFFLINE is set, no download attempted)".into()
            }
            (false, None) => {
                download_note = " (no cache directory to download into: set HF_HOME)".into()
            }
            (false, Some(cache)) => match download(spec, &cache) {
                Ok(dir) => return Ok(dir),
                Err(e) => download_note = format!("; downloading through hf-hub failed: {e}"),
            },
        }
    }
    Err(Error::Data {
        source_name: spec.to_string(),
        message: format!(
            "pretrained model not found; looked in: {}{download_note}",
            looked.join(", ")
        ),
    })
}

/// Downloads a hub model's files into `cache` (hub layout) and returns its
/// snapshot directory.
fn download(id: &str, cache: &Path) -> std::result::Result<PathBuf, String> {
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.into()))
        .with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.model(id.to_string());
    let mut dir = None;
    for (i, file) in HUB_FILES.iter().enumerate() {
        match repo.get(file) {
            Ok(path) => dir = dir.or(path.parent().map(Path::to_path_buf)),
            Err(e) if i < 2 => return Err(format!("{file}: {e}")),
            Err(_) => {}
        }
    }
    dir.ok_or_else(|| "no files".to_string())
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
    let config = dir.join("config.json");
    let cfg = crate::models::vit::VitConfig::from_hf_config_file(&config)?;
    check_head_dim(&config, cfg.head_dim, head_dim)?;
    let file = dir.join("model.safetensors");
    let (tensors, _) = read_weights(&file, &Device::Cpu)?;
    fill(params, &file, tensors)
}

/// Refuses a pretrained model (`config`) whose head size is not the
/// space's.
fn check_head_dim(config: &Path, pretrained: usize, head_dim: usize) -> Result<()> {
    if pretrained == head_dim {
        return Ok(());
    }
    Err(Error::InvalidConfig {
        file: config.display().to_string(),
        field: "hidden_size / num_attention_heads".into(),
        message: format!(
            "pretrained head size {pretrained} differs from the space's head_dim {head_dim}"
        ),
    })
}

/// Copies a pretrained Hugging Face BERT (`dir`: config.json +
/// model.safetensors; `bert.`-prefixed names as `BertForSequenceClassification`
/// saves them, or bare names as sentence-transformers' all-MiniLM-L6-v2) into
/// a BERT supernet's variables, each tensor into the leading slice of the
/// same-named supernet tensor. Another head size, or a tensor larger than the
/// supernet's, is an error naming it.
pub fn load_bert_into(params: &Params, dir: &Path, head_dim: usize) -> Result<LoadReport> {
    let config = dir.join("config.json");
    let cfg = crate::models::bert::BertConfig::from_hf_config_file(&config)?;
    check_head_dim(&config, cfg.head_dim, head_dim)?;
    let file = dir.join("model.safetensors");
    let (tensors, _) = read_weights(&file, &Device::Cpu)?;
    let tensors = tensors
        .into_iter()
        .map(
            |(n, t)| match n.starts_with("bert.") || n.starts_with("classifier.") {
                true => (n, t),
                false => (format!("bert.{n}"), t),
            },
        )
        .collect();
    fill(params, &file, tensors)
}

/// Fills each variable of `params` from the same-named tensor of `file`
/// (its leading slice when the pretrained tensor is smaller).
pub(crate) fn fill(
    params: &Params,
    file: &Path,
    mut tensors: std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<LoadReport> {
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
