//! Text classification data: JSON lines or CSV files (optionally gzipped)
//! with a text field and a label field; label names mapped to ids; the
//! texts tokenized once; batches padded to their longest member.
//!
//! ```no_run
//! use std::path::Path;
//! use vitnas::data::text::{load_text, TextFields, TokenizedDataset};
//! use vitnas::models::text::TextTokenizer;
//!
//! let fields = TextFields::default(); // "text" and "label"
//! let train = load_text(Path::new("data/spam-sample/train.jsonl"), &fields, None)?;
//! let test = load_text(
//!     Path::new("data/spam-sample/test.jsonl"),
//!     &fields,
//!     Some(&train.label_names),
//! )?;
//! let tok = TextTokenizer::from_file(Path::new("model/tokenizer.json"), 128)?;
//! let train = TokenizedDataset::new(&train, &tok)?;
//! let batch = train.batch(&[0, 1, 2, 3], &candle_core::Device::Cpu)?;
//! # let _ = (test, batch);
//! # Ok::<(), vitnas::Error>(())
//! ```

use super::tokenizer::TextTokenizer;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

/// The names of the text and the label field (JSON lines) or column (CSV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextFields {
    #[serde(default = "default_text")]
    pub text: String,
    #[serde(default = "default_label")]
    pub label: String,
}

fn default_text() -> String {
    "text".into()
}

fn default_label() -> String {
    "label".into()
}

impl Default for TextFields {
    fn default() -> Self {
        Self {
            text: default_text(),
            label: default_label(),
        }
    }
}

/// Texts and their label ids; `label_names[id]` is the label as the file
/// spells it.
#[derive(Debug, Clone, PartialEq)]
pub struct TextDataset {
    pub texts: Vec<String>,
    pub labels: Vec<u32>,
    pub label_names: Vec<String>,
    /// Where it came from, for messages.
    pub source: String,
}

/// Loads a text classification file: `.jsonl` (one JSON object a line;
/// blank lines are skipped) or `.csv` (RFC 4180, a header row naming the
/// columns), each optionally gzipped (`.jsonl.gz`, `.csv.gz`).
///
/// A label is a string, or in JSON lines an integer, which stands for its
/// decimal string. With `label_names` `None` (a training file) the names
/// found are sorted, numerically when they are all integers, and numbered
/// from 0 in that order. Otherwise (a test file: pass the training set's
/// names) the given names are the ids, and a label not among them is an
/// error.
///
/// Every problem with a line is an [`Error::DataLine`] naming the file and
/// the 1-based line (where a CSV record starts): a missing field or column,
/// an empty text or label, a label that is not a string or an integer, an
/// unknown label, bytes that are not UTF-8, a line that is not a JSON
/// object, a CSV record with the wrong number of fields.
pub fn load_text(
    path: &Path,
    fields: &TextFields,
    label_names: Option<&[String]>,
) -> Result<TextDataset> {
    let format = format_of(path)?;
    let bytes = read_bytes(path)?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let rows = match format {
        Format::JsonLines => json_rows(path, bytes, fields)?,
        Format::Csv => csv_rows(path, bytes, fields)?,
    };
    if rows.is_empty() {
        return Err(Error::Data {
            source_name: path.display().to_string(),
            message: if bytes.iter().all(u8::is_ascii_whitespace) {
                "the file is empty".into()
            } else {
                "no examples in the file".into()
            },
        });
    }
    let (labels, label_names) = label_ids(path, &rows, label_names)?;
    Ok(TextDataset {
        texts: rows.into_iter().map(|r| r.text).collect(),
        labels,
        label_names,
        source: path.display().to_string(),
    })
}

impl TextDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.label_names.len()
    }

    /// How many examples each label id has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The examples at `indices`, in that order (same label names).
    pub fn subset(&self, indices: &[usize]) -> TextDataset {
        TextDataset {
            texts: indices.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            label_names: self.label_names.clone(),
            source: self.source.clone(),
        }
    }

    /// A seeded split into `(train, validation)` with `val` examples held out.
    pub fn split_validation(&self, val: usize, seed: u64) -> Result<(TextDataset, TextDataset)> {
        let (t, v) = self.validation_indices(val, seed)?;
        Ok((self.subset(&t), self.subset(&v)))
    }

    /// The indices `(train, validation)` of
    /// [`TextDataset::split_validation`], each sorted; the same shuffle as
    /// the image [`Dataset`](super::Dataset)'s.
    pub fn validation_indices(&self, val: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
        super::validation_indices(self.len(), val, seed, &self.source)
    }
}

