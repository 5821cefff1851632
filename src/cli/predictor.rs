//! `vitnas predictor fit | predict`: accuracy predictors learnt from a
//! trained supernet's inherited validation accuracies (AttentiveNAS), for
//! screening search candidates and for the attentive sampler.

use anyhow::Context;
use candle_core::Device;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use vitnas::search::{ImageJudge, Judge, TextJudge};
use vitnas::train::predictor::{self, dataset, fit, AccuracyPredictor};
use vitnas::train::rundir;
use vitnas::train::text::TextRun;
use vitnas::train::TrainedRun;
use vitnas::Arch;

#[derive(Debug, Subcommand)]
pub enum PredictorCmd {
    /// Score architectures of a trained run by inherited validation
    /// accuracy into a CSV (resumable: run it again to continue), or take
    /// an existing CSV (--csv without a run); fit a small MLP and
    /// gradient-boosted trees; keep the one with the better held-out
    /// Kendall τ.
    Fit(FitArgs),
    /// Predicted accuracy of one architecture (JSON file).
    Predict {
        /// A predictor file from `vitnas predictor fit`.
        predictor: PathBuf,
        /// Architecture JSON (`vitnas arch sample`, `search`'s arch-N.json).
        arch: PathBuf,
        /// A training run: refuse the predictor unless fitted on its supernet.
        #[arg(long)]
        run: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct FitArgs {
    /// A training run directory whose supernet scores the architectures.
    /// Without it, --csv must name an existing dataset.
    #[arg(required_unless_present = "csv")]
    run: Option<PathBuf>,
    /// The dataset CSV: written (or continued) when a run is given
    /// [default: the --out file with extension .csv], read otherwise.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Output predictor file (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing file at --out.
    #[arg(long)]
    force: bool,
    /// Architectures to score (the largest, the smallest, then uniform).
    #[arg(long, default_value_t = 300)]
    n: usize,
    /// Validation examples each architecture is scored on [default: the
    /// recipe's search.val_subset, the images or texts a search scores on].
    #[arg(long)]
    val_subset: Option<usize>,
    /// Seeds the architectures, the held-out split and the MLP.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of the rows held out to compare the models.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Full-batch Adam steps of the MLP.
    #[arg(long, default_value_t = 2000)]
    mlp_steps: usize,
}

pub fn run(cmd: PredictorCmd) -> anyhow::Result<()> {
    match cmd {
        PredictorCmd::Fit(a) => fit_cmd(a),
        PredictorCmd::Predict {
            predictor,
            arch,
            run,
        } => {
            let p = AccuracyPredictor::load(&predictor)?;
            let space = p.space()?;
            if let Some(run) = &run {
                p.check_supernet(&predictor, &supernet_file(run))?;
            }
            let a = Arch::from_json_file(&arch)?;
            a.validate(&space)
                .with_context(|| format!("{} in {}", arch.display(), space.name))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "predicted_accuracy": p.predict(&space, &a), "model": p.model.name(),
                    "heldout": p.scores(),
                }))?
            );
            Ok(())
        }
    }
}

fn supernet_file(run: &Path) -> PathBuf {
    vitnas::train::run_paths(run).1
}

fn fit_cmd(a: FitArgs) -> anyhow::Result<()> {
    let csv = a.csv.clone().unwrap_or_else(|| a.out.with_extension("csv"));
    let out = rundir::check_output_file(&a.out, &[&csv], a.force, false)?;
    if let Some(run) = &a.run {
        collect(run, &csv, &a)?;
    }
    // Nothing is written until the fit is done (then atomically).
    let d = dataset::read(&csv)?;
    let opts = fit::Options {
        holdout: a.holdout,
        seed: a.seed,
        mlp_steps: a.mlp_steps,
    };
    let (p, fitted) = dataset::fit(&d, &opts, &csv)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    p.save(&out)?;
    let models: Vec<serde_json::Value> = fitted
        .models
        .iter()
        .map(|(m, s)| {
            serde_json::json!({"model": m.name(), "heldout_kendall_tau": s.kendall_tau,
                "heldout_rmse": s.rmse, "heldout_rows": s.n})
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "out": a.out, "csv": csv, "kept": p.model.name(), "why": p.chosen_because,
            "models": models, "rows": d.rows.len(), "space": p.space_name,
            "supernet_hash": p.supernet_hash, "accuracy_range": p.fitted.accuracy_range,
        }))?
    );
    Ok(())
}

/// Scores (or continues scoring) the architectures of `a` with the
/// supernet of `run` into `csv`, on the engine `eval --supernet` and the
/// search's judge use.
fn collect(run: &Path, csv: &Path, a: &FitArgs) -> anyhow::Result<()> {
    let csv = rundir::check_output_file(csv, &[], false, true)?;
    if let Some(dir) = csv.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let _lock = rundir::RunLock::acquire_file(&csv)?;
    let supernet_hash = predictor::supernet_hash(&supernet_file(run))?;
    let (image, text);
    let (space, search_cfg, val_img, val_txt);
    let judge: Box<dyn Judge + '_> = if TextRun::is_text_run(run) {
        text = TextRun::load(run)?;
        val_txt = text.validation()?;
        (space, search_cfg) = (&text.space, &text.recipe.search);
        Box::new(TextJudge {
            run: &text,
            val: &val_txt,
        })
    } else {
        image = TrainedRun::load(run)?;
        val_img = image.validation()?;
        (space, search_cfg) = (&image.space, &image.recipe.search);
        Box::new(ImageJudge {
            net: &image.net,
            val: &val_img.0,
            norm: &val_img.1,
            device: Device::Cpu,
        })
    };
    let images = a
        .val_subset
        .unwrap_or(search_cfg.val_subset)
        .min(judge.examples());
    let batch = search_cfg.eval_batch_size;
    let header = dataset::Header::new(space, &supernet_hash, a.seed, a.n, images);
    let stop = super::stop_flag()?;
    let bar = super::latency::architectures_bar(a.n);
    let started = std::time::Instant::now();
    let (scored, interrupted) = dataset::collect(
        space,
        &header,
        &csv,
        stop,
        |arch| {
            let r = judge.score(arch, 0..images, batch)?;
            Ok((r.accuracy, r.loss))
        },
        |done, total| {
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "scored {scored} architectures on {images} validation examples in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        csv.display()
    );
    if interrupted {
        eprintln!(
            "interrupted (every row written is whole): continue with the same command, \
             `vitnas predictor fit {} --n {} --seed {} --val-subset {images} --csv {} --out {}`",
            run.display(),
            a.n,
            a.seed,
            csv.display(),
            a.out.display()
        );
        return Err(super::Exit(super::train::EXIT_INTERRUPTED).into());
    }
    Ok(())
}
