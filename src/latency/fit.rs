//! Fitting latency predictors on a measured dataset.
//!
//! * `additive`: latency = Σₖ wₖ · costₖ(arch) over the cost features of
//!   [`super::features::cost`], fitted by least squares on the *relative*
//!   error (each row weighted by 1 / measured latency), with a tiny ridge
//!   on standardised columns. Nine numbers; it extrapolates the way the
//!   work does.
//! * `hat_mlp`: HAT's predictor: an MLP on [`super::features::hat`]
//!   (inputs divided by their maxima), four hidden layers of 400 with ReLU,
//!   trained on the mean squared error of the latency divided by its
//!   maximum (Adam, batch 128), seeded.
//!
//! Both are fitted on the same seeded split and compared on its held-out
//! part; the one with the lower mean relative error is kept.

use super::features;
use super::Errors;
use crate::error::{Error, Result};
use crate::space::{Arch, Space};
use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// HAT's hidden width and hidden layers.
const HIDDEN: usize = 400;
const HIDDEN_LAYERS: usize = 4;

/// A fitted model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Model {
    /// `Σ weights[k] · cost[k]` ([`features::COST`]).
    Additive {
        features: Vec<String>,
        weights: Vec<f64>,
    },
    /// HAT's MLP on [`features::HAT`] / `input_scale`; output × `output_scale`.
    HatMlp {
        features: Vec<String>,
        input_scale: Vec<f64>,
        output_scale: f64,
        /// `(weight [out × in] row-major, bias [out])` per layer.
        layers: Vec<(Vec<f32>, Vec<f32>)>,
    },
}

impl Model {
    pub fn name(&self) -> &'static str {
        match self {
            Model::Additive { .. } => "additive",
            Model::HatMlp { .. } => "hat_mlp",
        }
    }

    pub fn predict(&self, space: &Space, arch: &Arch) -> f64 {
        match self {
            Model::Additive { weights, .. } => features::cost(space, arch)
                .iter()
                .zip(weights)
                .map(|(x, w)| x * w)
                .sum(),
            Model::HatMlp {
                input_scale,
                output_scale,
                layers,
                ..
            } => {
                let mut h: Vec<f32> = features::hat(space, arch)
                    .iter()
                    .zip(input_scale)
                    .map(|(x, s)| (x / s) as f32)
                    .collect();
                for (k, (w, b)) in layers.iter().enumerate() {
                    let n_in = h.len();
                    let mut o = b.clone();
                    for (j, oj) in o.iter_mut().enumerate() {
                        *oj += w[j * n_in..(j + 1) * n_in]
                            .iter()
                            .zip(&h)
                            .map(|(a, x)| a * x)
                            .sum::<f32>();
                        if k + 1 < layers.len() {
                            *oj = oj.max(0.0);
                        }
                    }
                    h = o;
                }
                h[0] as f64 * output_scale
            }
        }
    }
}

/// The first architecture, of `space`'s smallest and largest subnets and
/// 64 seeded samples, for which `model` does not predict a finite, positive
/// latency: what it is and the prediction. A fit never keeps such a model
/// and a predictor file holding one is refused at load (the same
/// architectures, so that a predictor `fit` keeps always loads).
pub fn first_implausible(model: &Model, space: &Space) -> Option<(String, f64)> {
    let mut rng = StdRng::seed_from_u64(0);
    [
        ("the smallest subnet".to_string(), space.smallest()),
        ("the largest subnet".to_string(), space.largest()),
    ]
    .into_iter()
    .chain((0..64).map(|i| (format!("sampled architecture {i}"), space.sample(&mut rng))))
    .find_map(|(what, arch)| {
        let ms = model.predict(space, &arch);
        (!(ms.is_finite() && ms > 0.0)).then_some((what, ms))
    })
}

/// The held-out mean relative error a latency predictor should stay under
/// (HAT's predictors reach a few percent on an idle machine).
pub const TARGET_REL_ERROR: f64 = 0.05;

/// Repeat noise (median std / mean of a row's timed runs) above which
/// measurements are too noisy to fit or check a predictor.
pub const NOISY_REPEATS: f64 = 0.05;

