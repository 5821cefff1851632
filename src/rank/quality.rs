//! Search quality (`vitnas evaluate quality`): every ranker scored against
//! one reference set ([`super::reference`]) with 95 % bootstrap intervals,
//! and every ranker but FLOPs compared with FLOPs on the same resamples
//! (paired intervals of the difference).
//!
//! A ranker gives each ranked architecture a score, higher meaning
//! predicted better: FLOPs, params, a zero-cost proxy, a supernet's
//! inherited validation accuracy. The ground truth is the architecture's
//! standalone test accuracy (the mean over its seeds). Metrics:
//! - Kendall τ-b and Spearman ρ over all ranked architectures;
//! - Kendall τ within each budget bin (architectures of equal cost);
//! - top-1 regret per budget, in points: the bin's best standalone accuracy
//!   minus that of the architecture the ranker puts first;
//! - top-5 overlap over all ranked architectures.
//!
//! Resamples draw architectures with replacement within their group (the
//! stratified ones, and each budget bin), so every bin keeps its size.

use super::bootstrap::{self, RESAMPLES};
use super::reference::{Group, Reference};
use super::stats;
use crate::error::{Error, Result};
use crate::train::checkpoint::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// k of the top-k overlap.
pub const TOP_K: usize = 5;

/// One ranker's scores, in the order of [`Reference::ranked`].
#[derive(Debug, Clone, PartialEq)]
pub struct Ranker {
    pub name: String,
    pub scores: Vec<f64>,
}

/// A ranker's metrics (accuracies as fractions, regret in points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub tau: Option<f64>,
    pub tau_ci: Option<[f64; 2]>,
    pub rho: Option<f64>,
    pub rho_ci: Option<[f64; 2]>,
    /// Per budget, in the reference's order.
    pub tau_in_budget: Vec<Option<f64>>,
    pub tau_in_budget_ci: Vec<Option<[f64; 2]>>,
    pub regret_points: Vec<Option<f64>>,
    pub regret_ci: Vec<Option<[f64; 2]>>,
    /// Mean of `regret_points` over the budgets (those with results).
    pub mean_regret_points: Option<f64>,
    pub mean_regret_ci: Option<[f64; 2]>,
    pub top5_overlap: f64,
    pub top5_overlap_ci: Option<[f64; 2]>,
    /// This ranker's τ minus FLOPs' τ, and its paired interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_flops_tau_diff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_flops_tau_diff_ci: Option<[f64; 2]>,
    /// This ranker's mean regret minus FLOPs' (points; negative is better).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_flops_regret_diff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_flops_regret_diff_ci: Option<[f64; 2]>,
    /// Within-budget τ minus FLOPs', mean over the budgets, with its
    /// paired interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_flops_tau_in_budget_diff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_flops_tau_in_budget_diff_ci: Option<[f64; 2]>,
    /// How the scores were made (command, run, seed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// What `search-quality.json` says of its reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceSummary {
    pub name: String,
    pub space: String,
    pub recipe: String,
    pub epochs: usize,
    /// Ranked architectures with a result.
    pub k: usize,
    pub stratified: usize,
    pub budgets: Vec<f64>,
    pub per_budget: usize,
    pub seeds: usize,
    pub noise_ceiling_tau: Option<f64>,
    pub noise_ceiling_tau_ci: Option<[f64; 2]>,
    pub convergence_delta_points: Option<f64>,
    pub largest_standalone_test: Option<f64>,
    pub smallest_standalone_test: Option<f64>,
    pub wall_s_total: f64,
    pub complete: bool,
    pub commands: Vec<String>,
}

/// `evaluate/results/search-quality.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchQuality {
    pub reference: ReferenceSummary,
    pub rankers: BTreeMap<String, Metrics>,
}

impl SearchQuality {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::io::read_json(path)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(
            path,
            serde_json::to_string_pretty(self)
                .expect("summary serializes")
                .as_bytes(),
        )
    }
}

