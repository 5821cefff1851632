//! Accuracy predictors (AttentiveNAS, NASViT): a regression from an
//! architecture's encoding to the accuracy its inherited weights reach on
//! the validation set, fitted on a few hundred subnets a trained supernet
//! has scored. A search screens candidates with it, and the attentive
//! sampler picks its best- or worst-up subnets by it.
//!
//! * [`encode`]: what a predictor sees: the choice value of every gene
//!   (embedding dim, depth, heads and MLP ratio or width of each layer, 0
//!   for a layer past the depth) plus parameters and FLOPs.
//! * [`dataset`]: `vitnas predictor fit <run>`: architectures sampled with
//!   a seed, scored by the supernet, kept in a resumable CSV whose header
//!   records the space and the supernet.
//! * [`fit`]: a small MLP and gradient-boosted regression trees, fitted on
//!   a seeded split and compared by held-out Kendall τ; the better is kept.
//! * [`AccuracyPredictor`]: the fitted file, refused for another space or,
//!   with a run, another supernet.

pub mod dataset;
pub mod fit;

use crate::error::{Error, Result};
use crate::space::{flops, params, Arch, Space};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Format tag of accuracy predictor files.
pub const FORMAT: &str = "vitnas-accuracy-predictor/1";

/// Names of [`encode`]'s features for `space`.
pub fn feature_names(space: &Space) -> Vec<String> {
    let n = space.max_depth();
    let mut f = vec!["embed_dim".to_string(), "depth".to_string()];
    f.extend((0..n).map(|l| format!("heads_{l}")));
    let mlp = if space.mlp_is_dim() {
        "mlp_dim"
    } else {
        "mlp_ratio"
    };
    f.extend((0..n).map(|l| format!("{mlp}_{l}")));
    f.extend(["params_m".to_string(), "flops_m".to_string()]);
    f
}

/// The features of `arch`: every gene's choice value (a layer past the
/// depth reads 0), then parameters and multiply-adds in millions.
pub fn encode(space: &Space, arch: &Arch) -> Vec<f64> {
    let n = space.max_depth();
    let mut f = vec![arch.embed_dim as f64, arch.depth as f64];
    f.extend((0..n).map(|l| arch.num_heads.get(l).map_or(0.0, |&h| h as f64)));
    f.extend((0..n).map(|l| match space.mlp_is_dim() {
        true => arch.mlp_dim.get(l).map_or(0.0, |&m| m as f64),
        false => arch.mlp_ratio.get(l).copied().unwrap_or(0.0),
    }));
    f.push(params(space, arch) as f64 / 1e6);
    f.push(flops(space, arch) as f64 / 1e6);
    f
}

/// A stable hash of a space's definition (FNV-1a over its TOML form, the
/// same value as the latency predictor's).
pub fn space_hash(space: &Space) -> String {
    hex(crate::dist::fnv1a(
        space.to_toml_string().as_bytes(),
        crate::dist::FNV_START,
    ))
}

/// FNV-1a of a supernet weights file: which supernet a dataset was scored on.
pub fn supernet_hash(file: &Path) -> Result<String> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    Ok(hex(crate::dist::fnv1a(&bytes, crate::dist::FNV_START)))
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Held-out quality of one fitted model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Kendall's τ-b between predicted and measured accuracy.
    pub kendall_tau: f64,
    /// Root mean squared error, in accuracy (fraction) units.
    pub rmse: f64,
    /// Held-out rows.
    pub n: usize,
}

/// What the predictor was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fitted {
    /// Rows of the dataset (training + held out).
    pub rows: usize,
    /// Fraction of the rows held out.
    pub holdout: f64,
    /// Seeds the split and the MLP's initialisation and batches.
    pub seed: u64,
    /// Validation examples each accuracy was measured on.
    pub val_images: usize,
    /// Measured accuracy range of the dataset.
    pub accuracy_range: [f64; 2],
}

