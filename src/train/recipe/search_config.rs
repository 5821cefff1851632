//! The `[search]` section of a recipe (all fields have AutoFormer/HAT
//! defaults) and the constraints a candidate must satisfy.
//! It lives beside the recipe that embeds it, so that training needs
//! nothing from [`crate::search`], which reads it as `search::config`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// AutoFormer / HAT evolutionary search.
    Evolution,
    /// Uniform random search with the same evaluation budget.
    Random,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub algorithm: Algorithm,
    pub population: usize,
    pub generations: usize,
    /// Parents kept from each generation (the top-k by fitness).
    pub parents: usize,
    pub mutations: usize,
    pub crossovers: usize,
    /// Probability that a per-layer gene (heads, MLP ratio) mutates.
    pub layer_mutation_prob: f64,
    /// Probability that the depth or embedding-dim gene mutates.
    pub global_mutation_prob: f64,
    /// Validation images used for the fitness (the first N of the split).
    pub val_subset: usize,
    pub eval_batch_size: usize,
    /// Attempts to draw a child that satisfies the constraints before
    /// giving up on it (HAT resamples violating children).
    pub max_resample: usize,
    pub seed: u64,
    pub constraints: Constraints,
    /// Early rejection: score each new candidate on the first N images;
    /// evaluate it on the rest of the subset only if it reaches the current
    /// k-th best's score on those same images (0 disables).
    pub early_reject_images: usize,
    /// Screening by an accuracy predictor: of each generation's new
    /// candidates, only the best `fraction` by predicted accuracy get a
    /// real validation score (none when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screening: Option<Screening>,
}

/// How a search screens candidates by predicted accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Screening {
    /// The accuracy predictor file (`vitnas predictor fit`).
    pub predictor: std::path::PathBuf,
    /// Fraction of the new candidates scored, in (0, 1] (at least one).
    pub fraction: f64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Evolution,
            population: 50,
            generations: 20,
            parents: 10,
            mutations: 25,
            crossovers: 25,
            layer_mutation_prob: 0.2,
            global_mutation_prob: 0.4,
            val_subset: 2000,
            eval_batch_size: 500,
            max_resample: 200,
            seed: 0,
            constraints: Constraints::default(),
            early_reject_images: 0,
            screening: None,
        }
    }
}

/// What a search-settings error names as its file: the settings are the
/// recipe's `[search]` section with the command line's overrides applied.
pub const SETTINGS_SOURCE: &str = "search settings (recipe [search] with command-line overrides)";

/// A search-settings error about `field` (`search.…`).
pub(crate) fn invalid(field: &str, message: String) -> crate::Error {
    crate::Error::InvalidConfig {
        file: SETTINGS_SOURCE.into(),
        field: field.into(),
        message,
    }
}

