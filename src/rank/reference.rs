//! The search-quality reference set (`vitnas evaluate reference <file>`):
//! architectures of one space trained alone to convergence, once, so that
//! every ranker (FLOPs, params, zero-cost proxies, any supernet's inherited
//! accuracy) is scored against the same ground truth
//! ([`super::quality`]).
//!
//! The set holds `stratified` architectures one per equal-width FLOPs bin
//! (as [`super::stratified`]), trained with every seed of `seeds` (two seeds
//! give the noise ceiling), and, for each cost budget (a fraction of the
//! largest subnet's FLOPs), `per_budget` architectures drawn uniformly from
//! the space within ±`tolerance` of it, trained with the first seed: the
//! choice between architectures of equal cost. The largest and the smallest
//! architecture are also trained at the budget and at `convergence_factor`
//! times it: the convergence check.
//!
//! Every training is a `vitnas retrain` run in its own directory under
//! `output_dir/runs/`; `reference.json` is rewritten after each one, so a
//! killed harness continues where it stopped (a run in progress resumes
//! from its last checkpoint). Under `mpirun` the runs are shared out over
//! the ranks, each training alone.

use super::{stats, Options};
use crate::data::batch::Normalize;
use crate::data::Dataset;
use crate::dist;
use crate::error::{Error, Result};
use crate::models::export::load_dir;
use crate::space::{flops, params, Arch, Space};
use crate::train;
use crate::train::checkpoint::write_atomic;
use crate::train::recipe::Recipe;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

pub const REFERENCE_FILE: &str = "reference.json";

/// An experiment file (`evaluate/quality/reference-*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    pub name: String,
    pub space: PathBuf,
    /// The standalone recipe: data, optimizer and budget (`train.epochs`)
    /// of every run; `seed` is replaced by each run's seed, and the
    /// validation split stays the recipe's (`data.split_seed`, else `seed`).
    pub recipe: PathBuf,
    pub output_dir: PathBuf,
    /// Seeds the architecture draws.
    #[serde(default)]
    pub seed: u64,
    /// Architectures stratified by FLOPs.
    pub stratified: usize,
    /// Stratify in log FLOPs (bins of equal ratio) instead of FLOPs.
    #[serde(default)]
    pub log_flops: bool,
    /// Cost budgets as fractions of the largest subnet's FLOPs.
    pub budgets: Vec<f64>,
    /// Architectures per budget.
    pub per_budget: usize,
    /// Half-width of a budget bin, relative to the budget.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Standalone seeds of the stratified architectures; budget
    /// architectures and the convergence check use the first.
    pub seeds: Vec<u64>,
    /// The convergence check trains the largest and the smallest at the
    /// budget and at this multiple of it.
    #[serde(default = "default_factor")]
    pub convergence_factor: usize,
}

fn default_tolerance() -> f64 {
    0.05
}

fn default_factor() -> usize {
    2
}

impl ReferenceConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: Self = toml::from_str(&text).map_err(|e| Error::Toml {
            path: path.into(),
            message: e.to_string(),
        })?;
        c.validate(&path.display().to_string())?;
        Ok(c)
    }

    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, message: String| Error::InvalidConfig {
            file: file.to_string(),
            field: field.into(),
            message,
        };
        if self.stratified < 2 {
            return Err(bad("stratified", "at least 2 architectures".into()));
        }
        if self.seeds.is_empty() {
            return Err(bad("seeds", "at least one seed".into()));
        }
        if (1..self.seeds.len()).any(|i| self.seeds[..i].contains(&self.seeds[i])) {
            return Err(bad("seeds", format!("{:?} repeats a seed", self.seeds)));
        }
        if let Some(b) = self.budgets.iter().find(|b| !(**b > 0.0 && **b <= 1.0)) {
            return Err(bad("budgets", format!("{b} is not a fraction in (0, 1]")));
        }
        if !self.budgets.is_empty() && self.per_budget < 2 {
            return Err(bad("per_budget", "at least 2 per budget".into()));
        }
        if !(self.tolerance > 0.0 && self.tolerance < 1.0) {
            return Err(bad(
                "tolerance",
                format!("{} is not in (0, 1)", self.tolerance),
            ));
        }
        if self.convergence_factor < 2 {
            return Err(bad("convergence_factor", "at least 2".into()));
        }
        Ok(())
    }
}

/// Which part of the set an architecture belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Stratified,
    /// Inside ±tolerance of this fraction of the largest's FLOPs.
    Budget(f64),
    /// The convergence check (not ranked).
    Largest,
    Smallest,
}

