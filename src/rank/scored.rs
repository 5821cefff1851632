//! The trained supernet run the rank harness scores, image or text, with
//! its validation and test splits loaded once: the inherited accuracy of
//! an architecture (evaluated on the supernet's weights) and the accuracy
//! of a standalone run's exported model, both by the engine, on the same
//! splits, so that the two columns of a report compare alike.

use crate::data::batch::Normalize;
use crate::data::text::TokenizedDataset;
use crate::data::Dataset;
use crate::engine::Model;
use crate::error::Result;
use crate::space::{Arch, Space};
use crate::train::eval::evaluate;
use crate::train::recipe::Recipe;
use crate::train::text::{evaluate_model, TextRun};
use crate::train::{self, TrainedRun};
use candle_core::Device;
use std::path::Path;

/// A trained supernet run and its validation and test splits.
pub enum ScoredRun {
    /// A ViT supernet; images normalised as the run trained.
    Image {
        run: Box<TrainedRun>,
        val: Dataset,
        test: Dataset,
        norm: Normalize,
    },
    /// A BERT supernet; texts tokenised with the run's tokenizer.
    Text {
        run: Box<TextRun>,
        val: TokenizedDataset,
        test: TokenizedDataset,
    },
}

impl ScoredRun {
    /// Loads the run in `dir` (image or text) and its two splits.
    pub fn load(dir: &Path) -> Result<Self> {
        if TextRun::is_text_run(dir) {
            let run = TextRun::load(dir)?;
            let (val, test) = (run.validation()?, run.test()?);
            return Ok(ScoredRun::Text {
                run: Box::new(run),
                val,
                test,
            });
        }
        let run = TrainedRun::load(dir)?;
        let (val, norm) = run.validation()?;
        let test = train::load_test(&run.recipe, &run.space)?;
        Ok(ScoredRun::Image {
            run: Box::new(run),
            val,
            test,
            norm,
        })
    }

    /// The run's (resolved) space.
    pub fn space(&self) -> &Space {
        match self {
            ScoredRun::Image { run, .. } => &run.space,
            ScoredRun::Text { run, .. } => &run.space,
        }
    }

    /// The run's resolved recipe.
    pub fn recipe(&self) -> &Recipe {
        match self {
            ScoredRun::Image { run, .. } => &run.recipe,
            ScoredRun::Text { run, .. } => &run.recipe,
        }
    }

    /// Validation and test accuracy of subnet `arch` with the supernet's
    /// weights (inherited).
    pub fn inherited(&self, arch: &Arch) -> Result<(f64, f64)> {
        match self {
            ScoredRun::Image {
                run,
                val,
                test,
                norm,
            } => image_accuracy(
                &Model::from_vit(&run.net.extract(arch)?)?,
                (val, test, norm),
                run.recipe.data.eval_batch_size,
            ),
            ScoredRun::Text { run, val, test, .. } => Ok((
                run.evaluate(arch, val)?.accuracy,
                run.evaluate(arch, test)?.accuracy,
            )),
        }
    }

    /// Validation and test accuracy of the model exported in `dir` (a
    /// standalone run's directory).
    pub fn exported(&self, dir: &Path) -> Result<(f64, f64)> {
        match self {
            ScoredRun::Image {
                run,
                val,
                test,
                norm,
            } => {
                let (model, _) = crate::models::export::load_dir(dir)?;
                image_accuracy(
                    &Model::from_vit(&model)?,
                    (val, test, norm),
                    run.recipe.data.eval_batch_size,
                )
            }
            ScoredRun::Text { run, val, test, .. } => {
                let (bert, _) = crate::models::export_bert::load_dir(dir)?;
                let model = Model::from_bert(&bert)?;
                let bs = run.recipe.data.eval_batch_size;
                Ok((
                    evaluate_model(&model, val, bs)?.accuracy,
                    evaluate_model(&model, test, bs)?.accuracy,
                ))
            }
        }
    }
}

/// Validation and test accuracy of a static image model on `(val, test)`
/// normalised by `norm`, in batches of `bs`.
fn image_accuracy(
    model: &Model,
    (val, test, norm): (&Dataset, &Dataset, &Normalize),
    bs: usize,
) -> Result<(f64, f64)> {
    let fwd = |x: &candle_core::Tensor| model.logits(x);
    Ok((
        evaluate(val, norm, bs, &Device::Cpu, fwd)?.accuracy,
        evaluate(test, norm, bs, &Device::Cpu, fwd)?.accuracy,
    ))
}
