//! `vitnas bench train|infer|search|data`: the benchmark workload of
//! ../shared/README.md, printed as one JSON line like the PyTorch peer's.

use clap::Subcommand;
use vitnas::bench;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Sandwich training steps (largest, smallest, 2 random; CE + KL; AdamW).
    Train {
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Inference of the largest subnet, extracted as a static model.
    Infer {
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        iters: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Search evaluations: random subnets scored with inherited weights.
    Search {
        #[arg(long, default_value_t = 20)]
        archs: usize,
        /// Images per architecture (as `vitnas search --val-subset`).
        #[arg(long, default_value_t = 2000)]
        images: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Batch assembly alone (bytes to normalised, augmented tensors).
    Data {
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        iters: usize,
    },
}

fn set_threads(n: usize) {
    // candle sizes its thread pool from RAYON_NUM_THREADS at first use.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    let out = match cmd {
        BenchCmd::Train {
            steps,
            batch,
            threads,
        } => {
            set_threads(threads);
            bench::train(steps, batch, threads)?
        }
        BenchCmd::Infer {
            batch,
            iters,
            threads,
        } => {
            set_threads(threads);
            bench::infer(batch, iters, threads)?
        }
        BenchCmd::Search {
            archs,
            images,
            threads,
        } => {
            set_threads(threads);
            bench::search(archs, images, threads)?
        }
        BenchCmd::Data { batch, iters } => bench::data(batch, iters)?,
    };
    println!("{out}");
    Ok(())
}
