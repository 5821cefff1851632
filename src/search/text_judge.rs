//! The text [`Judge`]: a trained BERT supernet run ([`TextRun`], from
//! training) searched by inherited-weight accuracy on the engine and by
//! measured latency. It sits in `search`, above both training and latency.

use super::Judge;
use crate::data::text::TokenizedDataset;
use crate::error::Result;
use crate::latency::{time_text_model, Protocol};
use crate::space::Arch;
use crate::train::eval::EvalResult;
use crate::train::text::{evaluate_text, TextRun};

/// Text: subnets of a trained BERT supernet scored by the engine on a
/// tokenised validation set; latency of the extracted static BERT on the
/// engine ([`crate::latency::time_text_model`]).
pub struct TextJudge<'a> {
    pub run: &'a TextRun,
    pub val: &'a TokenizedDataset,
}

impl Judge for TextJudge<'_> {
    fn examples(&self) -> usize {
        self.val.len()
    }

    fn score(
        &self,
        arch: &Arch,
        range: std::ops::Range<usize>,
        batch: usize,
    ) -> Result<EvalResult> {
        let idx: Vec<usize> = range.collect();
        let r = self.run;
        evaluate_text(&r.weights, &r.cfg, arch, &self.val.subset(&idx), batch)
    }

    fn latency_ms(&self, arch: &Arch, batch: usize) -> Result<f64> {
        // The candle supernet the subnet is extracted from is dropped
        // before the timing starts: the run holds the engine's weights only.
        let bert = self.run.extract(arch)?;
        let p = Protocol::default();
        Ok(time_text_model(&bert, self.run.space.seq_len(), batch, &p)?.mean_ms)
    }
}
