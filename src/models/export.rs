//! Exporting a subnet as a standalone model directory:
//! `model.safetensors` (contiguous extracted tensors), `config.json`
//! (Hugging Face `ViTForImageClassification` fields when representable, plus
//! a `vitnas` block with the per-layer shapes and the input normalisation)
//! and `arch.json` (the architecture, its space, params and FLOPs).

use super::vit::{Vit, VitConfig};
use crate::data::batch::Normalize;
use crate::error::{Error, Result};
use crate::io::{read_weights, write_atomic, write_safetensors};
use crate::space::{flops, params, Arch, Space};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;

/// The `vitnas` block of an exported config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitnasBlock {
    pub config: VitConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalize>,
    pub hf_representable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_note: Option<String>,
}

/// Why a config is not a Hugging Face ViT (None: it is one).
pub fn hf_obstacle(c: &VitConfig) -> Option<String> {
    let h0 = c.num_heads.first().copied().unwrap_or(0);
    let m0 = c.intermediate_sizes.first().copied().unwrap_or(0);
    if c.num_heads.iter().any(|&h| h != h0) {
        return Some(format!("heads differ across layers {:?}", c.num_heads));
    }
    if c.intermediate_sizes.iter().any(|&m| m != m0) {
        return Some(format!(
            "MLP widths differ across layers {:?}",
            c.intermediate_sizes
        ));
    }
    if h0 * c.head_dim != c.hidden_size {
        return Some(format!(
            "heads × head_dim = {h0} × {} = {} differs from hidden_size {} (HF derives head_dim = hidden / heads)",
            c.head_dim,
            h0 * c.head_dim,
            c.hidden_size
        ));
    }
    None
}

/// Zero-pads every layer's heads and MLP units to the model's maximum: the
/// extra heads have zero query/key/value weights and zero output columns,
/// the extra MLP units zero weights and biases (GELU(0) = 0), so outputs are
/// unchanged. Costs the padded units' FLOPs.
pub fn pad_uniform(m: &Vit) -> Result<Vit> {
    let c = &m.config;
    let hmax = *c.num_heads.iter().max().unwrap_or(&0);
    let mmax = *c.intermediate_sizes.iter().max().unwrap_or(&0);
    let qmax = hmax * c.head_dim;
    let pad_rows = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
        let extra = n - t.dim(0)?;
        if extra == 0 {
            return Ok(t.clone());
        }
        let mut dims = t.dims().to_vec();
        dims[0] = extra;
        Tensor::cat(&[t, &Tensor::zeros(dims, t.dtype(), t.device())?], 0)
    };
    let pad_cols = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
        let extra = n - t.dim(1)?;
        if extra == 0 {
            return Ok(t.clone());
        }
        Tensor::cat(
            &[
                t,
                &Tensor::zeros((t.dim(0)?, extra), t.dtype(), t.device())?,
            ],
            1,
        )
    };
    let mut out = m.clone();
    for l in out.layers.iter_mut() {
        for lin in [&mut l.query, &mut l.key, &mut l.value] {
            lin.weight = pad_rows(&lin.weight, qmax)?;
            lin.bias = pad_rows(&lin.bias, qmax)?;
        }
        l.attention_output.weight = pad_cols(&l.attention_output.weight, qmax)?;
        l.intermediate.weight = pad_rows(&l.intermediate.weight, mmax)?;
        l.intermediate.bias = pad_rows(&l.intermediate.bias, mmax)?;
        l.output.weight = pad_cols(&l.output.weight, mmax)?;
        l.num_heads = hmax;
    }
    out.config.num_heads = vec![hmax; c.num_heads.len()];
    out.config.intermediate_sizes = vec![mmax; c.intermediate_sizes.len()];
    Ok(out)
}

