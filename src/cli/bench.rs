//! `vitnas bench train|infer|search|data|bert-train|bert-infer`: the benchmark workload
//! ([`vitnas::bench`]), printed as one JSON line, the form the PyTorch peer
//! of evaluate/bench.sh prints too.
//!
//! `train`, `infer` and `search` run on the benchmark space unless
//! `--space` names another (an image or a text space: a text space runs
//! the text workload), at its own sizes unless `--image-size`,
//! `--patch-size` or `--seq-len` replace them ([`SizeArgs`]).

use super::workload as bench;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use vitnas::dist::Collective;
use vitnas::engine::Recompute;
use vitnas::space::Space;

/// The space a benchmark runs on and the sizes that replace its own.
#[derive(Debug, Clone, Args)]
pub struct SizeArgs {
    /// A search space file, image or text (default: the benchmark space,
    /// search_spaces/fmnist-tiny.toml); a text space runs the text
    /// workload (random token ids, every second sequence's last quarter
    /// padded).
    #[arg(long)]
    space: Option<PathBuf>,
    /// Image side in pixels, in place of the image space's own
    /// (tokens = (image size / patch size)² + 1).
    #[arg(long)]
    image_size: Option<usize>,
    /// Patch side in pixels, in place of the image space's own.
    #[arg(long)]
    patch_size: Option<usize>,
    /// Tokens per sequence, in place of the text space's `text.seq_len`.
    #[arg(long)]
    seq_len: Option<usize>,
}

impl SizeArgs {
    fn space(&self) -> vitnas::error::Result<Space> {
        bench::load_space(
            self.space.as_deref(),
            bench::space,
            bench::Geometry {
                image_size: self.image_size,
                patch_size: self.patch_size,
                seq_len: self.seq_len,
            },
        )
    }
}

/// The bert-minilm space with mean pooling (the text peer's) unless
/// `space` names another text space, at `seq` tokens.
fn text_space(space: Option<&std::path::Path>, seq: usize) -> vitnas::error::Result<Space> {
    bench::load_space(
        space,
        bench::bert_space,
        bench::Geometry {
            seq_len: Some(seq),
            ..Default::default()
        },
    )
}

/// Refuses an option the text workload has no counterpart for.
fn image_only(flag: &str, space: &Space) -> anyhow::Result<()> {
    anyhow::bail!(
        "{flag} is for image spaces; {} reads text (its workload runs on the engine)",
        space.name
    )
}

/// [`Recompute`] on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RecomputeArg {
    None,
    Blocks,
}

impl From<RecomputeArg> for Recompute {
    fn from(r: RecomputeArg) -> Self {
        match r {
            RecomputeArg::None => Recompute::None,
            RecomputeArg::Blocks => Recompute::Blocks,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Sandwich training steps (largest, smallest, 2 random; CE + KL; AdamW).
    Train {
        #[command(flatten)]
        size: SizeArgs,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Untimed steps first (default 3; 2 on a text space).
        #[arg(long)]
        warmup: Option<usize>,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Run the steps through candle's autograd (fused kernels) instead
        /// of the engine: the "before" of
        /// `evaluate/studies/2026-11-28-engine-benchmarks.md`.
        #[arg(long)]
        candle_autograd: bool,
        /// What the engine's forward keeps of each block for the backward:
        /// `none` (every block's activations) or `blocks` (each block's
        /// input; its forward runs again in the backward), as a recipe's
        /// `[train] recompute`.
        #[arg(long, value_enum, default_value = "none")]
        recompute: RecomputeArg,
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
        #[command(flatten)]
        size: SizeArgs,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        iters: usize,
        /// Untimed batches first (default 10; 5 on a text space).
        #[arg(long)]
        warmup: Option<usize>,
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
        #[command(flatten)]
        size: SizeArgs,
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
        #[arg(long, visible_alias = "seq-len", default_value_t = 128)]
        seq: usize,
        /// Another text space (default: bert-minilm with mean pooling).
        #[arg(long)]
        space: Option<PathBuf>,
        /// Untimed steps first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// As `train --recompute`.
        #[arg(long, value_enum, default_value = "none")]
        recompute: RecomputeArg,
    },
    /// Text: inference of the largest subnet of that supernet.
    BertInfer {
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, visible_alias = "seq-len", default_value_t = 128)]
        seq: usize,
        /// Another text space (default: bert-minilm with mean pooling).
        #[arg(long)]
        space: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        iters: usize,
        /// Untimed batches first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
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
            size,
            steps,
            warmup,
            batch,
            threads,
            candle_autograd,
            recompute,
        } => {
            let space = size.space()?;
            super::threads::init_pool(threads)?;
            let recompute = recompute.into();
            if space.is_text() {
                if candle_autograd {
                    image_only("--candle-autograd", &space)?;
                }
                let warmup = warmup.unwrap_or(2);
                bench::bert_train(&space, steps, warmup, batch, threads, recompute)?
            } else {
                if candle_autograd && recompute != Recompute::None {
                    anyhow::bail!("--recompute is the engine's; candle's autograd keeps its graph");
                }
                let warmup = warmup.unwrap_or(3);
                bench::train(
                    &space,
                    steps,
                    warmup,
                    batch,
                    threads,
                    candle_autograd,
                    recompute,
                )?
            }
        }
        BenchCmd::Gemm { n, threads } => {
            super::threads::init_pool(threads)?;
            serde_json::json!({"mode": "gemm", "n": n, "threads": threads,
                "gflops": bench::gemm_peak(n, threads)})
        }
        BenchCmd::Infer {
            size,
            batch,
            iters,
            warmup,
            threads,
            candle,
            onnx,
        } => {
            let space = size.space()?;
            super::threads::init_pool(threads)?;
            let onnx = onnx.as_deref();
            if space.is_text() {
                if candle {
                    image_only("--candle", &space)?;
                }
                let warmup = warmup.unwrap_or(5);
                bench::bert_infer(&space, batch, iters, warmup, threads, onnx)?
            } else {
                let warmup = warmup.unwrap_or(10);
                bench::infer(&space, batch, iters, warmup, threads, candle, onnx)?
            }
        }
        BenchCmd::Search {
            size,
            archs,
            images,
            threads,
        } => {
            let space = size.space()?;
            super::threads::init_pool(threads)?;
            bench::search(&space, archs, images, threads)?
        }
        BenchCmd::BertTrain {
            steps,
            batch,
            seq,
            space,
            warmup,
            threads,
            recompute,
        } => {
            let space = text_space(space.as_deref(), seq)?;
            super::threads::init_pool(threads)?;
            bench::bert_train(&space, steps, warmup, batch, threads, recompute.into())?
        }
        BenchCmd::BertInfer {
            batch,
            seq,
            space,
            iters,
            warmup,
            threads,
            onnx,
        } => {
            let space = text_space(space.as_deref(), seq)?;
            super::threads::init_pool(threads)?;
            bench::bert_infer(&space, batch, iters, warmup, threads, onnx.as_deref())?
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
