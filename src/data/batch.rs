//! Batching: bytes to normalised f32 tensors, with seeded random crop (zero
//! padding) and horizontal flip. Plain loops over a few hundred KB per batch:
//! far below the cost of one training step (see `vitnas bench data`).

use super::Dataset;
use crate::error::Result;
use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Light augmentation, configured per recipe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random crop after zero-padding every side by this many pixels (0: off).
    #[serde(default)]
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2.
    #[serde(default)]
    pub hflip: bool,
}

/// Per-channel normalisation `(x / 255 - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The order of the examples in epoch `epoch`: a permutation seeded by
/// `(seed, epoch)`, so a resumed run sees the same batches.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch as u64,
    ));
    idx
}

/// Images `[B, C, H, W]` (f32, normalised) and labels `[B]` (u32) of the
/// examples at `indices`; augmented when `aug` is given.
pub fn make_batch(
    ds: &Dataset,
    indices: &[usize],
    norm: &Normalize,
    aug: Option<(&Augment, &mut StdRng)>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    make_batch_part(ds, indices, 0..indices.len(), norm, aug, device)
}

/// The examples `part` (positions in `indices`) of the batch
/// [`make_batch`] makes of `indices`, with the same augmentation: every
/// example's augmentation is still drawn from `aug`'s RNG, in order, so the
/// RNG ends where it would after the whole batch (a rank's shard of a
/// data-parallel step).
pub fn make_batch_part(
    ds: &Dataset,
    indices: &[usize],
    part: std::ops::Range<usize>,
    norm: &Normalize,
    aug: Option<(&Augment, &mut StdRng)>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let mut out = vec![0f32; part.len() * c * h * w];
    let scale: Vec<f32> = norm.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = norm
        .mean
        .iter()
        .zip(&norm.std)
        .map(|(m, s)| -m / s)
        .collect();
    let mut aug = aug;
    for (b, &i) in indices.iter().enumerate() {
        let img = ds.image(i);
        let (mut dy, mut dx, mut flip) = (0isize, 0isize, false);
        if let Some((a, rng)) = aug.as_mut() {
            let p = a.crop_padding as i64;
            if p > 0 {
                dy = rng.random_range(-p..=p) as isize;
                dx = rng.random_range(-p..=p) as isize;
            }
            flip = a.hflip && rng.random::<bool>();
        }
        if !part.contains(&b) {
            continue;
        }
        let b = b - part.start;
        for ch in 0..c {
            let src = &img[ch * h * w..(ch + 1) * h * w];
            let dst = &mut out[((b * c + ch) * h * w)..((b * c + ch + 1) * h * w)];
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    let v = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        src[sy as usize * w + sx as usize] as f32
                    } else {
                        0.0
                    };
                    dst[y * w + x] = v * scale[ch] + shift[ch];
                }
            }
        }
    }
    let images = Tensor::from_vec(out, (part.len(), c, h, w), device)?;
    let labels: Vec<u32> = indices[part.clone()]
        .iter()
        .map(|&i| ds.labels[i])
        .collect();
    let labels = Tensor::from_vec(labels, part.len(), device)?;
    Ok((images, labels))
}
