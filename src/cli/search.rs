//! `vitnas search <run dir>`: evolutionary or random search over a trained
//! supernet (ViT on images or BERT on text, as the run is), under params /
//! FLOPs / latency constraints.

use anyhow::Context;
use candle_core::Device;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use vitnas::dist::{self, Collective};
use vitnas::latency::{self, Machine, Predictor};
use vitnas::search::config::Algorithm;
use vitnas::search::{self, Evaluator, FewShotJudge, ImageJudge, Judge, TextJudge};
use vitnas::train::few_shot::FewShot;
use vitnas::train::predictor::AccuracyPredictor;
use vitnas::train::rundir;
use vitnas::train::text::TextRun;
use vitnas::train::TrainedRun;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    Evolution,
    Random,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// A training run directory (recipe.toml, space.toml, supernet.safetensors)
    /// of an image (ViT) or text (BERT) supernet, or a few-shot directory
    /// (`[few_shot]`: each subnet scored by the sub-supernet holding it). Candidates are scored on
    /// the run's validation split (images or texts); the bounds in force
    /// (the recipe's [search.constraints] and these flags) are printed when
    /// the search starts.
    run: PathBuf,
    /// Output directory (default: <run>/search-<algorithm>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the search saved in the output directory.
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum)]
    algorithm: Option<AlgorithmArg>,
    #[arg(long)]
    params_min: Option<u64>,
    #[arg(long)]
    params_max: Option<u64>,
    /// Bounds on multiply-adds per input (an image, or a text at the
    /// space's stated sequence length).
    #[arg(long)]
    flops_min: Option<u64>,
    #[arg(long)]
    flops_max: Option<u64>,
    /// Bound on the latency of the extracted subnet (ms) on this machine:
    /// measured, or predicted with --predictor.
    #[arg(long, alias = "latency-max-ms")]
    latency_ms_max: Option<f64>,
    /// Bound on latency as a fraction of the largest subnet's (e.g. 0.333:
    /// 3× faster): predicted with a latency predictor, else measured on
    /// this machine when the search starts.
    #[arg(long, conflicts_with = "latency_ms_max")]
    latency_fraction: Option<f64>,
    #[arg(long)]
    latency_batch: Option<usize>,
    /// Drop the recipe's bounds ([search.constraints]: params, FLOPs,
    /// latency, latency predictor); only the bounds given on this command
    /// line apply.
    #[arg(long)]
    no_recipe_bounds: bool,
    /// A latency predictor (`vitnas latency fit`): --latency-ms-max then
    /// bounds the predicted latency and no candidate is timed; the top-k are
    /// measured at the end and compared with their predictions.
    #[arg(long)]
    predictor: Option<PathBuf>,
    /// An accuracy predictor of this run (`vitnas predictor fit`): each
    /// generation's new candidates are ranked by predicted accuracy and only
    /// the best --screen-fraction of them get a real validation score.
    #[arg(long)]
    accuracy_predictor: Option<PathBuf>,
    /// With --accuracy-predictor: the fraction of new candidates scored
    /// (0.15: 3.6× less search time, the same result, on fmnist-small).
    #[arg(long, requires = "accuracy_predictor", default_value_t = 0.15)]
    screen_fraction: f64,
    #[arg(long)]
    population: Option<usize>,
    /// Parents kept from each generation (at most the population).
    #[arg(long)]
    parents: Option<usize>,
    /// Children made by mutation in each generation.
    #[arg(long)]
    mutations: Option<usize>,
    /// Children made by crossover in each generation.
    #[arg(long)]
    crossovers: Option<usize>,
    #[arg(long)]
    generations: Option<usize>,
    /// Validation examples (images or texts) used for the fitness.
    #[arg(long)]
    val_subset: Option<usize>,
    /// Early rejection: screen new candidates on this many examples first.
    #[arg(long)]
    early_reject: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Write the best N architectures as arch-<rank>.json for `vitnas export`.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Write into a non-empty output directory that is not a search (never
    /// into a training run or over another search).
    #[arg(long)]
    force: bool,
}

/// A trained supernet of either modality, or a few-shot supernet (its
/// sub-supernets in the manifest's order).
enum Loaded {
    Image(Box<TrainedRun>),
    Text(Box<TextRun>),
    FewShot(Box<FewShot>, Vec<TrainedRun>),
}

