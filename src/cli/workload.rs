//! The benchmark workload, timed; results as JSON values. The supernet of
//! the fmnist-tiny space (search_spaces/fmnist-tiny.toml) on random
//! 28×28×1 inputs: sandwich training steps (largest, smallest and 2 random
//! subnets; cross-entropy on the largest, KL to its detached output for the
//! others; AdamW) at batch 64, and inference of the largest subnet at batch 1
//! and 256, on 2 threads. A PyTorch implementation of the same workload
//! (an AutoFormer-style entangled supernet) is the peer evaluate/bench.sh
//! compares with.
//!
//! The text workload: the entangled BERT supernet of the bert-minilm space
//! (search_spaces/bert-minilm.toml, largest = all-MiniLM-L6-v2's shape)
//! with mean pooling, on random token ids in 1000..vocab with the last
//! quarter of every second sequence padded: sandwich steps at batch
//! 32 × 128 tokens, inference of the largest subnet at batch 1 and 64 ×
//! 128; the PyTorch peer is an entangled BERT supernet written directly in
//! PyTorch.
//!
//! Both run at other sizes too ([`load_space`]): any image or text space
//! file, a ViT's image and patch size (e.g. autoformer-tiny at 224², patch
//! 16: 197 tokens), a text space's sequence length. Every timed mode adds
//! the same fields ([`sized`]): the space and its tokens, time per step
//! (one training step or one inference batch), throughput, the model FLOPs
//! of one step and the process's peak resident memory so far, the figures
//! evaluate/scaling.py sets against the PyTorch peers under
//! evaluate/peers/.

