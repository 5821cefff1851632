//! Architecture search over a trained supernet: evolutionary (AutoFormer /
//! HAT) and random search under parameter, FLOPs and measured-latency
//! constraints; Pareto fronts; reproducible and resumable.
//!
//! Every random draw of generation `g` comes from an RNG seeded by
//! `(seed, g)`, and the state (every evaluated architecture and the current
//! population) is written atomically after each generation, so a resumed
//! search replays exactly what an uninterrupted one does.
//!
//! Under `mpirun` the evaluations are shared over the ranks and rank 0
//! runs the evolution (`shared.rs`): the same records as on one rank.

pub mod pareto;
mod shared;
mod text_judge;

pub use crate::train::recipe::search_config as config;
pub use text_judge::TextJudge;

use crate::data::batch::Normalize;
use crate::data::Dataset;
use crate::dist::{self, Collective};
use crate::error::{Error, Result};
use crate::space::arch::gene_cardinalities;
use crate::space::{flops, params, Arch, Space};
use crate::supernet::Supernet;
use crate::train::checkpoint::write_atomic;
use crate::train::eval::{evaluate, EvalResult};
use crate::train::predictor::AccuracyPredictor;
use candle_core::Device;
use config::{Algorithm, Constraints, SearchConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub const STATE_FILE: &str = crate::train::rundir::SEARCH_STATE_FILE;

/// One evaluated architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub genes: Vec<usize>,
    pub arch: Arch,
    pub params: u64,
    pub flops: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Latency predicted by the search's latency predictor (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_latency_ms: Option<f64>,
    /// Inherited-weight accuracy on the validation subset (or on the early
    /// subset when rejected early).
    pub accuracy: f64,
    pub loss: f64,
    /// Images the accuracy was measured on.
    pub images: usize,
    /// Rejected after the early subset.
    pub rejected_early: bool,
    /// Accuracy on the early (screening) images, when early rejection is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_accuracy: Option<f64>,
    /// Generation that first evaluated it.
    pub generation: usize,
    /// Accuracy predicted by the search's accuracy predictor, when it
    /// screens candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_accuracy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    pub config: SearchConfig,
    /// Generations completed.
    pub generation: usize,
    pub population: Vec<Vec<usize>>,
    pub records: Vec<Record>,
    /// Best fitness after each generation.
    pub best_per_generation: Vec<f64>,
    pub images_evaluated: usize,
    pub eval_seconds: f64,
    /// Candidates that screening by predicted accuracy left unscored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub screened_out: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How a search scores candidates: inherited-weight accuracy on a
/// validation set, and measured latency. One implementation per input
/// modality ([`ImageJudge`], [`TextJudge`]).
pub trait Judge: Sync {
    /// Examples of the validation set.
    fn examples(&self) -> usize;
    /// Accuracy and loss of `arch` (inherited weights) on the validation
    /// examples `range`, in batches of `batch`.
    fn score(&self, arch: &Arch, range: std::ops::Range<usize>, batch: usize)
        -> Result<EvalResult>;
    /// Measured latency (ms) of the extracted subnet at batch `batch`,
    /// HAT's protocol.
    fn latency_ms(&self, arch: &Arch, batch: usize) -> Result<f64>;
}

/// Images: the ViT supernet on a validation [`Dataset`].
pub struct ImageJudge<'a> {
    pub net: &'a Supernet,
    pub val: &'a Dataset,
    pub norm: &'a Normalize,
    pub device: Device,
}

impl Judge for ImageJudge<'_> {
    fn examples(&self) -> usize {
        self.val.len()
    }

    fn score(
        &self,
        arch: &Arch,
        range: std::ops::Range<usize>,
        batch: usize,
    ) -> Result<EvalResult> {
        let model = crate::engine::Model::from_vit(&self.net.extract(arch)?)?;
        let idx: Vec<usize> = range.collect();
        evaluate(
            &self.val.subset(&idx),
            self.norm,
            batch,
            &self.device,
            |x| model.logits(x),
        )
    }

    fn latency_ms(&self, arch: &Arch, batch: usize) -> Result<f64> {
        measure_latency(self.net, arch, batch)
    }
}