/// One standalone training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefRun {
    pub seed: u64,
    pub epochs: usize,
    pub dir: PathBuf,
    pub val: Option<f64>,
    pub test: Option<f64>,
    /// Seconds, when trained in one go by one invocation.
    pub wall_s: Option<f64>,
    /// Threads of the process that finished it (results are bit-identical
    /// for the same seed and thread count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefArch {
    pub index: usize,
    pub group: Group,
    pub arch: Arch,
    pub params: u64,
    pub flops: u64,
    pub runs: Vec<RefRun>,
}

impl RefArch {
    /// Is this one of the ranked architectures (not the convergence check)?
    pub fn ranked(&self) -> bool {
        matches!(self.group, Group::Stratified | Group::Budget(_))
    }

    /// Mean test accuracy over the runs at the budget, once all are done.
    pub fn test(&self, budget_epochs: usize) -> Option<f64> {
        let v: Option<Vec<f64>> = self
            .runs
            .iter()
            .filter(|r| r.epochs == budget_epochs)
            .map(|r| r.test)
            .collect();
        v.filter(|v| !v.is_empty())
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
    }

    fn run_test(&self, seed: u64, epochs: usize) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.seed == seed && r.epochs == epochs)
            .and_then(|r| r.test)
    }
}

/// What the set says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checks {
    /// Largest |accuracy at factor × budget − accuracy at budget| of the
    /// largest and the smallest, in points.
    pub convergence_delta_points: Option<f64>,
    /// Kendall τ between the first two seeds' test accuracies over the
    /// stratified architectures.
    pub noise_ceiling_tau: Option<f64>,
    /// 95 % bootstrap interval of it.
    pub noise_ceiling_tau_ci: Option<[f64; 2]>,
    pub largest_standalone_test: Option<f64>,
    pub smallest_standalone_test: Option<f64>,
    /// Sum of the recorded wall times, seconds.
    pub wall_s_total: f64,
}

/// `reference.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub config: ReferenceConfig,
    /// The resolved standalone recipe's budget.
    pub epochs: usize,
    pub entries: Vec<RefArch>,
    pub checks: Checks,
    pub complete: bool,
}

impl Reference {
    pub fn from_file(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            path.join(REFERENCE_FILE)
        } else {
            path.to_path_buf()
        };
        crate::io::read_json(&path)
    }

    /// The ranked architectures with their ground truth (mean standalone
    /// test accuracy at the budget), in entry order; those not finished
    /// are left out.
    pub fn ranked(&self) -> Vec<(&RefArch, f64)> {
        self.entries
            .iter()
            .filter(|e| e.ranked())
            .filter_map(|e| e.test(self.epochs).map(|t| (e, t)))
            .collect()
    }

    fn update_checks(&mut self) {
        let b = self.epochs;
        let f = b * self.config.convergence_factor;
        let s0 = self.config.seeds[0];
        let ends: Vec<&RefArch> = self
            .entries
            .iter()
            .filter(|e| matches!(e.group, Group::Largest | Group::Smallest))
            .collect();
        let deltas: Option<Vec<f64>> = ends
            .iter()
            .map(|e| Some((e.run_test(s0, f)? - e.run_test(s0, b)?).abs() * 100.0))
            .collect();
        self.checks.convergence_delta_points = deltas
            .filter(|d| !d.is_empty())
            .map(|d| d.into_iter().fold(0.0, f64::max));
        let end = |g: Group| {
            self.entries
                .iter()
                .find(|e| e.group == g)
                .and_then(|e| e.run_test(s0, b))
        };
        self.checks.largest_standalone_test = end(Group::Largest);
        self.checks.smallest_standalone_test = end(Group::Smallest);
        self.checks.noise_ceiling_tau = None;
        self.checks.noise_ceiling_tau_ci = None;
        if let [a, c, ..] = self.config.seeds[..] {
            let (x, y): (Vec<f64>, Vec<f64>) = self
                .entries
                .iter()
                .filter(|e| e.group == Group::Stratified)
                .filter_map(|e| Some((e.run_test(a, b)?, e.run_test(c, b)?)))
                .unzip();
            if x.len() >= 3 {
                self.checks.noise_ceiling_tau = stats::kendall_tau_b(&x, &y);
                self.checks.noise_ceiling_tau_ci = super::bootstrap::interval(
                    &[(0..x.len()).collect()],
                    super::bootstrap::RESAMPLES,
                    self.config.seed,
                    |idx| {
                        let xs: Vec<f64> = idx.iter().map(|&i| x[i]).collect();
                        let ys: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
                        stats::kendall_tau_b(&xs, &ys)
                    },
                );
            }
        }
        self.checks.wall_s_total = self
            .entries
            .iter()
            .flat_map(|e| &e.runs)
            .filter_map(|r| r.wall_s)
            .sum();
        self.complete = self
            .entries
            .iter()
            .all(|e| e.runs.iter().all(|r| r.test.is_some()));
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        self.update_checks();
        write_atomic(
            &dir.join(REFERENCE_FILE),
            serde_json::to_string_pretty(self)
                .expect("reference serializes")
                .as_bytes(),
        )?;
        write_atomic(&dir.join("reference.csv"), self.csv().as_bytes())
    }

    pub fn csv(&self) -> String {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let mut s = String::from("index,group,params,flops,seed,epochs,val,test,wall_s,arch\n");
        for e in &self.entries {
            let group = match &e.group {
                Group::Stratified => "stratified".to_string(),
                Group::Budget(b) => format!("budget-{b}"),
                Group::Largest => "largest".into(),
                Group::Smallest => "smallest".into(),
            };
            for r in &e.runs {
                s += &format!(
                    "{},{group},{},{},{},{},{},{},{},\"{}\"\n",
                    e.index,
                    e.params,
                    e.flops,
                    r.seed,
                    r.epochs,
                    opt(r.val),
                    opt(r.test),
                    opt(r.wall_s),
                    e.arch.to_json().replace('"', "\"\"")
                );
            }
        }
        s
    }
}

