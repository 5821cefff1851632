//! `vitnas latency export-archs`: the architectures a latency measurement
//! times, written as ONNX files with a manifest, for timing on a machine
//! vitnas does not run on (`evaluate/ort_latency.py` times them with ONNX
//! Runtime under HAT's protocol and writes the CSV `vitnas latency fit`
//! reads).
//!
//! The architectures are [`dataset::plan`]'s (the same seeded, FLOPs-
//! stratified draw as `vitnas latency measure`), each extracted from a
//! seeded supernet of the space (latency does not depend on the weights'
//! values). The manifest records the space (name, hash, TOML), the batch,
//! seed and protocol, and per architecture its index, file, genes, the
//! architecture and the CSV row prefix (every column before the timings),
//! so that the runner writes exactly the dataset format.

use super::dataset;
use super::{space_hash, Protocol};
use crate::error::{Error, Result};
use crate::space::{flops, params, Arch, Space};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Format tag of the manifest.
pub const MANIFEST_FORMAT: &str = "vitnas-latency-archs/1";
/// The manifest's file name in the output directory.
pub const MANIFEST: &str = "manifest.json";

/// What to export.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Architectures (fewer only if the space is smaller).
    pub n: usize,
    /// Batch the runner times.
    pub batch: usize,
    /// Seeds the plan and the supernet.
    pub seed: u64,
    /// The protocol the runner follows (`latency measure`'s defaults).
    pub protocol: Protocol,
}

/// One exported architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub index: usize,
    /// File name, relative to the manifest's directory.
    pub file: String,
    pub genes: Vec<usize>,
    pub arch: Arch,
    /// The dataset row's columns before the timings
    /// (`index,genes,embed_dim,depth,num_heads,mlp_ratio,params,macs`).
    pub csv_prefix: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Format of the dataset CSV the runner writes.
    pub dataset_format: String,
    /// Column line of that CSV.
    pub columns: String,
    pub space_name: String,
    pub space_hash: String,
    pub space_toml: String,
    /// Input of every file: `[batch, channels, image_size, image_size]`
    /// (the batch dimension is symbolic in the files).
    pub input_shape: [usize; 4],
    pub batch: usize,
    pub seed: u64,
    pub n: usize,
    pub protocol: Protocol,
    pub archs: Vec<Entry>,
}

/// Writes `opts.n` architectures of the image space `space` as
/// `out/arch-<i>.onnx` and `out/manifest.json` (written last, so a
/// directory with a manifest is complete). Refuses text spaces, and a
/// directory that already holds a manifest.
pub fn export_archs(space: &Space, opts: &ExportOptions, out: &Path) -> Result<Manifest> {
    let bad = |field: &str, message: String| Error::InvalidConfig {
        file: "latency export-archs".into(),
        field: field.into(),
        message,
    };
    if space.is_text() {
        return Err(bad(
            "space",
            format!(
                "`{}` is a text space: exporting text architectures is not supported yet (each \
                 file would hold the whole embedding table, ~90 MB for bert-minilm); time them \
                 on this machine with `vitnas latency measure`",
                space.name
            ),
        ));
    }
    if opts.n == 0 || opts.batch == 0 || opts.protocol.runs == 0 {
        return Err(bad("n / batch / runs", "must be at least 1".into()));
    }
    let manifest_path = out.join(MANIFEST);
    if manifest_path.exists() {
        return Err(Error::Latency {
            path: manifest_path,
            message: "exists: this directory already holds exported architectures; choose \
                      another --out"
                .into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let net = crate::train::build_supernet(space, opts.seed, Default::default())?.0;
    let archs = dataset::plan(space, opts.n, opts.seed);
    let mut entries = Vec::with_capacity(archs.len());
    for (i, arch) in archs.into_iter().enumerate() {
        let model = net.extract(&arch)?;
        let bytes = crate::models::onnx::vit_to_onnx(&model, &arch, &[], None)?;
        let file = format!("arch-{i}.onnx");
        crate::io::write_atomic(&out.join(&file), &bytes)?;
        let genes = arch.to_genes(space)?;
        entries.push(Entry {
            index: i,
            file,
            csv_prefix: csv_prefix(space, i, &genes, &arch),
            genes,
            arch,
        });
    }
    let img = space.image();
    let m = Manifest {
        format: MANIFEST_FORMAT.into(),
        dataset_format: dataset::FORMAT.into(),
        columns: COLUMNS.into(),
        space_name: space.name.clone(),
        space_hash: space_hash(space),
        space_toml: space.to_toml_string(),
        input_shape: [opts.batch, img.channels, img.image_size, img.image_size],
        batch: opts.batch,
        seed: opts.seed,
        n: opts.n,
        protocol: opts.protocol,
        archs: entries,
    };
    let text = serde_json::to_string_pretty(&m).expect("a manifest serializes");
    crate::io::write_atomic(&manifest_path, text.as_bytes())?;
    Ok(m)
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let m: Manifest = crate::io::read_json(&path)?;
    if m.format != MANIFEST_FORMAT {
        return Err(Error::Latency {
            path,
            message: format!("format {:?} is not {MANIFEST_FORMAT}", m.format),
        });
    }
    Ok(m)
}

/// The dataset's column line (see [`dataset`]).
const COLUMNS: &str =
    "index,genes,embed_dim,depth,num_heads,mlp_ratio,params,macs,mean_ms,std_ms,median_ms";

fn csv_prefix(space: &Space, i: usize, genes: &[usize], a: &Arch) -> String {
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