/// What to do about a noisy machine, said with every warning below.
pub const NOISE_ADVICE: &str = "measure on an idle machine (other jobs running skew every \
     timing), or with 1 thread (`--threads 1`), then measure and fit again";

/// Warnings about a fit: a held-out mean relative error `heldout` above
/// [`TARGET_REL_ERROR`], a `repeat_noise` above [`NOISY_REPEATS`]; each
/// says what to do.
pub fn fit_warnings(heldout: f64, repeat_noise: f64) -> Vec<String> {
    let mut w = Vec::new();
    if heldout > TARGET_REL_ERROR {
        w.push(format!(
            "the predictor's held-out error is {:.1} % (mean relative), above the {:.0} % \
             target: latency bounds from it can be off by that much; {NOISE_ADVICE}",
            100.0 * heldout,
            100.0 * TARGET_REL_ERROR
        ));
    }
    if repeat_noise > NOISY_REPEATS {
        w.push(format!(
            "the measurements are noisy: a typical architecture's timed runs vary by {:.1} % \
             (median std / mean over the rows; above {:.0} %); {NOISE_ADVICE}",
            100.0 * repeat_noise,
            100.0 * NOISY_REPEATS
        ));
    }
    w
}

/// One measured row: an architecture and its latency (ms).
#[derive(Debug, Clone)]
pub struct Sample {
    pub arch: Arch,
    pub ms: f64,
}

/// Fewest rows a fit accepts (training part ≥ 4× the additive model's
/// coefficients, and a held-out part of at least 10).
pub const MIN_SAMPLES: usize = 50;

/// Result of [`fit`]: every model with its held-out error, best first.
#[derive(Debug)]
pub struct Fitted {
    pub models: Vec<(Model, Errors)>,
    pub why: String,
}

