//! Exporting a text subnet as a standalone model directory in Hugging Face
//! `BertForSequenceClassification` layout: `model.safetensors` (`bert.`
//! names, [`crate::engine::names::Family::Bert`]), `config.json` (transformers'
//! fields, `id2label` / `label2id`, plus a `vitnas` block with the
//! per-layer shapes), `tokenizer.json` and `arch.json` (the architecture
//! and its whole space, as an image export's, so that `vitnas finetune`
//! can train it further).
//!
//! transformers' BERT has one head count and FFN width for every layer and
//! heads of `hidden / heads` channels. A subnet whose heads × head dim is
//! not its hidden size, or whose layers differ, is written in the same
//! layout with the `vitnas` block saying why transformers cannot load it;
//! [`pad_uniform`] zero-pads heads and FFN neurons so that it can (the
//! padded heads and neurons contribute exactly zero).

use super::bert::{Bert, BertConfig};
use crate::error::{Error, Result};
use crate::io::{read_weights, write_atomic, write_safetensors};
use crate::space::{flops, params, Arch, Pooling, Space};
use candle_core::Tensor;
use serde_json::json;
use std::path::Path;

/// Why a subnet is not a transformers `BertForSequenceClassification`
/// (None: it is one).
pub fn hf_obstacle(c: &BertConfig) -> Option<String> {
    let h0 = c.num_heads.first().copied().unwrap_or(0);
    let m0 = c.intermediate_sizes.first().copied().unwrap_or(0);
    if c.pooling == Pooling::Mean {
        return Some("mean pooling has no place in BertForSequenceClassification".into());
    }
    if c.num_heads.iter().any(|&h| h != h0) {
        return Some(format!("heads differ across layers {:?}", c.num_heads));
    }
    if c.intermediate_sizes.iter().any(|&m| m != m0) {
        return Some(format!(
            "FFN widths differ across layers {:?}",
            c.intermediate_sizes
        ));
    }
    if h0 * c.head_dim != c.hidden_size {
        return Some(format!(
            "{h0} heads × {} channels ≠ hidden size {}",
            c.head_dim, c.hidden_size
        ));
    }
    None
}

/// Zero-pads every layer to `hidden / head_dim` heads and to the widest
/// FFN, when the hidden size holds every layer's heads: the same function
/// in transformers' layout.
pub fn pad_uniform(m: &Bert) -> Result<Bert> {
    let c = &m.config;
    let hmax = *c.num_heads.iter().max().unwrap_or(&0);
    if c.head_dim == 0
        || !c.hidden_size.is_multiple_of(c.head_dim)
        || hmax * c.head_dim > c.hidden_size
    {
        return Err(Error::InvalidArch {
            space: "export".into(),
            field: "num_heads".into(),
            message: format!(
                "{hmax} heads × {} channels exceed hidden size {}: no padding makes this a \
                 transformers BERT",
                c.head_dim, c.hidden_size
            ),
        });
    }
    let heads = c.hidden_size / c.head_dim;
    let (q, mmax) = (
        c.hidden_size,
        *c.intermediate_sizes.iter().max().unwrap_or(&0),
    );
    let pad = |t: &Tensor, dim: usize, n: usize| -> candle_core::Result<Tensor> {
        let extra = n - t.dim(dim)?;
        if extra == 0 {
            return Ok(t.clone());
        }
        let mut dims = t.dims().to_vec();
        dims[dim] = extra;
        Tensor::cat(&[t, &Tensor::zeros(dims, t.dtype(), t.device())?], dim)
    };
    let mut out = m.clone();
    for l in out.layers.iter_mut() {
        for lin in [&mut l.query, &mut l.key, &mut l.value] {
            lin.weight = pad(&lin.weight, 0, q)?;
            lin.bias = pad(&lin.bias, 0, q)?;
        }
        l.attention_output.weight = pad(&l.attention_output.weight, 1, q)?;
        l.intermediate.weight = pad(&l.intermediate.weight, 0, mmax)?;
        l.intermediate.bias = pad(&l.intermediate.bias, 0, mmax)?;
        l.output.weight = pad(&l.output.weight, 1, mmax)?;
        l.num_heads = heads;
    }
    out.config.num_heads = vec![heads; c.num_heads.len()];
    out.config.intermediate_sizes = vec![mmax; c.intermediate_sizes.len()];
    Ok(out)
}

