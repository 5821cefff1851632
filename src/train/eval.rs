//! Accuracy and loss of a model on a dataset, in batches, without gradients;
//! and, for reports, the confusion counts with per-class precision, recall,
//! F1 and macro-F1 ([`Confusion`]).

use crate::data::batch::{make_batch, Normalize};
use crate::data::Dataset;
use crate::error::Result;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::ops::log_softmax;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    pub accuracy: f64,
    pub loss: f64,
    pub examples: usize,
}

/// Cross-entropy with label smoothing `eps`:
/// `(1 − eps) · NLL + eps · mean over classes of −log p`, batch mean.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let logp = log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    let nll = picked.neg()?.mean_all()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let smooth = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    (nll * (1.0 - eps))? + (smooth * eps)?
}

/// Evaluates `forward` (images to logits) on every example of `ds`.
pub fn evaluate(
    ds: &Dataset,
    norm: &Normalize,
    batch_size: usize,
    device: &Device,
    forward: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<EvalResult> {
    evaluate_with(ds, norm, batch_size, device, forward, |_, _| Ok(()))
}

/// [`evaluate`], handing each batch's labels `[B]` and logits `[B, C]` to
/// `seen` (e.g. [`Confusion::add_batch`]) as they are computed.
pub fn evaluate_with(
    ds: &Dataset,
    norm: &Normalize,
    batch_size: usize,
    device: &Device,
    mut forward: impl FnMut(&Tensor) -> Result<Tensor>,
    mut seen: impl FnMut(&Tensor, &Tensor) -> Result<()>,
) -> Result<EvalResult> {
    let (mut correct, mut loss_sum) = (0usize, 0f64);
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, y) = make_batch(ds, chunk, norm, None, device)?;
        let logits = forward(&x)?.detach();
        seen(&y, &logits)?;
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

/// Counts of (true class, predicted class) pairs over an evaluation, and
/// the per-class scores they give.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    names: Vec<String>,
    /// `counts[truth][predicted]`.
    counts: Vec<Vec<u64>>,
}

/// Precision, recall and F1 of one class (0 where undefined: no
/// prediction of the class, or no example of it), and its support.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples of this class.
    pub support: u64,
    /// Examples predicted as this class.
    pub predicted: u64,
}

/// What `vitnas eval` reports beyond accuracy and loss.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    /// The mean F1 over the classes that occur in the labels or the
    /// predictions (scikit-learn's `f1_score(average="macro")`).
    pub macro_f1: f64,
    pub per_class: Vec<ClassScores>,
    /// Class names in id order; `counts[i][j]`: examples of class `i`
    /// predicted as class `j`.
    pub confusion: ConfusionCounts,
}

/// The confusion matrix as written in reports: rows are the true class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfusionCounts {
    pub labels: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// No counts yet, for the classes `names` (in id order).
    pub fn new(names: Vec<String>) -> Self {
        let n = names.len();
        Self {
            names,
            counts: vec![vec![0; n]; n],
        }
    }

    /// Counts one example; a class id outside the names is an error.
    pub fn add(&mut self, truth: u32, predicted: u32) -> Result<()> {
        let n = self.names.len();
        if truth as usize >= n || predicted as usize >= n {
            return Err(crate::error::Error::Tensor {
                name: "logits".into(),
                message: format!(
                    "class ids (true {truth}, predicted {predicted}) outside the {n} classes"
                ),
            });
        }
        self.counts[truth as usize][predicted as usize] += 1;
        Ok(())
    }

    /// Counts a batch: labels `[B]`, logits `[B, C]` (argmax predicted).
    pub fn add_batch(&mut self, labels: &Tensor, logits: &Tensor) -> Result<()> {
        let truth = labels.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (t, p) in truth.into_iter().zip(pred) {
            self.add(t, p)?;
        }
        Ok(())
    }

    /// `counts[truth][predicted]`.
    pub fn counts(&self) -> &[Vec<u64>] {
        &self.counts
    }

    /// Per-class scores, in class-id order.
    pub fn per_class(&self) -> Vec<ClassScores> {
        let n = self.names.len();
        (0..n)
            .map(|c| {
                let tp = self.counts[c][c] as f64;
                let support: u64 = self.counts[c].iter().sum();
                let predicted: u64 = self.counts.iter().map(|row| row[c]).sum();
                let ratio = |a: f64, b: u64| if b == 0 { 0.0 } else { a / b as f64 };
                let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
                let f1 = match precision + recall {
                    s if s > 0.0 => 2.0 * precision * recall / s,
                    _ => 0.0,
                };
                ClassScores {
                    class: self.names[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                    predicted,
                }
            })
            .collect()
    }

    /// The mean F1 over the classes present in labels or predictions.
    pub fn macro_f1(&self) -> f64 {
        let present: Vec<f64> = self
            .per_class()
            .iter()
            .filter(|s| s.support + s.predicted > 0)
            .map(|s| s.f1)
            .collect();
        present.iter().sum::<f64>() / present.len().max(1) as f64
    }

    /// Macro-F1, the per-class table and the counts, for a report.
    pub fn report(&self) -> ClassReport {
        ClassReport {
            macro_f1: self.macro_f1(),
            per_class: self.per_class(),
            confusion: ConfusionCounts {
                labels: self.names.clone(),
                counts: self.counts.clone(),
            },
        }
    }

    /// The per-class table as text (one line per class, then macro-F1).
    pub fn table(&self) -> String {
        let width = self.names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
        let mut out = format!("{:<width$}  precision  recall     f1  support\n", "class");
        for s in self.per_class() {
            out += &format!(
                "{:<width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}\n",
                s.class, s.precision, s.recall, s.f1, s.support
            );
        }
        out += &format!("macro-F1 {:.4}\n", self.macro_f1());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_matches_a_hand_computed_three_class_case() {
        // truth a a a b b c, predicted a a b b c c:
        // a: p 1, r 2/3, f1 0.8; b: p 1/2, r 1/2, f1 0.5; c: p 1/2, r 1, f1 2/3.
        let mut c = Confusion::new(vec!["a".into(), "b".into(), "c".into()]);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2)] {
            c.add(t, p).unwrap();
        }
        let f1: Vec<f64> = c.per_class().iter().map(|s| s.f1).collect();
        for (got, want) in f1.iter().zip([0.8, 0.5, 2.0 / 3.0]) {
            assert!((got - want).abs() < 1e-12, "{f1:?}");
        }
        let want = (0.8 + 0.5 + 2.0 / 3.0) / 3.0;
        assert!((c.macro_f1() - want).abs() < 1e-12);
        assert_eq!(c.counts()[0], vec![2, 1, 0]);
        assert!(c.add(3, 0).is_err());
    }

    #[test]
    fn a_class_absent_from_labels_and_predictions_leaves_macro_f1_alone() {
        let mut c = Confusion::new(vec!["a".into(), "b".into(), "unused".into()]);
        c.add(0, 0).unwrap();
        c.add(1, 1).unwrap();
        assert_eq!(c.macro_f1(), 1.0);
    }
}
