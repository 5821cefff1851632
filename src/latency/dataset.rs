//! Latency datasets: which architectures to time, timing them, and the CSV
//! they are kept in.
//!
//! The file starts with `#` header lines: the format, the space's name and
//! hash and its whole TOML definition (so the file stands alone), the
//! machine, batch, seed, count and timing protocol. Then one row per
//! architecture:
//! `index,genes,embed_dim,depth,num_heads,mlp_ratio,params,macs,mean_ms,std_ms,median_ms`
//! (`genes`, `num_heads` and `mlp_ratio` space-separated; a text space's
//! `mlp_ratio` column holds its MLP widths, `mlp_dim`). Rows are
//! appended and flushed one by one; a resumed measurement checks that the
//! header matches, drops a row cut short by a kill, and times only the
//! indices not in the file.

use super::fit::Sample;
use super::{space_hash, Machine, Protocol, Timing};
use crate::data::rows;
use crate::error::{Error, Result};
use crate::space::{flops, params, Arch, Space};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashSet;
use std::path::Path;

pub const FORMAT: &str = "vitnas-latency-dataset/1";
const COLUMNS: &str =
    "index,genes,embed_dim,depth,num_heads,mlp_ratio,params,macs,mean_ms,std_ms,median_ms";

/// The error of `message` about the dataset file `path`.
fn error_in(path: &Path) -> impl Fn(String) -> Error + '_ {
    |message| Error::Latency {
        path: path.into(),
        message,
    }
}

/// Candidates drawn per architecture kept, before stratifying by FLOPs.
const POOL_FACTOR: usize = 10;
/// FLOPs strata.
const STRATA: usize = 20;

/// What a measurement is: the header of its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub space_name: String,
    pub space_hash: String,
    pub space_toml: String,
    pub machine: Machine,
    pub batch: usize,
    pub seed: u64,
    pub n: usize,
    pub protocol: Protocol,
}

impl Header {
    fn to_text(&self) -> String {
        let p = &self.protocol;
        let m = &self.machine;
        let fields = format!(
            "# format: {FORMAT}\n# space: {}\n# space_hash: {}\n# cpu: {}\n# simd: {}\n\
             # gemm_avx512: {}\n# threads: {}\n# batch: {}\n# seed: {}\n# n: {}\n\
             # warmup: {}\n# runs: {}\n# trim: {}\n",
            self.space_name,
            self.space_hash,
            m.cpu,
            m.simd,
            m.gemm_avx512,
            m.threads,
            self.batch,
            self.seed,
            self.n,
            p.warmup,
            p.runs,
            p.trim
        );
        rows::header_text(fields, &self.space_toml)
    }

    fn parse(text: &str, path: &Path) -> Result<Header> {
        let bad = error_in(path);
        let h = rows::Header::parse(text, FORMAT, "not a latency dataset", &bad)?;
        Ok(Header {
            space_name: h.get("space")?,
            space_hash: h.get("space_hash")?,
            space_toml: h.space_toml.clone(),
            machine: Machine {
                cpu: h.get("cpu")?,
                simd: h.get("simd")?,
                gemm_avx512: h.get("gemm_avx512")? == "true",
                threads: h.num("threads")? as usize,
            },
            batch: h.num("batch")? as usize,
            seed: h.num("seed")?,
            n: h.num("n")? as usize,
            protocol: Protocol {
                warmup: h.num("warmup")? as usize,
                runs: h.num("runs")? as usize,
                trim: h
                    .get("trim")?
                    .parse()
                    .map_err(|_| bad("header `trim` is not a number".into()))?,
            },
        })
    }
}

