//! The rank-correlation harness (`vitnas evaluate rank`): how well does a
//! supernet's inherited accuracy rank architectures the way training them
//! alone would?
//!
//! K architectures are sampled with a seed, stratified across the space's
//! FLOPs range; each is evaluated with inherited weights (validation and
//! test) and trained standalone from scratch on the same data with a fixed
//! budget (`vitnas retrain`'s trainer), then evaluated. Image and text
//! supernets alike ([`scored`]): a text subnet "from scratch" starts from
//! the recipe's pretrained `init_from`, so its standalone accuracy is that
//! of the subnet fine-tuned alone. Kendall τ-b,
//! Spearman ρ, Pearson r and top-k overlap compare the two. Everything is
//! written to the output directory as it completes (`rank.json`), so an
//! interrupted harness continues where it stopped and skips what is done.
//!
//! Under `mpirun` the supernet trains data-parallel on all ranks, and the
//! inherited evaluations and standalone trainings are shared out
//! (architecture `i` of those left on rank `i % N`, each training alone);
//! rank 0 writes the report once every rank is done. The output directory
//! must then be one all ranks see (one machine, or a shared filesystem).

pub mod bootstrap;
pub mod plot;
pub mod proxy;
pub mod quality;
pub mod reference;
pub mod scored;
/// Rank and linear correlation between paired samples: Kendall τ-b,
/// Spearman ρ, Pearson r, top-k overlap (defined in a low module that the
/// accuracy predictor also uses).
pub mod stats {
    pub use crate::stats::*;
}

use crate::dist::{self, Collective, Single};
use crate::error::{Error, Result};
use crate::space::{flops, params, Arch, Space};
use crate::train::checkpoint::{read_state, write_atomic};
use crate::train::recipe::Recipe;
use crate::train::{self, standalone, RunOptions, CHECKPOINT_FILE};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub const REPORT_FILE: &str = "rank.json";

/// An experiment file under `evaluate/` (e.g. `evaluate/rank-fmnist-sandwich.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankConfig {
    pub name: String,
    /// The supernet's training recipe; its `output_dir` is the supernet run
    /// (trained, or resumed to completion, first when needed).
    pub supernet: PathBuf,
    pub output_dir: PathBuf,
    /// Number of architectures.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Seeds the architecture sample (standalone runs use the recipe's seed).
    #[serde(default)]
    pub seed: u64,
    /// k of the top-k overlap.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    pub standalone: Budget,
    /// Output directories of earlier experiments (same architectures, same
    /// standalone budget, e.g. one per standalone seed) whose standalone
    /// results are reused instead of training: standalone accuracy does not
    /// depend on the supernet. Each entry takes the mean over the
    /// references; with two or more, the rank correlation between the first
    /// two is the noise ceiling of every τ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference: Vec<PathBuf>,
}

fn default_k() -> usize {
    16
}

fn default_top_k() -> usize {
    5
}

/// The standalone training budget: the supernet recipe's data and
/// optimizer with these overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub epochs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_epochs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Seeds the standalone runs' initialisation and data order (default:
    /// the supernet recipe's seed); the validation split stays the
    /// supernet's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Train on the first N training examples only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
}

impl Budget {
    /// The same budget apart from the seed (what reuse requires).
    fn same_apart_from_seed(&self, other: &Budget) -> bool {
        let strip = |b: &Budget| Budget {
            seed: None,
            ..b.clone()
        };
        strip(self) == strip(other)
    }
}

impl RankConfig {
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