impl SearchConfig {
    /// Checks every value before a search starts (recipe `[search]` and
    /// command-line overrides alike); the error names the field.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = invalid;
        for (field, v) in [
            ("search.population", self.population),
            ("search.generations", self.generations),
            ("search.val_subset", self.val_subset),
            ("search.eval_batch_size", self.eval_batch_size),
            ("search.max_resample", self.max_resample),
        ] {
            if v == 0 {
                return Err(bad(field, "must be positive".into()));
            }
        }
        if self.algorithm == Algorithm::Evolution && self.parents == 0 {
            return Err(bad("search.parents", "must be positive".into()));
        }
        if self.parents > self.population {
            return Err(bad(
                "search.parents",
                format!(
                    "{} parents exceed the population of {}",
                    self.parents, self.population
                ),
            ));
        }
        for (field, p) in [
            ("search.layer_mutation_prob", self.layer_mutation_prob),
            ("search.global_mutation_prob", self.global_mutation_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(field, "must be a probability in [0, 1]".into()));
            }
        }
        let c = &self.constraints;
        if let (Some(lo), Some(hi)) = (c.params_min, c.params_max) {
            if lo > hi {
                return Err(bad(
                    "search.constraints.params_min",
                    "exceeds params_max".into(),
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (c.flops_min, c.flops_max) {
            if lo > hi {
                return Err(bad(
                    "search.constraints.flops_min",
                    "exceeds flops_max".into(),
                ));
            }
        }
        if let Some(l) = c.latency_ms_max {
            if !(l > 0.0 && l.is_finite()) {
                return Err(bad(
                    "search.constraints.latency_ms_max",
                    "must be a positive number".into(),
                ));
            }
        }
        if let Some(f) = c.latency_fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(bad(
                    "search.constraints.latency_fraction",
                    format!("{f} is not a fraction of the largest subnet's latency in (0, 1]"),
                ));
            }
            if let Some(ms) = c.latency_ms_max {
                return Err(bad(
                    "search.constraints.latency_fraction",
                    format!(
                        "given together with latency_ms_max ({ms} ms): the fraction sets the \
                         bound from the largest subnet's measured latency; give one of them"
                    ),
                ));
            }
        }
        if c.latency_predictor.is_some()
            && c.latency_ms_max.is_none()
            && c.latency_fraction.is_none()
        {
            return Err(bad(
                "search.constraints.latency_predictor",
                "needs latency_ms_max or latency_fraction (the bound on the predicted latency)"
                    .into(),
            ));
        }
        if let Some(f) = self.screening.as_ref().map(|s| s.fraction) {
            if !(f > 0.0 && f <= 1.0) {
                return Err(bad(
                    "search.screening.fraction",
                    format!("{f} is not a fraction of the candidates in (0, 1]"),
                ));
            }
        }
        if c.latency_batch == Some(0) {
            return Err(bad(
                "search.constraints.latency_batch",
                "must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl Constraints {
    /// Each bound in force, as `(field, "params ≤ 5000000")`: the fields of
    /// `[search.constraints]`, for saying where each came from.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut push = |field: &'static str, text: String| out.push((field, text));
        if let Some(v) = self.params_min {
            push("params_min", format!("params ≥ {v}"));
        }
        if let Some(v) = self.params_max {
            push("params_max", format!("params ≤ {v}"));
        }
        if let Some(v) = self.flops_min {
            push("flops_min", format!("multiply-adds ≥ {v}"));
        }
        if let Some(v) = self.flops_max {
            push("flops_max", format!("multiply-adds ≤ {v}"));
        }
        let how = match &self.latency_predictor {
            Some(p) => format!("predicted by {}", p.display()),
            None => "measured".to_string(),
        };
        let batch = self.latency_batch.unwrap_or(1);
        if let Some(ms) = self.latency_ms_max {
            push(
                "latency_ms_max",
                format!("latency ≤ {ms} ms ({how}, batch {batch})"),
            );
        }
        if let Some(f) = self.latency_fraction {
            push(
                "latency_fraction",
                format!("latency ≤ {f} × the largest subnet's ({how}, batch {batch})"),
            );
        }
        out
    }

    /// The latency bound in ms: `latency_ms_max`, or `latency_fraction` of
    /// the largest subnet's measured latency (`latency_largest_ms`).
    pub fn latency_bound(&self) -> Option<f64> {
        self.latency_ms_max
            .or_else(|| Some(self.latency_fraction? * self.latency_largest_ms?))
    }
}

/// Bounds a candidate must satisfy; any combination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    pub params_min: Option<u64>,
    pub params_max: Option<u64>,
    /// Multiply-adds per image.
    pub flops_min: Option<u64>,
    pub flops_max: Option<u64>,
    /// Measured latency of the extracted subnet on this machine, in ms.
    pub latency_ms_max: Option<f64>,
    /// The latency bound as a fraction of the largest subnet's latency,
    /// measured on this machine when the search starts (HAT's "3× faster":
    /// 0.333); sets `latency_ms_max`, so the two are not given together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_fraction: Option<f64>,
    /// The largest subnet's latency (ms) that `latency_fraction` applies
    /// to: measured by `vitnas search` when it starts, kept with the search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_largest_ms: Option<f64>,
    pub latency_batch: Option<usize>,
    /// A latency predictor file (`vitnas latency fit`): `latency_ms_max`
    /// bounds the predicted latency, and no candidate is timed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_predictor: Option<std::path::PathBuf>,
}