/// The reference's summary, with the commands that made it.
pub fn summarize(reference: &Reference, commands: Vec<String>) -> ReferenceSummary {
    let c = &reference.config;
    ReferenceSummary {
        name: c.name.clone(),
        space: c.space.display().to_string(),
        recipe: c.recipe.display().to_string(),
        epochs: reference.epochs,
        k: reference.ranked().len(),
        stratified: c.stratified,
        budgets: c.budgets.clone(),
        per_budget: c.per_budget,
        seeds: c.seeds.len(),
        noise_ceiling_tau: reference.checks.noise_ceiling_tau,
        noise_ceiling_tau_ci: reference.checks.noise_ceiling_tau_ci,
        convergence_delta_points: reference.checks.convergence_delta_points,
        largest_standalone_test: reference.checks.largest_standalone_test,
        smallest_standalone_test: reference.checks.smallest_standalone_test,
        wall_s_total: reference.checks.wall_s_total,
        complete: reference.complete,
        commands,
    }
}

/// The ground truth and the groups the metrics read.
pub struct Truth {
    /// Standalone test accuracy per ranked architecture.
    pub acc: Vec<f64>,
    /// Positions (in `acc`) of each budget bin, in the reference's order.
    pub bins: Vec<Vec<usize>>,
    /// Positions of the stratified architectures.
    pub stratified: Vec<usize>,
    pub seed: u64,
}

impl Truth {
    pub fn of(reference: &Reference) -> Self {
        let ranked = reference.ranked();
        let pos = |g: &dyn Fn(&Group) -> bool| -> Vec<usize> {
            ranked
                .iter()
                .enumerate()
                .filter(|(_, (e, _))| g(&e.group))
                .map(|(i, _)| i)
                .collect()
        };
        Truth {
            acc: ranked.iter().map(|(_, t)| *t).collect(),
            bins: reference
                .config
                .budgets
                .iter()
                .map(|b| pos(&|g| *g == Group::Budget(*b)))
                .collect(),
            stratified: pos(&|g| *g == Group::Stratified),
            seed: reference.config.seed,
        }
    }

    /// Resampling groups: the stratified architectures, then each bin (an
    /// empty group stays, so that group `1 + b` is always bin `b`).
    fn groups(&self) -> Vec<Vec<usize>> {
        let mut g = vec![self.stratified.clone()];
        g.extend(self.bins.iter().cloned());
        g
    }
}

/// Point values of one ranker on the architectures `all` with the bins
/// `bins` (positions may repeat: a resample).
struct Point {
    tau: Option<f64>,
    rho: Option<f64>,
    tau_in: Vec<Option<f64>>,
    regret: Vec<Option<f64>>,
    top5: f64,
}

impl Point {
    /// Mean over the budgets where it is defined (a bin without results,
    /// in an incomplete reference, is left out).
    fn mean_regret(&self) -> Option<f64> {
        mean_defined(&self.regret)
    }

    fn mean_tau_in(&self) -> Option<f64> {
        mean_defined(&self.tau_in)
    }
}

fn mean_defined(v: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = v.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Top-1 regret in points within `bin`: best accuracy minus the accuracy of
/// the highest-scored member (the first one on a tie). `None` for a bin of
/// fewer than two (no choice to make).
pub fn regret(acc: &[f64], score: &[f64], bin: &[usize]) -> Option<f64> {
    if bin.len() < 2 {
        return None;
    }
    let best = bin
        .iter()
        .map(|&i| acc[i])
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))))?;
    let pick = bin
        .iter()
        .copied()
        .reduce(|p, i| if score[i] > score[p] { i } else { p })?;
    Some((best - acc[pick]) * 100.0)
}

/// Top-k overlap over distinct positions (a resample may repeat one).
fn top_overlap(acc: &[f64], score: &[f64], all: &[usize]) -> f64 {
    let mut d: Vec<usize> = all.to_vec();
    d.sort_unstable();
    d.dedup();
    let a: Vec<f64> = d.iter().map(|&i| acc[i]).collect();
    let s: Vec<f64> = d.iter().map(|&i| score[i]).collect();
    stats::top_k_overlap(&s, &a, TOP_K)
}