    /// Checks every value; errors name `file` (the experiment file) and the
    /// field.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, message: String| Error::InvalidConfig {
            file: file.to_string(),
            field: field.into(),
            message,
        };
        if self.k < 2 {
            return Err(bad(
                "k",
                format!("{} architectures make no ranking (at least 2)", self.k),
            ));
        }
        if self.top_k == 0 {
            return Err(bad("top_k", "must be at least 1".into()));
        }
        let b = &self.standalone;
        if b.epochs == 0 {
            return Err(bad("standalone.epochs", "must be at least 1".into()));
        }
        if b.batch_size == Some(0) {
            return Err(bad("standalone.batch_size", "must be at least 1".into()));
        }
        if b.train_limit == Some(0) {
            return Err(bad("standalone.train_limit", "must be at least 1".into()));
        }
        if let Some(lr) = b.lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
            return Err(bad(
                "standalone.lr",
                format!("{lr} is not a positive number"),
            ));
        }
        if let Some(w) = b.warmup_epochs.filter(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(bad(
                "standalone.warmup_epochs",
                format!("{w} is not a non-negative number"),
            ));
        }
        Ok(())
    }

    /// The recipe of every standalone run.
    pub fn standalone_recipe(&self, supernet: &Recipe) -> Recipe {
        let mut r = supernet.clone();
        r.train.epochs = self.standalone.epochs;
        r.train.max_steps = None;
        if let Some(lr) = self.standalone.lr {
            r.optimizer.lr = lr;
        }
        if let Some(w) = self.standalone.warmup_epochs {
            r.optimizer.warmup_epochs = w;
        }
        if let Some(b) = self.standalone.batch_size {
            r.train.batch_size = b;
        }
        if let Some(seed) = self.standalone.seed {
            r.data.split_seed = Some(r.data.split_seed.unwrap_or(r.seed));
            r.seed = seed;
        }
        if let Some(n) = self.standalone.train_limit {
            r.data.train_limit = Some(n);
        }
        r
    }
}

/// One architecture's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub index: usize,
    pub arch: Arch,
    pub params: u64,
    pub flops: u64,
    pub inherited_val: Option<f64>,
    pub inherited_test: Option<f64>,
    pub standalone_val: Option<f64>,
    pub standalone_test: Option<f64>,
    pub standalone_dir: PathBuf,
    pub standalone_wall_s: Option<f64>,
    /// With references: each reference's standalone test accuracy (the
    /// `standalone_*` fields hold their means).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standalone_test_per_reference: Vec<f64>,
}

/// Correlation of inherited with standalone accuracy on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    pub n: usize,
    pub kendall_tau: Option<f64>,
    pub spearman_rho: Option<f64>,
    pub pearson_r: Option<f64>,
    pub top_k: usize,
    pub top_k_overlap: f64,
    /// 95 % bootstrap intervals over architectures ([`bootstrap`], 2,000
    /// seeded resamples) of τ and ρ.
    #[serde(default)]
    pub kendall_tau_ci: Option<[f64; 2]>,
    #[serde(default)]
    pub spearman_rho_ci: Option<[f64; 2]>,
}

impl PairStats {
    pub fn of(x: &[f64], y: &[f64], top_k: usize) -> Self {
        let all = [(0..x.len()).collect::<Vec<usize>>()];
        let pick = |idx: &[usize], v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        let ci = |f: fn(&[f64], &[f64]) -> Option<f64>| {
            (x.len() >= 3)
                .then(|| {
                    bootstrap::interval(&all, bootstrap::RESAMPLES, 0, |idx| {
                        f(&pick(idx, x), &pick(idx, y))
                    })
                })
                .flatten()
        };
        Self {
            n: x.len(),
            kendall_tau: stats::kendall_tau_b(x, y),
            spearman_rho: stats::spearman(x, y),
            pearson_r: stats::pearson(x, y),
            top_k: top_k.min(x.len()),
            top_k_overlap: stats::top_k_overlap(x, y, top_k),
            kendall_tau_ci: ci(stats::kendall_tau_b),
            spearman_rho_ci: ci(stats::spearman),
        }
    }
}

/// Everything the harness knows; `rank.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub config: RankConfig,
    pub supernet_run: PathBuf,
    pub entries: Vec<Entry>,
    /// Over the entries with both accuracies (all of them once complete).
    pub test: Option<PairStats>,
    pub val: Option<PairStats>,
    /// Standalone test accuracy of the first reference against the second
    /// (two seeds of the same architectures): no τ can be trusted beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_ceiling_test: Option<PairStats>,
    pub complete: bool,
}

