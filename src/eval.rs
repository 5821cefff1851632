//! Accuracy and loss of a model on a dataset, in batches, without gradients.

use crate::data::batch::{make_batch, Normalize};
use crate::data::Dataset;
use crate::error::Result;
use crate::train::loss::cross_entropy;
use candle_core::{Device, Tensor, D};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    pub accuracy: f64,
    pub loss: f64,
    pub examples: usize,
}

/// Evaluates `forward` (images to logits) on every example of `ds`.
pub fn evaluate(
    ds: &Dataset,
    norm: &Normalize,
    batch_size: usize,
    device: &Device,
    mut forward: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<EvalResult> {
    let (mut correct, mut loss_sum) = (0usize, 0f64);
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, y) = make_batch(ds, chunk, norm, None, device)?;
        let logits = forward(&x)?.detach();
        let pred = logits.argmax(D::Minus1)?;
        correct += pred
            .eq(&y)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
        loss_sum +=
            cross_entropy(&logits, &y, 0.0)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
    }
    let n = ds.len().max(1) as f64;
    Ok(EvalResult {
        accuracy: correct as f64 / n,
        loss: loss_sum / n,
        examples: ds.len(),
    })
}