/// `n` architectures of `space`, seeded, spread over its FLOPs range: a
/// pool of uniform samples (plus the smallest and largest) is cut into
/// equal-width FLOPs strata and the strata are drawn from in turn, so both
/// ends are covered however the uniform distribution piles up in the
/// middle. Distinct architectures; fewer than `n` only if the space is
/// smaller.
pub fn plan(space: &Space, n: usize, seed: u64) -> Vec<Arch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut pool = Vec::new();
    for a in [space.smallest(), space.largest()]
        .into_iter()
        .chain((0..n * POOL_FACTOR).map(|_| space.sample(&mut rng)))
    {
        let key = format!("{a:?}");
        if seen.insert(key) {
            pool.push((flops(space, &a), a));
        }
    }
    let lo = pool.iter().map(|p| p.0).min().unwrap_or(0) as f64;
    let hi = pool.iter().map(|p| p.0).max().unwrap_or(0) as f64;
    let mut strata: Vec<Vec<Arch>> = vec![Vec::new(); STRATA];
    // The two ends first, then the pool in its (random) order.
    for (f, a) in pool {
        let s = if hi > lo {
            (((f as f64 - lo) / (hi - lo)) * STRATA as f64) as usize
        } else {
            0
        };
        strata[s.min(STRATA - 1)].push(a);
    }
    let mut out = Vec::with_capacity(n);
    let mut round = 0;
    while out.len() < n && strata.iter().any(|s| round < s.len()) {
        for s in &strata {
            if out.len() < n && round < s.len() {
                out.push(s[round].clone());
            }
        }
        round += 1;
    }
    // A random order, so that a partial file is still a spread sample.
    for i in (1..out.len()).rev() {
        out.swap(i, rng.random_range(0..=i));
    }
    out
}

/// Options of a measurement.
pub struct MeasureOptions {
    pub n: usize,
    pub batch: usize,
    pub threads: usize,
    pub seed: u64,
    pub protocol: Protocol,
}

/// Measures (or continues measuring) `opts.n` architectures of `space` into
/// `out`; `progress(done, total)` after each. Returns the rows measured now.
pub fn measure(
    space: &Space,
    opts: &MeasureOptions,
    out: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<usize> {
    let never = std::sync::atomic::AtomicBool::new(false);
    Ok(measure_until(space, opts, out, &never, progress)?.0)
}

/// [`measure`] that stops between two rows once `stop` is set (Ctrl-C):
/// every row written is whole, and running it again continues. Returns the
/// rows measured now and whether it stopped early.
pub fn measure_until(
    space: &Space,
    opts: &MeasureOptions,
    out: &Path,
    stop: &std::sync::atomic::AtomicBool,
    progress: impl FnMut(usize, usize),
) -> Result<(usize, bool)> {
    if opts.n == 0 || opts.batch == 0 || opts.protocol.runs == 0 || opts.threads == 0 {
        return Err(Error::InvalidConfig {
            file: "latency measure".into(),
            field: "n / batch / runs / threads".into(),
            message: "must be at least 1".into(),
        });
    }
    let header = Header {
        space_name: space.name.clone(),
        space_hash: space_hash(space),
        space_toml: space.to_toml_string(),
        machine: Machine::current(opts.threads),
        batch: opts.batch,
        seed: opts.seed,
        n: opts.n,
        protocol: opts.protocol,
    };
    let (done, mut file) = rows::start_or_resume(out, &header.to_text(), COLUMNS, |whole| {
        resume(out, whole, &header)
    })?;
    let archs = plan(space, opts.n, opts.seed);
    let net = super::Timed::build(space, opts.seed)?;
    rows::append_rows(
        (&mut file, out),
        &archs,
        &done,
        stop,
        progress,
        |i, arch| {
            let t = net.time(arch, opts.batch, &opts.protocol)?;
            row(space, i, arch, &t)
        },
    )
}

fn row(space: &Space, i: usize, a: &Arch, t: &Timing) -> Result<String> {
    Ok(format!(
        "{},{:.6},{:.6},{:.6}\n",
        csv_prefix(space, i, &a.to_genes(space)?, a),
        t.mean_ms,
        t.std_ms,
        t.median_ms
    ))
}

/// A row's columns before the timings: index, genes, the architecture's
/// dims, parameters and MACs (also the prefix of each row that
/// `latency export-archs` plans, for the CSV its timer writes).
pub(super) fn csv_prefix(space: &Space, i: usize, genes: &[usize], a: &Arch) -> String {
    let join = |v: Vec<String>| v.join(" ");
    format!(
        "{i},{},{},{},{},{},{},{}",
        join(genes.iter().map(|g| g.to_string()).collect()),
        a.embed_dim,
        a.depth,
        join(a.num_heads.iter().map(|h| h.to_string()).collect()),
        match space.mlp_is_dim() {
            true => join(a.mlp_dim.iter().map(|m| m.to_string()).collect()),
            false => join(a.mlp_ratio.iter().map(|r| r.to_string()).collect()),
        },
        params(space, a),
        flops(space, a),
    )
}

/// Checks the whole lines `whole` of the existing file `path` against
/// `want` and returns its measured indices.
fn resume(path: &Path, whole: &str, want: &Header) -> Result<HashSet<usize>> {
    let (have, rows) = read_rows(whole, path)?;
    let mismatch = |what: &str, a: String, b: String| Error::Latency {
        path: path.into(),
        message: format!(
            "exists with {what} {a}, this measurement has {b}: continue it with the same \
             settings on the same machine, or write another file"
        ),
    };
    if have.space_hash != want.space_hash {
        return Err(mismatch("space", have.space_name, want.space_name.clone()));
    }
    if let Some(d) = have.machine.differences(&want.machine).first() {
        return Err(Error::Latency {
            path: path.into(),
            message: format!(
                "was measured on another machine or setting ({d}): times from two machines do \
                 not belong in one dataset; write another file"
            ),
        });
    }
    for (what, a, b) in [
        ("batch", have.batch as u64, want.batch as u64),
        ("seed", have.seed, want.seed),
        ("n", have.n as u64, want.n as u64),
    ] {
        if a != b {
            return Err(mismatch(what, a.to_string(), b.to_string()));
        }
    }
    if have.protocol != want.protocol {
        return Err(mismatch(
            "protocol",
            format!("{:?}", have.protocol),
            format!("{:?}", want.protocol),
        ));
    }
    Ok(rows.into_iter().map(|r| r.0).collect())
}

type Row = (usize, Vec<usize>, Timing);

fn read_rows(text: &str, path: &Path) -> Result<(Header, Vec<Row>)> {
    let header = Header::parse(text, path)?;
    let rows = rows::read_rows(text, COLUMNS, error_in(path), |r, bad| {
        let f = &r.fields;
        let num = |s: &str, what: &str| -> Result<f64> {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| bad(&format!("{what} {s:?} is not a positive number")))
        };
        let t = Timing {
            mean_ms: num(f[8], "mean_ms")?,
            std_ms: f[9]
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad("std_ms is not a non-negative number"))?,
            median_ms: num(f[10], "median_ms")?,
        };
        Ok((r.index, r.genes, t))
    })?;
    Ok((header, rows))
}

