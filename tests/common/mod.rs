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
