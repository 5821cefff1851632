//! CIFAR-10 / CIFAR-100 binary format: fixed-size records of label byte(s)
//! followed by 3×32×32 pixels (R plane, G plane, B plane).

use super::{Dataset, Split};
use crate::error::{Error, Result};
use std::path::Path;

const PIXELS: usize = 3 * 32 * 32;

/// Parses the records of one binary file. CIFAR-100 records carry a coarse
/// then a fine label; the fine label is used.
pub fn parse(path: &Path, bytes: &[u8], cifar100: bool) -> Result<(Vec<u8>, Vec<u32>)> {
    let lab = if cifar100 { 2 } else { 1 };
    let rec = lab + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(Error::Data {
            source_name: path.display().to_string(),
            message: format!(
                "{} bytes is not a whole number of {rec}-byte CIFAR records",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / rec;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for r in bytes.chunks_exact(rec) {
        labels.push(r[lab - 1] as u32);
        images.extend_from_slice(&r[lab..]);
    }
    Ok((images, labels))
}

pub fn load_split(dir: &Path, split: Split, cifar100: bool) -> Result<Dataset> {
    let files: Vec<String> = match (cifar100, split) {
        (false, Split::Train) => (1..=5).map(|k| format!("data_batch_{k}.bin")).collect(),
        (false, Split::Test) => vec!["test_batch.bin".into()],
        (true, Split::Train) => vec!["train.bin".into()],
        (true, Split::Test) => vec!["test.bin".into()],
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        let p = dir.join(f);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let (i, l) = parse(&p, &bytes, cifar100)?;
        images.extend(i);
        labels.extend(l);
    }
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        num_classes: if cifar100 { 100 } else { 10 },
        source: dir.join(&files[0]).display().to_string(),
    })
}
