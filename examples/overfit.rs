use candle_core::{Device, Tensor};
use vitnas::train::{build_supernet, optim::AdamW, recipe::OptimizerConfig, sampler::Plan, step::accumulate};
use vitnas::data::{self, Split, batch::{make_batch, Normalize}};
fn main() -> vitnas::Result<()> {
    let space = vitnas::bench::space();
    let (net, _vm, params) = build_supernet(&space, 0)?;
    let cfg = OptimizerConfig { lr: 1e-3, lr_reference_batch: None, min_lr: 0.0, warmup_lr: 0.0, warmup_epochs: 0.0, weight_decay: 0.0, betas: [0.9, 0.999], eps: 1e-8, clip_grad_norm: None };
    let mut opt = AdamW::new(&params.names, &params.sizes(), cfg);
    let ds = data::load(data::Format::Idx, std::path::Path::new("data/fashion-mnist-sample"), Split::Train, 28, 1)?;
    let norm = Normalize { mean: vec![0.286], std: vec![0.353] };
    let plan = Plan { archs: vec![space.largest()], teacher_first: false };
    let mut grads = params.zero_grads();
    for s in 0..60 {
        let idx: Vec<usize> = (s * 64..(s + 1) * 64).collect();
        let (x, y) = make_batch(&ds, &idx, &norm, None, &Device::Cpu)?;
        grads.iter_mut().for_each(|g| g.fill(0.0));
        let l = accumulate(&net, &params, &plan, &x, &y, 0.0, None, &mut grads)?;
        let n = opt.step(&params.vars, &grads, 1e-3)?;
        if s % 5 == 0 { println!("step {s} loss {:.4} gnorm {n:.3}", l.losses[0]); }
    }
    let _ = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?;
    Ok(())
}
