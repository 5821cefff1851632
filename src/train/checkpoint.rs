//! Checkpoints: written atomically (temp file, fsync, rename, fsync of the
//! directory), so a kill at any moment leaves the previous checkpoint intact.
//!
//! * `supernet.safetensors`: the supernet weights only, Hugging Face names;
//!   what `eval`, `search` and `export` read.
//! * `checkpoint.safetensors`: weights + AdamW moments (`optimizer.m.<name>`,
//!   `optimizer.v.<name>`) + the [`TrainState`] as JSON metadata: what
//!   `train --resume` reads.
//! * `state.json`: the same state, for people.

use super::optim::AdamW;
use super::recipe::Recipe;
use super::step::Params;
use super::{CHECKPOINT_FILE, STATE_FILE, SUPERNET_FILE};
use crate::data::batch::Normalize;
use crate::error::{Error, Result};
use crate::models::vit::Vit;
use crate::space::{Arch, Space};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

// The shared file I/O lives in the low `crate::io`; its public path stays here.
pub use crate::io::{
    load_into_vars, read_safetensors, read_weights, to_safetensors_bytes, write_atomic,
    write_safetensors,
};

pub const STATE_KEY: &str = "vitnas.train_state";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed (including skipped ones).
    pub step: usize,
    /// AdamW updates applied.
    pub adam_t: u64,
    /// Steps skipped for a non-finite loss.
    pub skipped_steps: usize,
    /// How the gradient groups of the current epoch's steps so far agreed
    /// (strategies that compare them), logged at the epoch's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<super::gradient::Agreement>,
    pub total_steps: usize,
    pub recipe: String,
    /// The one architecture of a standalone run (retrain, finetune); absent
    /// for a supernet run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<crate::space::Arch>,
}

/// The model file a checkpoint writes beside `checkpoint.safetensors`.
pub(crate) enum ModelFile<'a> {
    /// `supernet.safetensors`: the supernet's weights, Hugging Face names.
    Supernet,
    /// A standalone run's model, exported as a static model.
    Standalone {
        model: &'a Vit,
        arch: &'a Arch,
        space: &'a Space,
        norm: &'a Normalize,
    },
    /// A standalone text run's model, exported as a static BERT
    /// (`BertForSequenceClassification` layout, its labels and tokenizer).
    TextStandalone {
        model: &'a crate::models::bert::Bert,
        arch: &'a Arch,
        space: &'a Space,
        labels: &'a [String],
        tokenizer: &'a Path,
    },
}

/// Writes a run's checkpoint files in `dir`, each atomically:
/// `checkpoint.safetensors` (weights, AdamW moments, state), the model
/// file and `state.json`.
pub(crate) fn save(
    dir: &Path,
    recipe: &Recipe,
    model: ModelFile<'_>,
    params: &Params,
    opt: &AdamW,
    state: &TrainState,
) -> Result<()> {
    let state_json = write_checkpoint(dir, params, opt, state)?;
    match model {
        ModelFile::Supernet => {
            let meta = [("vitnas.recipe".to_string(), recipe.name.clone())]
                .into_iter()
                .collect();
            write_safetensors(&dir.join(SUPERNET_FILE), &params.tensors(), Some(meta))?;
        }
        ModelFile::Standalone {
            model,
            arch,
            space,
            norm,
        } => {
            crate::models::export::export(model, space, arch, Some(norm), dir)?;
        }
        ModelFile::TextStandalone {
            model,
            arch,
            space,
            labels,
            tokenizer,
        } => {
            crate::models::export_bert::export(model, space, arch, labels, tokenizer, dir)?;
        }
    }
    write_atomic(&dir.join(STATE_FILE), state_json.as_bytes())
}

/// The `state.json` of a run directory, if it has one.
pub fn read_state(dir: &Path) -> Result<Option<TrainState>> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    crate::io::read_json(&path).map(Some)
}

/// Writes `checkpoint.safetensors` in `dir`: the weights, AdamW's moments
/// and the state (as metadata); returns the state as JSON.
pub(crate) fn write_checkpoint(
    dir: &Path,
    params: &Params,
    opt: &AdamW,
    state: &TrainState,
) -> Result<String> {
    let mut all = params.tensors();
    let dev = Device::Cpu;
    for (k, name) in params.names.iter().enumerate() {
        let shape = params.vars[k].shape().clone();
        all.push((
            format!("optimizer.m.{name}"),
            Tensor::from_slice(&opt.m[k], shape.clone(), &dev)?,
        ));
        all.push((
            format!("optimizer.v.{name}"),
            Tensor::from_slice(&opt.v[k], shape, &dev)?,
        ));
    }
    let state_json = serde_json::to_string(state).expect("state serializes");
    let meta = [(STATE_KEY.to_string(), state_json.clone())]
        .into_iter()
        .collect();
    write_safetensors(&dir.join(CHECKPOINT_FILE), &all, Some(meta))?;
    Ok(state_json)
}

/// A checkpoint file's tensors and the training state in its metadata,
/// which must be there and parse.
pub(crate) fn read_checkpoint(path: &Path) -> Result<(HashMap<String, Tensor>, TrainState)> {
    let (tensors, meta) = read_weights(path, &Device::Cpu)?;
    let state = meta
        .get(STATE_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::Checkpoint {
            path: path.into(),
            message: format!("metadata `{STATE_KEY}` missing or invalid"),
        })?;
    Ok((tensors, state))
}

/// Restores weights and AdamW moments from a checkpoint's tensors.
pub(crate) fn restore(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    params: &Params,
    opt: &mut AdamW,
) -> Result<()> {
    load_into_vars(path, tensors, &params.names, &params.vars)?;
    for (k, name) in params.names.iter().enumerate() {
        for (which, buf) in [("m", &mut opt.m[k]), ("v", &mut opt.v[k])] {
            let key = format!("optimizer.{which}.{name}");
            let t = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
                path: path.into(),
                message: format!("tensor `{key}` is missing"),
            })?;
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            if v.len() != buf.len() {
                return Err(Error::Checkpoint {
                    path: path.into(),
                    message: format!("tensor `{key}`: {} values, expected {}", v.len(), buf.len()),
                });
            }
            *buf = v;
        }
    }
    Ok(())
}