/// Fits both models on a seeded split (`holdout` fraction held out) and
/// ranks them by held-out mean relative error.
///
/// Fit on 60 architectures whose latency (made up here; `vitnas latency
/// measure` times them) is linear in their multiply-adds: the additive
/// model, whose cost features split the work by kind, predicts it within a
/// few percent.
///
/// ```
/// use vitnas::latency::{dataset, fit};
/// use vitnas::space::{flops, Space};
///
/// # fn main() -> vitnas::Result<()> {
/// let space = Space::from_file("search_spaces/fmnist-tiny.toml")?;
/// let samples: Vec<fit::Sample> = dataset::plan(&space, 60, 0)
///     .into_iter()
///     .map(|arch| {
///         let ms = 0.2 + 1e-6 * flops(&space, &arch) as f64;
///         fit::Sample { arch, ms }
///     })
///     .collect();
/// let fitted = fit::fit(&space, &samples, 0.2, 0, 50, "made-up latencies")?;
/// let (best, heldout) = &fitted.models[0];
/// assert_eq!(best.name(), "additive");
/// assert!(heldout.mean_rel < 0.05, "{}", fitted.why);
/// let arch = space.largest();
/// let ms = 0.2 + 1e-6 * flops(&space, &arch) as f64;
/// assert!((best.predict(&space, &arch) - ms).abs() < 0.1 * ms);
/// # Ok(())
/// # }
/// ```
pub fn fit(
    space: &Space,
    samples: &[Sample],
    holdout: f64,
    seed: u64,
    mlp_steps: usize,
    origin: &str,
) -> Result<Fitted> {
    if samples.len() < MIN_SAMPLES {
        return Err(Error::Latency {
            path: origin.into(),
            message: format!(
                "{} measured architectures; a fit needs at least {MIN_SAMPLES} \
                 (HAT measures 2,000): measure more with `vitnas latency measure --n`",
                samples.len()
            ),
        });
    }
    if !(0.05..=0.5).contains(&holdout) {
        return Err(Error::InvalidConfig {
            file: "latency fit".into(),
            field: "holdout".into(),
            message: format!("{holdout} is not in [0.05, 0.5]"),
        });
    }
    let mut idx: Vec<usize> = (0..samples.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_test = ((samples.len() as f64) * holdout).round() as usize;
    let (test, train): (Vec<&Sample>, Vec<&Sample>) = {
        let (a, b) = idx.split_at(n_test);
        (
            a.iter().map(|&i| &samples[i]).collect(),
            b.iter().map(|&i| &samples[i]).collect(),
        )
    };
    let truth: Vec<f64> = test.iter().map(|s| s.ms).collect();
    let mut models = Vec::new();
    for model in [
        fit_additive(space, &train),
        fit_mlp(space, &train, seed, mlp_steps)?,
    ] {
        let pred: Vec<f64> = test.iter().map(|s| model.predict(space, &s.arch)).collect();
        let e = Errors::of(&pred, &truth);
        models.push((model, e));
    }
    models.sort_by(|a, b| a.1.mean_rel.total_cmp(&b.1.mean_rel));
    // A model that predicts a latency of 0 or less (or not a number) for
    // some subnet would let a search take it as free: never kept.
    let implausible: Vec<Option<(String, f64)>> = models
        .iter()
        .map(|(m, _)| first_implausible(m, space))
        .collect();
    if let Some((what, ms)) = implausible.iter().flatten().next() {
        if implausible.iter().all(Option::is_some) {
            return Err(Error::Latency {
                path: origin.into(),
                message: format!(
                    "every model fitted predicts a latency that is not positive for some subnet \
                     ({ms} ms for {what}): the measurement is too noisy or too small; measure \
                     more architectures, or with more --runs"
                ),
            });
        }
    }
    let mut order: Vec<usize> = (0..models.len()).collect();
    order.sort_by_key(|&i| implausible[i].is_some());
    let models: Vec<(Model, Errors)> = order.into_iter().map(|i| models[i].clone()).collect();
    let skipped = match &implausible.iter().flatten().next() {
        Some((what, ms)) => format!(
            "; {} not kept: it predicts {ms:.3} ms for {what}",
            models[1].0.name()
        ),
        None => String::new(),
    };
    let why = format!(
        "lowest held-out mean relative error on {} of {} rows ({}: {:.2} %, {}: {:.2} %){skipped}",
        n_test,
        samples.len(),
        models[0].0.name(),
        100.0 * models[0].1.mean_rel,
        models[1].0.name(),
        100.0 * models[1].1.mean_rel
    );
    Ok(Fitted { models, why })
}

/// Least squares on the relative error, ridge 1e-9 on standardised columns;
/// non-negative least squares when that predicts a latency of 0 or less for
/// some subnet ([`first_implausible`]).
fn fit_additive(space: &Space, train: &[&Sample]) -> Model {
    let x: Vec<Vec<f64>> = train
        .iter()
        .map(|s| {
            features::cost(space, &s.arch)
                .into_iter()
                .map(|v| v / s.ms)
                .collect()
        })
        .collect();
    let k = features::COST.len();
    // Column scales (RMS), so that the ridge treats every column alike.
    let scale: Vec<f64> = (0..k)
        .map(|j| {
            let ss = x.iter().map(|r| r[j] * r[j]).sum::<f64>() / x.len() as f64;
            if ss > 0.0 {
                ss.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    let mut a = vec![vec![0f64; k]; k];
    let mut b = vec![0f64; k];
    for r in &x {
        for i in 0..k {
            let ri = r[i] / scale[i];
            b[i] += ri; // target: relative latency 1
            for j in 0..k {
                a[i][j] += ri * r[j] / scale[j];
            }
        }
    }
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += 1e-9 * x.len() as f64;
    }
    let model = |w: Vec<f64>| Model::Additive {
        features: features::COST.iter().map(|s| s.to_string()).collect(),
        weights: w.iter().zip(&scale).map(|(w, s)| w / s).collect(),
    };
    let least_squares = model(solve(a.clone(), b.clone()));
    if first_implausible(&least_squares, space).is_none() {
        return least_squares;
    }
    // Noise and near-collinear terms can give a term a negative cost and
    // some subnet a latency of 0 or less: then every term's cost is kept
    // non-negative, as a cost is.
    model(nnls(&a, &b))
}

/// Non-negative least squares on the normal equations: the `w ≥ 0` that
/// minimises `½ wᵀ a w − bᵀ w` (`a` symmetric positive definite), by
/// Lawson and Hanson's active-set method.
fn nnls(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let tol = 1e-12 * b.iter().map(|v| v.abs()).fold(1.0, f64::max);
    let mut w = vec![0f64; n];
    let mut passive = vec![false; n];
    // Solves the unconstrained problem on the passive set (0 elsewhere).
    let sub = |passive: &[bool]| -> Vec<f64> {
        let idx: Vec<usize> = (0..n).filter(|&i| passive[i]).collect();
        let sa = idx
            .iter()
            .map(|&i| idx.iter().map(|&j| a[i][j]).collect())
            .collect();
        let sb = idx.iter().map(|&i| b[i]).collect();
        let mut z = vec![0f64; n];
        for (k, v) in idx.iter().zip(solve(sa, sb)) {
            z[*k] = v;
        }
        z
    };
    for _ in 0..3 * n {
        let grad: Vec<f64> = (0..n)
            .map(|i| b[i] - (0..n).map(|j| a[i][j] * w[j]).sum::<f64>())
            .collect();
        let Some(j) = (0..n)
            .filter(|&i| !passive[i] && grad[i] > tol)
            .max_by(|&x, &y| grad[x].total_cmp(&grad[y]))
        else {
            break;
        };
        passive[j] = true;
        for _ in 0..3 * n {
            let z = sub(&passive);
            if (0..n).filter(|&i| passive[i]).all(|i| z[i] > 0.0) {
                w = z;
                break;
            }
            let alpha = (0..n)
                .filter(|&i| passive[i] && z[i] <= 0.0)
                .map(|i| w[i] / (w[i] - z[i]))
                .fold(1.0, f64::min);
            for ((wi, zi), pi) in w.iter_mut().zip(&z).zip(passive.iter_mut()) {
                *wi += alpha * (zi - *wi);
                if *pi && *wi <= tol {
                    *pi = false;
                    *wi = 0.0;
                }
            }
        }
    }
    w
}

/// Solves `a · x = b` by Gaussian elimination with partial pivoting
/// (`a` symmetric positive definite here, so it does not fail).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap_or(c);
        a.swap(c, p);
        b.swap(c, p);
        let d = a[c][c];
        if d.abs() < 1e-300 {
            continue;
        }
        let (upper, lower) = a.split_at_mut(c + 1);
        let pivot = &upper[c];
        for (k, row) in lower.iter_mut().enumerate() {
            let f = row[c] / d;
            if f != 0.0 {
                for (x, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                    *x -= f * p;
                }
                b[c + 1 + k] -= f * b[c];
            }
        }
    }
    let mut x = vec![0f64; n];
    for c in (0..n).rev() {
        let s: f64 = (c + 1..n).map(|j| a[c][j] * x[j]).sum();
        x[c] = if a[c][c].abs() < 1e-300 {
            0.0
        } else {
            (b[c] - s) / a[c][c]
        };
    }
    x
}

/// HAT's MLP, trained with Adam (lr 1e-3, batch 128) for `steps` steps.
fn fit_mlp(space: &Space, train: &[&Sample], seed: u64, steps: usize) -> Result<Model> {
    let dev = Device::Cpu;
    let feats: Vec<Vec<f64>> = train
        .iter()
        .map(|s| features::hat(space, &s.arch))
        .collect();
    let nf = features::HAT.len();
    let input_scale: Vec<f64> = (0..nf)
        .map(|j| feats.iter().map(|r| r[j]).fold(0.0, f64::max).max(1e-12))
        .collect();
    let output_scale = train.iter().map(|s| s.ms).fold(0.0, f64::max).max(1e-12);
    let xs: Vec<f32> = feats
        .iter()
        .flat_map(|r| r.iter().zip(&input_scale).map(|(x, s)| (x / s) as f32))
        .collect();
    let ys: Vec<f32> = train.iter().map(|s| (s.ms / output_scale) as f32).collect();
    let x_all = Tensor::from_vec(xs, (train.len(), nf), &dev)?;
    let y_all = Tensor::from_vec(ys, (train.len(), 1), &dev)?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4c41_5445_4e43_5901);
    let mut dims = vec![nf];
    dims.extend([HIDDEN; HIDDEN_LAYERS]);
    dims.push(1);
    let mut vars: Vec<(Var, Var)> = Vec::new();
    for w in dims.windows(2) {
        let (n_in, n_out) = (w[0], w[1]);
        let bound = 1.0 / (n_in as f32).sqrt();
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let wt = Tensor::from_vec(draw(n_out * n_in), (n_out, n_in), &dev)?;
        let bt = Tensor::from_vec(draw(n_out), n_out, &dev)?;
        vars.push((Var::from_tensor(&wt)?, Var::from_tensor(&bt)?));
    }
    let params: Vec<Var> = vars
        .iter()
        .flat_map(|(w, b)| [w.clone(), b.clone()])
        .collect();
    let mut opt = candle_nn::AdamW::new(
        params,
        candle_nn::ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let forward = |x: &Tensor| -> Result<Tensor> {
        let mut h = x.clone();
        for (k, (w, b)) in vars.iter().enumerate() {
            h = h
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            if k + 1 < vars.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    };
    let n = train.len();
    let bs = 128.min(n);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut pos = n;
    for _ in 0..steps {
        if pos + bs > n {
            order.shuffle(&mut rng);
            pos = 0;
        }
        let ids = Tensor::from_slice(&order[pos..pos + bs], bs, &dev)?;
        pos += bs;
        let (x, y) = (x_all.index_select(&ids, 0)?, y_all.index_select(&ids, 0)?);
        let loss = (forward(&x)? - y)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
    }
    let layers = vars
        .iter()
        .map(|(w, b)| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                w.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                b.as_tensor().to_vec1::<f32>()?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Model::HatMlp {
        features: features::HAT.iter().map(|s| s.to_string()).collect(),
        input_scale,
        output_scale,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_recovers_a_known_solution() {
        let a = vec![
            vec![4.0, 1.0, 0.5],
            vec![1.0, 3.0, 0.2],
            vec![0.5, 0.2, 2.0],
        ];
        let x = [1.0, -2.0, 0.5];
        let b: Vec<f64> = a
            .iter()
            .map(|r| r.iter().zip(&x).map(|(a, x)| a * x).sum())
            .collect();
        for (g, w) in solve(a, b).iter().zip(x) {
            assert!((g - w).abs() < 1e-12);
        }
    }

    #[test]
    fn errors_are_relative_and_the_p95_is_an_order_statistic() {
        let truth: Vec<f64> = (1..=20).map(|i| i as f64).collect();
        let pred: Vec<f64> = truth.iter().map(|t| t * 1.1).collect();
        let e = Errors::of(&pred, &truth);
        assert!((e.mean_rel - 0.1).abs() < 1e-12 && (e.p95_rel - 0.1).abs() < 1e-12);
        let mut pred2 = truth.clone();
        pred2[19] = 40.0; // one row off by 100 %
        let e = Errors::of(&pred2, &truth);
        assert!((e.mean_rel - 0.05).abs() < 1e-12);
        assert_eq!(e.p95_rel, 0.0); // the 19th of 20 sorted errors
    }

    #[test]
    fn nnls_keeps_every_weight_non_negative_and_matches_least_squares_when_it_does() {
        // Unconstrained: w = (10, −10); constrained: (1, 0).
        let a = vec![vec![1.0, 0.9], vec![0.9, 1.0]];
        let w = nnls(&a, &[1.0, -1.0]);
        assert!((w[0] - 1.0).abs() < 1e-9 && w[1] == 0.0, "{w:?}");
        // A non-negative unconstrained solution is returned as it is.
        let ls = solve(a.clone(), vec![1.9, 1.9]);
        let w = nnls(&a, &[1.9, 1.9]);
        assert!(
            ls.iter().zip(&w).all(|(x, y)| (x - y).abs() < 1e-9),
            "{ls:?} {w:?}"
        );
    }
}

#[cfg(test)]
mod warning_tests {
    use super::*;

    #[test]
    fn a_busy_machines_fit_is_warned_about_with_what_to_do() {
        assert!(fit_warnings(0.02, 0.01).is_empty());
        let w = fit_warnings(0.178, 0.01);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("17.8 %") && w[0].contains("idle machine"),
            "{w:?}"
        );
        let w = fit_warnings(0.02, 0.12);
        assert!(
            w[0].contains("12.0 %") && w[0].contains("1 thread"),
            "{w:?}"
        );
    }
}
