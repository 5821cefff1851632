#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;
use vitnas::supernet::scaling::{ScalingConfig, Switch};
use vitnas::{init::seeded_var_builder, Space, Supernet};

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn space(name: &str) -> Space {
    Space::from_file(repo_path(&format!("search_spaces/{name}.toml"))).unwrap()
}

pub fn supernet(space: &Space, seed: u64) -> (Supernet, VarMap) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
    let net = Supernet::new(space, vb).unwrap();
    (net, varmap)
}

/// A seeded supernet with switchable scaling layers (`switch`), every
/// scale starting at `init`.
pub fn scaled_supernet(space: &Space, seed: u64, switch: Switch, init: f64) -> (Supernet, VarMap) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
    let scaling = ScalingConfig {
        enabled: true,
        switch,
        init,
    };
    let net = Supernet::with_scaling(space, Default::default(), &scaling, vb).unwrap();
    (net, varmap)
}

/// Every switch of the scaling layers.
pub const SWITCHES: [Switch; 3] = [Switch::Depth, Switch::Shared, Switch::LayerConfig];

/// Seeded uniform [0, 1) images `[b, C, H, W]` for a space.
pub fn images(space: &Space, b: usize, seed: u64) -> Tensor {
    let i = &space.image();
    let n = b * i.channels * i.image_size * i.image_size;
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    Tensor::from_vec(v, (b, i.channels, i.image_size, i.image_size), &Device::Cpu).unwrap()
}

/// Seeded uniform values in `[-scale, scale)` of the given shape.
pub fn uniform(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

/// Quickstart, small: 256 training images, batch 32 (8 steps an epoch),
/// 64 validation images, crop and flip augmentation, sandwich with one
/// random subnet, gradient clipping at 1, a checkpoint every 3 steps;
/// written to `out`.
pub fn small_quickstart(out: &std::path::Path) -> vitnas::train::recipe::Recipe {
    use vitnas::train::recipe::{Recipe, SamplerConfig};
    let text = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let mut r = Recipe::from_toml_str(&text, std::path::Path::new("quickstart.toml")).unwrap();
    r.space = repo_path("search_spaces/fmnist-tiny.toml");
    r.data.path = Some(repo_path("data/fashion-mnist-sample"));
    r.data.val_size = 64;
    r.data.train_limit = Some(256);
    r.data.augment.crop_padding = 2;
    r.data.augment.hflip = true;
    r.train.batch_size = 32;
    r.sampler = SamplerConfig::Sandwich { num_random: 1 };
    r.train.epochs = 2;
    r.train.checkpoint_every = 3;
    r.optimizer.clip_grad_norm = Some(1.0);
    r.output_dir = out.to_path_buf();
    r
}