impl Report {
    fn update_stats(&mut self) {
        let k = self.config.top_k;
        let pairs = |f: fn(&Entry) -> (Option<f64>, Option<f64>)| {
            let (x, y): (Vec<f64>, Vec<f64>) = self
                .entries
                .iter()
                .filter_map(|e| match f(e) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => None,
                })
                .unzip();
            (x.len() >= 2).then(|| PairStats::of(&x, &y, k))
        };
        self.test = pairs(|e| (e.inherited_test, e.standalone_test));
        self.val = pairs(|e| (e.inherited_val, e.standalone_val));
        let (a, b): (Vec<f64>, Vec<f64>) = self
            .entries
            .iter()
            .filter(|e| e.standalone_test_per_reference.len() >= 2)
            .map(|e| {
                (
                    e.standalone_test_per_reference[0],
                    e.standalone_test_per_reference[1],
                )
            })
            .unzip();
        self.noise_ceiling_test = (a.len() >= 2).then(|| PairStats::of(&a, &b, k));
        self.complete = self
            .entries
            .iter()
            .all(|e| e.standalone_test.is_some() && e.inherited_test.is_some());
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        self.update_stats();
        write_atomic(
            &dir.join(REPORT_FILE),
            serde_json::to_string_pretty(self)
                .expect("report serializes")
                .as_bytes(),
        )?;
        write_atomic(&dir.join("rank.csv"), self.csv().as_bytes())?;
        plot::scatter(&dir.join("rank.svg"), self)
    }

    pub fn csv(&self) -> String {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let mut s = String::from(
            "index,params,flops,inherited_val,inherited_test,standalone_val,standalone_test,standalone_wall_s,arch\n",
        );
        for e in &self.entries {
            s += &format!(
                "{},{},{},{},{},{},{},{},\"{}\"\n",
                e.index,
                e.params,
                e.flops,
                opt(e.inherited_val),
                opt(e.inherited_test),
                opt(e.standalone_val),
                opt(e.standalone_test),
                opt(e.standalone_wall_s),
                e.arch.to_json().replace('"', "\"\"")
            );
        }
        s
    }
}

/// `k` distinct architectures, one per equal-width bin of the space's FLOPs
/// range (smallest to largest subnet), drawn uniformly within the bin by
/// rejection; a bin no draw hits gets the draw closest to its centre.
pub fn stratified(space: &Space, k: usize, seed: u64) -> Vec<Arch> {
    stratified_by(space, k, seed, false)
}

/// [`stratified`], with bins of equal width in log FLOPs when `log` (equal
/// ratios: accuracy grows about linearly in log compute, so the bins are
/// about equally far apart in accuracy rather than crowded where it
/// saturates).
pub fn stratified_by(space: &Space, k: usize, seed: u64, log: bool) -> Vec<Arch> {
    const TRIES: usize = 20_000;
    let lo = flops(space, &space.smallest()) as f64;
    let hi = flops(space, &space.largest()) as f64;
    let edge = |t: f64| match log {
        false => lo + (hi - lo) * t,
        true => lo * (hi / lo).powf(t),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<Arch> = Vec::with_capacity(k);
    for i in 0..k {
        let (a, b) = (edge(i as f64 / k as f64), edge((i + 1) as f64 / k as f64));
        let centre = (a + b) / 2.0;
        let mut closest: Option<(f64, Arch)> = None;
        let mut chosen = None;
        for _ in 0..TRIES {
            let c = space.sample(&mut rng);
            if out.contains(&c) {
                continue;
            }
            let f = flops(space, &c) as f64;
            if f >= a && (f < b || (i + 1 == k && f <= b)) {
                chosen = Some(c);
                break;
            }
            let d = (f - centre).abs();
            if closest.as_ref().is_none_or(|(best, _)| d < *best) {
                closest = Some((d, c));
            }
        }
        if let Some(c) = chosen.or(closest.map(|(_, c)| c)) {
            out.push(c);
        }
    }
    out
}

/// How the harness runs.
pub struct Options<'a> {
    pub stop: &'a AtomicBool,
    pub progress: bool,
    /// The ranks that share the work ([`Single`]: this process alone).
    pub collective: &'a dyn Collective,
}