fn point(acc: &[f64], score: &[f64], all: &[usize], bins: &[Vec<usize>]) -> Point {
    let pick = |idx: &[usize], v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    let (a, s) = (pick(all, acc), pick(all, score));
    Point {
        tau: stats::kendall_tau_b(&s, &a),
        rho: stats::spearman(&s, &a),
        tau_in: bins
            .iter()
            .map(|b| stats::kendall_tau_b(&pick(b, score), &pick(b, acc)))
            .collect(),
        regret: bins.iter().map(|b| regret(acc, score, b)).collect(),
        top5: top_overlap(acc, score, all),
    }
}

/// Scores every ranker; `flops` must be among them for the paired
/// comparisons (it is compared with nothing itself).
pub fn score(truth: &Truth, rankers: &[Ranker]) -> Result<BTreeMap<String, Metrics>> {
    let n = truth.acc.len();
    for r in rankers {
        if r.scores.len() != n {
            return Err(Error::Data {
                source_name: format!("ranker {}", r.name),
                message: format!("{} scores for {n} ranked architectures", r.scores.len()),
            });
        }
        if let Some(i) = r.scores.iter().position(|s| !s.is_finite()) {
            return Err(Error::Data {
                source_name: format!("ranker {}", r.name),
                message: format!("score {i} is {} (not finite)", r.scores[i]),
            });
        }
    }
    let flops = rankers.iter().position(|r| r.name == "flops");
    let all: Vec<usize> = (0..n).collect();
    let nb = truth.bins.len();
    let mut out = BTreeMap::new();
    let groups = truth.groups();
    for r in rankers {
        let p = point(&truth.acc, &r.scores, &all, &truth.bins);
        let f = flops.map(|f| &rankers[f].scores);
        // Per resample: τ, ρ, top-5, mean regret, [τ in bin, regret in bin]
        // × bins, then against FLOPs: τ diff, mean-regret diff, mean
        // τ-in-bin diff.
        let width = 4 + 2 * nb + 3;
        let cis = bootstrap::intervals(&groups, RESAMPLES, truth.seed, width, |g| {
            let flat: Vec<usize> = g.concat();
            // The bins of the resample are its groups after the stratified one.
            let bins: Vec<Vec<usize>> = g[1..].to_vec();
            let q = point(&truth.acc, &r.scores, &flat, &bins);
            let mut v = vec![q.tau, q.rho, Some(q.top5), q.mean_regret()];
            for b in 0..nb {
                v.push(q.tau_in.get(b).copied().flatten());
                v.push(q.regret.get(b).copied().flatten());
            }
            match f.filter(|_| r.name != "flops") {
                Some(f) => {
                    let qf = point(&truth.acc, f, &flat, &bins);
                    v.push(q.tau.zip(qf.tau).map(|(a, b)| a - b));
                    v.push(q.mean_regret().zip(qf.mean_regret()).map(|(a, b)| a - b));
                    v.push(q.mean_tau_in().zip(qf.mean_tau_in()).map(|(a, b)| a - b));
                }
                None => v.extend([None, None, None]),
            }
            v
        });
        let pf = f
            .filter(|_| r.name != "flops")
            .map(|f| point(&truth.acc, f, &all, &truth.bins));
        let m = Metrics {
            tau: p.tau,
            tau_ci: cis[0],
            rho: p.rho,
            rho_ci: cis[1],
            top5_overlap: p.top5,
            top5_overlap_ci: cis[2],
            mean_regret_points: p.mean_regret(),
            mean_regret_ci: cis[3],
            tau_in_budget: p.tau_in.clone(),
            tau_in_budget_ci: (0..nb).map(|b| cis[4 + 2 * b]).collect(),
            regret_points: p.regret.clone(),
            regret_ci: (0..nb).map(|b| cis[5 + 2 * b]).collect(),
            vs_flops_tau_diff: pf.as_ref().and_then(|q| Some(p.tau? - q.tau?)),
            vs_flops_tau_diff_ci: cis[4 + 2 * nb],
            vs_flops_regret_diff: pf
                .as_ref()
                .and_then(|q| Some(p.mean_regret()? - q.mean_regret()?)),
            vs_flops_regret_diff_ci: cis[5 + 2 * nb],
            vs_flops_tau_in_budget_diff: pf
                .as_ref()
                .and_then(|q| Some(p.mean_tau_in()? - q.mean_tau_in()?)),
            vs_flops_tau_in_budget_diff_ci: cis[6 + 2 * nb],
            source: String::new(),
        };
        out.insert(r.name.clone(), m);
    }
    Ok(out)
}