/// Which part of the runs one process takes: those at positions `index`,
/// `index + count`, … of the job order. Several processes (on one machine
/// or several sharing the output directory) build one reference together;
/// each run's result is its own file under `output_dir/results/`, and every
/// process merges them into `reference.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N` with `I < N`, e.g. `0/2`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a shard I/N with 0 ≤ I < N (e.g. 0/2)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

const RESULTS_DIR: &str = "results";

fn result_file(out: &Path, run: &RefRun) -> PathBuf {
    let stem = run
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.join(RESULTS_DIR).join(format!("{stem}.json"))
}

/// Fills every run without a result from its result file, when one exists
/// for the same seed, budget and directory.
fn merge_results(out: &Path, reference: &mut Reference) -> Result<()> {
    for e in reference.entries.iter_mut() {
        for r in e.runs.iter_mut().filter(|r| r.test.is_none()) {
            let path = result_file(out, r);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let done: RefRun =
                serde_json::from_str(&text).map_err(|error| Error::Json { path, error })?;
            if done.seed == r.seed && done.epochs == r.epochs && done.dir == r.dir {
                *r = done;
            }
        }
    }
    Ok(())
}

/// `n` distinct architectures (none of `taken`) drawn uniformly from the
/// space by rejection, each within ±`tol` (relative) of `target` FLOPs.
pub fn at_budget(
    space: &Space,
    target: f64,
    tol: f64,
    n: usize,
    taken: &[Arch],
    rng: &mut StdRng,
) -> Result<Vec<Arch>> {
    const TRIES: usize = 2_000_000;
    let mut out: Vec<Arch> = Vec::with_capacity(n);
    for _ in 0..TRIES {
        if out.len() == n {
            return Ok(out);
        }
        let c = space.sample(rng);
        let f = flops(space, &c) as f64;
        if (f - target).abs() <= tol * target && !out.contains(&c) && !taken.contains(&c) {
            out.push(c);
        }
    }
    if out.len() == n {
        return Ok(out);
    }
    Err(Error::Data {
        source_name: space.name.clone(),
        message: format!(
            "found only {} of {n} distinct architectures within ±{:.0} % of {:.3} M MACs in {TRIES} draws",
            out.len(),
            tol * 100.0,
            target / 1e6
        ),
    })
}