use candle_core::{Device, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;
use vitnas::data::batch::{make_batch, Augment, Normalize};
use vitnas::data::Dataset;
use vitnas::engine::{self, Input, Model, Weights};
use vitnas::error::{Error, Result};
use vitnas::models::names::Family;
use vitnas::space::{flops, Arch, DepthLayers, Modality, Pooling, Space};
use vitnas::train::build_supernet;
use vitnas::train::loss::{cross_entropy, Distill, Kl};
use vitnas::train::optim::AdamW;
use vitnas::train::recipe::OptimizerConfig;
use vitnas::train::sampler::{Plan, Sampler, Sandwich};
use vitnas::train::step::{accumulate, accumulate_on_engine, Backend};

/// Reference gemm peak of the 2-core AVX2 benchmark machines, in GFLOP/s
/// (the gemm crate's AVX2 kernels, f32, 2 threads); [`gemm_peak`] measures
/// the machine at hand, which may have wider vectors.
pub const GEMM_PEAK_GFLOPS: f64 = 170.0;

/// Measured f32 gemm GFLOP/s of the gemm crate (the kernels vitnas runs) on
/// `n × n` square matrices with `threads` threads: the best of 5 runs.
pub fn gemm_peak(n: usize, threads: usize) -> f64 {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut best = 0f64;
    for _ in 0..6 {
        let t0 = Instant::now();
        // SAFETY: all three matrices are n × n, row-major.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        };
        best = best.max(2.0 * (n * n * n) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The benchmark space, search_spaces/fmnist-tiny.toml (the PyTorch peer's
/// space too).
pub fn space() -> Space {
    Space::from_toml_str(
        include_str!("../../search_spaces/fmnist-tiny.toml"),
        "search_spaces/fmnist-tiny.toml",
    )
    .expect("the bundled space is valid")
}

/// The sizes that replace a benchmark space's own: the image geometry of a
/// ViT space, the sequence length of a text space.
#[derive(Debug, Clone, Copy, Default)]
pub struct Geometry {
    pub image_size: Option<usize>,
    pub patch_size: Option<usize>,
    pub seq_len: Option<usize>,
}

/// The space a benchmark runs on: `file`'s (or `default`, a bundled
/// benchmark space, when there is none) with `g`'s sizes in place of its
/// own, validated again with them (the error names the file, the flags and
/// the field). Image sizes on a text space, or a sequence length on an
/// image space, are refused.
pub fn load_space(file: Option<&Path>, default: fn() -> Space, g: Geometry) -> Result<Space> {
    let (mut space, origin) = match file {
        Some(p) => (Space::from_file(p)?, p.display().to_string()),
        None => {
            let s = default();
            let origin = format!("the bundled {} space", s.name);
            (s, origin)
        }
    };
    let refuse = |field: &str, message: &str| Error::InvalidSpace {
        file: origin.clone(),
        field: field.into(),
        message: message.into(),
    };
    let mut flags = Vec::new();
    match (space.input.as_mut(), space.text.as_mut()) {
        (Some(i), _) => {
            if g.seq_len.is_some() {
                return Err(refuse(
                    "input",
                    "--seq-len is for text spaces; this space reads images (--image-size, --patch-size)",
                ));
            }
            if let Some(v) = g.image_size {
                i.image_size = v;
                flags.push(format!("--image-size {v}"));
            }
            if let Some(v) = g.patch_size {
                i.patch_size = v;
                flags.push(format!("--patch-size {v}"));
            }
        }
        (None, Some(t)) => {
            if g.image_size.is_some() || g.patch_size.is_some() {
                return Err(refuse(
                    "text",
                    "--image-size and --patch-size are for image spaces; this space reads text (--seq-len)",
                ));
            }
            if let Some(v) = g.seq_len {
                t.seq_len = v;
                flags.push(format!("--seq-len {v}"));
            }
        }
        (None, None) => {}
    }
    if !flags.is_empty() {
        space.validate(&format!("{origin} with {}", flags.join(" ")))?;
    }
    space.require_classes(&origin)?;
    Ok(space)
}

/// The process's peak resident memory so far in MiB: `VmHWM` of
/// /proc/self/status (what the peers' `ru_maxrss` reports); `None` where
/// the kernel does not report it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The fields every sized benchmark mode reports, added to `out`: the
/// space, its tokens per input (and image geometry or sequence length),
/// milliseconds per step (a training step or an inference batch),
/// throughput (images or sequences per second), the model FLOPs of one
/// step (2 per multiply-add of the full model as [`flops`] counts it,
/// padding included; training ≈ 3 × forward) and the peak resident memory.
pub fn sized(
    mut out: Value,
    space: &Space,
    ms_per_step: f64,
    throughput: f64,
    gflop_per_step: f64,
) -> Value {
    let (unit, geometry) = match space.modality() {
        Modality::Image(i) => (
            "images_per_s",
            json!({"image_size": i.image_size, "patch_size": i.patch_size}),
        ),
        Modality::Text(t) => ("sequences_per_s", json!({"seq": t.seq_len})),
    };
    if let (Some(o), Value::Object(g)) = (out.as_object_mut(), geometry) {
        o.insert("space".into(), space.name.clone().into());
        o.insert("tokens".into(), space.seq_len().into());
        o.extend(g);
        o.insert("ms_per_step".into(), ms_per_step.into());
        o.insert("throughput".into(), throughput.into());
        o.insert("throughput_unit".into(), unit.into());
        o.insert("model_gflop_per_step".into(), gflop_per_step.into());
        o.insert("peak_rss_mib".into(), peak_rss_mib().into());
    }
    out
}

/// `batch` random images of `space`'s geometry, uniform in [0, 1), and
/// labels in its classes.
fn random_batch(space: &Space, batch: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let i = space.image();
    let (c, s) = (i.channels, i.image_size);
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..batch * c * s * s).map(|_| rng.random()).collect();
    let y: Vec<u32> = (0..batch)
        .map(|_| rng.random_range(0..i.num_classes as u32))
        .collect();
    Ok((
        Tensor::from_vec(x, (batch, c, s, s), &Device::Cpu)?,
        Tensor::from_vec(y, batch, &Device::Cpu)?,
    ))
}

/// Sandwich training steps on `space`'s supernet (an image space), after
/// `warmup` untimed ones; `candle_autograd` runs them through candle's
/// autograd (the fused kernels) instead of the engine, for before/after.
pub fn train(
    space: &Space,
    steps: usize,
    warmup: usize,
    batch: usize,
    threads: usize,
    candle_autograd: bool,
    recompute: engine::Recompute,
) -> Result<Value> {
    let backend = if candle_autograd {
        Backend::Autograd
    } else {
        Backend::Engine
    };
    let (net, _vm, params) = build_supernet(space, 0, Default::default())?;
    let cfg = OptimizerConfig {
        lr: 5e-4,
        lr_reference_batch: None,
        min_lr: 5e-4,
        warmup_lr: 5e-4,
        warmup_epochs: 0.0,
        weight_decay: 0.05,
        betas: [0.9, 0.999],
        eps: 1e-8,
        clip_grad_norm: None,
    };
    let mut opt = AdamW::new(&params.names, &params.sizes(), cfg);
    let (x, y) = random_batch(space, batch, 0)?;
    let sampler = Sandwich { num_random: 2 };
    let mut rng = StdRng::seed_from_u64(0);
    let mut grads = params.zero_grads();
    let (mut macs, mut executed, mut redone) = (0u64, 0u64, 0u64);
    let ecfg = vitnas::engine::Config::from_space(space);
    // As the trainer does it: the engine keeps the weights flat between
    // steps and AdamW updates them in place.
    let mut flat = match backend {
        Backend::Engine => params.engine_weights(&net)?,
        _ => None,
    };
    let mut step = |plan: &Plan, grads: &mut Vec<Vec<f32>>| -> Result<()> {
        grads.iter_mut().for_each(|g| g.fill(0.0));
        match &mut flat {
            Some((w, c)) => {
                accumulate_on_engine(w, c, plan, &x, &y, 0.0, Some(&Kl), recompute, grads)?;
                opt.step_flat(&mut w.data, grads, 5e-4);
                w.refresh_transposed();
            }
            None => {
                accumulate(&net, &params, plan, &x, &y, 0.0, Some(&Kl), grads, backend)?;
                opt.step(&params.vars, grads, 5e-4)?;
            }
        }
        Ok(())
    };
    for s in 0..warmup {
        step(&sampler.plan(space, s, &mut rng), &mut grads)?;
    }
    let t0 = Instant::now();
    for s in 0..steps {
        let plan = sampler.plan(space, s, &mut rng);
        for a in &plan.archs {
            let full = flops(space, a);
            let m = match backend {
                Backend::Engine => vitnas::engine::forward_macs(&ecfg, a, space.seq_len()),
                _ => full,
            };
            macs += full;
            executed += m;
            redone += recomputed_macs(recompute, a, m);
        }
        step(&plan, &mut grads)?;
    }
    let dt = t0.elapsed().as_secs_f64();
    // Training FLOPs ≈ 3 × forward (forward + two backward matmuls), 2 FLOPs per MAC.
    let gflops = 6.0 * executed as f64 * batch as f64 / dt / 1e9;
    let hardware = gflops + 2.0 * redone as f64 * batch as f64 / dt / 1e9;
    let peak = gemm_peak(1024, threads);
    let out = json!({
        "mode": "train", "batch": batch, "threads": threads,
        "path": if backend == Backend::Engine { "engine" } else { "candle-autograd" },
        "recompute": recompute,
        "steps_per_s": steps as f64 / dt, "images_per_s": (steps * batch) as f64 / dt,
        "gflops": gflops,
        "full_model_gflops": 6.0 * macs as f64 * batch as f64 / dt / 1e9,
        "gemm_peak_gflops": peak,
        "gemm_peak_fraction": gflops / peak,
        "hardware_gflops": hardware,
        "hardware_peak_fraction": hardware / peak,
        "reference_peak_fraction": gflops / GEMM_PEAK_GFLOPS,
    });
    Ok(sized(
        out,
        space,
        1e3 * dt / steps as f64,
        (steps * batch) as f64 / dt,
        6.0 * macs as f64 * batch as f64 / steps as f64 / 1e9,
    ))
}

/// Multiply-adds that `recompute` runs a second time in one step of `arch`
/// whose forward executes `forward` of them: every block's forward but the
/// last's under [`engine::Recompute::Blocks`] (the blocks' share, about
/// `(depth − 1) / depth`; stem and head are not run again). Added to
/// "hardware_gflops", the rate the machine ran at, next to "gflops", the
/// rate of the step's own work.
fn recomputed_macs(recompute: engine::Recompute, arch: &Arch, forward: u64) -> u64 {
    match recompute {
        engine::Recompute::None => 0,
        engine::Recompute::Blocks => {
            forward * arch.depth.saturating_sub(1) as u64 / arch.depth.max(1) as u64
        }
    }
}

/// Inference of `space`'s largest subnet (an image space) extracted as a
/// static model, by the engine or (`candle`) by the candle model's
/// forward, timed over `iters` batches after `warmup` untimed ones.
///
/// `onnx`: also writes the benchmarked subnet there as an ONNX file (for
/// evaluate/onnx_bench.py: ONNX Runtime on the same subnet).
pub fn infer(
    space: &Space,
    batch: usize,
    iters: usize,
    warmup: usize,
    threads: usize,
    candle: bool,
    onnx: Option<&Path>,
) -> Result<Value> {
    let (net, _vm, _) = build_supernet(space, 0, Default::default())?;
    let arch = space.largest();
    let vit = net.extract(&arch)?;
    if let Some(path) = onnx {
        let bytes = vitnas::models::onnx::vit_to_onnx(&vit, &arch, &[], None)?;
        vitnas::train::rundir::write_atomic(path, &bytes)?;
    }
    let model = vitnas::engine::Model::from_vit(&vit)?;
    let (x, _) = random_batch(space, batch, 0)?;
    let run = |x: &Tensor| -> Result<Tensor> {
        if candle {
            Ok(vit.forward(x)?)
        } else {
            model.logits(x)
        }
    };
    for _ in 0..warmup {
        run(&x)?;
    }
    let t0 = Instant::now();
    for _ in 0..iters {
        run(&x)?;
    }
    let dt = t0.elapsed().as_secs_f64();
    let executed = if candle {
        flops(space, &arch)
    } else {
        vitnas::engine::forward_macs(&model.cfg, &arch, space.seq_len())
    };
    let gflops = 2.0 * executed as f64 * (batch * iters) as f64 / dt / 1e9;
    let out = json!({
        "mode": "infer", "batch": batch, "threads": threads,
        "path": if candle { "candle" } else { "engine" },
        "ms_per_batch": 1e3 * dt / iters as f64, "images_per_s": (batch * iters) as f64 / dt,
        "gflops": gflops,
        "full_model_gflops": 2.0 * flops(space, &arch) as f64 * (batch * iters) as f64 / dt / 1e9,
    });
    Ok(sized(
        out,
        space,
        1e3 * dt / iters as f64,
        (batch * iters) as f64 / dt,
        2.0 * flops(space, &arch) as f64 * batch as f64 / 1e9,
    ))
}

/// Search evaluations on `space`: `archs` uniformly sampled subnets, each
/// scored with inherited weights on `images` random inputs, images in
/// batches of 500 (what `vitnas search` does per candidate with
/// `--val-subset images`), token sequences in batches of 64 by the engine
/// on the supernet's weights (as text search scores a candidate). One step
/// is one candidate's evaluation.
pub fn search(space: &Space, archs: usize, images: usize, threads: usize) -> Result<Value> {
    let mut rng = StdRng::seed_from_u64(0);
    let candidates: Vec<_> = (0..archs).map(|_| space.sample(&mut rng)).collect();
    let (per_batch, t0) = if space.is_text() {
        let w = bert_supernet(space, 0)?;
        let cfg = engine::Config::from_space(space);
        let seq = space.text_input().seq_len;
        let n = images.clamp(1, 64);
        let (ids, mask, _) = token_batch(space, n, seq, 1);
        let ids = Tensor::from_vec(ids, (n, seq), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (n, seq), &Device::Cpu)?;
        engine::token_logits(&w, &cfg, &space.largest(), &ids, &mask)?;
        let t0 = Instant::now();
        for arch in &candidates {
            for _ in 0..images.div_ceil(n) {
                engine::token_logits(&w, &cfg, arch, &ids, &mask)?.argmax(1)?;
            }
        }
        (n, t0)
    } else {
        let (net, _vm, _) = build_supernet(space, 0, Default::default())?;
        let (x, _) = random_batch(space, images.clamp(1, 500), 1)?;
        net.infer(&x, &space.largest())?;
        let t0 = Instant::now();
        for arch in &candidates {
            // as `vitnas search` does: the subnet prepared once, then its batches
            let model = vitnas::engine::Model::from_vit(&net.extract(arch)?)?;
            for _ in 0..images.div_ceil(x.dim(0)?) {
                model.logits(&x)?.argmax(1)?;
            }
        }
        (x.dim(0)?, t0)
    };
    let dt = t0.elapsed().as_secs_f64();
    let per_arch = images.div_ceil(per_batch) * per_batch;
    let macs: u64 = candidates.iter().map(|a| flops(space, a)).sum::<u64>() * per_arch as u64;
    let gflops = 2.0 * macs as f64 / dt / 1e9;
    let inputs_per_s = (archs * per_arch) as f64 / dt;
    let out = json!({
        "mode": "search", "archs": archs, "images_per_arch": per_arch, "threads": threads,
        "evals_per_s": archs as f64 / dt, "images_per_s": inputs_per_s,
        "gflops": gflops,
    });
    let archs = archs.max(1) as f64;
    Ok(sized(
        out,
        space,
        1e3 * dt / archs,
        inputs_per_s,
        2.0 * macs as f64 / archs / 1e9,
    ))
}

pub fn data(batch: usize, iters: usize) -> Result<Value> {
    let n = 4096;
    let mut rng = StdRng::seed_from_u64(0);
    let ds = Dataset {
        images: (0..n * 784).map(|_| rng.random()).collect(),
        labels: (0..n).map(|_| rng.random_range(0..10)).collect(),
        channels: 1,
        height: 28,
        width: 28,
        num_classes: 10,
        source: "random".into(),
    };
    let norm = Normalize {
        mean: vec![0.286],
        std: vec![0.353],
    };
    let aug = Augment {
        crop_padding: 2,
        hflip: true,
    };
    let t0 = Instant::now();
    for k in 0..iters {
        let idx: Vec<usize> = (0..batch).map(|i| (k * batch + i) % n).collect();
        make_batch(&ds, &idx, &norm, Some((&aug, &mut rng)), &Device::Cpu)?;
    }
    let dt = t0.elapsed().as_secs_f64();
    Ok(
        json!({"mode": "data", "batch": batch, "ms_per_batch": 1e3 * dt / iters as f64, "images_per_s": (batch * iters) as f64 / dt}),
    )
}

/// The gradient all-reduce of a data-parallel step on the ranks of `c`:
/// the flat gradient buffer of `space`'s supernet (one `Vec<f32>` per
/// parameter, as the trainer holds it) summed over the ranks `iters` times
/// per bucketing, mean milliseconds per all-reduce; and the mean time of a
/// one-value all-reduce (the per-message latency).
pub fn allreduce(
    space: &std::path::Path,
    iters: usize,
    c: &dyn vitnas::dist::Collective,
) -> Result<Value> {
    use vitnas::dist::all_reduce_buffers;
    let space = Space::from_file(space)?;
    let (_net, _vm, params) = build_supernet(&space, 0, Default::default())?;
    let mut grads = params.zero_grads();
    let mut rng = StdRng::seed_from_u64(c.rank() as u64);
    for g in &mut grads {
        g.iter_mut().for_each(|x| *x = rng.random::<f32>() - 0.5);
    }
    let elems: usize = grads.iter().map(Vec::len).sum();
    let iters = iters.max(1);
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        c.barrier()?;
        let t = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        c.barrier()?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / iters as f64)
    };
    let mut rows = Vec::new();
    for (name, bucket) in [
        ("one bucket", 0usize),
        ("1M values", 1 << 20),
        ("256K values", 1 << 18),
        ("64K values", 1 << 16),
        ("32K values", 1 << 15),
        ("16K values", 1 << 14),
        ("4K values", 1 << 12),
    ] {
        let ms = time(&mut || all_reduce_buffers(c, &mut grads, bucket))?;
        rows.push(json!({"bucketing": name, "bucket_values": bucket, "ms": ms}));
    }
    let ms = time(&mut || {
        for g in grads.iter_mut() {
            c.all_reduce_sum(g)?;
        }
        Ok(())
    })?;
    rows.push(json!({"bucketing": "one call per tensor", "calls": grads.len(), "ms": ms}));
    let mut one = [1f32];
    let latency_us = time(&mut || c.all_reduce_sum(&mut one))? * 1e3;
    Ok(json!({
        "mode": "allreduce", "space": space.name, "ranks": c.size(),
        "tensors": grads.len(), "values": elems, "mb": elems as f64 * 4.0 / 1e6,
        "iters": iters, "rows": rows, "one_value_us": latency_us,
    }))
}

/// The text benchmark space: search_spaces/bert-minilm.toml with mean
/// pooling and prefix depth (the PyTorch peer's head and layers).
pub fn bert_space() -> Space {
    let mut space = Space::from_toml_str(
        include_str!("../../search_spaces/bert-minilm.toml"),
        "search_spaces/bert-minilm.toml",
    )
    .expect("the bundled space is valid");
    if let Some(t) = space.text.as_mut() {
        t.pooling = Pooling::Mean;
    }
    space.supernet.depth_layers = DepthLayers::Prefix;
    space
}

/// The entangled BERT supernet of a text space as engine weights: every
/// tensor at its largest shape under the `Family::Bert` names, seeded
/// BERT-style initialisation (normal(0, 0.02) matrices and tables, zero
/// biases, unit norms).
pub fn bert_supernet(space: &Space, seed: u64) -> Result<Weights> {
    Weights::from_tensors(&bert_supernet_tensors(space, seed)?)
}

/// The tensors of [`bert_supernet`] under their names (at the largest
/// shapes: also the largest subnet's static BERT).
pub fn bert_supernet_tensors(space: &Space, seed: u64) -> Result<Vec<(String, Tensor)>> {
    use rand_distr::{Distribution, Normal};
    let (f, s, t) = (Family::Bert, Family::Bert.stem(), space.text_input());
    let (e, q, m) = (
        space.supernet.embed_dim,
        space.supernet_qkv_width(),
        space.supernet_mlp_width(),
    );
    let mut shapes = vec![
        (
            format!("{}.weight", s.word_embeddings),
            vec![t.vocab_size, e],
        ),
        (
            format!("{}.weight", s.position_embeddings),
            vec![t.max_position_embeddings, e],
        ),
        (
            format!("{}.weight", s.token_type_embeddings),
            vec![t.type_vocab_size, e],
        ),
    ];
    let norm = |p: &str| {
        [
            (format!("{p}.weight"), vec![e]),
            (format!("{p}.bias"), vec![e]),
        ]
    };
    let lin = |p: &str, out: usize, inp: usize| {
        [
            (format!("{p}.weight"), vec![out, inp]),
            (format!("{p}.bias"), vec![out]),
        ]
    };
    shapes.extend(norm(&s.embeddings_norm));
    for l in 0..space.supernet.depth {
        let n = f.layer(l);
        for p in [&n.query, &n.key, &n.value] {
            shapes.extend(lin(p, q, e));
        }
        shapes.extend(lin(&n.attention_output, e, q));
        shapes.extend(norm(&n.norm1));
        shapes.extend(lin(&n.intermediate, m, e));
        shapes.extend(lin(&n.output, e, m));
        shapes.extend(norm(&n.norm2));
    }
    if t.pooling == Pooling::Pooler {
        shapes.extend(lin(&s.pooler, e, e));
    }
    shapes.extend(lin(&s.classifier, t.num_classes, e));
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 0.02).expect("a valid normal");
    shapes
        .into_iter()
        .map(|(name, dims)| {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = match (dims.len(), name.contains("LayerNorm.weight")) {
                (1, true) => vec![1.0; n],
                (1, false) => vec![0.0; n],
                _ => (0..n).map(|_| normal.sample(&mut rng)).collect(),
            };
            Ok((name, Tensor::from_vec(v, dims, &Device::Cpu)?))
        })
        .collect::<Result<Vec<_>>>()
}

/// The peer's batch: `batch × seq` ids uniform in 1000..vocab, the last
/// quarter of every second sequence padded, labels in 0..classes.
fn token_batch(
    space: &Space,
    batch: usize,
    seq: usize,
    seed: u64,
) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let t = space.text_input();
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = (0..batch * seq)
        .map(|_| rng.random_range(1000..t.vocab_size as u32))
        .collect();
    let mask = (0..batch * seq)
        .map(|i| u32::from(!((i / seq) % 2 == 1 && i % seq >= seq - seq / 4)))
        .collect();
    let labels = (0..batch)
        .map(|_| rng.random_range(0..t.num_classes as u32))
        .collect();
    (ids, mask, labels)
}