/// The cost rankers of a reference: FLOPs and params.
pub fn cost_rankers(reference: &Reference) -> Vec<Ranker> {
    let ranked = reference.ranked();
    vec![
        Ranker {
            name: "flops".into(),
            scores: ranked.iter().map(|(e, _)| e.flops as f64).collect(),
        },
        Ranker {
            name: "params".into(),
            scores: ranked.iter().map(|(e, _)| e.params as f64).collect(),
        },
    ]
}

/// The inherited validation accuracy of every ranked architecture in the
/// supernet run `dir` (its own validation split, on the engine), named
/// `supernet:<directory name>`. Refuses a run of another space. A few-shot
/// directory (`vitnas train` with `[few_shot]`) scores each architecture in
/// the sub-supernet that holds it.
pub fn supernet_ranker(reference: &Reference, dir: &Path) -> Result<Ranker> {
    let space = crate::space::Space::from_file(&reference.config.space)?;
    let other_space = |name: &str| Error::Data {
        source_name: dir.display().to_string(),
        message: format!(
            "is a supernet of space {name:?}, not of the reference's space {} ({})",
            space.name,
            reference.config.space.display()
        ),
    };
    let mut scores = Vec::new();
    if crate::train::few_shot::FewShot::is_few_shot(dir) {
        let fs = crate::train::few_shot::FewShot::load(dir)?;
        if fs.manifest.space != space {
            return Err(other_space(&fs.manifest.space.name));
        }
        let mut parts: std::collections::HashMap<std::path::PathBuf, crate::train::TrainedRun> =
            Default::default();
        let mut val = None;
        for (e, _) in reference.ranked() {
            let part = fs.part_for(&e.arch)?;
            if !parts.contains_key(&part) {
                parts.insert(part.clone(), crate::train::TrainedRun::load(&part)?);
            }
            let run = &parts[&part];
            if val.is_none() {
                val = Some(run.validation()?);
            }
            let (v, norm) = val.as_ref().expect("loaded above");
            scores.push(inherited_accuracy(run, &e.arch, v, norm)?);
        }
    } else {
        let run = crate::train::TrainedRun::load(dir)?;
        if run.space != space {
            return Err(other_space(&run.space.name));
        }
        let (val, norm) = run.validation()?;
        for (e, _) in reference.ranked() {
            scores.push(inherited_accuracy(&run, &e.arch, &val, &norm)?);
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(Ranker {
        name: format!("supernet:{name}"),
        scores,
    })
}

/// The accuracy of `arch` with the weights it inherits from `run`, on `val`.
fn inherited_accuracy(
    run: &crate::train::TrainedRun,
    arch: &crate::space::Arch,
    val: &crate::data::Dataset,
    norm: &crate::data::batch::Normalize,
) -> Result<f64> {
    let model = crate::engine::Model::from_vit(&run.net.extract(arch)?)?;
    let fwd = |x: &candle_core::Tensor| model.logits(x);
    let bs = run.recipe.data.eval_batch_size;
    Ok(crate::train::eval::evaluate(val, norm, bs, &candle_core::Device::Cpu, fwd)?.accuracy)
}

/// A zero-cost proxy's score of every ranked architecture at
/// initialisation (the reference recipe's `init`, seed `seed`), on one
/// batch of `batch` training images drawn with `seed` from the reference
/// recipe's training split.
pub fn proxy_ranker(
    reference: &Reference,
    proxy: super::proxy::Proxy,
    batch: usize,
    seed: u64,
) -> Result<Ranker> {
    use rand::{seq::SliceRandom, SeedableRng};
    let space = crate::space::Space::from_file(&reference.config.space)?;
    let recipe = crate::train::recipe::Recipe::from_file(&reference.config.recipe)?;
    let d = crate::train::load_train_val(&recipe, &space)?;
    let norm = recipe.data.normalize.clone().unwrap_or(d.norm);
    let mut idx: Vec<usize> = (0..d.train.len()).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    idx.truncate(batch.min(idx.len()));
    let (images, labels) =
        crate::data::batch::make_batch(&d.train, &idx, &norm, None, &candle_core::Device::Cpu)?;
    let scores = reference
        .ranked()
        .iter()
        .map(|(e, _)| {
            super::proxy::score(proxy, &space, &e.arch, recipe.init, seed, &images, &labels)
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok(Ranker {
        name: proxy.name().to_string(),
        scores,
    })
}

/// An accuracy predictor's ([`crate::train::predictor`]) prediction for every
/// ranked architecture, named `predictor:<file stem>`. Refuses a predictor
/// of another space.
pub fn predictor_ranker(reference: &Reference, file: &Path) -> Result<Ranker> {
    let p = crate::train::predictor::AccuracyPredictor::load(file)?;
    let space = crate::space::Space::from_file(&reference.config.space)?;
    p.check_space(file, &space)?;
    let name = file
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    Ok(Ranker {
        name: format!("predictor:{name}"),
        scores: reference
            .ranked()
            .iter()
            .map(|(e, _)| p.predict(&space, &e.arch))
            .collect(),
    })
}

/// A table of the metrics, one ranker a line.
pub fn table(q: &SearchQuality) -> String {
    let ci = |c: &Option<[f64; 2]>, d: usize| match c {
        Some([a, b]) => format!("[{a:.d$}, {b:.d$}]"),
        None => "—".into(),
    };
    let f = |v: Option<f64>, d: usize| v.map_or("—".into(), |v| format!("{v:.d$}"));
    let r = &q.reference;
    let mut s = format!(
        "reference {}: {} ranked architectures ({} stratified × {} seeds, {} per budget {:?}), {} epochs; noise ceiling τ {} {}; convergence Δ {} points\n",
        r.name,
        r.k,
        r.stratified,
        r.seeds,
        r.per_budget,
        r.budgets,
        r.epochs,
        f(r.noise_ceiling_tau, 3),
        ci(&r.noise_ceiling_tau_ci, 2),
        f(r.convergence_delta_points, 2)
    );
    s += &format!(
        "{:<28} {:>6} {:>16} {:>6} {:>24} {:>24} {:>6} {:>16} {:>16}\n",
        "ranker",
        "τ",
        "τ 95% CI",
        "ρ",
        "τ in budget",
        "regret (points)",
        "top-5",
        "Δτ vs FLOPs",
        "Δregret vs FLOPs"
    );
    for (name, m) in &q.rankers {
        let list =
            |v: &[Option<f64>], d: usize| v.iter().map(|x| f(*x, d)).collect::<Vec<_>>().join(" ");
        s += &format!(
            "{:<28} {:>6} {:>16} {:>6} {:>24} {:>24} {:>6.2} {:>16} {:>16}\n",
            name,
            f(m.tau, 3),
            ci(&m.tau_ci, 2),
            f(m.rho, 3),
            list(&m.tau_in_budget, 2),
            list(&m.regret_points, 2),
            m.top5_overlap,
            ci(&m.vs_flops_tau_diff_ci, 2),
            ci(&m.vs_flops_regret_diff_ci, 2),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regret_is_the_gap_to_the_bins_best_in_points() {
        let acc = [0.80, 0.85, 0.83, 0.90];
        let score = [3.0, 1.0, 2.0, 0.0];
        assert!((regret(&acc, &score, &[0, 1, 2]).unwrap() - 5.0).abs() < 1e-9);
        assert!((regret(&acc, &score, &[1, 2]).unwrap() - 2.0).abs() < 1e-9);
        // A perfect ranker has no regret.
        assert_eq!(regret(&acc, &acc, &[0, 1, 2, 3]), Some(0.0));
        assert_eq!(regret(&acc, &score, &[]), None);
        assert_eq!(regret(&acc, &score, &[2]), None);
    }
}
