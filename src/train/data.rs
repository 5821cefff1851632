//! The data a run trains, validates and tests on: the seeded validation
//! split of the training file, its normalisation, and the test split.

use super::recipe::Recipe;
use crate::data::batch::Normalize;
use crate::data::{self, Dataset, Format, Split, FASHION_MNIST_DIRS};
use crate::error::{Error, Result};
use crate::space::Space;
use std::path::PathBuf;

/// Which examples of the training file a run trains and validates on,
/// written to the run directory as `data-split.json` (so that another
/// implementation, e.g. evaluate/parity.py, can train on the same split).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataSplit {
    /// The data directory, absolute.
    pub data_dir: PathBuf,
    /// Indices into the training file: the training examples (in file
    /// order, after `train_limit`) and the held-out validation examples.
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// The training data of a run.
pub struct TrainData {
    pub train: Dataset,
    pub val: Dataset,
    /// The recipe's normalisation, or the training split's statistics.
    pub norm: Normalize,
    pub split: DataSplit,
}

fn data_dir(recipe: &Recipe) -> Result<PathBuf> {
    let candidates: &[&str] = if recipe.data.format == Format::Idx {
        FASHION_MNIST_DIRS
    } else {
        &[]
    };
    data::resolve_dir(recipe.data.path.as_deref(), candidates)
}

/// Training and validation splits (validation carved from train, seeded),
/// the normalisation in use and the split's indices.
pub fn load_train_val(recipe: &Recipe, space: &Space) -> Result<TrainData> {
    image_space(recipe, space)?;
    let dir = data_dir(recipe)?;
    let i = &space.image();
    let full = data::load(
        recipe.data.format,
        &dir,
        Split::Train,
        i.image_size,
        i.channels,
    )?;
    full.check_fits(space)?;
    let (train_idx, val_idx) = split_indices(recipe, full.len(), &full.source)?;
    let (train, val) = (full.subset(&train_idx), full.subset(&val_idx));
    let split = DataSplit {
        data_dir: std::path::absolute(&dir).unwrap_or(dir),
        train: train_idx,
        val: val_idx,
    };
    let norm = match &recipe.data.normalize {
        Some(n) if n.mean.len() != i.channels || n.std.len() != i.channels => {
            return Err(Error::InvalidRecipe {
                file: format!("recipe `{}`", recipe.name),
                field: "data.normalize".into(),
                message: format!(
                    "{} mean and {} std values for {}-channel images",
                    n.mean.len(),
                    n.std.len(),
                    i.channels
                ),
            })
        }
        Some(n) => n.clone(),
        None => {
            let (mean, std) = train.channel_stats();
            Normalize { mean, std }
        }
    };
    Ok(TrainData {
        train,
        val,
        norm,
        split,
    })
}

/// The test split, for final reports only.
pub fn load_test(recipe: &Recipe, space: &Space) -> Result<Dataset> {
    image_space(recipe, space)?;
    let dir = data_dir(recipe)?;
    let i = &space.image();
    let test = data::load(
        recipe.data.format,
        &dir,
        Split::Test,
        i.image_size,
        i.channels,
    )?;
    test.check_fits(space)?;
    Ok(test)
}

/// Image data needs an image space: a text space here is a command that
/// does not handle text yet (evaluate reference / quality).
fn image_space(recipe: &Recipe, space: &Space) -> Result<()> {
    match space.is_text() {
        false => Ok(()),
        true => Err(Error::InvalidRecipe {
            file: format!("recipe `{}`", recipe.name),
            field: "space".into(),
            message: format!(
                "`{}` is a text space: `vitnas train`, `search`, `eval`, `export`, `retrain`, \
                 `finetune` and `evaluate rank` handle text; this command handles image spaces \
                 only so far",
                space.name
            ),
        }),
    }
}

/// The recipe's seeded `(train, validation)` split of `len` training
/// examples (images or texts from `source`): `data.val_size` held out with
/// `data.split_seed` (else the recipe seed), the training part cut to
/// `data.train_limit`.
pub(crate) fn split_indices(
    recipe: &Recipe,
    len: usize,
    source: &str,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let (mut train, val) = crate::data::validation_indices(
        len,
        recipe.data.val_size,
        recipe.data.split_seed.unwrap_or(recipe.seed),
        source,
    )?;
    if let Some(n) = recipe.data.train_limit {
        train.truncate(n);
    }
    Ok((train, val))
}
