//! `vitnas evaluate rank <experiment.toml | supernet recipe>`.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use vitnas::rank::{self, Budget, RankConfig};
use vitnas::train::recipe::Recipe;

#[derive(Debug, Subcommand)]
pub enum EvaluateCmd {
    /// Rank correlation between inherited and standalone accuracy over K
    /// architectures stratified by FLOPs (resumable: reruns skip what is done).
    Rank(RankArgs),
}

#[derive(Debug, Args)]
pub struct RankArgs {
    /// An experiment file (evaluate/rank-*.toml), or a supernet recipe
    /// (then: K = 16, 1 standalone epoch, output runs/rank-<recipe name>).
    config: PathBuf,
    /// Number of architectures.
    #[arg(long)]
    k: Option<usize>,
    /// Standalone training epochs per architecture.
    #[arg(long)]
    epochs: Option<usize>,
    /// Seed of the architecture sample.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// The supernet's training recipe (overrides the experiment's
    /// `supernet`): compare several supernets against one reference set.
    #[arg(long)]
    supernet: Option<PathBuf>,
    /// Reuse the standalone results of these earlier experiments' output
    /// directories instead of training (repeatable; overrides `reference`).
    #[arg(long)]
    reference: Vec<PathBuf>,
}

fn load(path: &PathBuf) -> anyhow::Result<RankConfig> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let is_recipe = text
        .parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("sampler"));
    if !is_recipe {
        return Ok(RankConfig::from_file(path)?);
    }
    let r = Recipe::from_file(path)?;
    Ok(RankConfig {
        output_dir: PathBuf::from(format!("runs/rank-{}", r.name)),
        name: r.name,
        supernet: path.clone(),
        k: 16,
        seed: 0,
        top_k: 5,
        standalone: Budget {
            epochs: 1,
            lr: None,
            warmup_epochs: None,
            batch_size: None,
            seed: None,
            train_limit: None,
        },
        reference: Vec::new(),
    })
}

pub fn run(c: EvaluateCmd, collective: &dyn vitnas::dist::Collective) -> anyhow::Result<()> {
    let EvaluateCmd::Rank(a) = c;
    let mut cfg = load(&a.config)?;
    if let Some(k) = a.k {
        cfg.k = k;
    }
    if let Some(e) = a.epochs {
        cfg.standalone.epochs = e;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(d) = a.output_dir {
        cfg.output_dir = d;
    }
    if let Some(sn) = a.supernet {
        cfg.supernet = sn;
    }
    if !a.reference.is_empty() {
        cfg.reference = a.reference;
    }
    cfg.validate(&format!(
        "{} (with command-line overrides)",
        a.config.display()
    ))?;
    let stop = super::stop_flag()?;
    let report = rank::run(
        &cfg,
        &rank::Options {
            stop,
            progress: true,
            collective,
        },
    )?;
    if !vitnas::dist::is_root(collective) {
        return Ok(());
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "output_dir": cfg.output_dir,
            "complete": report.complete,
            "test": report.test,
            "val": report.val,
            "noise_ceiling_test": report.noise_ceiling_test,
        }))?
    );
    if !report.complete {
        eprintln!(
            "incomplete: run the same command again to continue ({} written so far)",
            cfg.output_dir.join(rank::REPORT_FILE).display()
        );
    }
    Ok(())
}
