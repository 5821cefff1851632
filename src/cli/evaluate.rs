//! `vitnas evaluate rank <experiment.toml | supernet recipe>`,
//! `vitnas evaluate reference <reference.toml>` and
//! `vitnas evaluate quality <reference>`.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use vitnas::rank::reference::ReferenceConfig;
use vitnas::rank::{self, Budget, RankConfig};
use vitnas::train::recipe::Recipe;

#[derive(Debug, Subcommand)]
pub enum EvaluateCmd {
    /// Rank correlation between inherited and standalone accuracy over K
    /// architectures stratified by FLOPs, for image or text supernets (a
    /// text subnet trained alone starts from the recipe's pretrained
    /// `init_from`: fine-tuned alone) (resumable: reruns skip what is done).
    Rank(RankArgs),
    /// Build (or continue) a search-quality reference set: architectures
    /// stratified by FLOPs and at equal-cost budgets, trained alone to
    /// convergence, with a second seed and a convergence check
    /// (evaluate/quality/*.toml; resumable, shares runs over MPI ranks).
    Reference(ReferenceArgs),
    /// Score rankers (FLOPs, params, zero-cost proxies, supernets' inherited
    /// accuracy) against a reference set with 95 % bootstrap intervals and
    /// paired comparisons with FLOPs; writes evaluate/results/search-quality.json.
    Quality(QualityArgs),
}

#[derive(Debug, Args)]
pub struct ReferenceArgs {
    /// The reference experiment (e.g. evaluate/quality/reference-fmnist-small.toml).
    config: PathBuf,
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Take only this share of the runs, `I/N` (0 ≤ I < N): N processes
    /// started with 0/N … N−1/N build one reference together in the same
    /// output directory (on one machine, or machines sharing it; without
    /// MPI). Rerun without it at the end to merge.
    #[arg(long, default_value = "0/1")]
    shard: rank::reference::Shard,
}

#[derive(Debug, Args)]
pub struct QualityArgs {
    /// The reference: its experiment file (reads `<output_dir>/reference.json`),
    /// its output directory, or a reference.json (e.g. the committed
    /// evaluate/results/quality/reference-fmnist-small.json).
    reference: PathBuf,
    /// A trained supernet run of the reference's space, scored by its
    /// inherited validation accuracy as ranker `supernet:<dir name>`
    /// (repeatable).
    #[arg(long)]
    supernet: Vec<PathBuf>,
    /// An accuracy predictor file (`vitnas predictor fit`) of the
    /// reference's space, scored as ranker `predictor:<file stem>`
    /// (repeatable).
    #[arg(long)]
    accuracy_predictor: Vec<PathBuf>,
    /// Zero-cost proxies to compute (repeatable) [default: all three].
    #[arg(long, value_enum)]
    proxy: Vec<rank::proxy::Proxy>,
    /// Compute no zero-cost proxy.
    #[arg(long, conflicts_with = "proxy")]
    no_proxies: bool,
    /// Images in the proxies' batch.
    #[arg(long, default_value_t = 64)]
    proxy_batch: usize,
    /// Seed of the proxies' batch and initialisation.
    #[arg(long, default_value_t = 0)]
    proxy_seed: u64,
    /// The summary to write; rankers it already holds for the same
    /// reference and that this invocation does not recompute are kept.
    #[arg(long, default_value = "evaluate/results/search-quality.json")]
    out: PathBuf,
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
    let a = match c {
        EvaluateCmd::Rank(a) => a,
        EvaluateCmd::Reference(a) => return reference(a, collective),
        EvaluateCmd::Quality(a) => return quality(a),
    };
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

fn reference(a: ReferenceArgs, collective: &dyn vitnas::dist::Collective) -> anyhow::Result<()> {
    let mut cfg = ReferenceConfig::from_file(&a.config)?;
    if let Some(d) = a.output_dir {
        cfg.output_dir = d;
    }
    let stop = super::stop_flag()?;
    let r = rank::reference::run(
        &cfg,
        &rank::Options {
            stop,
            progress: true,
            collective,
        },
        a.shard,
    )?;
    if !vitnas::dist::is_root(collective) {
        return Ok(());
    }
    let done: usize = r
        .entries
        .iter()
        .flat_map(|e| &e.runs)
        .filter(|r| r.test.is_some())
        .count();
    let all: usize = r.entries.iter().map(|e| e.runs.len()).sum();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "output_dir": cfg.output_dir,
            "runs_done": done,
            "runs": all,
            "complete": r.complete,
            "checks": r.checks,
        }))?
    );
    if !r.complete {
        eprintln!(
            "incomplete ({done} of {all} runs): run the same command again to continue ({} written so far)",
            cfg.output_dir.join(rank::reference::REFERENCE_FILE).display()
        );
    }
    Ok(())
}