/// Images, few-shot (`[few_shot]`): each architecture is scored by the
/// sub-supernet that holds it; `parts` pairs each option of the split
/// choice with its sub-supernet.
pub struct FewShotJudge<'a> {
    pub choice: crate::train::few_shot::Choice,
    pub parts: Vec<(usize, &'a Supernet)>,
    pub val: &'a Dataset,
    pub norm: &'a Normalize,
    pub device: Device,
}

impl FewShotJudge<'_> {
    fn part(&self, arch: &Arch) -> Result<ImageJudge<'_>> {
        let v = self.choice.of(arch);
        let net = self
            .parts
            .iter()
            .find(|p| p.0 == v)
            .map(|p| p.1)
            .ok_or_else(|| Error::Data {
                source_name: "few-shot supernet".into(),
                message: format!("no sub-supernet holds {} = {v}", self.choice.name()),
            })?;
        Ok(ImageJudge {
            net,
            val: self.val,
            norm: self.norm,
            device: self.device.clone(),
        })
    }
}

impl Judge for FewShotJudge<'_> {
    fn examples(&self) -> usize {
        self.val.len()
    }

    fn score(
        &self,
        arch: &Arch,
        range: std::ops::Range<usize>,
        batch: usize,
    ) -> Result<EvalResult> {
        self.part(arch)?.score(arch, range, batch)
    }

    fn latency_ms(&self, arch: &Arch, batch: usize) -> Result<f64> {
        // Every part has the parent's shapes: any one times the subnet.
        measure_latency(self.parts[0].1, arch, batch)
    }
}

/// What the search evaluates with.
pub struct Evaluator<'a> {
    pub judge: &'a dyn Judge,
    /// Bounds latency by prediction instead of timing candidates.
    pub predictor: Option<&'a crate::latency::Predictor>,
    /// The ranks that share the evaluations ([`dist::Single`]: this
    /// process alone).
    pub collective: &'a dyn Collective,
}

/// What evaluating one candidate measured: the whole validation subset, or
/// the screening images first and then, unless rejected, the rest.
#[derive(Debug, Clone, Copy)]
enum Measured {
    Whole(crate::train::eval::EvalResult),
    Screened {
        screen: crate::train::eval::EvalResult,
        rest: Option<crate::train::eval::EvalResult>,
    },
}

fn gen_rng(seed: u64, generation: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (generation as u64 + 1).wrapping_mul(0xd134_2543_de82_ef95))
}

/// Measured latency (ms) of the extracted subnet at `batch`: HAT's protocol
/// ([`crate::latency::Protocol`]: 5 warm-up runs, 20 timed, the top and
/// bottom 10 % trimmed), the one latency datasets are measured with.
pub fn measure_latency(net: &Supernet, arch: &Arch, batch: usize) -> Result<f64> {
    let p = crate::latency::Protocol::default();
    Ok(crate::latency::time_arch(net, arch, batch, &p)?.mean_ms)
}

impl Constraints {
    /// Checks the analytical bounds (cheap; latency is checked separately).
    pub fn static_ok(&self, p: u64, f: u64) -> bool {
        self.params_min.is_none_or(|m| p >= m)
            && self.params_max.is_none_or(|m| p <= m)
            && self.flops_min.is_none_or(|m| f >= m)
            && self.flops_max.is_none_or(|m| f <= m)
    }

    /// An error naming the violated bound and the space's range for it when
    /// a bound cannot be met by any architecture.
    pub fn check_satisfiable(&self, space: &Space) -> Result<()> {
        let (lo, hi) = (space.smallest(), space.largest());
        let (p_lo, p_hi, f_lo, f_hi) = (
            params(space, &lo),
            params(space, &hi),
            flops(space, &lo),
            flops(space, &hi),
        );
        let bad = |field: &str, v: u64, what: &str, lo: u64, hi: u64| {
            config::invalid(
                &format!("search.constraints.{field}"),
                format!(
                    "{v} cannot be met: the {what} of space `{}` range from {lo} to {hi}",
                    space.name
                ),
            )
        };
        if let Some(m) = self.params_max.filter(|&m| m < p_lo) {
            return Err(bad("params_max", m, "parameter counts", p_lo, p_hi));
        }
        if let Some(m) = self.params_min.filter(|&m| m > p_hi) {
            return Err(bad("params_min", m, "parameter counts", p_lo, p_hi));
        }
        if let Some(m) = self.flops_max.filter(|&m| m < f_lo) {
            return Err(bad("flops_max", m, "FLOPs (multiply-adds)", f_lo, f_hi));
        }
        if let Some(m) = self.flops_min.filter(|&m| m > f_hi) {
            return Err(bad("flops_min", m, "FLOPs (multiply-adds)", f_lo, f_hi));
        }
        Ok(())
    }
}