/// Multiply-adds the engine executes for `arch` on the batch: each
/// sequence at its unmasked length.
fn executed_macs(cfg: &engine::Config, arch: &Arch, mask: &[u32], seq: usize) -> u64 {
    mask.chunks(seq)
        .map(|m| engine::forward_macs(cfg, arch, m.iter().filter(|&&v| v != 0).count()))
        .sum()
}

/// Sandwich training steps on the supernet of text space `space` (the
/// peer's is [`bert_space`]: mean pooling) at its `text.seq_len` tokens,
/// after `warmup` untimed ones, as the peer runs them: largest (cross-entropy), smallest and 2 random subnets
/// (KL to the largest's detached output), AdamW; the engine computes the
/// forward and backward passes, candle the losses and their gradients
/// with respect to the logits (as `train::step`'s engine path).
pub fn bert_train(
    space: &Space,
    steps: usize,
    warmup: usize,
    batch: usize,
    threads: usize,
    recompute: engine::Recompute,
) -> Result<Value> {
    let seq = space.text_input().seq_len;
    let mut w = bert_supernet(space, 0)?;
    let cfg = engine::Config::from_space(space);
    let opt_cfg = OptimizerConfig {
        lr: 5e-5,
        lr_reference_batch: None,
        min_lr: 5e-5,
        warmup_lr: 5e-5,
        warmup_epochs: 0.0,
        weight_decay: 0.01,
        betas: [0.9, 0.999],
        eps: 1e-8,
        clip_grad_norm: None,
    };
    let sizes: Vec<usize> = w.data.iter().map(|d| d.len()).collect();
    let mut opt = AdamW::new(&w.names, &sizes, opt_cfg);
    let (ids, mask, labels) = token_batch(space, batch, seq, 0);
    let y = Tensor::from_vec(labels, batch, &Device::Cpu)?;
    let input = Input::Tokens {
        ids: &ids,
        mask: &mask,
        t: seq,
    };
    engine::check_input(&cfg, &input)?;
    let chunks = engine::split(batch);
    let mut grads = w.zero_grads();
    let mut extra: Vec<Vec<Vec<f32>>> = (1..chunks.len()).map(|_| w.zero_grads()).collect();
    let sampler = Sandwich { num_random: 2 };
    let mut rng = StdRng::seed_from_u64(0);
    let mut step = |w: &mut Weights, plan: &Plan| -> Result<()> {
        grads.iter_mut().for_each(|g| g.fill(0.0));
        let mut teacher: Option<Tensor> = None;
        for arch in &plan.archs {
            w.check(&cfg, arch)?;
            let (logits, tapes) =
                engine::forward_chunks_train(w, &cfg, arch, input, &chunks, false, recompute);
            let logits = Var::from_vec(logits, (batch, cfg.classes), &Device::Cpu)?;
            let l = logits.as_tensor();
            let loss = match &teacher {
                Some(t) => Kl.loss(l, t)?.0,
                None => cross_entropy(l, &y, 0.0)?,
            };
            if teacher.is_none() && plan.teacher_first {
                teacher = Some(l.detach());
            }
            let g = loss.backward()?;
            let dl = g.get(l).expect("the loss depends on the logits");
            let dl = dl.flatten_all()?.to_vec1::<f32>()?;
            engine::backward_chunks(w, &cfg, arch, &tapes, &dl, &chunks, &mut grads, &mut extra);
        }
        for e in &mut extra {
            for (g, e) in grads.iter_mut().zip(e.iter_mut()) {
                g.iter_mut().zip(e.iter()).for_each(|(g, e)| *g += e);
                e.fill(0.0);
            }
        }
        opt.step_flat(&mut w.data, &grads, 5e-5);
        w.refresh_transposed();
        Ok(())
    };
    for s in 0..warmup {
        step(&mut w, &sampler.plan(space, s, &mut rng))?;
    }
    let (mut executed, mut macs, mut redone) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    for s in 0..steps {
        let plan = sampler.plan(space, s, &mut rng);
        macs += plan.archs.iter().map(|a| flops(space, a)).sum::<u64>();
        for a in &plan.archs {
            let m = executed_macs(&cfg, a, &mask, seq);
            executed += m;
            redone += recomputed_macs(recompute, a, m);
        }
        step(&mut w, &plan)?;
    }
    let dt = t0.elapsed().as_secs_f64();
    let gflops = 6.0 * executed as f64 / dt / 1e9;
    let hardware = gflops + 2.0 * redone as f64 / dt / 1e9;
    let peak = gemm_peak(1024, threads);
    let out = json!({
        "mode": "bert-train", "batch": batch, "seq": seq, "threads": threads,
        "recompute": recompute,
        "steps_per_s": steps as f64 / dt, "sequences_per_s": (steps * batch) as f64 / dt,
        "ms_per_step": 1e3 * dt / steps as f64,
        // training ≈ 3 × forward, 2 FLOPs per multiply-add
        "gflops": gflops,
        "gemm_peak_gflops": peak,
        "gemm_peak_fraction": gflops / peak,
        "hardware_gflops": hardware,
        "hardware_peak_fraction": hardware / peak,
    });
    Ok(sized(
        out,
        space,
        1e3 * dt / steps as f64,
        (steps * batch) as f64 / dt,
        6.0 * macs as f64 * batch as f64 / steps as f64 / 1e9,
    ))
}

