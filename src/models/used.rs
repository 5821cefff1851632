//! Which tensors of a weights file a model actually read: a `VarBuilder`
//! backend that records every name it hands out, so that a file holding
//! tensors its config does not use (more layers than `num_hidden_layers`,
//! a stray tensor) is refused naming them instead of silently running a
//! smaller model.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The names read so far.
pub(crate) type Used = Arc<Mutex<BTreeSet<String>>>;

struct Recording {
    tensors: HashMap<String, Tensor>,
    used: Used,
}

impl Recording {
    fn record(&self, name: &str) {
        if let Ok(mut u) = self.used.lock() {
            u.insert(name.to_string());
        }
    }
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.record(name);
        SimpleBackend::get(&self.tensors, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.record(name);
        SimpleBackend::get_unchecked(&self.tensors, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&self.tensors, name)
    }
}

/// A `VarBuilder` over `tensors` that records the names read, and every
/// name it holds.
pub(crate) fn recording(
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> (VarBuilder<'static>, Used, Vec<String>) {
    let names = tensors.keys().cloned().collect();
    let used = Used::default();
    let backend = Recording {
        tensors,
        used: used.clone(),
    };
    (
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
        used,
        names,
    )
}

/// Refuses the tensors of `names` that the model did not read and that
/// `counts` says must be used (the integer buffers Hugging Face checkpoints
/// carry are never counted), naming the file and up to five of them.
pub(crate) fn refuse_unused(
    path: &Path,
    names: &[String],
    used: &Used,
    counts: impl Fn(&str) -> bool,
    why: &str,
) -> Result<()> {
    let used = used.lock().map(|u| u.clone()).unwrap_or_default();
    let unused: BTreeSet<&String> = names
        .iter()
        .filter(|n| !used.contains(*n))
        .filter(|n| !crate::io::INTEGER_BUFFERS.iter().any(|b| n.ends_with(b)))
        .filter(|n| counts(n))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = unused.iter().take(5).map(|n| format!("`{n}`")).collect();
    Err(Error::Checkpoint {
        path: path.into(),
        message: format!(
            "{} tensor(s) the model does not use: {}{}; {why}",
            unused.len(),
            shown.join(", "),
            if unused.len() > 5 { ", ..." } else { "" }
        ),
    })
}