/// The search: state plus the caches that make repeated architectures free.
pub struct Search<'a> {
    pub space: &'a Space,
    pub state: SearchState,
    index: HashMap<Vec<usize>, usize>,
    latency: HashMap<Vec<usize>, f64>,
    predicted: HashMap<Vec<usize>, f64>,
    /// Screens new candidates ([`config::Screening`]).
    accuracy: Option<&'a AccuracyPredictor>,
}

impl<'a> Search<'a> {
    pub fn new(space: &'a Space, config: SearchConfig) -> Result<Self> {
        config.validate()?;
        config.constraints.check_satisfiable(space)?;
        let state = SearchState {
            config,
            generation: 0,
            population: vec![],
            records: vec![],
            best_per_generation: vec![],
            images_evaluated: 0,
            eval_seconds: 0.0,
            screened_out: 0,
        };
        Ok(Self {
            space,
            state,
            index: HashMap::new(),
            latency: HashMap::new(),
            predicted: HashMap::new(),
            accuracy: None,
        })
    }

    /// Continues from a saved state (its config is used).
    pub fn from_state(space: &'a Space, state: SearchState) -> Self {
        let index = state
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.genes.clone(), i))
            .collect();
        let latency = state
            .records
            .iter()
            .filter_map(|r| r.latency_ms.map(|l| (r.genes.clone(), l)))
            .collect();
        let predicted = state
            .records
            .iter()
            .filter_map(|r| r.predicted_latency_ms.map(|l| (r.genes.clone(), l)))
            .collect();
        Self {
            space,
            state,
            index,
            latency,
            predicted,
            accuracy: None,
        }
    }

    /// Screens candidates with `p` (the predictor of the config's
    /// `screening`, checked by [`run_with`]).
    pub fn with_accuracy_predictor(mut self, p: Option<&'a AccuracyPredictor>) -> Self {
        self.accuracy = p;
        self
    }

    pub fn load_state(path: &Path) -> Result<SearchState> {
        crate::io::read_json(path)
    }

    pub fn save_state(&self, path: &Path) -> Result<()> {
        write_atomic(
            path,
            serde_json::to_string(&self.state)
                .expect("state serializes")
                .as_bytes(),
        )
    }

    /// Whether `genes` satisfies every constraint (measuring latency once if needed).
    fn satisfies(&mut self, ev: &Evaluator, genes: &[usize]) -> Result<bool> {
        let arch = Arch::from_genes(self.space, genes)?;
        let c = &self.state.config.constraints;
        if !c.static_ok(params(self.space, &arch), flops(self.space, &arch)) {
            return Ok(false);
        }
        if let Some(max) = c.latency_bound() {
            if let Some(p) = ev.predictor {
                let space = self.space;
                let lat = *self
                    .predicted
                    .entry(genes.to_vec())
                    .or_insert_with(|| p.predict(space, &arch));
                return Ok(lat <= max);
            }
            let lat = match self.latency.get(genes) {
                Some(&l) => l,
                None => {
                    let l = ev.judge.latency_ms(&arch, c.latency_batch.unwrap_or(1))?;
                    self.latency.insert(genes.to_vec(), l);
                    l
                }
            };
            return Ok(lat <= max);
        }
        Ok(true)
    }

    /// Canonical genes: inactive layers zeroed, so equal architectures share a key.
    fn canonical(&self, genes: &[usize]) -> Result<Vec<usize>> {
        Arch::from_genes(self.space, genes)?.to_genes(self.space)
    }

    /// A uniformly random architecture that satisfies the constraints.
    fn random_valid(&mut self, ev: &Evaluator, rng: &mut StdRng) -> Result<Vec<usize>> {
        let card = gene_cardinalities(self.space);
        for _ in 0..self.state.config.max_resample {
            let g: Vec<usize> = card.iter().map(|&c| rng.random_range(0..c)).collect();
            let g = self.canonical(&g)?;
            if self.satisfies(ev, &g)? {
                return Ok(g);
            }
        }
        Err(config::invalid(
            "search.constraints",
            format!(
                "no architecture of space `{}` satisfying {:?} found in {} uniform draws \
                 (search.max_resample)",
                self.space.name, self.state.config.constraints, self.state.config.max_resample
            ),
        ))
    }

    /// The screening accuracy of the current k-th best record: the bar a new
    /// candidate must reach on the same screening images.
    fn kth_screen_bar(&self) -> Option<f64> {
        let mut full: Vec<&Record> = self
            .state
            .records
            .iter()
            .filter(|r| !r.rejected_early)
            .collect();
        full.sort_by(|a, b| {
            b.accuracy
                .total_cmp(&a.accuracy)
                .then_with(|| a.genes.cmp(&b.genes))
        });
        full.get(self.state.config.parents.saturating_sub(1))
            .and_then(|r| r.screen_accuracy)
    }

    /// The validation images a candidate is scored on, and how many of
    /// them screen it first (0: no screening).
    fn subset_sizes(&self, ev: &Evaluator) -> (usize, usize) {
        let cfg = &self.state.config;
        let n = cfg.val_subset.min(ev.judge.examples());
        let early = cfg.early_reject_images.min(n);
        (n, if early > 0 && early < n { early } else { 0 })
    }

    /// Evaluates `genes` (cached) and returns its record index.
    fn evaluate(&mut self, ev: &Evaluator, genes: &[usize]) -> Result<usize> {
        if let Some(&i) = self.index.get(genes) {
            return Ok(i);
        }
        let batch = self.state.config.eval_batch_size;
        let arch = Arch::from_genes(self.space, genes)?;
        let (n, early) = self.subset_sizes(ev);
        let started = Instant::now();
        let run = |r: std::ops::Range<usize>| ev.judge.score(&arch, r, batch);
        let measured = if early > 0 {
            // Successive halving in two rungs: every candidate is scored on
            // the same first `early` images; it sees the rest of the subset
            // only if it reaches the k-th best's score on those same images
            // (a paired comparison, far less noisy than two independent
            // estimates).
            let screen = run(0..early)?;
            let rest = match self.kth_screen_bar() {
                Some(bar) if screen.accuracy < bar => None,
                _ => Some(run(early..n)?),
            };
            Measured::Screened { screen, rest }
        } else {
            Measured::Whole(run(0..n)?)
        };
        self.state.eval_seconds += started.elapsed().as_secs_f64();
        Ok(self.record(genes, arch, measured, (n, early)))
    }

    /// Records what evaluating `genes` measured (on `n` images, the first
    /// `early` of them screening) and returns the record's index.
    fn record(
        &mut self,
        genes: &[usize],
        arch: Arch,
        measured: Measured,
        (n, early): (usize, usize),
    ) -> usize {
        let (r, images, rejected, screen) = match measured {
            Measured::Whole(r) => (r, n, false, None),
            Measured::Screened { screen, rest: None } => {
                (screen, early, true, Some(screen.accuracy))
            }
            Measured::Screened {
                screen: r1,
                rest: Some(r2),
            } => {
                let w = |a: f64, b: f64| (a * early as f64 + b * (n - early) as f64) / n as f64;
                let r = crate::train::eval::EvalResult {
                    accuracy: w(r1.accuracy, r2.accuracy),
                    loss: w(r1.loss, r2.loss),
                    examples: n,
                };
                (r, n, false, Some(r1.accuracy))
            }
        };
        self.state.images_evaluated += images;
        let predicted_accuracy = self.accuracy.map(|p| p.predict(self.space, &arch));
        let rec = Record {
            genes: genes.to_vec(),
            params: params(self.space, &arch),
            flops: flops(self.space, &arch),
            latency_ms: self.latency.get(genes).copied(),
            predicted_latency_ms: self.predicted.get(genes).copied(),
            arch,
            accuracy: r.accuracy,
            loss: r.loss,
            images,
            rejected_early: rejected,
            screen_accuracy: screen,
            generation: self.state.generation,
            predicted_accuracy,
        };
        self.state.records.push(rec);
        let i = self.state.records.len() - 1;
        self.index.insert(genes.to_vec(), i);
        i
    }

    fn mutate(
        &mut self,
        ev: &Evaluator,
        parent: &[usize],
        rng: &mut StdRng,
    ) -> Result<Option<Vec<usize>>> {
        let card = gene_cardinalities(self.space);
        let (pl, pg) = (
            self.state.config.layer_mutation_prob,
            self.state.config.global_mutation_prob,
        );
        for _ in 0..self.state.config.max_resample {
            let mut g = parent.to_vec();
            for (k, (v, &c)) in g.iter_mut().zip(&card).enumerate() {
                let p = if k < 2 { pg } else { pl };
                if rng.random_bool(p) {
                    *v = rng.random_range(0..c);
                }
            }
            let g = self.canonical(&g)?;
            if self.satisfies(ev, &g)? {
                return Ok(Some(g));
            }
        }
        Ok(None)
    }

    fn crossover(
        &mut self,
        ev: &Evaluator,
        a: &[usize],
        b: &[usize],
        rng: &mut StdRng,
    ) -> Result<Option<Vec<usize>>> {
        for _ in 0..self.state.config.max_resample {
            let g: Vec<usize> = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| if rng.random_bool(0.5) { x } else { y })
                .collect();
            let g = self.canonical(&g)?;
            if self.satisfies(ev, &g)? {
                return Ok(Some(g));
            }
        }
        Ok(None)
    }

    /// Genes of the best `k` full-subset records of the current population.
    fn top_k(&self, pop: &[Vec<usize>], k: usize) -> Vec<Vec<usize>> {
        let mut scored: Vec<(f64, &Vec<usize>)> = pop
            .iter()
            .filter_map(|g| self.index.get(g).map(|&i| &self.state.records[i]))
            .filter(|r| !r.rejected_early)
            .map(|r| (r.accuracy, &r.genes))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored.dedup_by(|a, b| a.1 == b.1);
        scored.into_iter().take(k).map(|(_, g)| g.clone()).collect()
    }

    /// Runs one generation; returns the best accuracy so far.
    pub fn step(&mut self, ev: &Evaluator) -> Result<f64> {
        let gen = self.state.generation;
        let mut rng = gen_rng(self.state.config.seed, gen);
        let cfg = self.state.config.clone();
        let pop: Vec<Vec<usize>> = match (cfg.algorithm, gen) {
            (Algorithm::Random, _) | (Algorithm::Evolution, 0) => {
                let n = if cfg.algorithm == Algorithm::Random && gen > 0 {
                    cfg.mutations + cfg.crossovers
                } else {
                    cfg.population
                };
                (0..n)
                    .map(|_| self.random_valid(ev, &mut rng))
                    .collect::<Result<_>>()?
            }
            (Algorithm::Evolution, _) => {
                let parents = self.top_k(&self.state.population.clone(), cfg.parents);
                let mut next = parents.clone();
                for _ in 0..cfg.mutations {
                    let p = parents[rng.random_range(0..parents.len())].clone();
                    if let Some(c) = self.mutate(ev, &p, &mut rng)? {
                        next.push(c);
                    }
                }
                for _ in 0..cfg.crossovers {
                    let a = parents[rng.random_range(0..parents.len())].clone();
                    let b = parents[rng.random_range(0..parents.len())].clone();
                    if let Some(c) = self.crossover(ev, &a, &b, &mut rng)? {
                        next.push(c);
                    }
                }
                next
            }
        };
        let pop = self.screen(pop)?;
        if ev.collective.size() == 1 {
            for g in &pop {
                self.evaluate(ev, g)?;
            }
        } else {
            self.evaluate_shared(ev, &pop)?;
        }
        self.state.population = pop;
        self.state.generation += 1;
        let best = self.best().map_or(0.0, |r| r.accuracy);
        self.state.best_per_generation.push(best);
        Ok(best)
    }

    /// The candidates of `pop` that get a real score: all of them without
    /// screening; with it, those scored before and the best `fraction` (at
    /// least one) of the new ones by predicted accuracy (ties: the smaller
    /// genes). The rest are counted in `screened_out` and dropped, so the
    /// population, its parents and the ranking hold scored candidates only.
    fn screen(&mut self, pop: Vec<Vec<usize>>) -> Result<Vec<Vec<usize>>> {
        let (Some(p), Some(s)) = (self.accuracy, self.state.config.screening.as_ref()) else {
            return Ok(pop);
        };
        let mut new: Vec<(f64, &Vec<usize>)> = Vec::new();
        for g in &pop {
            if !self.index.contains_key(g) && !new.iter().any(|(_, h)| *h == g) {
                let arch = Arch::from_genes(self.space, g)?;
                new.push((p.predict(self.space, &arch), g));
            }
        }
        new.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let keep = ((new.len() as f64 * s.fraction).ceil() as usize).clamp(1, new.len().max(1));
        let kept: std::collections::HashSet<&Vec<usize>> =
            new.iter().take(keep).map(|(_, g)| *g).collect();
        self.state.screened_out += new.len().saturating_sub(keep);
        Ok(pop
            .iter()
            .filter(|g| self.index.contains_key(*g) || kept.contains(g))
            .cloned()
            .collect())
    }

    /// The best full-subset record so far.
    pub fn best(&self) -> Option<&Record> {
        self.state
            .records
            .iter()
            .filter(|r| !r.rejected_early)
            .max_by(|a, b| {
                a.accuracy
                    .total_cmp(&b.accuracy)
                    .then_with(|| b.genes.cmp(&a.genes))
            })
    }

    /// The best `k` records, best first.
    pub fn ranking(&self, k: usize) -> Vec<&Record> {
        let mut v: Vec<&Record> = self
            .state
            .records
            .iter()
            .filter(|r| !r.rejected_early)
            .collect();
        v.sort_by(|a, b| {
            b.accuracy
                .total_cmp(&a.accuracy)
                .then_with(|| a.genes.cmp(&b.genes))
        });
        v.truncate(k);
        v
    }
}