/// The set's architectures, runs not yet done.
pub fn plan(cfg: &ReferenceConfig, space: &Space, epochs: usize) -> Result<Vec<RefArch>> {
    let runs_dir = cfg.output_dir.join("runs");
    let mut archs: Vec<(Group, Arch)> =
        super::stratified_by(space, cfg.stratified, cfg.seed, cfg.log_flops)
            .into_iter()
            .map(|a| (Group::Stratified, a))
            .collect();
    let largest = flops(space, &space.largest()) as f64;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6275_6467_6574);
    for &b in &cfg.budgets {
        let taken: Vec<Arch> = archs.iter().map(|(_, a)| a.clone()).collect();
        for a in at_budget(
            space,
            b * largest,
            cfg.tolerance,
            cfg.per_budget,
            &taken,
            &mut rng,
        )? {
            archs.push((Group::Budget(b), a));
        }
    }
    archs.push((Group::Largest, space.largest()));
    archs.push((Group::Smallest, space.smallest()));
    let s0 = cfg.seeds[0];
    Ok(archs
        .into_iter()
        .enumerate()
        .map(|(index, (group, arch))| {
            let run = |seed: u64, epochs: usize| RefRun {
                seed,
                epochs,
                dir: runs_dir.join(format!("arch-{index:02}-s{seed}-e{epochs}")),
                val: None,
                test: None,
                wall_s: None,
                threads: None,
            };
            let runs = match group {
                Group::Stratified => cfg.seeds.iter().map(|&s| run(s, epochs)).collect(),
                Group::Budget(_) => vec![run(s0, epochs)],
                Group::Largest | Group::Smallest => {
                    vec![run(s0, epochs), run(s0, epochs * cfg.convergence_factor)]
                }
            };
            RefArch {
                index,
                group,
                params: params(space, &arch),
                flops: flops(space, &arch),
                arch,
                runs,
            }
        })
        .collect())
}

/// The order runs are done in: the convergence check first (it decides
/// whether the budget holds), then the stratified architectures with every
/// seed (their two seeds give the noise ceiling, without which no τ can be
/// read), then the budget bins. `(entry, run)` pairs.
fn job_order(entries: &[RefArch]) -> Vec<(usize, usize)> {
    let mut jobs = Vec::new();
    let ends = |e: &RefArch| matches!(e.group, Group::Largest | Group::Smallest);
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| ends(e)) {
        jobs.extend((0..e.runs.len()).map(|r| (i, r)));
    }
    let strat = |e: &RefArch| e.group == Group::Stratified;
    let max_runs = entries.iter().map(|e| e.runs.len()).max().unwrap_or(0);
    for r in 0..max_runs {
        for (i, e) in entries.iter().enumerate().filter(|(_, e)| strat(e)) {
            if r < e.runs.len() {
                jobs.push((i, r));
            }
        }
    }
    for (i, e) in entries.iter().enumerate() {
        if !ends(e) && !strat(e) {
            jobs.extend((0..e.runs.len()).map(|r| (i, r)));
        }
    }
    jobs
}

fn accuracy(
    ds: &Dataset,
    norm: &Normalize,
    batch: usize,
    model: &crate::engine::Model,
) -> Result<f64> {
    let fwd = |x: &candle_core::Tensor| model.logits(x);
    Ok(crate::train::eval::evaluate(ds, norm, batch, &candle_core::Device::Cpu, fwd)?.accuracy)
}