pub fn run(a: SearchArgs, world: &dyn Collective) -> anyhow::Result<()> {
    let root = dist::is_root(world);
    let loaded = if FewShot::is_few_shot(&a.run) {
        let fs = FewShot::load(&a.run)?;
        let parts = fs
            .manifest
            .parts
            .iter()
            .map(|(_, rel)| TrainedRun::load(&a.run.join(rel)))
            .collect::<vitnas::Result<Vec<_>>>()?;
        Loaded::FewShot(Box::new(fs), parts)
    } else if TextRun::is_text_run(&a.run) {
        Loaded::Text(Box::new(TextRun::load(&a.run)?))
    } else {
        Loaded::Image(Box::new(TrainedRun::load(&a.run)?))
    };
    let (recipe, space) = match &loaded {
        Loaded::Image(r) => (&r.recipe, &r.space),
        Loaded::Text(r) => (&r.recipe, &r.space),
        Loaded::FewShot(fs, parts) => (&parts[0].recipe, &fs.manifest.space),
    };
    let custom_out = a.out.is_some();
    let out = a.out.clone().unwrap_or_else(|| {
        a.run.join(match a.algorithm {
            Some(AlgorithmArg::Random) => "search-random",
            Some(AlgorithmArg::Evolution) => "search-evolution",
            None => match recipe.search.algorithm {
                Algorithm::Evolution => "search-evolution",
                Algorithm::Random => "search-random",
            },
        })
    });
    // A resumed search starts from its own saved settings (rank 0's: the
    // other ranks evaluate what it hands out); the options given now are
    // applied on top, and `search::run` refuses any that would change what
    // the saved records were judged by.
    let mut cfg = match a.resume && root {
        true => search::Search::load_state(&out.join(search::STATE_FILE))?.config,
        false => recipe.search.clone(),
    };
    if let Some(alg) = a.algorithm {
        cfg.algorithm = match alg {
            AlgorithmArg::Evolution => Algorithm::Evolution,
            AlgorithmArg::Random => Algorithm::Random,
        };
    }
    let c = &mut cfg.constraints;
    if a.no_recipe_bounds {
        *c = search::config::Constraints::default();
    }
    let recipe_bounds = c.clone();
    c.params_min = a.params_min.or(c.params_min);
    c.params_max = a.params_max.or(c.params_max);
    c.flops_min = a.flops_min.or(c.flops_min);
    c.flops_max = a.flops_max.or(c.flops_max);
    if a.latency_ms_max.is_some() {
        c.latency_fraction = None;
    }
    if a.latency_fraction.is_some() {
        c.latency_ms_max = None;
    }
    c.latency_ms_max = a.latency_ms_max.or(c.latency_ms_max);
    c.latency_fraction = a.latency_fraction.or(c.latency_fraction);
    c.latency_batch = a.latency_batch.or(c.latency_batch);
    c.latency_predictor = a.predictor.clone().or(c.latency_predictor.clone());
    cfg.population = a.population.unwrap_or(cfg.population);
    cfg.parents = a.parents.unwrap_or(cfg.parents);
    cfg.mutations = a.mutations.unwrap_or(cfg.mutations);
    cfg.crossovers = a.crossovers.unwrap_or(cfg.crossovers);
    cfg.generations = a.generations.unwrap_or(cfg.generations);
    cfg.val_subset = a.val_subset.unwrap_or(cfg.val_subset);
    cfg.early_reject_images = a.early_reject.unwrap_or(cfg.early_reject_images);
    cfg.seed = a.seed.unwrap_or(cfg.seed);
    if let Some(p) = &a.accuracy_predictor {
        cfg.screening = Some(search::config::Screening {
            predictor: p.clone(),
            fraction: a.screen_fraction,
        });
    }
    if a.top_k == 0 {
        anyhow::bail!("--top-k must be positive");
    }
    // Checked, and written, where --out resolves: never into a training
    // run, an existing search only with --resume, another non-empty
    // directory only with --force.
    let write_to = match (root, a.resume) {
        (true, false) => rundir::check_output(&out, rundir::Artifact::Search, a.force)?,
        _ => rundir::resolve(&out)?,
    };
    cfg.validate().map_err(|e| {
        // Every setting that interacts with --population has a flag.
        let hint = match &e {
            vitnas::Error::InvalidConfig { field, .. } if field == "search.parents" => {
                " (set it with --parents, or in the recipe's [search])"
            }
            _ => "",
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    let (image_val, text_val);
    let judge: Box<dyn Judge + '_> = match &loaded {
        Loaded::Image(run) => {
            image_val = run.validation()?;
            check_same_inputs(world, run, &image_val.0)?;
            Box::new(ImageJudge {
                net: &run.net,
                val: &image_val.0,
                norm: &image_val.1,
                device: Device::Cpu,
            })
        }
        Loaded::FewShot(fs, parts) => {
            image_val = parts[0].validation()?;
            check_same_inputs(world, &parts[0], &image_val.0)?;
            Box::new(FewShotJudge {
                choice: fs.manifest.choice,
                parts: fs
                    .manifest
                    .parts
                    .iter()
                    .zip(parts)
                    .map(|((v, _), run)| (*v, &run.net))
                    .collect(),
                val: &image_val.0,
                norm: &image_val.1,
                device: Device::Cpu,
            })
        }
        Loaded::Text(run) => {
            if world.size() > 1 {
                anyhow::bail!(
                    "searching a text supernet on several ranks is not supported yet: run \
                     `vitnas search` in one process"
                );
            }
            text_val = run.validation()?;
            Box::new(TextJudge {
                run,
                val: &text_val,
            })
        }
    };
    let predictor = match &cfg.constraints.latency_predictor {
        Some(path) => {
            let p = Predictor::load(path)?;
            // The top-k are measured at the end with the predictor's thread count.
            for w in p.check(path, space, &Machine::current(p.machine.threads))? {
                eprintln!("warning: {w}");
            }
            if let Some(b) = cfg.constraints.latency_batch.filter(|&b| b != p.batch) {
                anyhow::bail!(
                    "--latency-batch {b} differs from the predictor's batch {} ({})",
                    p.batch,
                    path.display()
                );
            }
            Some(p)
        }
        None => None,
    };
    // Screening: the predictor of this space, fitted on this supernet.
    let accuracy = match &cfg.screening {
        Some(s) => {
            if matches!(loaded, Loaded::FewShot(..)) {
                anyhow::bail!(
                    "--accuracy-predictor: a predictor is fitted on one supernet, and {} is a \
                     few-shot supernet of several: search it without screening",
                    a.run.display()
                );
            }
            let p = AccuracyPredictor::load(&s.predictor)?;
            p.check_space(&s.predictor, space)?;
            p.check_supernet(&s.predictor, &vitnas::train::run_paths(&a.run).1)?;
            Some(p)
        }
        None => None,
    };
    let c = &mut cfg.constraints;
    let budget = match c.latency_fraction {
        Some(f) if root => {
            // Measured as the predictor's dataset was (its batch and threads).
            let (batch, threads) = match &predictor {
                Some(p) => (p.batch, p.machine.threads),
                None => (c.latency_batch.unwrap_or(1), rayon::current_num_threads()),
            };
            // With a predictor, the candidates' latencies are predicted: so
            // is the largest's, on the same scale, rather than one timing
            // taken now (which other jobs on the machine would inflate).
            let (largest, how) = match (c.latency_largest_ms, &predictor) {
                (Some(ms), _) => (ms, "as resumed"),
                (None, Some(p)) => (p.predict(space, &space.largest()), "predicted"),
                (None, None) => (
                    with_threads(threads, || judge.latency_ms(&space.largest(), batch))?,
                    "measured",
                ),
            };
            c.latency_largest_ms = Some(largest);
            eprintln!(
                "latency bound: {f} × the largest subnet's {largest:.3} ms ({how}; batch {batch}, \
                 {threads} threads) = {:.3} ms",
                f * largest
            );
            serde_json::json!({"fraction": f, "largest_ms": largest, "largest_how": how,
                "max_ms": f * largest, "batch": batch, "threads": threads})
        }
        _ => serde_json::Value::Null,
    };
    if root {
        let (kind, unit) = match space.is_text() {
            true => ("a text (BERT) supernet", "texts"),
            false => ("an image (ViT) supernet", "images"),
        };
        eprintln!(
            "searching {} ({kind}, space `{}`): candidates scored on {} validation {unit}",
            a.run.display(),
            space.name,
            judge.examples().min(cfg.val_subset)
        );
        say_bounds(c, &recipe_bounds, a.no_recipe_bounds, a.resume);
    }
    if let (Some(p), Some(path)) = (&predictor, &c.latency_predictor) {
        let max = c
            .latency_bound()
            .context("--predictor needs --latency-ms-max or --latency-fraction")?;
        latency::check_budget(p, path, space, max)?;
    }
    // The search is saved after every generation: on Ctrl-C, say how to
    // continue, and exit with the resumable-interruption code.
    let hint = format!(
        "interrupted: the search is saved after every generation; continue with `vitnas search {} --resume{}`",
        a.run.display(),
        if custom_out { format!(" --out {}", out.display()) } else { String::new() }
    );
    ctrlc::set_handler(move || {
        eprintln!("{hint}");
        std::process::exit(super::train::EXIT_INTERRUPTED.into());
    })?;
    let ev = Evaluator {
        judge: judge.as_ref(),
        predictor: predictor.as_ref(),
        collective: world,
    };
    let started = std::time::Instant::now();
    let state = search::run_with(
        space,
        cfg,
        &ev,
        accuracy.as_ref(),
        &write_to,
        a.resume,
        true,
    )?;
    if !root {
        return Ok(());
    }
    let s = search::Search::from_state(space, state);

    let top = s.ranking(a.top_k);
    for (k, r) in top.iter().enumerate() {
        let p = write_to.join(format!("arch-{}.json", k + 1));
        std::fs::write(&p, serde_json::to_string_pretty(&r.arch)?)
            .with_context(|| p.display().to_string())?;
    }
    let best = top.first().context("no architecture was evaluated")?;
    let check = match &predictor {
        Some(p) => check_predictions(p, space, judge.as_ref(), &top)?,
        None => serde_json::Value::Null,
    };
    // Texts where the run is text (the saved state counts "images").
    let mut best = serde_json::to_value(best)?;
    let evaluated = match space.is_text() {
        true => {
            if let Some(n) = best.as_object_mut().and_then(|o| o.remove("images")) {
                best["texts"] = n;
            }
            "texts_evaluated"
        }
        false => "images_evaluated",
    };
    let mut report = serde_json::json!({
        "out": out, "generations": s.state.generation, "evaluated": s.state.records.len(),
        "eval_seconds": s.state.eval_seconds,
        "wall_seconds": started.elapsed().as_secs_f64(),
        "evals_per_second": s.state.records.len() as f64 / s.state.eval_seconds.max(1e-9),
        "best": best, "bounds": s.state.config.constraints,
            "latency_budget": budget, "latency_check": check,
            "screening": s.state.config.screening.as_ref().map(|sc| serde_json::json!({
                "predictor": sc.predictor, "fraction": sc.fraction,
                "screened_out": s.state.screened_out,
            "scored": s.state.records.len(),
        })),
    });
    report[evaluated] = s.state.images_evaluated.into();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Refuses a search whose ranks run different builds, or hold a different
/// supernet or validation split (a no-op on one rank).
fn check_same_inputs(
    c: &dyn Collective,
    run: &TrainedRun,
    val: &vitnas::data::Dataset,
) -> anyhow::Result<()> {
    if c.size() == 1 {
        return Ok(());
    }
    let file = run.dir.join(vitnas::train::SUPERNET_FILE);
    let weights = std::fs::read(&file).with_context(|| file.display().to_string())?;
    let labels: Vec<u8> = val.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let data = dist::fnv1a(&labels, dist::fnv1a(&val.images, dist::FNV_START));
    let what = format!(
        "{}\nsupernet {:016x}\nvalidation {data:016x}",
        dist::build_identity(),
        dist::fnv1a(&weights, dist::FNV_START)
    );
    c.wait_for_all()?;
    dist::check_same(
        c,
        "build, supernet or validation split",
        what.as_bytes(),
        "every rank must run the same vitnas build on the same run directory and data \
         (`mpirun -np N vitnas search <run dir>`)",
    )?;
    Ok(())
}

/// Measures the reported top-k twice (the protocol the predictor's dataset
/// was measured with), prints predicted against measured for each, and
/// flags a predictor whose error on them exceeds its recorded held-out
/// error or the 5 % target, a predictor whose recorded error is above the
/// target, and measurements whose two repeats disagree by more than 5 %,
/// saying what to do.
fn check_predictions(
    p: &Predictor,
    space: &vitnas::Space,
    judge: &dyn Judge,
    top: &[&search::Record],
) -> anyhow::Result<serde_json::Value> {
    let recorded = p.error().map(|e| e.p95_rel).unwrap_or(0.0);
    let mut rows = Vec::new();
    let mut errs = Vec::new();
    eprintln!(
        "latency of the top {}: predicted vs measured (batch {}, {} threads)",
        top.len(),
        p.batch,
        p.machine.threads
    );
    let mut noise = 0f64;
    for (k, r) in top.iter().enumerate() {
        let predicted = p.predict(space, &r.arch);
        let once = || with_threads(p.machine.threads, || judge.latency_ms(&r.arch, p.batch));
        let (m1, m2) = (once()?, once()?);
        let measured = 0.5 * (m1 + m2);
        noise = noise.max((m1 - m2).abs() / measured.max(1e-12));
        let err = (predicted - measured) / measured;
        errs.push(err.abs());
        eprintln!(
            "  #{}: predicted {predicted:.3} ms, measured {measured:.3} ms ({:+.1} %)",
            k + 1,
            100.0 * err
        );
        rows.push(serde_json::json!({"rank": k + 1, "predicted_ms": predicted,
            "measured_ms": measured, "rel_error": err}));
    }
    let mean = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
    let worst = errs.iter().copied().fold(0.0, f64::max);
    let target = latency::fit::TARGET_REL_ERROR;
    let recorded_mean = p.error().map(|e| e.mean_rel).unwrap_or(0.0);
    let mut warnings = Vec::new();
    if mean > target {
        warnings.push(format!(
            "the predictor's mean error on these is {:.1} %, above the {:.0} % target",
            100.0 * mean,
            100.0 * target
        ));
    }
    if recorded_mean > target {
        warnings.push(format!(
            "the predictor's recorded held-out error is {:.1} % (mean relative), above the \
             {:.0} % target: it was fitted on noisy measurements",
            100.0 * recorded_mean,
            100.0 * target
        ));
    }
    if noise > latency::fit::NOISY_REPEATS {
        warnings.push(format!(
            "two measurements of the same architecture differ by up to {:.1} % here: this \
             machine is busy, so neither the check nor the bound is reliable",
            100.0 * noise
        ));
    }
    for w in &warnings {
        eprintln!("warning: {w}; {}", latency::fit::NOISE_ADVICE);
    }
    let flagged = worst > recorded || !warnings.is_empty();
    if worst > recorded {
        eprintln!(
            "FLAG: the predictor's error on these ({:.1} % worst, {:.1} % mean) exceeds its \
             recorded held-out 95th percentile ({:.1} %): the machine may differ from the one \
             measured, or have drifted; measure a few (`vitnas latency measure --n 100`) and \
             `vitnas latency recalibrate`, or re-measure and refit",
            100.0 * worst,
            100.0 * mean,
            100.0 * recorded
        );
    }
    Ok(
        serde_json::json!({"rows": rows, "mean_rel_error": mean, "worst_rel_error": worst,
        "recorded_heldout_p95_rel_error": recorded, "repeat_disagreement": noise,
        "warnings": warnings, "flagged": flagged}),
    )
}

/// `f` run with `threads` threads: on the current pool (which this thread
/// belongs to, `threads::init_pool`) when the counts agree, else on a pool
/// of its own.
fn with_threads<T: Send>(
    threads: usize,
    f: impl FnOnce() -> vitnas::Result<T> + Send,
) -> anyhow::Result<T> {
    if threads == rayon::current_num_threads() {
        return Ok(f()?);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    Ok(pool.install(f)?)
}

/// Prints every bound in force and where it came from (the recipe, the
/// saved search, or a flag), and how to drop the recipe's.
fn say_bounds(
    c: &search::config::Constraints,
    before_flags: &search::config::Constraints,
    dropped: bool,
    resumed: bool,
) {
    let saved = match resumed {
        true => "the saved search",
        false => "recipe",
    };
    let before: Vec<(&str, String)> = before_flags.describe();
    let now = c.describe();
    if now.is_empty() {
        eprintln!("bounds in force: none (every architecture of the space is eligible)");
    } else {
        let parts: Vec<String> = now
            .iter()
            .map(|(field, text)| {
                let from = match before.iter().any(|(f, t)| f == field && t == text) {
                    true => saved.to_string(),
                    false => format!("--{}", field.replace('_', "-")),
                };
                format!("{text} [{from}]")
            })
            .collect();
        eprintln!("bounds in force: {}", parts.join("; "));
    }
    let from_recipe = now
        .iter()
        .any(|(field, text)| before.iter().any(|(f, t)| f == field && t == text));
    if from_recipe && !dropped && !resumed {
        eprintln!(
            "  (the recipe's [search.constraints] apply too: --no-recipe-bounds drops them, \
             leaving only the bounds given on the command line)"
        );
    }
}
