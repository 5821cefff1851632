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
use crate::error::{Error, Result};
use crate::space::{flops, params, Arch, Space};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

pub const FORMAT: &str = "vitnas-accuracy-dataset/1";
const COLUMNS: &str = "index,genes,params,flops,accuracy,loss";

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
        let mut s = format!(
            "# format: {FORMAT}\n# space: {}\n# space_hash: {}\n# supernet_hash: {}\n\
             # seed: {}\n# n: {}\n# val_images: {}\n",
            self.space_name,
            self.space_hash,
            self.supernet_hash,
            self.seed,
            self.n,
            self.val_images
        );
        for l in self.space_toml.lines() {
            s.push_str("#| ");
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    fn parse(text: &str, path: &Path) -> Result<Header> {
        let bad = |m: String| Error::Predictor {
            path: path.into(),
            message: m,
        };
        let mut kv = BTreeMap::new();
        let mut toml = String::new();
        for l in text.lines().take_while(|l| l.starts_with('#')) {
            if let Some(t) = l.strip_prefix("#| ").or_else(|| l.strip_prefix("#|")) {
                toml.push_str(t);
                toml.push('\n');
            } else if let Some((k, v)) = l.trim_start_matches('#').split_once(':') {
                kv.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let get = |k: &str| {
            kv.get(k).cloned().ok_or_else(|| {
                bad(format!(
                    "header line `# {k}:` is missing: not an accuracy dataset \
                     (`vitnas predictor fit <run dir>` writes one)"
                ))
            })
        };
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("header `{k}` is not a number")))
        };
        if get("format")? != FORMAT {
            return Err(bad(format!("format is not {FORMAT}")));
        }
        Ok(Header {
            space_name: get("space")?,
            space_hash: get("space_hash")?,
            space_toml: toml,
            supernet_hash: get("supernet_hash")?,
            seed: num("seed")?,
            n: num("n")? as usize,
            val_images: num("val_images")? as usize,
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
    mut progress: impl FnMut(usize, usize),
) -> Result<(usize, bool)> {
    if header.n == 0 || header.val_images == 0 {
        return Err(Error::InvalidConfig {
            file: "predictor fit".into(),
            field: "n / val_subset".into(),
            message: "must be at least 1".into(),
        });
    }
    let done = if out.exists() {
        resume(out, header)?
    } else {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(out, format!("{}{COLUMNS}\n", header.to_text()))
            .map_err(|e| Error::io(out, e))?;
        HashSet::new()
    };
    let archs = plan(space, header.n, header.seed);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(out)
        .map_err(|e| Error::io(out, e))?;
    let total = archs.len();
    let mut scored = 0;
    progress(done.len(), total);
    for (i, arch) in archs.iter().enumerate() {
        if done.contains(&i) {
            continue;
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok((scored, true));
        }
        let (accuracy, loss) = score(arch)?;
        let genes: Vec<String> = arch
            .to_genes(space)?
            .iter()
            .map(|g| g.to_string())
            .collect();
        let row = format!(
            "{i},{},{},{},{accuracy},{loss}\n",
            genes.join(" "),
            params(space, arch),
            flops(space, arch)
        );
        file.write_all(row.as_bytes())
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(out, e))?;
        scored += 1;
        progress(done.len() + scored, total);
    }
    Ok((scored, false))
}

/// Checks an existing file against `want` and returns its scored indices,
/// after dropping a last row cut short.
fn resume(path: &Path, want: &Header) -> Result<HashSet<usize>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
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
    if whole.len() < text.len() {
        std::fs::write(path, whole).map_err(|e| Error::io(path, e))?;
    }
    Ok(rows.into_iter().map(|r| r.0).collect())
}

type Row = (usize, Vec<usize>, f64);

fn read_rows(text: &str, path: &Path) -> Result<(Header, Vec<Row>)> {
    let header = Header::parse(text, path)?;
    let mut rows = Vec::new();
    let mut columns = false;
    for (ln, l) in text.lines().enumerate() {
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| Error::Predictor {
            path: path.into(),
            message: format!("line {}: {m}", ln + 1),
        };
        if !columns {
            if l.trim_end() != COLUMNS {
                return Err(bad(&format!(
                    "column names {:?}, want {COLUMNS:?} (columns are read in that order)",
                    l.trim_end()
                )));
            }
            columns = true;
            continue;
        }
        let f: Vec<&str> = l.split(',').collect();
        if f.len() != 6 {
            return Err(bad(&format!("{} fields, want 6 ({COLUMNS})", f.len())));
        }
        let index = f[0].parse().map_err(|_| bad("index is not a number"))?;
        let genes = f[1]
            .split_whitespace()
            .map(|g| g.parse::<usize>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad("genes are not numbers"))?;
        let accuracy = f[4]
            .parse::<f64>()
            .ok()
            .filter(|a| (0.0..=1.0).contains(a))
            .ok_or_else(|| bad(&format!("accuracy {:?} is not a fraction in [0, 1]", f[4])))?;
        rows.push((index, genes, accuracy));
    }
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
