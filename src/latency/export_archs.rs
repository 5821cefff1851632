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
//! seed and protocol, the input, and per architecture its index, file,
//! genes, the architecture and the CSV row prefix (every column before the
//! timings), so that the runner writes exactly the dataset format.
//!
//! ## Text spaces: one word-embedding table per width, as ONNX external data
//! A BERT subnet's word-embedding table is `[vocab, embed_dim]` f32: 47 MB
//! of bert-minilm's ~90 MB file at width 384, 1,000 files ≈ 40–90 GB. But
//! every subnet of one width reads the *same* table (weight entanglement:
//! the supernet's table cut to its first `embed_dim` columns). So the table
//! is written once per width, `word_embeddings-<embed_dim>.bin` (raw
//! little-endian f32, row-major), and each file's `embeddings.word`
//! initializer is ONNX external data pointing at it (`location`,
//! `offset` 0, `length`), with its full shape `[vocab, embed_dim]`. The
//! graph, the shapes and the values are exactly the subnet's (nothing is
//! truncated, so any id of the vocabulary is valid and the `Gather` runs on
//! the real table, cache effects included); the files stay a few MB (the
//! encoder layers only). ONNX Runtime and tract both read external data
//! relative to the model file, so the directory must be copied whole.
//! The inputs are `vitnas export --format onnx`'s: `input_ids` and
//! `attention_mask`, int64 `[batch, sequence]`, both dimensions symbolic;
//! the manifest records the timed `[batch, seq_len]` and the vocabulary the
//! runner draws ids from (every position a token: an all-ones mask, as
//! `vitnas latency measure` times text).

use super::dataset;
use super::{space_hash, Protocol};
use crate::error::{Error, Result};
use crate::models::onnx::{bert_to_onnx, vit_to_onnx, WORD_EMBEDDINGS};
use crate::space::{Arch, Space};
use onnx_protobuf::{tensor_proto::DataLocation, Message, ModelProto, StringStringEntryProto};
use serde::{Deserialize, Serialize};
use std::collections::{btree_map, BTreeMap};
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

/// A text space's inputs and external data (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextInputs {
    /// Tokens per timed sequence (the space's `text.seq_len`, or
    /// `--seq-len`): every position a token (attention mask all ones).
    pub seq_len: usize,
    /// The vocabulary: `input_ids` are drawn uniformly in `[0, vocab_size)`.
    pub vocab_size: usize,
    /// Per embedding width, the raw f32 `[vocab_size, embed_dim]` table
    /// every file of that width reads as ONNX external data.
    pub word_embeddings: BTreeMap<usize, String>,
    /// Why the tables are external (for whoever opens the manifest).
    pub note: String,
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
    /// The timed input: `[batch, channels, image_size, image_size]`
    /// (`pixel_values`), or for a text space `[batch, seq_len]` (each of
    /// `input_ids` and `attention_mask`). The batch (and the sequence)
    /// dimensions are symbolic in the files.
    pub input_shape: Vec<usize>,
    /// Text spaces: what the runner feeds and the shared embedding files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextInputs>,
    pub batch: usize,
    pub seed: u64,
    pub n: usize,
    pub protocol: Protocol,
    pub archs: Vec<Entry>,
}

