//! `vitnas latency measure | fit | check | recalibrate | export-archs | predict`:
//! latency datasets and learned latency predictors for hardware-aware search (HAT).

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use vitnas::latency::{self, dataset, export_archs, fit, Predictor, Protocol};
use vitnas::train::rundir;
use vitnas::{Arch, Space};

#[derive(Debug, Subcommand)]
pub enum LatencyCmd {
    /// Time architectures of a space on this machine (extracted static
    /// models, the engine inference of `eval` and export) into a CSV.
    /// Resumable: run it again with the same settings to continue.
    Measure(MeasureArgs),
    /// Fit latency predictors on a measured CSV (HAT's MLP and an additive
    /// per-layer cost model), report their held-out error, keep the best.
    Fit(FitArgs),
    /// A predictor's error on another measured CSV of the same space (e.g.
    /// one taken later, to see drift).
    Check { predictor: PathBuf, csv: PathBuf },
    /// Rescale a predictor to a fresh, short measurement of the same space
    /// (`measure --n 100`): for a machine that drifted as a whole. Writes a
    /// new predictor file.
    Recalibrate {
        predictor: PathBuf,
        csv: PathBuf,
        /// Output predictor file: never one of the inputs.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file at --out.
        #[arg(long)]
        force: bool,
    },
    /// Write the architectures `measure` would time as ONNX files
    /// (`<out>/arch-<i>.onnx`) with `<out>/manifest.json`, for timing on
    /// another machine with `evaluate/ort_latency.py` (ONNX Runtime), whose
    /// CSV `fit` reads. Text spaces share one word-embedding table per width
    /// (`<out>/word_embeddings-<dim>.bin`, ONNX external data): copy the
    /// directory whole.
    ExportArchs(ExportArchsArgs),
    /// Predicted latency of one architecture (JSON file).
    Predict {
        /// A predictor file from `vitnas latency fit`.
        predictor: PathBuf,
        /// Architecture JSON (`vitnas arch sample`, `search`'s arch-N.json).
        arch: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Search-space file (e.g. search_spaces/fmnist-tiny.toml).
    space: PathBuf,
    /// Architectures to time (HAT: 2,000).
    #[arg(long, default_value_t = 2000)]
    n: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Threads of the timed inference.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seeds the architecture sample (and the random weights timed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Warm-up runs per architecture.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed runs per architecture (the top and bottom 10 % are dropped).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Text spaces: time sequences of this many tokens instead of the
    /// space's stated `text.seq_len` (the dataset then records the space
    /// with this length).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Output CSV (an existing one made with the same settings is
    /// continued).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArchsArgs {
    /// Search-space file (e.g. search_spaces/fmnist-tiny.toml or
    /// search_spaces/bert-minilm-mean.toml).
    space: PathBuf,
    /// Architectures to export.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Batch the runner times (the files' batch dimension is symbolic).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seeds the architecture sample (as `measure --seed`) and the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Text spaces: time sequences of this many tokens instead of the
    /// space's stated `text.seq_len` (as `measure --seq-len`; the manifest
    /// and the CSV then record the space with this length).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Output directory (must not hold a manifest.json yet).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct FitArgs {
    /// A CSV from `vitnas latency measure`.
    csv: PathBuf,
    /// Output predictor file (JSON): never the input CSV.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing file at --out.
    #[arg(long)]
    force: bool,
    /// Fraction of the rows held out to measure the error.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training steps of HAT's MLP (batch 128).
    #[arg(long, default_value_t = 3000)]
    mlp_steps: usize,
    /// Each row's latency: the trimmed mean or the median of its runs.
    #[arg(long, value_enum, default_value_t = StatArg::Mean)]
    statistic: StatArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatArg {
    Mean,
    Median,
}

pub fn run(cmd: LatencyCmd) -> anyhow::Result<()> {
    match cmd {
        LatencyCmd::Measure(a) => {
            super::threads::init_pool(a.threads)?;
            // Never the space file, a directory or a file in a training
            // run; an existing CSV is continued (its header is checked).
            let out = rundir::check_output_file(&a.out, &[&a.space], false, true)?;
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            }
            // One measurement at a time into a file: two would interleave rows.
            let _lock = rundir::RunLock::acquire_file(&out)?;
            let stop = super::stop_flag()?;
            let space = load_space(&a.space, a.seq_len)?;
            let opts = dataset::MeasureOptions {
                n: a.n,
                batch: a.batch,
                threads: a.threads,
                seed: a.seed,
                protocol: Protocol {
                    warmup: a.warmup,
                    runs: a.runs,
                    trim: Protocol::default().trim,
                },
            };
            let bar = architectures_bar(a.n);
            let started = std::time::Instant::now();
            // Without a terminal: a line every 10 % with elapsed time and ETA.
            let mut first: Option<usize> = None;
            let mut said = 0;
            let (n, interrupted) =
                dataset::measure_until(&space, &opts, &out, stop, |done, total| {
                    if let Some(b) = &bar {
                        b.set_length(total as u64);
                        b.set_position(done as u64);
                        return;
                    }
                    let first = *first.get_or_insert(done);
                    let step = (total / 10).max(1);
                    if done > first && (done / step > said || done == total) {
                        said = done / step;
                        eprintln!(
                            "measured {done}/{total} architectures ({})",
                            vitnas::train::progress::elapsed_eta(
                                started,
                                done - first,
                                total - first
                            )
                        );
                    }
                })?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if interrupted {
                eprintln!(
                    "interrupted after {n} architectures measured now (every row written is \
                     whole): continue with the same command, `vitnas latency measure {} --n {} \
                     --batch {} --threads {} --seed {} --warmup {} --runs {}{} --out {}`",
                    a.space.display(),
                    a.n,
                    a.batch,
                    a.threads,
                    a.seed,
                    a.warmup,
                    a.runs,
                    a.seq_len
                        .map(|l| format!(" --seq-len {l}"))
                        .unwrap_or_default(),
                    a.out.display()
                );
                return Err(super::Exit(super::train::EXIT_INTERRUPTED).into());
            }
            let m = latency::Machine::current(a.threads);
            let noise = dataset::read(&out)?.repeat_noise;
            let warnings = fit::fit_warnings(0.0, noise);
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "out": a.out, "measured_now": n, "seconds": started.elapsed().as_secs_f64(),
                    "space": space.name, "batch": a.batch, "cpu": m.cpu, "simd": m.simd,
                    "gemm_avx512": m.gemm_avx512, "threads": a.threads,
                    "repeat_noise": noise, "warnings": warnings,
                }))?
            );
        }
        LatencyCmd::Fit(a) => {
            let out = rundir::check_output_file(&a.out, &[&a.csv], a.force, false)?;
            // Nothing is written until the fit is done (then atomically):
            // Ctrl-C stops at once.
            ctrlc::set_handler(|| {
                eprintln!("interrupted: nothing written");
                std::process::exit(130);
            })?;
            let stat = match a.statistic {
                StatArg::Mean => dataset::Statistic::Mean,
                StatArg::Median => dataset::Statistic::Median,
            };
            let d = dataset::read_with(&a.csv, stat)?;
            let origin = a.csv.display().to_string();
            let fitted = fit::fit(
                &d.space,
                &d.samples,
                a.holdout,
                a.seed,
                a.mlp_steps,
                &origin,
            )?;
            let p = Predictor::from_fit(&d, &fitted);
            let [lo, hi] = p.range_ms;
            p.save(&out)?;
            let kept_error = fitted.models.first().map_or(0.0, |(_, e)| e.mean_rel);
            let warnings = fit::fit_warnings(kept_error, d.repeat_noise);
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let report: Vec<serde_json::Value> = fitted
                .models
                .iter()
                .map(|(m, e)| {
                    serde_json::json!({"model": m.name(), "heldout_mean_rel_error": e.mean_rel,
                        "heldout_p95_rel_error": e.p95_rel, "heldout_rmse_ms": e.rmse_ms, "heldout_rows": e.n})
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "out": a.out, "kept": p.model.name(), "why": fitted.why,
                    "models": report, "rows": d.samples.len(), "latency_range_ms": [lo, hi],
                    "repeat_noise": d.repeat_noise, "target_rel_error": fit::TARGET_REL_ERROR,
                    "warnings": warnings,
                }))?
            );
        }
        LatencyCmd::Check { predictor, csv } => {
            let p = Predictor::load(&predictor)?;
            let d = dataset::read(&csv)?;
            for w in p.check(&predictor, &d.space, &d.header.machine)? {
                eprintln!("warning: {w}");
            }
            let (pred, truth) = p.on(&d);
            let e = latency::Errors::of(&pred, &truth);
            let bias = pred
                .iter()
                .zip(&truth)
                .map(|(p, t)| (p - t) / t)
                .sum::<f64>()
                / truth.len().max(1) as f64;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "rows": e.n, "mean_rel_error": e.mean_rel, "p95_rel_error": e.p95_rel,
                    "rmse_ms": e.rmse_ms, "mean_signed_rel_error": bias,
                    "recorded_heldout": p.error(),
                }))?
            );
        }
        LatencyCmd::Recalibrate {
            predictor,
            csv,
            out,
            force,
        } => {
            let write_to = rundir::check_output_file(&out, &[&predictor, &csv], force, false)?;
            let mut p = Predictor::load(&predictor)?;
            let d = dataset::read(&csv)?;
            for w in p.check(&predictor, &d.space, &d.header.machine)? {
                eprintln!("warning: {w}");
            }
            let r = p.recalibrate(&d, &csv)?.clone();
            p.save(&write_to)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "out": out, "scale": r.scale, "rows": r.rows,
                    "mean_rel_error_before": r.before.mean_rel, "mean_rel_error_after": r.after.mean_rel,
                    "p95_rel_error_before": r.before.p95_rel, "p95_rel_error_after": r.after.p95_rel,
                }))?
            );
        }
        LatencyCmd::ExportArchs(a) => {
            let space = load_space(&a.space, a.seq_len)?;
            let opts = export_archs::ExportOptions {
                n: a.n,
                batch: a.batch,
                seed: a.seed,
                protocol: Protocol::default(),
            };
            let started = std::time::Instant::now();
            let m = export_archs::export_archs(&space, &opts, &a.out)
                .with_context(|| format!("exporting architectures to {}", a.out.display()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "out": a.out, "files": m.archs.len(), "space": m.space_name,
                    "space_hash": m.space_hash, "batch": m.batch, "seed": m.seed,
                    "input_shape": m.input_shape,
                    "seconds": started.elapsed().as_secs_f64(),
                    "next": format!("python evaluate/ort_latency.py {} --threads 1 --out lat.csv", a.out.display()),
                }))?
            );
        }
        LatencyCmd::Predict { predictor, arch } => {
            let p = Predictor::load(&predictor)?;
            let space = p.space()?;
            let a = Arch::from_json_file(&arch)?;
            a.validate(&space)
                .with_context(|| format!("{} in {}", arch.display(), space.name))?;
            for w in p.check(
                &predictor,
                &space,
                &latency::Machine::current(p.machine.threads),
            )? {
                eprintln!("warning: {w}");
            }
            let ms = p.predict(&space, &a);
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "predicted_ms": ms, "batch": p.batch, "model": p.model.name(),
                    "heldout_mean_rel_error": p.error().map(|e| e.mean_rel),
                }))?
            );
        }
    }
    Ok(())
}

/// `path`'s space, checked to have every class count it needs, with a text
/// space's sequence length replaced by `seq_len` (`--seq-len`) where given.
fn load_space(path: &std::path::Path, seq_len: Option<usize>) -> anyhow::Result<Space> {
    let mut space = Space::from_file(path)?;
    space.require_classes(&path.display().to_string())?;
    if let Some(l) = seq_len {
        let t = space
            .text
            .as_mut()
            .context("--seq-len applies to text spaces only")?;
        t.seq_len = l;
        space.validate(&format!("{} with --seq-len {l}", path.display()))?;
    }
    Ok(space)
}

/// A progress bar over `n` architectures on a terminal's stderr; none
/// without a terminal (the caller then logs a line now and then).
pub(super) fn architectures_bar(n: usize) -> Option<indicatif::ProgressBar> {
    std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} architectures  ETA {eta}",
            )
            .expect("template"),
        );
        b
    })
}