/// Writes the exported directory. Returns the note on HF representability.
///
/// Extract the smallest subnet of a (here randomly initialised) supernet,
/// export it and load it back as a plain ViT that gives the same logits:
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarMap;
/// use vitnas::models::export::{export, load_dir};
/// use vitnas::supernet::init::{seeded_var_builder, InitScheme};
/// use vitnas::{Space, Supernet};
///
/// # fn main() -> vitnas::Result<()> {
/// let space = Space::from_file("search_spaces/fmnist-tiny.toml")?;
/// let vars = VarMap::new();
/// let vb = seeded_var_builder(&vars, 0, DType::F32, &Device::Cpu);
/// let net = Supernet::with_init(&space, InitScheme::TorchDefault, vb)?;
///
/// let arch = space.smallest();
/// let subnet = net.extract(&arch)?;
/// let dir = std::env::temp_dir().join(format!("vitnas-doc-export-{}", std::process::id()));
/// let note = export(&subnet, &space, &arch, None, &dir)?;
/// assert!(note.is_none(), "{note:?}"); // uniform layers: a Hugging Face ViT
///
/// let (loaded, _normalize) = load_dir(&dir)?;
/// let images = Tensor::rand(0f32, 1.0, (2, 1, 28, 28), &Device::Cpu)?;
/// let diff = (loaded.forward(&images)? - subnet.forward(&images)?)?.abs()?.max_all()?;
/// assert!(diff.to_scalar::<f32>()? < 1e-5);
/// std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
pub fn export(
    model: &Vit,
    space: &Space,
    arch: &Arch,
    normalize: Option<&Normalize>,
    dir: &Path,
) -> Result<Option<String>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let c = &model.config;
    let obstacle = hf_obstacle(c);
    let block = VitnasBlock {
        config: c.clone(),
        normalize: normalize.cloned(),
        hf_representable: obstacle.is_none(),
        hf_note: obstacle
            .clone()
            .map(|o| format!("not representable as a Hugging Face ViT: {o}; export with --hf-pad")),
    };
    let labels: serde_json::Map<String, serde_json::Value> = (0..c.num_labels)
        .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = (0..c.num_labels)
        .map(|i| (format!("LABEL_{i}"), json!(i)))
        .collect();
    let heads = c.num_heads.first().copied().unwrap_or(0);
    // Only a representable subnet claims the Hugging Face class, so that
    // transformers refuses the others instead of failing on tensor shapes.
    let (architecture, model_type) = match obstacle {
        None => ("ViTForImageClassification", "vit"),
        Some(_) => ("VitnasViT", "vitnas-vit"),
    };
    let config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_heads.len(),
        "num_attention_heads": heads,
        "intermediate_size": c.intermediate_sizes.first().copied().unwrap_or(0),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": c.layer_norm_eps,
        "image_size": c.image_size,
        "patch_size": c.patch_size,
        "num_channels": c.num_channels,
        "qkv_bias": true,
        "encoder_stride": c.patch_size,
        "id2label": labels,
        "label2id": label2id,
        "vitnas": block,
    });
    let tensors = model.tensors();
    write_safetensors(&dir.join("model.safetensors"), &tensors, None)?;
    write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)
            .expect("json")
            .as_bytes(),
    )?;
    let arch_json = json!({
        "arch": arch, "space": space, "params": params(space, arch), "flops_macs": flops(space, arch),
        "exported_params": model.num_params(),
    });
    write_atomic(
        &dir.join("arch.json"),
        serde_json::to_string_pretty(&arch_json)
            .expect("json")
            .as_bytes(),
    )?;
    Ok(obstacle)
}