/// Builds (or continues) the reference set. Returns it as far as it got:
/// complete unless interrupted.
pub fn run(cfg: &ReferenceConfig, opts: &Options, shard: Shard) -> Result<Reference> {
    let space = Space::from_file(&cfg.space)?;
    let mut recipe = Recipe::from_file(&cfg.recipe)?;
    if recipe.space != cfg.space && Space::from_file(&recipe.space)? != space {
        return Err(Error::InvalidConfig {
            file: cfg.recipe.display().to_string(),
            field: "space".into(),
            message: format!(
                "{} is not the reference's space {}",
                recipe.space.display(),
                cfg.space.display()
            ),
        });
    }
    // Every run validates on the same split, whatever its seed.
    recipe.data.split_seed = Some(recipe.data.split_seed.unwrap_or(recipe.seed));
    recipe.train.max_steps = None;
    let epochs = recipe.train.epochs;
    let out = &cfg.output_dir;
    let c = opts.collective;
    let root = dist::is_root(c);
    let mut reference = Reference {
        config: cfg.clone(),
        epochs,
        entries: plan(cfg, &space, epochs)?,
        checks: Checks {
            convergence_delta_points: None,
            noise_ceiling_tau: None,
            noise_ceiling_tau_ci: None,
            largest_standalone_test: None,
            smallest_standalone_test: None,
            wall_s_total: 0.0,
        },
        complete: false,
    };
    if root {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        adopt_earlier(out, &mut reference)?;
        reference.save(out)?;
    }
    reference.entries = dist::broadcast_json(c, root.then_some(&reference.entries))?;
    let d = train::load_train_val(&recipe, &space)?;
    let norm = recipe.data.normalize.clone().unwrap_or(d.norm);
    let val = d.val;
    let test = train::load_test(&recipe, &space)?;
    let bs = recipe.data.eval_batch_size;
    let jobs: Vec<(usize, usize)> = job_order(&reference.entries)
        .into_iter()
        .enumerate()
        .filter(|(j, _)| j % shard.count == shard.index)
        .map(|(_, job)| job)
        .filter(|&(i, r)| reference.entries[i].runs[r].test.is_none())
        .collect();
    let threads = rayon::current_num_threads();
    let apply = |reference: &mut Reference, (i, r): (usize, usize), v: &[f64]| {
        let run = &mut reference.entries[i].runs[r];
        run.val = Some(v[0]);
        run.test = Some(v[1]);
        if v[2].is_finite() {
            run.wall_s = Some(v[2]);
        }
        run.threads = Some(v[3] as usize);
    };
    // Records one run's result in its own file, then the merged reference.
    let record = |reference: &mut Reference, job: (usize, usize), v: &[f64]| -> Result<()> {
        apply(reference, job, v);
        let run = &reference.entries[job.0].runs[job.1];
        let path = result_file(out, run);
        std::fs::create_dir_all(out.join(RESULTS_DIR)).map_err(|e| Error::io(out, e))?;
        write_atomic(
            &path,
            serde_json::to_string_pretty(run)
                .expect("run serializes")
                .as_bytes(),
        )?;
        merge_results(out, reference)?;
        reference.save(out)
    };
    let shared = dist::share(c, jobs.len(), 4, |j| {
        if opts.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let (i, r) = jobs[j];
        let e = &reference.entries[i];
        let run = &e.runs[r];
        let mut rr = recipe.clone();
        rr.seed = run.seed;
        rr.train.epochs = run.epochs;
        let started = std::time::Instant::now();
        let Some(in_one_go) = super::train_alone(&space, &e.arch, &run.dir, &rr, opts)? else {
            return Ok(None);
        };
        let (model, _) = load_dir(&run.dir)?;
        let model = crate::engine::Model::from_vit(&model)?;
        let v = accuracy(&val, &norm, bs, &model)?;
        let t = accuracy(&test, &norm, bs, &model)?;
        let wall = if in_one_go {
            started.elapsed().as_secs_f64()
        } else {
            f64::NAN
        };
        super::say(
            opts,
            format!(
                "arch {i:02} ({:?}, {:.2} M MACs) seed {} × {} epochs: val {v:.4} test {t:.4} ({:.0} s)",
                e.group,
                e.flops as f64 / 1e6,
                run.seed,
                run.epochs,
                started.elapsed().as_secs_f64()
            ),
        );
        let values = vec![v, t, wall, threads as f64];
        if c.size() == 1 {
            record(&mut reference, (i, r), &values)?;
        }
        Ok(Some(values))
    })?;
    if root {
        if c.size() > 1 {
            for (j, v) in shared.iter().enumerate() {
                if let Some(v) = v {
                    record(&mut reference, jobs[j], v)?;
                }
            }
        }
        merge_results(out, &mut reference)?;
        reference.save(out)?;
    }
    Ok(reference)
}

/// Rank 0: results an earlier invocation recorded (same architecture, seed,
/// budget and directory), and a refusal when the output directory holds runs
/// of another plan.
fn adopt_earlier(out: &Path, reference: &mut Reference) -> Result<()> {
    merge_results(out, reference)?;
    let path = out.join(REFERENCE_FILE);
    if let Ok(old) = Reference::from_file(&path) {
        for e in reference.entries.iter_mut() {
            let Some(o) = old
                .entries
                .iter()
                .find(|o| o.index == e.index && o.arch == e.arch)
            else {
                continue;
            };
            for r in e.runs.iter_mut() {
                if let Some(or) = o
                    .runs
                    .iter()
                    .find(|or| or.seed == r.seed && or.epochs == r.epochs && or.dir == r.dir)
                {
                    if r.test.is_none() {
                        *r = or.clone();
                    }
                }
            }
        }
    }
    for e in &reference.entries {
        for r in &e.runs {
            let other = crate::train::checkpoint::read_state(&r.dir)?.and_then(|s| s.arch);
            if let Some(other) = other.filter(|a| *a != e.arch) {
                return Err(Error::Data {
                    source_name: r.dir.display().to_string(),
                    message: format!(
                        "holds a standalone run of another architecture ({}); this output_dir belongs to another reference (other space, seed or budgets): choose another output_dir",
                        other.to_json()
                    ),
                });
            }
        }
    }
    Ok(())
}
