//! IDX files (MNIST, Fashion-MNIST), gzip-compressed or raw.

use super::{Dataset, Split};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        source_name: path.display().to_string(),
        message: message.into(),
    }
}

/// Reads a file, gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes: returns its dimensions and data.
pub fn parse_idx_u8(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(bad(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let nd = bytes[3] as usize;
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(bad(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        return Err(bad(
            path,
            format!(
                "IDX dims {dims:?} need {n} bytes of data, found {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// The first existing of `name` and `name.gz` in `dir`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for cand in [dir.join(format!("{name}.gz")), dir.join(name)] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Err(bad(dir, format!("neither {name} nor {name}.gz found")))
}

/// Loads `train-*` or `t10k-*` images and labels from an IDX directory.
pub fn load_split(dir: &Path, split: Split) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (idims, images) = parse_idx_u8(&ip, &read_maybe_gz(&ip)?)?;
    let (ldims, labels) = parse_idx_u8(&lp, &read_maybe_gz(&lp)?)?;
    if idims.len() != 3 {
        return Err(bad(
            &ip,
            format!("expected 3 dims [N, H, W], found {idims:?}"),
        ));
    }
    if ldims.len() != 1 || ldims[0] != idims[0] {
        return Err(bad(
            &lp,
            format!(
                "{ldims:?} labels for {} images in {}",
                idims[0],
                ip.display()
            ),
        ));
    }
    let labels: Vec<u32> = labels.into_iter().map(u32::from).collect();
    let num_classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    Ok(Dataset {
        images,
        labels,
        channels: 1,
        height: idims[1],
        width: idims[2],
        num_classes,
        source: ip.display().to_string(),
    })
}
