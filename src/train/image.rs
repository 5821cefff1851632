//! Training on images: a ViT supernet or one static model ([`Trainee`]),
//! augmented batches sharded over the data-parallel ranks, evaluation of
//! the reported architectures by the engine on their extracted models.

use super::checkpoint::{self, ModelFile, TrainState};
use super::data::load_test;
use super::flat::FlatWeights;
use super::optim::AdamW;
use super::recipe::Recipe;
use super::sampler::Plan;
use super::step::{Forward, Params};
use super::summary::{EvalSplit, Reported, Summary};
use super::task::{Examples, TrainTask};
use super::task::{Metrics, Restore};
use super::trainee::{RunKind, Trainee};
use super::{standalone, RunOptions};
use crate::data::batch::{make_batch_part, Normalize};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::space::{Arch, Space};
use crate::train::eval::{evaluate, EvalResult};
use candle_core::Device;
use rand::rngs::StdRng;
use serde_json::json;
use std::ops::Range;
use std::path::Path;

/// Trains `kind` with `recipe` in `recipe.output_dir` (prepared by
/// [`super::session`]), from scratch or from `restore`.
pub(super) fn run(
    recipe: &Recipe,
    space: &Space,
    kind: RunKind,
    train: &Dataset,
    val: &Dataset,
    restore: Option<Restore>,
    opts: &RunOptions,
) -> Result<Summary> {
    let norm = recipe
        .data
        .normalize
        .clone()
        .expect("resolved recipe has normalisation");
    // A resumed standalone run's weights come from its checkpoint.
    let origin = restore
        .as_ref()
        .map(|_| standalone::Init::Scratch(recipe.init));
    let (trainee, params) = Trainee::build(&kind, space, recipe, origin)?;
    let task = ImageTask {
        trainee,
        init_from: match &kind {
            RunKind::Supernet => recipe.init_from.as_deref(),
            RunKind::Standalone { .. } => None,
        },
        recipe,
        space,
        train,
        val,
        norm: &norm,
    };
    super::run::run(recipe, space, &task, &params, restore, opts)
}

/// An image run's side of the loop.
struct ImageTask<'a> {
    trainee: Trainee,
    /// The pretrained ViT a fresh supernet run starts from.
    init_from: Option<&'a str>,
    recipe: &'a Recipe,
    space: &'a Space,
    train: &'a Dataset,
    val: &'a Dataset,
    norm: &'a Normalize,
}

impl TrainTask for ImageTask<'_> {
    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn train_source(&self) -> &str {
        &self.train.source
    }

    fn net(&self) -> &dyn Forward {
        self.trainee.net()
    }

    fn standalone_arch(&self) -> Option<&Arch> {
        match &self.trainee {
            Trainee::Supernet { .. } => None,
            Trainee::Standalone { arch, .. } => Some(arch),
        }
    }

    fn init(&self, params: &Params, dir: Option<&Path>, say: bool) -> Result<()> {
        match self.init_from {
            Some(spec) => init_from_pretrained(spec, dir, params, self.space, say),
            None => Ok(()),
        }
    }

    fn examples(
        &self,
        indices: &[usize],
        shard: Range<usize>,
        rng: &mut StdRng,
    ) -> Result<Examples> {
        let (images, labels) = make_batch_part(
            self.train,
            indices,
            shard,
            self.norm,
            Some((&self.recipe.data.augment, rng)),
            &Device::Cpu,
        )?;
        Ok(Examples::Images { images, labels })
    }

    fn plan(&self, space: &Space, step: usize, rng: &mut StdRng) -> Plan {
        self.trainee.plan(space, step, rng)
    }

    fn reported(&self, space: &Space) -> Vec<(Reported, Arch)> {
        self.trainee.reported(space)
    }

    fn validate(&self, arch: &Arch, _flat: &FlatWeights) -> Result<EvalResult> {
        self.evaluate(arch, self.val)
    }

    /// When the test split cannot be used, the summary and metrics say why.
    fn test(
        &self,
        _flat: &FlatWeights,
        metrics: &Metrics,
        summary: &mut Summary,
        opts: &RunOptions,
    ) -> Result<()> {
        let test = match load_test(self.recipe, self.space) {
            Ok(t) => t,
            Err(e) => return metrics.no_test_results(e, summary, opts),
        };
        let mut line = json!({"step": summary.steps});
        for (which, arch) in self.trainee.reported(self.space) {
            let r = self.evaluate(&arch, &test)?;
            line[format!("final_test_{}", which.name())] = json!(r);
            summary.set(EvalSplit::Test, which, r);
        }
        metrics.line(line)
    }

    fn save(&self, params: &Params, opt: &AdamW, state: &TrainState) -> Result<()> {
        let model = match &self.trainee {
            Trainee::Supernet { .. } => ModelFile::Supernet,
            Trainee::Standalone { model, arch } => ModelFile::Standalone {
                model,
                arch,
                space: self.space,
                norm: self.norm,
            },
        };
        let dir = &self.recipe.output_dir;
        checkpoint::save(dir, self.recipe, model, params, opt, state)
    }

    fn unit(&self) -> &'static str {
        "img"
    }
}

impl ImageTask<'_> {
    /// Accuracy of `arch` on `data`, by the engine on its extracted model.
    fn evaluate(&self, arch: &Arch, data: &Dataset) -> Result<EvalResult> {
        let model = self.trainee.inference_model(arch)?;
        evaluate(
            data,
            self.norm,
            self.recipe.data.eval_batch_size,
            &Device::Cpu,
            |x| model.logits(x),
        )
    }
}

/// Loads a pretrained Hugging Face ViT into the supernet's leading slices
/// (or a trained vitnas supernet run, whole) and records what was loaded in `dir`'s `init-report.txt` (rank 0's; the
/// other ranks of a data-parallel run load the same weights, silently).
fn init_from_pretrained(
    spec: &str,
    dir: Option<&Path>,
    params: &Params,
    space: &Space,
    progress: bool,
) -> Result<()> {
    let (model_dir, report) = if super::few_shot::is_supernet_run(spec) {
        let parent = Path::new(spec);
        let report = super::few_shot::load_parent_into(params, parent, space)?;
        (parent.to_path_buf(), report)
    } else {
        let model_dir = crate::hub::resolve(spec)?;
        let report = crate::hub::load_vit_into(params, &model_dir, space.supernet.head_dim)?;
        (model_dir, report)
    };
    let Some(dir) = dir else {
        return Ok(());
    };
    let path = dir.join("init-report.txt");
    std::fs::write(&path, report.to_string()).map_err(|e| Error::io(&path, e))?;
    if progress {
        eprint!("init from {}: {report}", model_dir.display());
    }
    Ok(())
}