/// A [`TextDataset`] tokenized once: the token ids of each example, special
/// tokens included and truncated to the tokenizer's `max_len`, not padded.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedDataset {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<u32>,
    pub label_names: Vec<String>,
    /// The id that fills the padding of a batch.
    pub pad_id: u32,
    pub max_len: usize,
    pub source: String,
}

/// One padded batch: `ids` and `attention_mask` `[B, T]` u32 with `T` the
/// longest sequence of the batch (mask 1 on tokens, 0 on padding, which is
/// on the right), `labels` `[B]` u32, and each sequence's length.
#[derive(Debug, Clone)]
pub struct TextBatch {
    pub ids: Tensor,
    pub attention_mask: Tensor,
    pub labels: Tensor,
    pub lengths: Vec<usize>,
}

/// Texts tokenized per call: bounds the memory of the tokenizer's
/// encodings (it keeps the truncated-off tokens too).
const TOKENIZE_CHUNK: usize = 512;

impl TokenizedDataset {
    /// Tokenizes every text of `data` with `tokenizer` (in parallel).
    pub fn new(data: &TextDataset, tokenizer: &TextTokenizer) -> Result<Self> {
        let mut ids = Vec::with_capacity(data.len());
        for chunk in data.texts.chunks(TOKENIZE_CHUNK) {
            let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
            ids.extend(tokenizer.encode_ids(&texts)?);
        }
        if let Some(i) = ids.iter().position(Vec::is_empty) {
            return Err(Error::Data {
                source_name: data.source.clone(),
                message: format!(
                    "example {i} has no tokens with {} (max_len {})",
                    tokenizer.path().display(),
                    tokenizer.max_len()
                ),
            });
        }
        Ok(Self {
            ids,
            labels: data.labels.clone(),
            label_names: data.label_names.clone(),
            pad_id: tokenizer.pad_id(),
            max_len: tokenizer.max_len(),
            source: data.source.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.label_names.len()
    }

    /// The examples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> TokenizedDataset {
        TokenizedDataset {
            ids: indices.iter().map(|&i| self.ids[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ..self.clone_empty()
        }
    }

    fn clone_empty(&self) -> TokenizedDataset {
        TokenizedDataset {
            ids: Vec::new(),
            labels: Vec::new(),
            label_names: self.label_names.clone(),
            pad_id: self.pad_id,
            max_len: self.max_len,
            source: self.source.clone(),
        }
    }

    /// The examples at `indices`, padded to the longest of them.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<TextBatch> {
        let err = |message: String| Error::Data {
            source_name: self.source.clone(),
            message,
        };
        if indices.is_empty() {
            return Err(err("a batch needs at least one example".into()));
        }
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(err(format!(
                "batch index {i} is out of range ({} examples)",
                self.len()
            )));
        }
        let lengths: Vec<usize> = indices.iter().map(|&i| self.ids[i].len()).collect();
        let (b, t) = (indices.len(), lengths.iter().copied().max().unwrap_or(0));
        let mut ids = vec![self.pad_id; b * t];
        let mut mask = vec![0u32; b * t];
        for (row, &i) in indices.iter().enumerate() {
            let seq = &self.ids[i];
            ids[row * t..row * t + seq.len()].copy_from_slice(seq);
            mask[row * t..row * t + seq.len()].fill(1);
        }
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(TextBatch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), device)?,
            labels: Tensor::from_vec(labels, b, device)?,
            lengths,
        })
    }
}

enum Format {
    JsonLines,
    Csv,
}

fn format_of(path: &Path) -> Result<Format> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".jsonl") {
        Ok(Format::JsonLines)
    } else if name.ends_with(".csv") {
        Ok(Format::Csv)
    } else {
        Err(Error::Data {
            source_name: path.display().to_string(),
            message: "unknown text data format: the name must end in .jsonl, .jsonl.gz, .csv \
                      or .csv.gz"
                .into(),
        })
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
    {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| Error::Data {
            source_name: path.display().to_string(),
            message: format!("not a readable gzip file: {e}"),
        })?;
    Ok(out)
}

/// One example as read, before its label has an id.
struct Row {
    line: usize,
    text: String,
    label: String,
}

fn at(path: &Path, line: usize, message: String) -> Error {
    Error::DataLine {
        path: path.to_path_buf(),
        line,
        message,
    }
}

