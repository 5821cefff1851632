//! One file per subcommand; each parses its arguments and calls the library.

mod arch;
mod bench;
mod eval;
mod export;
mod search;
mod space;
mod train;

use clap::{Parser, Subcommand};

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
    /// Accuracy and loss of an inherited subnet of a trained supernet.
    Eval(eval::EvalArgs),
    /// Export a subnet as a standalone model directory (safetensors + config).
    Export(export::ExportArgs),
    /// Search a trained supernet for the best architectures under constraints.
    Search(search::SearchArgs),
    /// Time the benchmark workload (compare with ../shared/bench/torch_reference.py).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
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

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Space(c) => space::run(c),
        Command::Arch(c) => arch::run(c),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(c) => bench::run(c),
        Command::Search(a) => search::run(a),
        Command::Export(a) => export::run(a),
    }
}