/// Writes `opts.n` architectures of `space` as `out/arch-<i>.onnx` (and,
/// for a text space, one `out/word_embeddings-<embed_dim>.bin` per width)
/// and `out/manifest.json` (written last, so a directory with a manifest is
/// complete). A text space is timed at its `text.seq_len`. Refuses a
/// directory that already holds a manifest.
pub fn export_archs(space: &Space, opts: &ExportOptions, out: &Path) -> Result<Manifest> {
    let bad = |field: &str, message: String| Error::InvalidConfig {
        file: "latency export-archs".into(),
        field: field.into(),
        message,
    };
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
    let archs = dataset::plan(space, opts.n, opts.seed);
    let mut entries = Vec::with_capacity(archs.len());
    let mut tables = BTreeMap::new();
    let net = super::Timed::build(space, opts.seed)?;
    for (i, arch) in archs.into_iter().enumerate() {
        let file = format!("arch-{i}.onnx");
        let bytes = match &net {
            super::Timed::Image(net) => vit_to_onnx(&net.extract(&arch)?, &arch, &[], None)?,
            super::Timed::Text(net) => {
                let mut model = net.extract(&arch)?;
                let (vocab, e) = model.word_embeddings.dims2()?;
                let table = format!("word_embeddings-{e}.bin");
                if let btree_map::Entry::Vacant(slot) = tables.entry(e) {
                    let data: Vec<f32> = model.word_embeddings.flatten_all()?.to_vec1()?;
                    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                    crate::io::write_atomic(&out.join(&table), &raw)?;
                    slot.insert(table.clone());
                }
                // One row stands in for the table while the graph is built;
                // the initializer then points at the whole shared table.
                model.word_embeddings = model.word_embeddings.narrow(0, 0, 1)?;
                let bytes = bert_to_onnx(&model, &arch, &[], None)?;
                external_word_embeddings(&bytes, [vocab, e], &table, &file)?
            }
        };
        crate::io::write_atomic(&out.join(&file), &bytes)?;
        let genes = arch.to_genes(space)?;
        entries.push(Entry {
            index: i,
            file,
            csv_prefix: dataset::csv_prefix(space, i, &genes, &arch),
            genes,
            arch,
        });
    }
    let (input_shape, text) = match &space.text {
        Some(t) => (
            vec![opts.batch, t.seq_len],
            Some(TextInputs {
                seq_len: t.seq_len,
                vocab_size: t.vocab_size,
                word_embeddings: tables,
                note: "each file's `embeddings.word` is ONNX external data: the whole \
                       [vocab_size, embed_dim] table of its width, shared by every file of that \
                       width (exact: weight entanglement gives them one table); copy the \
                       directory whole"
                    .into(),
            }),
        ),
        None => {
            let img = space.image();
            let shape = vec![opts.batch, img.channels, img.image_size, img.image_size];
            (shape, None)
        }
    };
    let m = Manifest {
        format: MANIFEST_FORMAT.into(),
        dataset_format: dataset::FORMAT.into(),
        columns: COLUMNS.into(),
        space_name: space.name.clone(),
        space_hash: space_hash(space),
        space_toml: space.to_toml_string(),
        input_shape,
        text,
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

/// `bytes` (a BERT graph) with its word-embedding initializer replaced by
/// external data: `shape` `[vocab, embed_dim]` f32 read from `table` (a
/// file beside the model) at offset 0.
fn external_word_embeddings(
    bytes: &[u8],
    shape: [usize; 2],
    table: &str,
    file: &str,
) -> Result<Vec<u8>> {
    let bad = |message: String| Error::OnnxExport {
        message: format!("{file}: {message}"),
    };
    let mut m = ModelProto::parse_from_bytes(bytes)
        .map_err(|e| bad(format!("re-reading the graph failed: {e}")))?;
    let g = m
        .graph
        .as_mut()
        .ok_or_else(|| bad("the model has no graph".into()))?;
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name == WORD_EMBEDDINGS)
        .ok_or_else(|| bad(format!("the graph has no initializer `{WORD_EMBEDDINGS}`")))?;
    let entry = |key: &str, value: String| {
        let mut e = StringStringEntryProto::new();
        e.key = key.into();
        e.value = value;
        e
    };
    t.dims = shape.iter().map(|&d| d as i64).collect();
    t.raw_data.clear();
    t.data_location = DataLocation::EXTERNAL.into();
    t.external_data = vec![
        entry("location", table.into()),
        entry("offset", "0".into()),
        entry("length", (shape[0] * shape[1] * 4).to_string()),
    ];
    m.write_to_bytes()
        .map_err(|e| bad(format!("protobuf encoding failed: {e}")))
}

/// The dataset's column line (see [`dataset`]).
const COLUMNS: &str =
    "index,genes,embed_dim,depth,num_heads,mlp_ratio,params,macs,mean_ms,std_ms,median_ms";