fn utf8<'a>(path: &Path, line: usize, bytes: &'a [u8], what: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        at(
            path,
            line,
            format!(
                "{what} is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Checks a text and a label and makes the row.
fn row(path: &Path, line: usize, fields: &TextFields, text: &str, label: String) -> Result<Row> {
    if text.trim().is_empty() {
        return Err(at(
            path,
            line,
            format!(
                "the text (field `{}`) is empty or only whitespace",
                fields.text
            ),
        ));
    }
    if label.trim().is_empty() {
        return Err(at(
            path,
            line,
            format!("the label (field `{}`) is empty", fields.label),
        ));
    }
    Ok(Row {
        line,
        text: text.to_string(),
        label,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_rows(path: &Path, bytes: &[u8], fields: &TextFields) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let s = utf8(path, line, raw, "the line")?;
        if s.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(s).map_err(|e| {
            // serde_json says "at line 1 column N": the line is ours.
            let m = e.to_string();
            let m = m.rsplit_once(" at line ").map_or(m.as_str(), |(m, _)| m);
            at(
                path,
                line,
                format!("invalid JSON at column {}: {m}", e.column()),
            )
        })?;
        let Value::Object(obj) = v else {
            return Err(at(
                path,
                line,
                format!("expected a JSON object, found {}", kind(&v)),
            ));
        };
        let get = |name: &str| {
            obj.get(name).ok_or_else(|| {
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                at(
                    path,
                    line,
                    format!("no field `{name}` (fields: {})", keys.join(", ")),
                )
            })
        };
        let text = match get(&fields.text)? {
            Value::String(s) => s.as_str(),
            v => {
                return Err(at(
                    path,
                    line,
                    format!("field `{}` is {}, expected a string", fields.text, kind(v)),
                ))
            }
        };
        let label = match get(&fields.label)? {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            v => {
                return Err(at(
                    path,
                    line,
                    format!(
                        "field `{}` is {} ({v}), expected a string or an integer",
                        fields.label,
                        kind(v)
                    ),
                ))
            }
        };
        rows.push(row(path, line, fields, text, label)?);
    }
    Ok(rows)
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line() as usize);
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "{len} field{}, but the header has {expected_len}",
            if *len == 1 { "" } else { "s" }
        ),
        csv::ErrorKind::Io(io) => format!("reading CSV: {io}"),
        _ => format!("invalid CSV: {e}"),
    };
    match line {
        Some(line) => at(path, line, message),
        None => Error::Data {
            source_name: path.display().to_string(),
            message,
        },
    }
}

fn csv_rows(path: &Path, bytes: &[u8], fields: &TextFields) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|e| csv_error(path, e))?
        .clone();
    if header.is_empty() {
        return Ok(Vec::new());
    }
    let header_line = header.position().map_or(1, |p| p.line() as usize);
    let names: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    let column = |name: &str| -> Result<usize> {
        let found: Vec<usize> = (0..names.len()).filter(|&c| names[c] == name).collect();
        match found[..] {
            [c] => Ok(c),
            [] => Err(at(
                path,
                header_line,
                format!(
                    "no column `{name}` in the header (columns: {})",
                    names.join(", ")
                ),
            )),
            _ => Err(at(
                path,
                header_line,
                format!(
                    "column `{name}` appears {} times in the header",
                    found.len()
                ),
            )),
        }
    };
    let (text_col, label_col) = (column(&fields.text)?, column(&fields.label)?);
    let mut rows = Vec::new();
    let mut record = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| csv_error(path, e))?
    {
        let line = record.position().map_or(0, |p| p.line() as usize);
        let field = |c: usize, name: &str| -> Result<&str> {
            utf8(
                path,
                line,
                record.get(c).unwrap_or_default(),
                &format!("column `{name}`"),
            )
        };
        let text = field(text_col, &fields.text)?;
        let label = field(label_col, &fields.label)?.to_string();
        rows.push(row(path, line, fields, text, label)?);
    }
    Ok(rows)
}

/// Label ids of the rows, and the names they stand for.
fn label_ids(
    path: &Path,
    rows: &[Row],
    known: Option<&[String]>,
) -> Result<(Vec<u32>, Vec<String>)> {
    let names: Vec<String> = match known {
        Some(names) => names.to_vec(),
        None => {
            let set: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
            let mut names: Vec<String> = set.into_iter().map(str::to_string).collect();
            // Integer labels sort as numbers: 2 before 10.
            let ints: Option<Vec<i64>> = names
                .iter()
                .map(|s| s.parse::<i64>().ok().filter(|v| v.to_string() == *s))
                .collect();
            if let Some(ints) = ints {
                let mut pairs: Vec<(i64, String)> = ints.into_iter().zip(names).collect();
                pairs.sort();
                names = pairs.into_iter().map(|(_, s)| s).collect();
            }
            names
        }
    };
    let id: HashMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as u32))
        .collect();
    let labels = rows
        .iter()
        .map(|r| {
            id.get(r.label.as_str()).copied().ok_or_else(|| {
                at(
                    path,
                    r.line,
                    format!(
                        "label `{}` is not one of the training set's labels ({})",
                        r.label,
                        names.join(", ")
                    ),
                )
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok((labels, names))
}
