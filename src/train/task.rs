//! What the one training loop of `run.rs` asks of a modality: its training
//! examples as step batches, the step's architectures, how a reported
//! architecture is evaluated, what a checkpoint writes, and the end-of-run
//! test. Two implementations: images (`image.rs`: a ViT supernet or one
//! static model) and token sequences ([`super::text`]: a BERT supernet).
//! The types the loop and the tasks share ([`Metrics`], [`Restore`]) are
//! here too, so that the loop imports its tasks' side and never the
//! reverse.

use super::flat::FlatWeights;
use super::optim::AdamW;
use super::sampler::Plan;
use super::step::{Forward, Input, Params};
use super::summary::{Reported, Summary};
use super::{checkpoint::TrainState, RunOptions};
use crate::data::text::TextBatch;
use crate::error::{Error, Result};
use crate::space::{Arch, Space};
use crate::train::eval::EvalResult;
use candle_core::Tensor;
use rand::rngs::StdRng;
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A checkpoint to continue from: its tensors and its state.
pub(crate) type Restore = (HashMap<String, Tensor>, TrainState);

/// Appends JSON lines to a run's metrics.jsonl (none on ranks other than 0).
pub(super) struct Metrics(Option<PathBuf>);

impl Metrics {
    /// Appends to `path`, or writes nothing (`None`: not rank 0).
    pub(super) fn new(path: Option<PathBuf>) -> Self {
        Self(path)
    }

    /// Records that the test split could not be used (`e`): a warning (on
    /// stderr too with progress on), a metrics line and the summary's
    /// `test_error`, so that the run still finishes and stays resumable.
    pub(super) fn no_test_results(
        &self,
        e: impl std::fmt::Display,
        summary: &mut Summary,
        opts: &RunOptions,
    ) -> Result<()> {
        let note = format!("no test results: the test split could not be used: {e}");
        tracing::warn!("{note}");
        if opts.progress {
            eprintln!("{note}");
        }
        self.line(serde_json::json!({"step": summary.steps, "final_test_error": note}))?;
        summary.test_error = Some(note);
        Ok(())
    }

    /// Appends `v` as one line.
    pub(super) fn line(&self, v: serde_json::Value) -> Result<()> {
        let Some(path) = &self.0 else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        writeln!(f, "{v}").map_err(|e| Error::io(path, e))
    }
}

/// One modality's side of a training run; the loop does the rest.
pub(super) trait TrainTask {
    /// The number of training examples (the schedule cuts it into batches).
    fn train_len(&self) -> usize;

    /// Where the training examples come from, for messages.
    fn train_source(&self) -> &str;

    /// What is trained, for the candle autograd path and the engine's
    /// flat weights.
    fn net(&self) -> &dyn Forward;

    /// The one architecture of a standalone run, recorded in its state;
    /// `None` for a supernet.
    fn standalone_arch(&self) -> Option<&Arch>;

    /// What a fresh run does to the seeded weights before its first step
    /// (pretrained weights, rewiring), with its reports written in `dir`
    /// (`None` on ranks other than 0) and told on stderr when `say`.
    fn init(&self, params: &Params, dir: Option<&Path>, say: bool) -> Result<()>;

    /// This rank's `shard` of the batch of examples `indices` (positions
    /// in the training set); any augmentation draws from `rng`.
    fn examples(
        &self,
        indices: &[usize],
        shard: Range<usize>,
        rng: &mut StdRng,
    ) -> Result<Examples>;

    /// The architectures step `step` trains, drawn from `rng` after the
    /// batch's draws.
    fn plan(&self, space: &Space, step: usize, rng: &mut StdRng) -> Plan;

    /// The architectures reported at every epoch's end and at the end.
    fn reported(&self, space: &Space) -> Vec<(Reported, Arch)>;

    /// Accuracy of `arch` on the validation split, with candle's variables
    /// in step with `flat`.
    fn validate(&self, arch: &Arch, flat: &FlatWeights) -> Result<EvalResult>;

    /// The end of a finished run: the reported architectures on the test
    /// split, into `summary` and one metrics line.
    fn test(
        &self,
        flat: &FlatWeights,
        metrics: &Metrics,
        summary: &mut Summary,
        opts: &RunOptions,
    ) -> Result<()>;

    /// Writes the checkpoint files of `state` (candle's variables hold the
    /// weights).
    fn save(&self, params: &Params, opt: &AdamW, state: &TrainState) -> Result<()>;

    /// What one example is called in progress rates (`img`, `seq`).
    fn unit(&self) -> &'static str;
    /// The label names in id order, where the run has them (text).
    fn label_names(&self) -> Option<&[String]> {
        None
    }
}

/// One step's examples: what the step's models read, and their labels.
pub(super) enum Examples {
    /// `[B, C, H, W]` images and `[B]` labels.
    Images { images: Tensor, labels: Tensor },
    /// Token ids padded to a common length, their mask, and labels.
    Tokens(TextBatch),
}

impl Examples {
    /// What the step's models read.
    pub(super) fn input(&self) -> Input<'_> {
        match self {
            Examples::Images { images, .. } => Input::Images(images),
            Examples::Tokens(b) => Input::Tokens(crate::supernet::bert::Tokens {
                ids: &b.ids,
                mask: &b.attention_mask,
            }),
        }
    }

    /// The class of every example.
    pub(super) fn labels(&self) -> &Tensor {
        match self {
            Examples::Images { labels, .. } => labels,
            Examples::Tokens(b) => &b.labels,
        }
    }

    /// The padded sequence length of a token batch (logged as `tokens`).
    pub(super) fn tokens(&self) -> Option<usize> {
        match self {
            Examples::Images { .. } => None,
            Examples::Tokens(b) => Some(b.ids.dims()[1]),
        }
    }
}