/// The saved state of a search to continue with the settings `now`: only
/// `generations` may change (it is applied and saved with the state); any
/// other setting that differs from the saved one (a bound, the predictor,
/// the population, the seed, ...) is refused naming the field, because the
/// records already made were judged under the saved settings.
pub fn resumed(mut saved: SearchState, now: &SearchConfig, path: &Path) -> Result<SearchState> {
    let before = serde_json::to_value(&saved.config).expect("a config serializes");
    let after = serde_json::to_value(now).expect("a config serializes");
    let mut differ = Vec::new();
    json_differences("search", &before, &after, &mut differ);
    differ.retain(|(field, _, _)| field != "search.generations");
    if let Some((field, was, is)) = differ.into_iter().next() {
        return Err(Error::InvalidConfig {
            file: path.display().to_string(),
            field,
            message: format!(
                "the saved search used {was}, now {is}: a resumed search keeps its settings \
                 (only --generations may change); drop the option, or start a new search with \
                 another --out"
            ),
        });
    }
    if now.generations < saved.generation {
        return Err(Error::InvalidConfig {
            file: path.display().to_string(),
            field: "search.generations".into(),
            message: format!(
                "{} is fewer than the {} generations the saved search has already run",
                now.generations, saved.generation
            ),
        });
    }
    saved.config.generations = now.generations;
    Ok(saved)
}