/// A measured dataset, read back.
pub struct Dataset {
    pub header: Header,
    pub space: Space,
    pub samples: Vec<Sample>,
    /// The repeat noise of the measurement: the median over rows of the
    /// timed runs' standard deviation over their mean (0.02: a typical
    /// architecture's runs vary by 2 %).
    pub repeat_noise: f64,
}

/// Which per-row statistic a fit learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Statistic {
    /// The trimmed mean (HAT's).
    #[default]
    Mean,
    /// The median of the timed runs.
    Median,
}

/// Reads a dataset file (its space from its own header), with the trimmed
/// mean as each row's latency.
pub fn read(path: &Path) -> Result<Dataset> {
    read_with(path, Statistic::Mean)
}

/// Reads a dataset file with `stat` as each row's latency.
pub fn read_with(path: &Path, stat: Statistic) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (header, rows) = read_rows(&text, path)?;
    let space = Space::from_toml_str(&header.space_toml, &path.display().to_string())?;
    if space_hash(&space) != header.space_hash {
        return Err(Error::Latency {
            path: path.into(),
            message: "the space in the header does not match its recorded hash (edited?)".into(),
        });
    }
    let mut noise: Vec<f64> = rows
        .iter()
        .map(|(_, _, t)| t.std_ms / t.mean_ms.max(1e-12))
        .collect();
    noise.sort_by(|a, b| a.total_cmp(b));
    let repeat_noise = noise.get(noise.len() / 2).copied().unwrap_or(0.0);
    let samples = rows
        .into_iter()
        .map(|(i, genes, t)| {
            Arch::from_genes(&space, &genes)
                .map(|arch| Sample {
                    arch,
                    ms: match stat {
                        Statistic::Mean => t.mean_ms,
                        Statistic::Median => t.median_ms,
                    },
                })
                .map_err(|e| Error::Latency {
                    path: path.into(),
                    message: format!("row {i}: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dataset {
        header,
        space,
        samples,
        repeat_noise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_seeded_distinct_and_covers_both_ends() {
        let space = Space::from_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/search_spaces/fmnist-tiny.toml"
        ))
        .unwrap();
        let a = plan(&space, 60, 3);
        assert_eq!(a, plan(&space, 60, 3));
        assert_eq!(a.len(), 60);
        let keys: HashSet<String> = a.iter().map(|x| format!("{x:?}")).collect();
        assert_eq!(keys.len(), 60);
        assert!(a.contains(&space.smallest()) && a.contains(&space.largest()));
    }
}
