//! Accuracy datasets: architectures sampled with a seed, each scored by a
//! trained supernet (inherited weights on the first validation examples),
//! kept in a CSV.
//!
//! The file starts with `#` header lines: the format, the space's name and
//! hash and its whole TOML definition, the supernet's hash, the seed, the
//! count and the validation examples per score. Then one row per
//! architecture: `index,genes,params,flops,accuracy,loss` (`genes`
//! space-separated, [`Arch::to_genes`]). Rows are appended and flushed one
//! by one; a continued collection checks that the header matches, drops a
//! row cut short by a kill, and scores only the indices not in the file.

use super::space_hash;
use crate::data::rows;
use crate::error::{Error, Result};
use crate::space::{flops, params, Arch, Space};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::HashSet;
use std::path::Path;

pub const FORMAT: &str = "vitnas-accuracy-dataset/1";
const COLUMNS: &str = "index,genes,params,flops,accuracy,loss";

/// The error of `message` about the dataset file `path`.
fn error_in(path: &Path) -> impl Fn(String) -> Error + '_ {
    |message| Error::Predictor {
        path: path.into(),
        message,
    }
}

/// What a dataset is: the header of its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub space_name: String,
    pub space_hash: String,
    pub space_toml: String,
    /// [`super::supernet_hash`] of the supernet that scored the rows.
    pub supernet_hash: String,
    pub seed: u64,
    pub n: usize,
    /// Validation examples each row was scored on.
    pub val_images: usize,
}

impl Header {
    /// The header of a dataset of `space` scored by the supernet `supernet_hash`.
    pub fn new(space: &Space, supernet_hash: &str, seed: u64, n: usize, val_images: usize) -> Self {
        Header {
            space_name: space.name.clone(),
            space_hash: space_hash(space),
            space_toml: space.to_toml_string(),
            supernet_hash: supernet_hash.into(),
            seed,
            n,
            val_images,
        }
    }

    fn to_text(&self) -> String {
        let fields = format!(
            "# format: {FORMAT}\n# space: {}\n# space_hash: {}\n# supernet_hash: {}\n\
             # seed: {}\n# n: {}\n# val_images: {}\n",
            self.space_name,
            self.space_hash,
            self.supernet_hash,
            self.seed,
            self.n,
            self.val_images
        );
        rows::header_text(fields, &self.space_toml)
    }

    fn parse(text: &str, path: &Path) -> Result<Header> {
        let bad = error_in(path);
        let h = rows::Header::parse(
            text,
            FORMAT,
            "not an accuracy dataset (`vitnas predictor fit <run dir>` writes one)",
            &bad,
        )?;
        Ok(Header {
            space_name: h.get("space")?,
            space_hash: h.get("space_hash")?,
            space_toml: h.space_toml.clone(),
            supernet_hash: h.get("supernet_hash")?,
            seed: h.num("seed")?,
            n: h.num("n")? as usize,
            val_images: h.num("val_images")? as usize,
        })
    }
}

/// `n` distinct architectures of `space`, seeded: the largest and the
/// smallest, then uniform samples (the distribution a search's random
/// candidates come from). Fewer than `n` only if the space is smaller.
pub fn plan(space: &Space, n: usize, seed: u64) -> Vec<Arch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut candidates = [space.largest(), space.smallest()]
        .into_iter()
        .chain(std::iter::repeat_with(|| space.sample(&mut rng)))
        .take(n.saturating_mul(50).max(2));
    while out.len() < n {
        let Some(a) = candidates.next() else { break };
        if seen.insert(format!("{a:?}")) {
            out.push(a);
        }
    }
    out
}

/// Scores (or continues scoring) the [`plan`] of `header` into `out`, each
/// architecture by `score` (its accuracy and loss); `progress(done, total)`
/// after each; stops between two rows once `stop` is set. Returns the rows
/// scored now and whether it stopped early.
pub fn collect(
    space: &Space,
    header: &Header,
    out: &Path,
    stop: &std::sync::atomic::AtomicBool,
    mut score: impl FnMut(&Arch) -> Result<(f64, f64)>,
    progress: impl FnMut(usize, usize),
) -> Result<(usize, bool)> {
    if header.n == 0 || header.val_images == 0 {
        return Err(Error::InvalidConfig {
            file: "predictor fit".into(),
            field: "n / val_subset".into(),
            message: "must be at least 1".into(),
        });
    }
    let (done, mut file) = rows::start_or_resume(out, &header.to_text(), COLUMNS, |whole| {
        resume(out, whole, header)
    })?;
    let archs = plan(space, header.n, header.seed);
    rows::append_rows(
        (&mut file, out),
        &archs,
        &done,
        stop,
        progress,
        |i, arch| {
            let (accuracy, loss) = score(arch)?;
            let genes: Vec<String> = arch
                .to_genes(space)?
                .iter()
                .map(|g| g.to_string())
                .collect();
            Ok(format!(
                "{i},{},{},{},{accuracy},{loss}\n",
                genes.join(" "),
                params(space, arch),
                flops(space, arch)
            ))
        },
    )
}

