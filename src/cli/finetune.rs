//! `vitnas finetune --model <exported dir>` and `vitnas finetune --resume <dir>`.

use super::train::{report, RunArgs};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use vitnas::train::{self, recipe::Recipe, standalone, RECIPE_FILE};

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// An exported model directory (`vitnas export`, or a standalone run),
    /// image or text (a text model keeps its tokenizer, and its labels
    /// must be the data's).
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Data, optimizer and schedule [default: the recipe.toml the export
    /// carries (the supernet's), with --epochs, --lr and no warmup].
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Continue the fine-tuning run in this directory.
    #[arg(long, conflicts_with_all = ["model", "recipe"])]
    resume: Option<PathBuf>,
    /// Run directory [default: <model>-finetune].
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Epochs [default: 1 with the export's recipe, else the recipe's].
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate [default with the export's recipe: a tenth of its lr].
    #[arg(long)]
    lr: Option<f64>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(a: FinetuneArgs, c: &dyn vitnas::dist::Collective) -> anyhow::Result<()> {
    let opts = a.run.options(a.resume.is_some(), c)?;
    if let Some(dir) = &a.resume {
        return report(&train::resume(dir, &opts)?, "finetune", c);
    }
    let model = a.model.expect("clap requires --model");
    let mut recipe = match &a.recipe {
        Some(p) => Recipe::from_file(p)?,
        None => {
            let p = model.join(RECIPE_FILE);
            let mut r = Recipe::from_file(&p).with_context(|| {
                format!(
                    "{} carries no training recipe: pass --recipe",
                    model.display()
                )
            })?;
            r.train.epochs = 1;
            r.optimizer.lr /= 10.0;
            r.optimizer.warmup_epochs = 0.0;
            r.train.max_steps = None;
            r
        }
    };
    if let Some(e) = a.epochs {
        recipe.train.epochs = e;
    }
    if let Some(lr) = a.lr {
        recipe.optimizer.lr = lr;
    }
    a.run.apply(&mut recipe);
    let out = a.output_dir.unwrap_or_else(|| {
        let mut s = model.as_os_str().to_owned();
        s.push("-finetune");
        PathBuf::from(s)
    });
    report(
        &standalone::finetune(&model, &recipe, out, &opts)?,
        "finetune",
        c,
    )
}