/// Inference of the largest subnet of text space `space`'s supernet (the
/// peer's is [`bert_space`]: mean pooling) on `batch ×` its `text.seq_len`
/// tokens, by the engine's [`Model`], timed over `iters` batches after
/// `warmup` untimed ones.
///
/// `onnx`: also writes that subnet (all-MiniLM-L6-v2's shape, mean pooling,
/// the same seeded weights) there as an ONNX file.
pub fn bert_infer(
    space: &Space,
    batch: usize,
    iters: usize,
    warmup: usize,
    threads: usize,
    onnx: Option<&Path>,
) -> Result<Value> {
    let seq = space.text_input().seq_len;
    if let Some(path) = onnx {
        let t = space.text_input();
        let s = &space.supernet;
        let config = vitnas::models::bert::BertConfig {
            vocab_size: t.vocab_size,
            hidden_size: s.embed_dim,
            head_dim: s.head_dim,
            num_heads: vec![s.num_heads; s.depth],
            intermediate_sizes: vec![space.supernet_mlp_width(); s.depth],
            max_position_embeddings: t.max_position_embeddings,
            type_vocab_size: t.type_vocab_size,
            layer_norm_eps: s.layer_norm_eps,
            num_labels: Some(t.num_classes),
            pooling: t.pooling,
        };
        let vb = candle_nn::VarBuilder::from_tensors(
            bert_supernet_tensors(space, 0)?.into_iter().collect(),
            candle_core::DType::F32,
            &Device::Cpu,
        );
        let bert = vitnas::models::bert::Bert::load(&config, vb, "bert")?;
        let bytes = vitnas::models::onnx::bert_to_onnx(&bert, &space.largest(), &[], None)?;
        vitnas::train::rundir::write_atomic(path, &bytes)?;
    }
    let model = Model {
        weights: bert_supernet(space, 0)?,
        cfg: engine::Config::from_space(space),
        arch: space.largest(),
    };
    model.weights.check(&model.cfg, &model.arch)?;
    let (ids, mask, _) = token_batch(space, batch, seq, 0);
    let macs = executed_macs(&model.cfg, &model.arch, &mask, seq);
    let ids = Tensor::from_vec(ids, (batch, seq), &Device::Cpu)?;
    let mask_t = Tensor::from_vec(mask, (batch, seq), &Device::Cpu)?;
    for _ in 0..warmup {
        model.token_logits(&ids, &mask_t)?;
    }
    let t0 = Instant::now();
    for _ in 0..iters {
        model.token_logits(&ids, &mask_t)?;
    }
    let dt = t0.elapsed().as_secs_f64();
    let out = json!({
        "mode": "bert-infer", "batch": batch, "seq": seq, "threads": threads,
        "ms_per_batch": 1e3 * dt / iters as f64,
        "sequences_per_s": (batch * iters) as f64 / dt,
        "gflops": 2.0 * macs as f64 * iters as f64 / dt / 1e9,
    });
    Ok(sized(
        out,
        space,
        1e3 * dt / iters as f64,
        (batch * iters) as f64 / dt,
        2.0 * flops(space, &model.arch) as f64 * batch as f64 / 1e9,
    ))
}
