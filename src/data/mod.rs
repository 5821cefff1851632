//! Datasets: 8-bit images in memory, read from IDX (MNIST / Fashion-MNIST),
//! CIFAR-10/100 binary, or an image folder; seeded splits; batching with
//! normalisation and light augmentation. Text classification data (JSON
//! lines or CSV, tokenized, padded per batch) is in [`text`], its
//! tokenizer in [`tokenizer`]. The row files of the latency and accuracy
//! datasets are read and appended by the crate-private `rows`.

pub mod batch;
pub mod cifar;
pub mod folder;
pub mod idx;
pub(crate) mod rows;
pub mod text;
pub mod tokenizer;

use crate::error::{Error, Result};
use crate::space::Space;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Images `[N, C, H, W]` as bytes, and their labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    /// Where it came from, for messages.
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// File formats vitnas reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// MNIST / Fashion-MNIST IDX files (`train-images-idx3-ubyte[.gz]`, ...).
    Idx,
    /// CIFAR-10 binary (`data_batch_{1..5}.bin`, `test_batch.bin`).
    Cifar10,
    /// CIFAR-100 binary (`train.bin`, `test.bin`), fine labels.
    Cifar100,
    /// `<root>/<split>/<class>/*.{png,jpg}`, resized to the space's image size.
    Folder,
    /// Text classification: `<root>/{train,test}.{jsonl,csv}[.gz]` with a
    /// text and a label field ([`text`]); read by the text trainer.
    Text,
}

/// Where Fashion-MNIST (the four IDX `.gz` files) is looked for when a
/// recipe names no path, in order: the directory in the environment variable
/// `FASHION_MNIST_DIR`; `data/fashion-mnist` under the working directory
/// (where `docs/data.md` puts the files downloaded from
/// <https://github.com/zalandoresearch/fashion-mnist>); where Debian's
/// `dataset-fashion-mnist` package installs them. An entry `$NAME` stands for
/// the directory in environment variable `NAME` (see [`resolve_dir`]).
pub const FASHION_MNIST_DIRS: &[&str] = &[
    "$FASHION_MNIST_DIR",
    "data/fashion-mnist",
    "/usr/share/datasets/fashion-mnist",
];

/// Resolves a data directory: the given path if any, else the first of
/// `candidates` that exists. A candidate `$NAME` is the value of environment
/// variable `NAME`: skipped when unset or empty, an error when set to
/// something that is not a directory (a variable set on purpose does not
/// silently fall through to a default). The error lists every place looked
/// at.
pub fn resolve_dir(path: Option<&Path>, candidates: &[&str]) -> Result<PathBuf> {
    if let Some(p) = path {
        if p.is_dir() {
            return Ok(p.to_path_buf());
        }
        if p.exists() {
            return Err(Error::Data {
                source_name: p.display().to_string(),
                message: "is a file, not a data directory: give the directory that holds the \
                          split files (e.g. train.jsonl and test.jsonl, or the IDX files)"
                    .into(),
            });
        }
        return Err(Error::io(
            p,
            std::io::Error::new(std::io::ErrorKind::NotFound, "data directory not found"),
        ));
    }
    let mut looked = Vec::with_capacity(candidates.len());
    for c in candidates {
        let Some(var) = c.strip_prefix('$') else {
            if Path::new(c).is_dir() {
                return Ok(PathBuf::from(c));
            }
            looked.push(c.to_string());
            continue;
        };
        match std::env::var_os(var).filter(|v| !v.is_empty()) {
            None => looked.push(format!("{c} (unset)")),
            Some(v) if Path::new(&v).is_dir() => return Ok(PathBuf::from(v)),
            Some(v) => {
                return Err(Error::Data {
                    source_name: format!("{c}={}", Path::new(&v).display()),
                    message: "not a directory (environment variable set but unusable)".into(),
                })
            }
        }
    }
    if looked.is_empty() {
        return Err(Error::Data {
            source_name: "data".into(),
            message: "no data directory given: set data.path in the recipe or pass --data <dir>"
                .into(),
        });
    }
    Err(Error::Data {
        source_name: "data".into(),
        message: format!(
            "no data path given and none of these exists: {}",
            looked.join(", ")
        ),
    })
}

/// Loads one split of a dataset in `format` from `dir`.
pub fn load(
    format: Format,
    dir: &Path,
    split: Split,
    image_size: usize,
    channels: usize,
) -> Result<Dataset> {
    match format {
        Format::Idx => idx::load_split(dir, split),
        Format::Cifar10 => cifar::load_split(dir, split, false),
        Format::Cifar100 => cifar::load_split(dir, split, true),
        Format::Folder => folder::load_split(dir, split, image_size, channels),
        Format::Text => Err(Error::Data {
            source_name: dir.display().to_string(),
            message: "text data is not images: a text space and recipe read it".into(),
        }),
    }
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The examples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            source: self.source.clone(),
            ..*self
        }
    }

    /// The first `n` examples (all if fewer).
    pub fn head(&self, n: usize) -> Dataset {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.subset(&idx)
    }

    /// A seeded split into `(train, validation)` with `val` examples held out.
    pub fn split_validation(&self, val: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        let (t, v) = self.validation_indices(val, seed)?;
        Ok((self.subset(&t), self.subset(&v)))
    }

    /// The indices `(train, validation)` of [`Dataset::split_validation`],
    /// each sorted.
    pub fn validation_indices(&self, val: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
        validation_indices(self.len(), val, seed, &self.source)
    }

    /// Checks that the images and labels fit a space's input.
    pub fn check_fits(&self, space: &Space) -> Result<()> {
        let i = &space.image();
        if self.channels != i.channels || self.height != i.image_size || self.width != i.image_size
        {
            return Err(Error::Data {
                source_name: self.source.clone(),
                message: format!(
                    "images are {}×{}×{} but space `{}` expects {}×{}×{}",
                    self.height,
                    self.width,
                    self.channels,
                    space.name,
                    i.image_size,
                    i.image_size,
                    i.channels
                ),
            });
        }
        if let Some(&bad) = self.labels.iter().find(|&&l| l as usize >= i.num_classes) {
            return Err(Error::Data {
                source_name: self.source.clone(),
                message: format!("label {bad} is out of range for {} classes", i.num_classes),
            });
        }
        Ok(())
    }

    /// Per-channel mean and standard deviation of the pixels in [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.channels;
        let hw = self.height * self.width;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for img in self.images.chunks(c * hw) {
            for ch in 0..c {
                for &p in &img[ch * hw..(ch + 1) * hw] {
                    let x = p as f64 / 255.0;
                    sum[ch] += x;
                    sq[ch] += x * x;
                }
            }
        }
        let n = (self.len() * hw).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - m * m).max(1e-12)).sqrt() as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }
}

/// The seeded split of `len` examples into sorted `(train, validation)`
/// indices with `val` held out, for image and text datasets alike; an
/// error naming `source` when nothing would be left to train on.
pub fn validation_indices(
    len: usize,
    val: usize,
    seed: u64,
    source: &str,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if val >= len {
        return Err(Error::Data {
            source_name: source.to_string(),
            message: format!("validation size {val} leaves no training data ({len} examples)"),
        });
    }
    let mut idx: Vec<usize> = (0..len).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x005e_ed0f_5a11));
    let (v, t) = idx.split_at(val);
    let (mut v, mut t) = (v.to_vec(), t.to_vec());
    v.sort_unstable();
    t.sort_unstable();
    Ok((t, v))
}
