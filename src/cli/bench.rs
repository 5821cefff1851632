//! `vitnas bench train|infer|search|data|bert-train|bert-infer`: the benchmark workload
//! ([`vitnas::bench`]), printed as one JSON line, the form the PyTorch peer
//! of evaluate/bench.sh prints too.

use super::workload as bench;
use clap::Subcommand;
use std::path::PathBuf;
use vitnas::dist::Collective;

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
        /// Run the steps through candle's autograd (fused kernels) instead
        /// of the engine: the "before" of
        /// `evaluate/studies/2026-11-28-engine-benchmarks.md`.
        #[arg(long)]
        candle_autograd: bool,
    },
    /// Measured f32 gemm GFLOP/s (n × n × n) of the kernels vitnas uses.
    Gemm {
        #[arg(long, default_value_t = 1024)]
        n: usize,
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
        /// Run the candle model's forward instead of the engine.
        #[arg(long)]
        candle: bool,
        /// Also write the benchmarked subnet to this ONNX file (for
        /// evaluate/onnx_bench.py: ONNX Runtime on the same subnet).
        #[arg(long)]
        onnx: Option<PathBuf>,
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
    /// The gradient all-reduce of data-parallel training, under `mpirun`:
    /// the supernet's flat gradient buffer summed over the ranks, per
    /// bucketing (one bucket, one call per tensor, fixed bucket sizes), and
    /// the latency of a one-value all-reduce.
    Allreduce {
        /// The search space whose supernet's gradient is reduced.
        #[arg(long, default_value = "search_spaces/fmnist-tiny.toml")]
        space: PathBuf,
        #[arg(long, default_value_t = 50)]
        iters: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Text: sandwich training steps on the entangled BERT supernet of the
    /// bert-minilm space with mean pooling (largest, smallest, 2 random;
    /// CE + KL; AdamW), random ids with every second sequence padded.
    BertTrain {
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Text: inference of the largest subnet of that supernet.
    BertInfer {
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 100)]
        iters: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Also write the benchmarked subnet to this ONNX file.
        #[arg(long)]
        onnx: Option<PathBuf>,
    },
    /// Batch assembly alone (bytes to normalised, augmented tensors).
    Data {
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        iters: usize,
    },
}

pub fn run(cmd: BenchCmd, c: &dyn Collective) -> anyhow::Result<()> {
    let out = match cmd {
        BenchCmd::Train {
            steps,
            batch,
            threads,
            candle_autograd,
        } => {
            super::threads::init_pool(threads)?;
            bench::train(steps, batch, threads, candle_autograd)?
        }
        BenchCmd::Gemm { n, threads } => {
            super::threads::init_pool(threads)?;
            serde_json::json!({"mode": "gemm", "n": n, "threads": threads,
                "gflops": bench::gemm_peak(n, threads)})
        }
        BenchCmd::Infer {
            batch,
            iters,
            threads,
            candle,
            onnx,
        } => {
            super::threads::init_pool(threads)?;
            bench::infer(batch, iters, threads, candle, onnx.as_deref())?
        }
        BenchCmd::Search {
            archs,
            images,
            threads,
        } => {
            super::threads::init_pool(threads)?;
            bench::search(archs, images, threads)?
        }
        BenchCmd::BertTrain {
            steps,
            batch,
            seq,
            threads,
        } => {
            super::threads::init_pool(threads)?;
            bench::bert_train(steps, batch, seq, threads)?
        }
        BenchCmd::BertInfer {
            batch,
            seq,
            iters,
            threads,
            onnx,
        } => {
            super::threads::init_pool(threads)?;
            bench::bert_infer(batch, seq, iters, threads, onnx.as_deref())?
        }
        BenchCmd::Data { batch, iters } => bench::data(batch, iters)?,
        BenchCmd::Allreduce {
            space,
            iters,
            threads,
        } => {
            super::threads::init_pool(threads)?;
            let out = bench::allreduce(&space, iters, c)?;
            if !vitnas::dist::is_root(c) {
                return Ok(());
            }
            out
        }
    };
    let mut out = out;
    if let Some(o) = out.as_object_mut() {
        // What was measured: the vector-math level and whether gemm has its
        // AVX-512 kernels in this build.
        o.insert("simd".into(), vitnas::engine::simd::level().name().into());
        o.insert(
            "gemm_avx512".into(),
            vitnas::engine::simd::GEMM_AVX512.into(),
        );
    }
    println!("{out}");
    Ok(())
}