/// A fitted accuracy predictor and what it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyPredictor {
    pub format: String,
    pub space_name: String,
    pub space_hash: String,
    /// The space's definition, so that the file stands alone.
    pub space_toml: String,
    /// [`supernet_hash`] of the supernet whose inherited accuracies it learnt.
    pub supernet_hash: String,
    pub fitted: Fitted,
    /// Held-out scores of every model fitted, by name.
    pub heldout: BTreeMap<String, Scores>,
    /// Why the kept model was kept.
    pub chosen_because: String,
    /// The kept model, on [`encode`]'s features standardised by `scaler`.
    pub scaler: fit::Scaler,
    pub model: fit::Model,
}

impl AccuracyPredictor {
    pub fn load(path: &Path) -> Result<AccuracyPredictor> {
        let p: AccuracyPredictor = crate::io::read_json_format(
            path,
            (FORMAT, "an accuracy predictor"),
            |p: &AccuracyPredictor| &p.format,
            |message| Error::Predictor {
                path: path.into(),
                message,
            },
        )?;
        p.validate(path)?;
        Ok(p)
    }

    /// Checks a loaded predictor, naming the field: its space parses and
    /// matches its hash, the features are the ones this build computes for
    /// it, the model's shapes and values are sane, and it predicts a finite
    /// accuracy for the smallest and largest subnets.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| Error::InvalidConfig {
            file: path.display().to_string(),
            field: field.into(),
            message,
        };
        let space = self.space()?;
        if space_hash(&space) != self.space_hash {
            return Err(bad(
                "space_hash",
                "does not match the recorded space (edited?)".into(),
            ));
        }
        let want = feature_names(&space);
        if self.scaler.features != want {
            return Err(bad(
                "scaler.features",
                format!(
                    "{:?} are not the features this build computes ({want:?})",
                    self.scaler.features
                ),
            ));
        }
        self.scaler.validate(&bad)?;
        self.model.validate(want.len(), &bad)?;
        for (what, arch) in [("smallest", space.smallest()), ("largest", space.largest())] {
            let a = self.predict(&space, &arch);
            if !a.is_finite() {
                return Err(bad(
                    "model",
                    format!(
                        "predicts {a} for the {what} subnet: refit it (`vitnas predictor fit`)"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("predictor serializes");
        crate::io::write_atomic(path, text.as_bytes())
    }

    /// The space it was fitted on.
    pub fn space(&self) -> Result<Space> {
        Space::from_toml_str(
            &self.space_toml,
            &format!("accuracy predictor of {}", self.space_name),
        )
    }

    /// Refuses `space` unless it is the predictor's (the file `path` named).
    pub fn check_space(&self, path: &Path, space: &Space) -> Result<()> {
        let h = space_hash(space);
        if h != self.space_hash {
            return Err(Error::Predictor {
                path: path.into(),
                message: format!(
                    "fitted on space `{}` ({}), not on `{}` ({h}): fit one on this space \
                     (`vitnas predictor fit <run dir>`)",
                    self.space_name, self.space_hash, space.name
                ),
            });
        }
        Ok(())
    }

    /// Refuses the supernet weights file `supernet` unless the predictor
    /// learnt its accuracies (the file `path` named).
    pub fn check_supernet(&self, path: &Path, supernet: &Path) -> Result<()> {
        let h = supernet_hash(supernet)?;
        if h != self.supernet_hash {
            return Err(Error::Predictor {
                path: path.into(),
                message: format!(
                    "fitted on the accuracies of another supernet ({}), not of {} ({h}): fit one \
                     on this run (`vitnas predictor fit <run dir>`)",
                    self.supernet_hash,
                    supernet.display()
                ),
            });
        }
        Ok(())
    }

    /// Predicted validation accuracy (a fraction) of `arch`, an
    /// architecture of `space` (the predictor's: see
    /// [`AccuracyPredictor::check_space`]).
    pub fn predict(&self, space: &Space, arch: &Arch) -> f64 {
        let x = self.scaler.apply(&encode(space, arch));
        self.scaler.unscale_target(self.model.predict(&x))
    }

    /// The kept model's held-out scores.
    pub fn scores(&self) -> Option<&Scores> {
        self.heldout.get(self.model.name())
    }
}
