//! The `vitnas` binary's command line: one file per subcommand, each parsing
//! its arguments and calling the library, plus what only the binary needs
//! (the allocator, thread settings, the benchmark workload).

pub mod allocator;
mod arch;
mod bench;
mod embed;
mod eval;
mod evaluate;
mod export;
mod finetune;
mod latency;
mod predictor;
mod retrain;
mod search;
mod space;
pub mod threads;
mod train;
mod workload;
pub mod world;

use clap::{Parser, Subcommand};
use std::sync::atomic::{AtomicBool, Ordering};

/// vitnas: train once, sample many. Transformer architecture search with
/// weight-sharing supernets.
#[derive(Debug, Parser)]
#[command(name = "vitnas", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect search-space files (search_spaces/*.toml).
    #[command(subcommand)]
    Space(space::SpaceCmd),
    /// Sample, validate and measure architectures.
    #[command(subcommand)]
    Arch(arch::ArchCmd),
    /// Train a supernet from a recipe (recipes/*.toml), or resume a run.
    Train(train::TrainArgs),
    /// Train one architecture alone as a plain static model (ViT or BERT),
    /// from scratch or from a trained supernet's weights (--inherit).
    Retrain(retrain::RetrainArgs),
    /// Continue training an exported subnet (ViT or BERT) from its
    /// inherited weights.
    Finetune(finetune::FinetuneArgs),
    /// Accuracy, loss, macro-F1, per-class scores and confusion counts of a
    /// subnet of a trained supernet or of an exported model (ViT on
    /// images, BERT on text).
    Eval(eval::EvalArgs),
    /// Measure the method: rank correlation of inherited vs standalone accuracy.
    #[command(subcommand)]
    Evaluate(evaluate::EvaluateCmd),
    /// Sentence embeddings and cosine similarities of a Hugging Face BERT.
    Embed(embed::EmbedArgs),
    /// Export a subnet as a standalone model directory (safetensors + config).
    Export(export::ExportArgs),
    /// Search a trained supernet (ViT or BERT) for the best architectures under constraints.
    Search(search::SearchArgs),
    /// Latency datasets and learned latency predictors (HAT) for hardware-aware search.
    #[command(subcommand)]
    Latency(latency::LatencyCmd),
    /// Accuracy predictors learnt from a trained supernet (AttentiveNAS), for search and sampling.
    #[command(subcommand)]
    Predictor(predictor::PredictorCmd),
    /// Time the benchmark workloads (fmnist-tiny ViT supernet; bert-minilm text supernet; random inputs; see evaluate/studies/2026-11-28-engine-benchmarks.md).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

/// Ends the process with this exit code once the command has cleaned up
/// (e.g. [`train::EXIT_INTERRUPTED`]); carried as an error so that every
/// rank of an MPI job finalizes MPI first.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit with status {}", self.0)
    }
}

impl std::error::Error for Exit {}

static STOP: AtomicBool = AtomicBool::new(false);

/// The flag Ctrl-C sets: training finishes its step, checkpoints and returns.
/// A second Ctrl-C exits at once.
pub fn stop_flag() -> anyhow::Result<&'static AtomicBool> {
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint of the current step");
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing the current step, then writing a checkpoint (Ctrl-C again to abort)");
    })?;
    Ok(&STOP)
}

pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the command among the ranks of `world` (one, unless started by
/// `mpirun`; then only the commands that share their work over ranks run).
pub fn run(cli: Cli, world: &world::World) -> anyhow::Result<()> {
    let c = world.collective();
    let shared = matches!(
        cli.command,
        Command::Train(_)
            | Command::Retrain(_)
            | Command::Finetune(_)
            | Command::Search(_)
            | Command::Evaluate(
                evaluate::EvaluateCmd::Rank(_) | evaluate::EvaluateCmd::Reference(_)
            )
            | Command::Bench(bench::BenchCmd::Allreduce { .. })
    );
    if c.size() > 1 && !shared {
        anyhow::bail!(
            "this command runs in one process: start it without mpirun (under mpirun: train, \
             retrain and finetune train data-parallel, search, evaluate rank and evaluate \
             reference share their evaluations and trainings, bench allreduce times the gradient all-reduce)"
        );
    }
    // `bench` and `latency measure` size the pool from their --threads.
    let own_threads = matches!(
        cli.command,
        Command::Bench(_) | Command::Latency(latency::LatencyCmd::Measure(_))
    );
    if own_threads {
        // Checked even where --threads sizes the pool: rayon would read it
        // for any pool built without a count.
        threads::env_threads()?;
    } else {
        threads::init_default_pool()?;
    }
    match cli.command {
        Command::Space(c) => space::run(c),
        Command::Arch(c) => arch::run(c),
        Command::Train(a) => train::run(a, c),
        Command::Retrain(a) => retrain::run(a, c),
        Command::Finetune(a) => finetune::run(a, c),
        Command::Eval(a) => eval::run(a),
        Command::Bench(b) => bench::run(b, c),
        Command::Latency(c) => latency::run(c),
        Command::Predictor(c) => predictor::run(c),
        Command::Search(a) => search::run(a, c),
        Command::Export(a) => export::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Evaluate(e) => evaluate::run(e, c),
    }
}
