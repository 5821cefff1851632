//! Fitting accuracy predictors on scored architectures.
//!
//! Features and target are standardised on the training part ([`Scaler`]);
//! two models are fitted on the same seeded split:
//!
//! * `mlp`: two hidden layers of [`HIDDEN`] with ReLU, full-batch Adam on
//!   the mean squared error, seeded PyTorch-style initialisation; in f64
//!   and serial, so a seed gives the same weights on every machine.
//! * `gbrt`: gradient-boosted regression trees (Friedman), depth
//!   [`TREE_DEPTH`], [`ROUNDS`] rounds with shrinkage [`SHRINKAGE`],
//!   exhaustive splits. Trees suit the encoding's ordinal choice values and
//!   need no tuning on a few hundred rows.
//!
//! A search and a sampler use a predictor only to *order* architectures, so
//! the kept model is the one with the higher held-out Kendall τ (ties: the
//! lower RMSE).

use super::{encode, feature_names, Scores};
use crate::error::{Error, Result};
use crate::space::{Arch, Space};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Hidden width of the MLP.
pub const HIDDEN: usize = 32;
/// Boosting rounds, tree depth and shrinkage of the tree ensemble.
pub const ROUNDS: usize = 200;
pub const TREE_DEPTH: usize = 3;
pub const SHRINKAGE: f64 = 0.05;
/// Fewest rows a tree leaf holds.
const MIN_LEAF: usize = 3;
/// Fewest rows a fit accepts (a held-out part of at least 8 at 20 %).
pub const MIN_ROWS: usize = 40;

/// Standardisation of features and target (means and standard deviations
/// of the training part; a constant column keeps scale 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub features: Vec<String>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub target_mean: f64,
    pub target_std: f64,
}

impl Scaler {
    fn of(features: Vec<String>, x: &[Vec<f64>], y: &[f64]) -> Scaler {
        let (mean, std): (Vec<f64>, Vec<f64>) = (0..features.len())
            .map(|j| mean_std(&x.iter().map(|r| r[j]).collect::<Vec<_>>()))
            .unzip();
        let (target_mean, target_std) = mean_std(y);
        Scaler {
            features,
            mean,
            std,
            target_mean,
            target_std,
        }
    }

    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(v, (m, s))| (v - m) / s)
            .collect()
    }

    fn scale_target(&self, y: f64) -> f64 {
        (y - self.target_mean) / self.target_std
    }

    pub fn unscale_target(&self, y: f64) -> f64 {
        y * self.target_std + self.target_mean
    }

    pub(super) fn validate(&self, bad: &dyn Fn(&str, String) -> Error) -> Result<()> {
        let n = self.features.len();
        if self.mean.len() != n || self.std.len() != n {
            return Err(bad(
                "scaler",
                format!(
                    "{} means and {} deviations for {n} features",
                    self.mean.len(),
                    self.std.len()
                ),
            ));
        }
        let ok = |v: f64| v.is_finite() && v.abs() < 1e150;
        if let Some(j) =
            (0..n).find(|&j| !(ok(self.mean[j]) && ok(self.std[j]) && self.std[j] > 0.0))
        {
            return Err(bad(
                &format!("scaler.std[{j}]"),
                "mean and deviation must be finite, the deviation positive".into(),
            ));
        }
        if !(ok(self.target_mean) && ok(self.target_std) && self.target_std > 0.0) {
            return Err(bad(
                "scaler.target_std",
                "target mean and deviation must be finite, the deviation positive".into(),
            ));
        }
        Ok(())
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt();
    (m, if s > 1e-12 { s } else { 1.0 })
}

/// One dense layer: `weight` is `[outputs × inputs]`, row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
}

impl Layer {
    fn forward(&self, x: &[f64], relu: bool) -> Vec<f64> {
        let n_in = x.len();
        self.bias
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let v = b + self.weight[j * n_in..(j + 1) * n_in]
                    .iter()
                    .zip(x)
                    .map(|(w, x)| w * x)
                    .sum::<f64>();
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
            .collect()
    }
}

/// A node of a regression tree; children are later indices of the same tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Node {
    /// Rows with `x[feature] <= threshold` go left.
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
    Leaf {
        value: f64,
    },
}

/// A fitted model on standardised features, predicting the standardised
/// accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Model {
    /// ReLU between layers; the last layer has one output.
    Mlp { layers: Vec<Layer> },
    /// `base + Σ learning_rate · tree(x)`.
    Gbrt {
        base: f64,
        learning_rate: f64,
        trees: Vec<Vec<Node>>,
    },
}