/// Checks the whole lines `whole` of the existing file `path` against
/// `want` and returns its scored indices.
fn resume(path: &Path, whole: &str, want: &Header) -> Result<HashSet<usize>> {
    let (have, rows) = read_rows(whole, path)?;
    for (what, a, b) in [
        ("space", &have.space_hash, &want.space_hash),
        ("supernet", &have.supernet_hash, &want.supernet_hash),
    ] {
        if a != b {
            return Err(Error::Predictor {
                path: path.into(),
                message: format!(
                    "exists with {what} {a}, this collection has {b}: scores of two {what}s do \
                     not belong in one dataset; write another file"
                ),
            });
        }
    }
    for (what, a, b) in [
        ("seed", have.seed, want.seed),
        ("n", have.n as u64, want.n as u64),
        ("val_images", have.val_images as u64, want.val_images as u64),
    ] {
        if a != b {
            return Err(Error::Predictor {
                path: path.into(),
                message: format!(
                    "exists with {what} {a}, this collection has {b}: continue it with the same \
                     settings, or write another file"
                ),
            });
        }
    }
    Ok(rows.into_iter().map(|r| r.0).collect())
}

type Row = (usize, Vec<usize>, f64);

fn read_rows(text: &str, path: &Path) -> Result<(Header, Vec<Row>)> {
    let header = Header::parse(text, path)?;
    let rows = rows::read_rows(text, COLUMNS, error_in(path), |r, bad| {
        let accuracy = r.fields[4]
            .parse::<f64>()
            .ok()
            .filter(|a| (0.0..=1.0).contains(a))
            .ok_or_else(|| {
                bad(&format!(
                    "accuracy {:?} is not a fraction in [0, 1]",
                    r.fields[4]
                ))
            })?;
        Ok((r.index, r.genes, accuracy))
    })?;
    Ok((header, rows))
}

/// A scored dataset, read back.
pub struct Dataset {
    pub header: Header,
    pub space: Space,
    /// Each architecture with its accuracy.
    pub rows: Vec<(Arch, f64)>,
}

/// Reads a dataset file (its space from its own header).
pub fn read(path: &Path) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (header, rows) = read_rows(&text, path)?;
    let space = Space::from_toml_str(&header.space_toml, &path.display().to_string())?;
    if space_hash(&space) != header.space_hash {
        return Err(Error::Predictor {
            path: path.into(),
            message: "the space in the header does not match its recorded hash (edited?)".into(),
        });
    }
    let rows = rows
        .into_iter()
        .map(|(i, genes, acc)| {
            Arch::from_genes(&space, &genes)
                .map(|a| (a, acc))
                .map_err(|e| Error::Predictor {
                    path: path.into(),
                    message: format!("row {i}: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dataset {
        header,
        space,
        rows,
    })
}

/// Fits a predictor on the dataset `d` read from `csv` (see [`super::fit`]).
pub fn fit(
    d: &Dataset,
    opts: &super::fit::Options,
    csv: &Path,
) -> Result<(super::AccuracyPredictor, super::fit::Fitted)> {
    let fitted = super::fit::fit(&d.space, &d.rows, opts, csv)?;
    let (lo, hi) = d.rows.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
        (lo.min(r.1), hi.max(r.1))
    });
    let h = &d.header;
    let p = super::AccuracyPredictor {
        format: super::FORMAT.into(),
        space_name: h.space_name.clone(),
        space_hash: h.space_hash.clone(),
        space_toml: h.space_toml.clone(),
        supernet_hash: h.supernet_hash.clone(),
        fitted: super::Fitted {
            rows: d.rows.len(),
            holdout: opts.holdout,
            seed: opts.seed,
            val_images: h.val_images,
            accuracy_range: [lo, hi],
        },
        heldout: fitted
            .models
            .iter()
            .map(|(m, s)| (m.name().to_string(), *s))
            .collect(),
        chosen_because: fitted.why.clone(),
        scaler: fitted.scaler.clone(),
        model: fitted.models[0].0.clone(),
    };
    Ok((p, fitted))
}