/// The top-level Hugging Face fields of a config.json that also has a
/// `vitnas` block must say the same as the block (transformers reads the
/// former, vitnas the latter): a disagreement names the field.
fn check_hf_fields_agree(v: &serde_json::Value, c: &VitConfig, path: &Path) -> Result<()> {
    let first = |l: &[usize]| l.first().copied().unwrap_or(0) as u64;
    let expected = [
        ("hidden_size", c.hidden_size as u64, "hidden_size"),
        (
            "num_hidden_layers",
            c.num_heads.len() as u64,
            "num_heads (its length)",
        ),
        ("num_attention_heads", first(&c.num_heads), "num_heads[0]"),
        (
            "intermediate_size",
            first(&c.intermediate_sizes),
            "intermediate_sizes[0]",
        ),
        ("image_size", c.image_size as u64, "image_size"),
        ("patch_size", c.patch_size as u64, "patch_size"),
        ("num_channels", c.num_channels as u64, "num_channels"),
        ("num_labels", c.num_labels as u64, "num_labels"),
    ];
    for (field, want, block_field) in expected {
        let Some(found) = v.get(field) else { continue };
        if found.as_u64() != Some(want) {
            return Err(Error::InvalidConfig {
                file: path.display().to_string(),
                field: field.into(),
                message: format!(
                    "{found} disagrees with vitnas.config.{block_field} = {want} (the weights follow the vitnas block); correct or remove one"
                ),
            });
        }
    }
    if let Some(labels) = v.get("id2label").and_then(|m| m.as_object()) {
        if labels.len() != c.num_labels {
            return Err(Error::InvalidConfig {
                file: path.display().to_string(),
                field: "id2label".into(),
                message: format!(
                    "{} labels disagree with vitnas.config.num_labels = {}",
                    labels.len(),
                    c.num_labels
                ),
            });
        }
    }
    if let Some(eps) = v.get("layer_norm_eps").and_then(|e| e.as_f64()) {
        if (eps - c.layer_norm_eps).abs() > 1e-12 * c.layer_norm_eps.abs().max(1e-30) {
            return Err(Error::InvalidConfig {
                file: path.display().to_string(),
                field: "layer_norm_eps".into(),
                message: format!(
                    "{eps} disagrees with vitnas.config.layer_norm_eps = {}",
                    c.layer_norm_eps
                ),
            });
        }
    }
    Ok(())
}

/// Loads an exported directory (or any HF ViT directory) as a static model,
/// with its normalisation when recorded. The config is checked before any
/// tensor is read ([`VitConfig::validate`]): errors name config.json and the
/// field.
pub fn load_dir(dir: &Path) -> Result<(Vit, Option<Normalize>)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|error| Error::Json {
        path: cfg_path.clone(),
        error,
    })?;
    crate::engine::names::Family::Vit.check_config(&cfg_path, &v)?;
    let exported = v.get("vitnas").is_some();
    let (config, normalize) = match v.get("vitnas") {
        Some(b) => {
            let b: VitnasBlock =
                serde_json::from_value(b.clone()).map_err(|error| Error::Json {
                    path: cfg_path.clone(),
                    error,
                })?;
            b.config
                .validate(&cfg_path.display().to_string(), "vitnas.config.")?;
            check_hf_fields_agree(&v, &b.config, &cfg_path)?;
            (b.config, b.normalize)
        }
        None => (VitConfig::from_hf_config_file(&cfg_path)?, None),
    };
    let weights = dir.join("model.safetensors");
    let (tensors, _) = read_weights(&weights, &Device::Cpu)?;
    let (vb, used, names) = super::used::recording(tensors, DType::F32, &Device::Cpu);
    let model = Vit::load(&config, vb).map_err(|e| Error::Checkpoint {
        path: weights.clone(),
        message: e.to_string(),
    })?;
    // An export holds exactly its model's tensors; a Hugging Face directory
    // may carry extras, but never layers beyond its config's.
    let layers = format!(
        "{}.encoder.layer.",
        crate::engine::names::Family::Vit.base()
    );
    super::used::refuse_unused(
        &weights,
        &names,
        &used,
        |n| exported || n.starts_with(&layers),
        &format!(
            "config.json describes {} layers: the weights and the config do not belong together",
            config.num_heads.len()
        ),
    )?;
    Ok((model, normalize))
}