/// The leaves where two JSON values differ: (dotted path, before, after).
fn json_differences(
    at: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<(String, String, String)>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = Value::Null;
                json_differences(
                    &format!("{at}.{k}"),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (x, y) if x != y => out.push((at.to_string(), x.to_string(), y.to_string())),
        _ => {}
    }
}

/// Runs (or, with `resume`, continues) a search in `out`, saving the state
/// after every generation and writing the result files at the end.
///
/// Search a trained image run with the settings of its recipe's `[search]`
/// (`no_run`: it needs a trained run directory, e.g. from `vitnas train
/// recipes/quickstart.toml`, and scores every candidate on the validation
/// split, minutes):
///
/// ```no_run
/// use candle_core::Device;
/// use std::path::Path;
/// use vitnas::dist::Single;
/// use vitnas::search::{self, Evaluator, ImageJudge, Search};
/// use vitnas::train::TrainedRun;
///
/// # fn main() -> vitnas::Result<()> {
/// let run = TrainedRun::load(Path::new("runs/quickstart"))?;
/// let (val, norm) = run.validation()?;
/// let judge = ImageJudge { net: &run.net, val: &val, norm: &norm, device: Device::Cpu };
/// let ev = Evaluator { judge: &judge, predictor: None, collective: &Single };
/// let out = run.dir.join("search-evolution");
/// let state = search::run(&run.space, run.recipe.search.clone(), &ev, &out, false, false)?;
/// for r in Search::from_state(&run.space, state).ranking(3) {
///     println!("{:.2} %  {} params  {:?}", 100.0 * r.accuracy, r.params, r.arch);
/// }
/// # Ok(())
/// # }
/// ```
pub fn run(
    space: &Space,
    config: SearchConfig,
    ev: &Evaluator,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<SearchState> {
    run_with(space, config, ev, None, out, resume, progress)
}

/// [`run`] with the accuracy predictor `accuracy` that the config's
/// `screening` names (given exactly when the config screens; the caller
/// checks it against the space and the supernet).
pub fn run_with(
    space: &Space,
    config: SearchConfig,
    ev: &Evaluator,
    accuracy: Option<&AccuracyPredictor>,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<SearchState> {
    let c = ev.collective;
    if !dist::is_root(c) {
        // Evaluate what rank 0 hands out; end with its final state.
        shared::serve(space, ev)?;
        return dist::broadcast_json(c, None);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // One search at a time in a directory: a second one would replace the
    // first one's state and results.
    let _lock = crate::train::rundir::RunLock::acquire(out)?;
    let state_path = out.join(STATE_FILE);
    let mut search = if resume {
        let saved = Search::load_state(&state_path)?;
        Search::from_state(space, resumed(saved, &config, &state_path)?)
    } else {
        if state_path.exists() {
            return Err(Error::Checkpoint {
                path: state_path,
                message: "a search already exists here: continue it with --resume, or choose another output directory".into(),
            });
        }
        Search::new(space, config)?
    }
    .with_accuracy_predictor(accuracy);
    if search.state.config.screening.is_some() != accuracy.is_some() {
        return Err(config::invalid(
            "search.screening",
            match accuracy {
                Some(_) => "an accuracy predictor was given, but the search does not screen",
                None => "the search screens by predicted accuracy, but no predictor was loaded",
            }
            .into(),
        ));
    }
    let bounds = &search.state.config.constraints;
    if bounds.latency_fraction.is_some() && bounds.latency_largest_ms.is_none() {
        return Err(config::invalid(
            "search.constraints.latency_fraction",
            "the largest subnet's latency was not measured (`vitnas search` measures it when it \
             starts)"
                .into(),
        ));
    }
    let total = search.state.config.generations;
    let bar = (progress && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} generations  {msg}  ETA {eta}",
            )
            .expect("template"),
        );
        b.set_position(search.state.generation as u64);
        b
    });
    let (started, first) = (std::time::Instant::now(), search.state.generation);
    while search.state.generation < total {
        let best = search.step(ev)?;
        search.save_state(&state_path)?;
        let msg = format!(
            "best {:.4}, {} evaluated, {:.1} evals/s",
            best,
            search.state.records.len(),
            search.state.records.len() as f64 / search.state.eval_seconds.max(1e-9)
        );
        match &bar {
            Some(b) => {
                b.set_position(search.state.generation as u64);
                b.set_message(msg);
            }
            None if progress => eprintln!(
                "generation {}/{total}: {msg} ({})",
                search.state.generation,
                crate::train::progress::elapsed_eta(
                    started,
                    search.state.generation - first,
                    total - first
                )
            ),
            None => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if c.size() > 1 {
        shared::dispatch(c, None)?;
        dist::broadcast_json(c, Some(&search.state))?;
    }
    let title = format!(
        "{} search on {}",
        match search.state.config.algorithm {
            Algorithm::Evolution => "evolutionary",
            Algorithm::Random => "random",
        },
        space.name
    );
    pareto::write_outputs(out, &search.state.records, &title)?;
    Ok(search.state)
}