impl<'a> Options<'a> {
    /// Options of a training run the harness starts or resumes on the
    /// ranks of `collective`.
    fn run_options(&self, resume: bool, collective: &'a dyn Collective) -> RunOptions<'a> {
        RunOptions {
            resume,
            stop: self.stop,
            progress: self.progress && dist::is_root(collective),
            max_steps: None,
            force: false,
            collective,
        }
    }
}

/// Progress through this rank's share of `items` shared by [`dist::share`]:
/// `3/12, elapsed 4m10s, ETA 12m30s`.
struct Pace {
    started: std::time::Instant,
    done: usize,
    mine: usize,
}

impl Pace {
    fn new(c: &dyn Collective, items: usize) -> Self {
        Self {
            started: std::time::Instant::now(),
            done: 0,
            mine: items.saturating_sub(c.rank()).div_ceil(c.size().max(1)),
        }
    }

    /// Counts one item done and says where this rank stands.
    fn one_done(&mut self) -> String {
        self.done += 1;
        format!(
            "{}/{}, {}",
            self.done,
            self.mine,
            crate::train::progress::elapsed_eta(self.started, self.done, self.mine)
        )
    }
}

fn say(opts: &Options, msg: String) {
    let c = opts.collective;
    match (opts.progress, c.size()) {
        (false, _) => {}
        (true, 1) => eprintln!("{msg}"),
        (true, n) => eprintln!("rank {} of {n}: {msg}", c.rank()),
    }
}

/// Trains (or resumes to completion) the supernet run of `recipe`, on
/// every rank together; false when interrupted.
fn ensure_supernet(recipe: &Recipe, opts: &Options) -> Result<bool> {
    let dir = &recipe.output_dir;
    let c = opts.collective;
    // Rank 0 decides from what it sees: 0 train, 1 resume, 2 done.
    let decide = || -> Result<u8> {
        Ok(if !dir.join(CHECKPOINT_FILE).exists() {
            0
        } else if read_state(dir)?.is_some_and(|s| s.step < s.total_steps) {
            1
        } else {
            2
        })
    };
    let mine = if dist::is_root(c) {
        Some(decide()?)
    } else {
        None
    };
    let todo = dist::broadcast_json(c, mine.as_ref())?;
    let root_say = |msg: String| {
        if dist::is_root(c) {
            say(opts, msg);
        }
    };
    match todo {
        0 => {
            root_say(format!("training the supernet {}", dir.display()));
            Ok(!train::train(recipe, &opts.run_options(false, c))?.interrupted)
        }
        1 => {
            root_say(format!("resuming the supernet {}", dir.display()));
            Ok(!train::resume(dir, &opts.run_options(true, c))?.interrupted)
        }
        _ => Ok(true),
    }
}

/// Fills every entry's standalone results from `cfg.reference` (means over
/// the references), refusing references of another budget or without a
/// result for one of the architectures.
fn reuse_references(cfg: &RankConfig, entries: &mut [Entry]) -> Result<()> {
    let mut refs = Vec::new();
    for dir in &cfg.reference {
        let path = if dir.is_dir() {
            dir.join(REPORT_FILE)
        } else {
            dir.clone()
        };
        let r: Report = crate::io::read_json(&path)?;
        if !r.config.standalone.same_apart_from_seed(&cfg.standalone) {
            return Err(Error::InvalidConfig {
                file: path.display().to_string(),
                field: "standalone".into(),
                message: format!(
                    "reference budget {:?} differs from this experiment's {:?} (only the seed may differ)",
                    r.config.standalone, cfg.standalone
                ),
            });
        }
        refs.push((path, r));
    }
    for e in entries.iter_mut() {
        let mut vals = Vec::new();
        let mut tests = Vec::new();
        for (path, r) in &refs {
            let hit = r
                .entries
                .iter()
                .find(|o| o.arch == e.arch && o.standalone_test.is_some())
                .ok_or_else(|| Error::Data {
                    source_name: path.display().to_string(),
                    message: format!(
                        "has no standalone result for architecture {} (run that experiment to completion, with the same k and seed)",
                        e.arch.to_json()
                    ),
                })?;
            vals.extend(hit.standalone_val);
            tests.extend(hit.standalone_test);
        }
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        e.standalone_val = mean(&vals);
        e.standalone_test = mean(&tests);
        e.standalone_test_per_reference = tests;
        e.standalone_dir = refs[0]
            .0
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
    }
    Ok(())
}

/// Runs (or continues) the harness. Returns the report so far; it is
/// complete unless interrupted.
pub fn run(cfg: &RankConfig, opts: &Options) -> Result<Report> {
    let recipe = Recipe::from_file(&cfg.supernet)?;
    let out = &cfg.output_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut report = Report {
        config: cfg.clone(),
        supernet_run: recipe.output_dir.clone(),
        entries: Vec::new(),
        test: None,
        val: None,
        noise_ceiling_test: None,
        complete: false,
    };
    let c = opts.collective;
    let root = dist::is_root(c);
    if !ensure_supernet(&recipe, opts)? {
        if root {
            report.save(out)?;
        }
        return Ok(report);
    }
    let run = scored::ScoredRun::load(&recipe.output_dir)?;
    let space = run.space();
    let archs = stratified(space, cfg.k, cfg.seed);
    report.entries = archs
        .iter()
        .enumerate()
        .map(|(i, a)| Entry {
            index: i,
            arch: a.clone(),
            params: params(space, a),
            flops: flops(space, a),
            inherited_val: None,
            inherited_test: None,
            standalone_val: None,
            standalone_test: None,
            standalone_dir: out.join("standalone").join(format!("arch-{i:02}")),
            standalone_wall_s: None,
            standalone_test_per_reference: Vec::new(),
        })
        .collect();
    if root {
        prepare_entries(cfg, out, &mut report.entries)?;
    }
    report.entries = dist::broadcast_json(c, root.then_some(&report.entries))?;
    // Inherited and standalone subnets are scored alike (`run`): accuracy
    // on the validation split, then on the test split.
    let save = |report: &mut Report| if root { report.save(out) } else { Ok(()) };
    // Inherited accuracies of the architectures left (validation, test).
    let left: Vec<usize> = (0..report.entries.len())
        .filter(|&i| report.entries[i].inherited_test.is_none())
        .collect();
    let apply = |report: &mut Report, i: usize, v: &[f64]| {
        report.entries[i].inherited_val = Some(v[0]);
        report.entries[i].inherited_test = Some(v[1]);
    };
    let mut pace = Pace::new(c, left.len());
    let shared = dist::share(c, left.len(), 2, |j| {
        let i = left[j];
        let arch = report.entries[i].arch.clone();
        let (v, t) = run.inherited(&arch)?;
        say(
            opts,
            format!(
                "arch {i:02}: {:.2} M MACs, inherited val {:.4} test {:.4} ({})",
                report.entries[i].flops as f64 / 1e6,
                v,
                t,
                pace.one_done()
            ),
        );
        if c.size() == 1 {
            apply(&mut report, i, &[v, t]);
            save(&mut report)?;
        }
        Ok(Some(vec![v, t]))
    })?;
    if c.size() > 1 {
        for (j, v) in shared.iter().enumerate() {
            apply(
                &mut report,
                left[j],
                v.as_deref().expect("every evaluation is done"),
            );
        }
        save(&mut report)?;
    }
    // The supernet's resolved recipe: same data, split and normalisation.
    let sa_recipe = cfg.standalone_recipe(run.recipe());
    let left: Vec<usize> = (0..report.entries.len())
        .filter(|&i| report.entries[i].standalone_test.is_none())
        .collect();
    let apply = |report: &mut Report, i: usize, v: &[f64]| {
        let entry = &mut report.entries[i];
        entry.standalone_val = Some(v[0]);
        entry.standalone_test = Some(v[1]);
        // NaN: not trained in one go by this invocation.
        if v[2].is_finite() {
            entry.standalone_wall_s = Some(v[2]);
        }
    };
    let mut pace = Pace::new(c, left.len());
    let shared = dist::share(c, left.len(), 3, |j| {
        let i = left[j];
        if opts.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let e = report.entries[i].clone();
        let started = std::time::Instant::now();
        let Some(in_one_go) = standalone_run(cfg, space, &e, &sa_recipe, opts)? else {
            return Ok(None);
        };
        let (v, t) = run.exported(&e.standalone_dir)?;
        say(
            opts,
            format!(
                "arch {i:02}: standalone val {v:.4} test {t:.4} ({})",
                pace.one_done()
            ),
        );
        let wall = match in_one_go {
            true => started.elapsed().as_secs_f64(),
            false => f64::NAN,
        };
        let values = vec![v, t, wall];
        if c.size() == 1 {
            apply(&mut report, i, &values);
            save(&mut report)?;
        }
        Ok(Some(values))
    })?;
    if c.size() > 1 {
        for (j, v) in shared.iter().enumerate() {
            if let Some(v) = v {
                apply(&mut report, left[j], v);
            }
        }
    }
    save(&mut report)?;
    Ok(report)
}

/// Rank 0, before anything is trained: the standalone results of
/// references and of an earlier run of the experiment, a check that the
/// output directory holds no other experiment, and the architecture files.
fn prepare_entries(cfg: &RankConfig, out: &Path, entries: &mut [Entry]) -> Result<()> {
    if !cfg.reference.is_empty() {
        reuse_references(cfg, entries)?;
    }
    // What an earlier run of the same experiment already measured.
    if let Ok(text) = std::fs::read_to_string(out.join(REPORT_FILE)) {
        if let Ok(old) = serde_json::from_str::<Report>(&text) {
            for (e, o) in entries.iter_mut().zip(&old.entries) {
                if o.arch == e.arch && o.standalone_dir == e.standalone_dir {
                    *e = o.clone();
                }
            }
        }
    }
    // Before anything is written: the output directory must not hold
    // standalone runs of another sample (another seed or k).
    for e in entries.iter() {
        let other = read_state(&e.standalone_dir)?.and_then(|s| s.arch);
        if let Some(other) = other.filter(|a| *a != e.arch) {
            return Err(Error::Data {
                source_name: e.standalone_dir.display().to_string(),
                message: format!(
                    "holds a standalone run of another architecture ({}); this output_dir belongs to another experiment (other seed or k): choose another output_dir",
                    other.to_json()
                ),
            });
        }
    }
    for e in entries.iter() {
        let path = out.join("archs").join(format!("arch-{:02}.json", e.index));
        std::fs::create_dir_all(path.parent().expect("has a parent"))
            .map_err(|err| Error::io(out, err))?;
        write_atomic(&path, e.arch.to_json().as_bytes())?;
    }
    Ok(())
}

/// Trains (or resumes to completion) the standalone run of entry `e` in
/// this process alone (see [`train_alone`]).
fn standalone_run(
    cfg: &RankConfig,
    space: &Space,
    e: &Entry,
    sa_recipe: &Recipe,
    opts: &Options,
) -> Result<Option<bool>> {
    say(
        opts,
        format!(
            "arch {:02}: standalone ({} epochs) in {}",
            e.index,
            cfg.standalone.epochs,
            e.standalone_dir.display()
        ),
    );
    train_alone(space, &e.arch, &e.standalone_dir, sa_recipe, opts)
}

/// Trains `arch` alone from scratch into `dir` with `recipe` (`vitnas
/// retrain`), or resumes it there to completion, in this process alone:
/// `Some(true)` when trained in one go now, `Some(false)` when it was done
/// before or resumed, `None` when interrupted. A directory left by a start
/// that died before its first checkpoint is started over.
fn train_alone(
    space: &Space,
    arch: &Arch,
    dir: &Path,
    recipe: &Recipe,
    opts: &Options,
) -> Result<Option<bool>> {
    let state = read_state(dir)?;
    let finished = match &state {
        Some(s) if s.step >= s.total_steps => true,
        Some(_) if dir.join(CHECKPOINT_FILE).exists() => {
            say(opts, format!("resuming {}", dir.display()));
            !train::resume(dir, &opts.run_options(true, &Single))?.interrupted
        }
        _ => {
            if dir.exists() && !dir.join(CHECKPOINT_FILE).exists() {
                std::fs::remove_dir_all(dir).map_err(|err| Error::io(dir, err))?;
            }
            !standalone::retrain(
                space,
                arch,
                recipe,
                dir.to_path_buf(),
                &opts.run_options(false, &Single),
            )?
            .interrupted
        }
    };
    Ok(finished.then_some(state.is_none()))
}