/// Writes the exported directory; returns why transformers cannot load it
/// (None: it can).
pub fn export(
    model: &Bert,
    space: &Space,
    arch: &Arch,
    labels: &[String],
    tokenizer: &Path,
    out: &Path,
) -> Result<Option<String>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let c = &model.config;
    let obstacle = hf_obstacle(c);
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect();
    let config = json!({
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_heads.len(),
        "num_attention_heads": c.num_heads.first().copied().unwrap_or(0),
        "intermediate_size": c.intermediate_sizes.first().copied().unwrap_or(0),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": c.max_position_embeddings,
        "type_vocab_size": c.type_vocab_size,
        "layer_norm_eps": c.layer_norm_eps,
        "initializer_range": 0.02,
        "classifier_dropout": null,
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
        "num_labels": labels.len(),
        "id2label": id2label,
        "label2id": label2id,
        "problem_type": "single_label_classification",
        "vitnas": {
            "config": c,
            "hf_representable": obstacle.is_none(),
            "hf_note": obstacle,
        },
    });
    let text = serde_json::to_string_pretty(&config).expect("a config serializes");
    write_atomic(&out.join("config.json"), text.as_bytes())?;
    write_safetensors(&out.join("model.safetensors"), &model.tensors(), None)?;
    let tok = std::fs::read(tokenizer).map_err(|e| Error::io(tokenizer, e))?;
    write_atomic(&out.join("tokenizer.json"), &tok)?;
    let arch_json = json!({
        "arch": arch, "space": space, "params": params(space, arch),
        "flops_macs": flops(space, arch), "flops_at_tokens": space.seq_len(),
    });
    let text = serde_json::to_string_pretty(&arch_json).expect("serializes");
    write_atomic(&out.join("arch.json"), text.as_bytes())?;
    Ok(obstacle)
}

/// Whether `dir` holds an exported (or Hugging Face) BERT.
pub fn is_bert_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["model_type"] == "bert")
}

/// Loads an exported directory: the model (per-layer shapes from the
/// `vitnas` block when present, else transformers' config) and its label
/// names (`id2label`, in id order).
pub fn load_dir(dir: &Path) -> Result<(Bert, Vec<String>)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|error| Error::Json {
        path: path.clone(),
        error,
    })?;
    crate::engine::names::Family::Bert.check_config(&path, &v)?;
    let model = match v.get("vitnas").and_then(|b| b.get("config")) {
        Some(c) => {
            let config: BertConfig =
                serde_json::from_value(c.clone()).map_err(|error| Error::Json {
                    path: path.clone(),
                    error,
                })?;
            let file = dir.join("model.safetensors");
            let (tensors, _) = read_weights(&file, &candle_core::Device::Cpu)?;
            let (vb, used, names) =
                super::used::recording(tensors, candle_core::DType::F32, &candle_core::Device::Cpu);
            let model = Bert::load(&config, vb, "bert").map_err(|e| Error::Checkpoint {
                path: file.clone(),
                message: e.to_string(),
            })?;
            // An export holds exactly its model's tensors.
            super::used::refuse_unused(
                &file,
                &names,
                &used,
                |_| true,
                "the weights and config.json's vitnas block do not belong together",
            )?;
            model
        }
        None => Bert::load_dir(dir)?,
    };
    let n = model.config.num_labels.unwrap_or(0);
    let labels = (0..n)
        .map(|i| {
            v["id2label"][i.to_string()]
                .as_str()
                .map_or_else(|| format!("LABEL_{i}"), str::to_string)
        })
        .collect();
    Ok((model, labels))
}