impl Model {
    pub fn name(&self) -> &'static str {
        match self {
            Model::Mlp { .. } => "mlp",
            Model::Gbrt { .. } => "gbrt",
        }
    }

    /// The standardised prediction for standardised features `x`.
    pub fn predict(&self, x: &[f64]) -> f64 {
        match self {
            Model::Mlp { layers } => {
                let mut h = x.to_vec();
                for (k, l) in layers.iter().enumerate() {
                    h = l.forward(&h, k + 1 < layers.len());
                }
                h[0]
            }
            Model::Gbrt {
                base,
                learning_rate,
                trees,
            } => base + learning_rate * trees.iter().map(|t| tree_predict(t, x)).sum::<f64>(),
        }
    }

    pub(super) fn validate(
        &self,
        n_features: usize,
        bad: &dyn Fn(&str, String) -> Error,
    ) -> Result<()> {
        let finite = |field: &str, v: &mut dyn Iterator<Item = f64>| match v
            .enumerate()
            .find(|(_, x)| !x.is_finite() || x.abs() > 1e150)
        {
            Some((i, x)) => Err(bad(
                &format!("{field}[{i}]"),
                format!("{x} is not a finite value of a sane size"),
            )),
            None => Ok(()),
        };
        match self {
            Model::Mlp { layers } => {
                if layers.is_empty() {
                    return Err(bad("model.layers", "no layers".into()));
                }
                let mut n_in = n_features;
                for (k, l) in layers.iter().enumerate() {
                    let field = format!("model.layers[{k}]");
                    if l.bias.is_empty() || l.weight.len() != l.bias.len() * n_in {
                        return Err(bad(
                            &field,
                            format!(
                                "{} weights and {} biases do not make a layer from {n_in} inputs",
                                l.weight.len(),
                                l.bias.len()
                            ),
                        ));
                    }
                    finite(&field, &mut l.weight.iter().chain(&l.bias).copied())?;
                    n_in = l.bias.len();
                }
                if n_in != 1 {
                    return Err(bad(
                        "model.layers",
                        format!("the last layer has {n_in} outputs, not 1"),
                    ));
                }
            }
            Model::Gbrt {
                base,
                learning_rate,
                trees,
            } => {
                finite("model.base", &mut [*base, *learning_rate].into_iter())?;
                for (t, nodes) in trees.iter().enumerate() {
                    let field = format!("model.trees[{t}]");
                    if nodes.is_empty() {
                        return Err(bad(&field, "has no nodes".into()));
                    }
                    for (i, n) in nodes.iter().enumerate() {
                        let ok = match *n {
                            Node::Split {
                                feature,
                                threshold,
                                left,
                                right,
                            } => {
                                feature < n_features
                                    && threshold.is_finite()
                                    && i < left.min(right)
                                    && left.max(right) < nodes.len()
                            }
                            Node::Leaf { value } => value.is_finite(),
                        };
                        if !ok {
                            return Err(bad(
                                &format!("{field}[{i}]"),
                                format!(
                                    "{n:?}: a split needs a feature below {n_features}, a finite \
                                     threshold and children after it in the tree; a leaf a \
                                     finite value"
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn tree_predict(nodes: &[Node], x: &[f64]) -> f64 {
    let mut i = 0;
    loop {
        match nodes[i] {
            Node::Split {
                feature,
                threshold,
                left,
                right,
            } => i = if x[feature] <= threshold { left } else { right },
            Node::Leaf { value } => return value,
        }
    }
}

/// Settings of a fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Fraction of the rows held out to score the models.
    pub holdout: f64,
    pub seed: u64,
    /// Full-batch Adam steps of the MLP.
    pub mlp_steps: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            holdout: 0.2,
            seed: 0,
            mlp_steps: 2000,
        }
    }
}

/// Result of [`fit`]: every model with its held-out scores, the kept one
/// first, and why it was kept.
#[derive(Debug)]
pub struct Fitted {
    pub scaler: Scaler,
    pub models: Vec<(Model, Scores)>,
    pub why: String,
}

/// Fits both models to `rows` (architecture, accuracy) of `space` on a
/// seeded split and ranks them by held-out Kendall τ. `origin` (the CSV)
/// is named when the rows are too few or unusable.
pub fn fit(space: &Space, rows: &[(Arch, f64)], opts: &Options, origin: &Path) -> Result<Fitted> {
    if rows.len() < MIN_ROWS {
        return Err(Error::Predictor {
            path: origin.into(),
            message: format!(
                "{} scored architectures; a fit needs at least {MIN_ROWS}: score more with \
                 `vitnas predictor fit <run dir> --n 300`",
                rows.len()
            ),
        });
    }
    if !(0.05..=0.5).contains(&opts.holdout) {
        return Err(Error::InvalidConfig {
            file: "predictor fit".into(),
            field: "holdout".into(),
            message: format!("{} is not in [0.05, 0.5]", opts.holdout),
        });
    }
    if let Some((a, y)) = rows.iter().find(|(_, y)| !y.is_finite()) {
        return Err(Error::Predictor {
            path: origin.into(),
            message: format!("accuracy {y} of {a:?} is not a number"),
        });
    }
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(opts.seed));
    let n_test = ((rows.len() as f64) * opts.holdout).round() as usize;
    let (test, train) = idx.split_at(n_test);
    let pick = |ids: &[usize]| -> (Vec<Vec<f64>>, Vec<f64>) {
        ids.iter()
            .map(|&i| (encode(space, &rows[i].0), rows[i].1))
            .unzip()
    };
    let (x_train, y_train) = pick(train);
    let (x_test, y_test) = pick(test);
    let scaler = Scaler::of(feature_names(space), &x_train, &y_train);
    let xs: Vec<Vec<f64>> = x_train.iter().map(|r| scaler.apply(r)).collect();
    let ys: Vec<f64> = y_train.iter().map(|&y| scaler.scale_target(y)).collect();
    let mut models = Vec::new();
    for model in [
        fit_gbrt(&xs, &ys),
        fit_mlp(&xs, &ys, opts.seed, opts.mlp_steps),
    ] {
        let pred: Vec<f64> = x_test
            .iter()
            .map(|r| scaler.unscale_target(model.predict(&scaler.apply(r))))
            .collect();
        let scores = score(&pred, &y_test);
        models.push((model, scores));
    }
    models.sort_by(|a, b| {
        b.1.kendall_tau
            .total_cmp(&a.1.kendall_tau)
            .then(a.1.rmse.total_cmp(&b.1.rmse))
    });
    let (best, other) = (&models[0], &models[1]);
    let why = format!(
        "{} on {n_test} held-out of {} rows: {} τ {:.3} (RMSE {:.4}) vs {} τ {:.3} (RMSE {:.4})",
        if best.1.kendall_tau > other.1.kendall_tau {
            "higher held-out Kendall τ"
        } else {
            "equal held-out Kendall τ, lower RMSE"
        },
        rows.len(),
        best.0.name(),
        best.1.kendall_tau,
        best.1.rmse,
        other.0.name(),
        other.1.kendall_tau,
        other.1.rmse,
    );
    Ok(Fitted {
        scaler,
        models,
        why,
    })
}

/// Kendall τ-b (0 where a side is constant) and RMSE of `pred` against `truth`.
pub fn score(pred: &[f64], truth: &[f64]) -> Scores {
    let mse = pred
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).powi(2))
        .sum::<f64>()
        / truth.len().max(1) as f64;
    Scores {
        kendall_tau: crate::stats::kendall_tau_b(pred, truth).unwrap_or(0.0),
        rmse: mse.sqrt(),
        n: truth.len(),
    }
}

/// Gradient boosting on the squared error: each round fits a tree to the
/// residuals and adds it, shrunk.
fn fit_gbrt(x: &[Vec<f64>], y: &[f64]) -> Model {
    let base = y.iter().sum::<f64>() / y.len() as f64;
    let mut f = vec![base; y.len()];
    let mut trees = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let r: Vec<f64> = y.iter().zip(&f).map(|(y, f)| y - f).collect();
        let mut nodes = Vec::new();
        grow(x, &r, (0..y.len()).collect(), 0, &mut nodes);
        for (fi, xi) in f.iter_mut().zip(x) {
            *fi += SHRINKAGE * tree_predict(&nodes, xi);
        }
        trees.push(nodes);
    }
    Model::Gbrt {
        base,
        learning_rate: SHRINKAGE,
        trees,
    }
}

/// Grows the subtree of `rows` at `depth` into `nodes` (the node first, so
/// its children come after it); returns its index.
fn grow(x: &[Vec<f64>], r: &[f64], rows: Vec<usize>, depth: usize, nodes: &mut Vec<Node>) -> usize {
    let at = nodes.len();
    let mean = rows.iter().map(|&i| r[i]).sum::<f64>() / rows.len() as f64;
    nodes.push(Node::Leaf { value: mean });
    if depth == TREE_DEPTH || rows.len() < 2 * MIN_LEAF {
        return at;
    }
    let Some((feature, threshold)) = best_split(x, r, &rows) else {
        return at;
    };
    let (l, rr): (Vec<usize>, Vec<usize>) = rows.iter().partition(|&&i| x[i][feature] <= threshold);
    let left = grow(x, r, l, depth + 1, nodes);
    let right = grow(x, r, rr, depth + 1, nodes);
    nodes[at] = Node::Split {
        feature,
        threshold,
        left,
        right,
    };
    at
}

/// The split of `rows` that most reduces the squared error (both sides at
/// least [`MIN_LEAF`] rows), as (feature, threshold midway between two
/// values); the first of equals, so it is deterministic.
// `j` is a column of every row, not an index into one slice.
#[allow(clippy::needless_range_loop)]
fn best_split(x: &[Vec<f64>], r: &[f64], rows: &[usize]) -> Option<(usize, f64)> {
    let n = rows.len();
    let total: f64 = rows.iter().map(|&i| r[i]).sum();
    let base = total * total / n as f64;
    let mut best: Option<(f64, usize, f64)> = None;
    let mut sorted = rows.to_vec();
    let n_features = x[rows[0]].len();
    for j in 0..n_features {
        sorted.sort_by(|&a, &b| x[a][j].total_cmp(&x[b][j]).then(a.cmp(&b)));
        let mut left = 0.0;
        for k in 1..n {
            left += r[sorted[k - 1]];
            let (lo, hi) = (x[sorted[k - 1]][j], x[sorted[k]][j]);
            if k < MIN_LEAF || n - k < MIN_LEAF || lo == hi {
                continue;
            }
            let right = total - left;
            let gain = left * left / k as f64 + right * right / (n - k) as f64 - base;
            if gain > 1e-12 && best.is_none_or(|b| gain > b.0) {
                best = Some((gain, j, 0.5 * (lo + hi)));
            }
        }
    }
    best.map(|(_, j, t)| (j, t))
}

/// The MLP, full-batch Adam (lr 3e-3, decoupled weight decay 1e-4 on the
/// weights) for `steps` steps.
fn fit_mlp(x: &[Vec<f64>], y: &[f64], seed: u64, steps: usize) -> Model {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4143_4355_5241_4359);
    let dims = [x[0].len(), HIDDEN, HIDDEN, 1];
    let mut layers: Vec<Layer> = dims
        .windows(2)
        .map(|w| {
            let bound = 1.0 / (w[0] as f64).sqrt();
            let mut draw = |n: usize| -> Vec<f64> {
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            Layer {
                weight: draw(w[0] * w[1]),
                bias: draw(w[1]),
            }
        })
        .collect();
    let (lr, b1, b2, eps, wd): (f64, f64, f64, f64, f64) = (3e-3, 0.9, 0.999, 1e-8, 1e-4);
    let size = |l: &Layer| l.weight.len() + l.bias.len();
    let mut m: Vec<Vec<f64>> = layers.iter().map(|l| vec![0.0; size(l)]).collect();
    let mut v = m.clone();
    let n = x.len() as f64;
    let last = layers.len() - 1;
    for t in 1..=steps {
        let mut grads: Vec<Vec<f64>> = layers.iter().map(|l| vec![0.0; size(l)]).collect();
        for (xi, &yi) in x.iter().zip(y) {
            // Forward, keeping every layer's input.
            let mut acts = vec![xi.clone()];
            for (k, l) in layers.iter().enumerate() {
                let h = l.forward(&acts[k], k < last);
                acts.push(h);
            }
            // d(mean squared error) / d(output), then back layer by layer.
            let mut d = vec![2.0 * (acts[last + 1][0] - yi) / n];
            for k in (0..=last).rev() {
                if k < last {
                    // Through the ReLU that made acts[k + 1].
                    for (dj, a) in d.iter_mut().zip(&acts[k + 1]) {
                        if *a <= 0.0 {
                            *dj = 0.0;
                        }
                    }
                }
                let (l, input, g) = (&layers[k], &acts[k], &mut grads[k]);
                let n_in = input.len();
                let nw = l.weight.len();
                let mut d_in = vec![0.0; n_in];
                for (j, &dj) in d.iter().enumerate().filter(|(_, d)| **d != 0.0) {
                    let row = &l.weight[j * n_in..(j + 1) * n_in];
                    for i in 0..n_in {
                        g[j * n_in + i] += dj * input[i];
                        d_in[i] += dj * row[i];
                    }
                    g[nw + j] += dj;
                }
                d = d_in;
            }
        }
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for (k, l) in layers.iter_mut().enumerate() {
            let nw = l.weight.len();
            let moments = grads[k].iter().zip(m[k].iter_mut()).zip(v[k].iter_mut());
            for (p, (w, ((g, mk), vk))) in l
                .weight
                .iter_mut()
                .chain(l.bias.iter_mut())
                .zip(moments)
                .enumerate()
            {
                *mk = b1 * *mk + (1.0 - b1) * g;
                *vk = b2 * *vk + (1.0 - b2) * g * g;
                if p < nw {
                    *w -= lr * wd * *w;
                }
                *w -= lr * (*mk / c1) / ((*vk / c2).sqrt() + eps);
            }
        }
    }
    Model::Mlp { layers }
}