fn quality(a: QualityArgs) -> anyhow::Result<()> {
    use rank::quality::{self, SearchQuality};
    let path = if a.reference.extension().is_some_and(|e| e == "toml") {
        ReferenceConfig::from_file(&a.reference)?.output_dir
    } else {
        a.reference.clone()
    };
    let reference = rank::reference::Reference::from_file(&path)?;
    // Judged where it resolves: never an input nor into a training run;
    // an existing file only when it is a summary this command merges into.
    let mut inputs: Vec<&std::path::Path> = vec![path.as_path()];
    inputs.extend(a.accuracy_predictor.iter().map(|p| p.as_path()));
    let merges = SearchQuality::from_file(&a.out).is_ok();
    let out = vitnas::train::rundir::check_output_file(&a.out, &inputs, false, merges)?;
    let truth = quality::Truth::of(&reference);
    anyhow::ensure!(
        truth.acc.len() >= 3,
        "{}: only {} ranked architectures have a standalone result (run `vitnas evaluate reference` further)",
        path.display(),
        truth.acc.len()
    );
    let mut rankers = quality::cost_rankers(&reference);
    let mut sources: Vec<(String, String)> = Vec::new();
    let proxies = match (a.no_proxies, a.proxy.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => rank::proxy::Proxy::ALL.to_vec(),
        (false, false) => a.proxy.clone(),
    };
    for p in proxies {
        let t = std::time::Instant::now();
        rankers.push(quality::proxy_ranker(
            &reference,
            p,
            a.proxy_batch,
            a.proxy_seed,
        )?);
        sources.push((
            p.name().into(),
            format!(
                "at initialisation, batch {} seed {} ({:.1} s for {} architectures)",
                a.proxy_batch,
                a.proxy_seed,
                t.elapsed().as_secs_f64(),
                truth.acc.len()
            ),
        ));
    }
    for dir in &a.supernet {
        let r = quality::supernet_ranker(&reference, dir)?;
        sources.push((
            r.name.clone(),
            format!("inherited validation accuracy of {}", dir.display()),
        ));
        rankers.push(r);
    }
    for file in &a.accuracy_predictor {
        let r = quality::predictor_ranker(&reference, file)?;
        sources.push((r.name.clone(), format!("predictions of {}", file.display())));
        rankers.push(r);
    }
    let mut metrics = quality::score(&truth, &rankers)?;
    for (name, src) in sources {
        if let Some(m) = metrics.get_mut(&name) {
            m.source = src;
        }
    }
    let command: String = std::iter::once("vitnas".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let mut summary = SearchQuality {
        reference: quality::summarize(
            &reference,
            vec![
                format!(
                    "vitnas evaluate reference {}",
                    reference_toml_hint(&reference)
                ),
                command,
            ],
        ),
        rankers: metrics,
    };
    // Keep the rankers of earlier invocations on the same reference.
    if let Ok(old) = SearchQuality::from_file(&out) {
        if old.reference.name == summary.reference.name && old.reference.k == summary.reference.k {
            for (name, m) in old.rankers {
                summary.rankers.entry(name).or_insert(m);
            }
            for c in old.reference.commands {
                if !summary.reference.commands.contains(&c) {
                    summary.reference.commands.push(c);
                }
            }
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    summary.save(&out)?;
    print!("{}", quality::table(&summary));
    eprintln!("written {}", out.display());
    Ok(())
}

/// The experiment file a reference was most likely made from.
fn reference_toml_hint(r: &rank::reference::Reference) -> String {
    format!("evaluate/quality/reference-{}.toml", r.config.name)
}
