//! The row files of the latency and accuracy datasets: a header of
//! `# key: value` lines with the space's TOML as `#| ` lines, a column
//! line, then one CSV row per architecture (its index in the plan and its
//! genes first), appended one at a time so that a killed collection
//! continues where it stopped. The kinds of file
//! ([`crate::latency::dataset`], [`crate::train::predictor::dataset`]) own
//! their header keys, columns and error variant; the reading, resuming and
//! appending are here.

use crate::error::{Error, Result};
use crate::space::Arch;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

/// `fields` (the `# key: value` lines, each ending in a newline) followed
/// by the space's TOML as `#| ` lines.
pub(crate) fn header_text(mut fields: String, space_toml: &str) -> String {
    for l in space_toml.lines() {
        fields.push_str("#| ");
        fields.push_str(l);
        fields.push('\n');
    }
    fields
}

/// The header of a row file, its leading `#` lines: the `# key: value`
/// pairs, and the space's TOML gathered from the `#| ` lines.
pub(crate) struct Header<'a> {
    fields: BTreeMap<String, String>,
    pub space_toml: String,
    /// What the file is not when a key is missing ("not a latency dataset").
    not_this: &'a str,
    bad: &'a dyn Fn(String) -> Error,
}

impl<'a> Header<'a> {
    /// The header of `text`, whose `format` must be `format`; `bad` makes
    /// the error of a message, and a missing key's message ends in
    /// `not_this`.
    pub(crate) fn parse(
        text: &str,
        format: &str,
        not_this: &'a str,
        bad: &'a dyn Fn(String) -> Error,
    ) -> Result<Self> {
        let mut fields = BTreeMap::new();
        let mut space_toml = String::new();
        for l in text.lines().take_while(|l| l.starts_with('#')) {
            if let Some(t) = l.strip_prefix("#| ").or_else(|| l.strip_prefix("#|")) {
                space_toml.push_str(t);
                space_toml.push('\n');
            } else if let Some((k, v)) = l.trim_start_matches('#').split_once(':') {
                fields.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let h = Self {
            fields,
            space_toml,
            not_this,
            bad,
        };
        if h.get("format")? != format {
            return Err(bad(format!("format is not {format}")));
        }
        Ok(h)
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &str) -> Result<String> {
        self.fields.get(key).cloned().ok_or_else(|| {
            (self.bad)(format!(
                "header line `# {key}:` is missing: {}",
                self.not_this
            ))
        })
    }

    /// The value of `key`, a whole number.
    pub(crate) fn num(&self, key: &str) -> Result<u64> {
        self.get(key)?
            .parse()
            .map_err(|_| (self.bad)(format!("header `{key}` is not a number")))
    }
}

/// One data row: its plan index, genes and all its comma-separated fields
/// (the index and genes included, as `fields[0]` and `fields[1]`).
pub(crate) struct Row<'a> {
    pub index: usize,
    pub genes: Vec<usize>,
    pub fields: Vec<&'a str>,
}

/// The data rows of `text`, each read by `parse` (which reads the fields
/// after the genes; its second argument makes the error of a message about
/// the row). Comment and blank lines are skipped; the first other line must
/// be `columns` (columns are read by position, in the order this build
/// writes them); every row after it has one field per column, a numeric
/// index and space-separated numeric genes. `bad` makes the error of a
/// message, which starts `line N: `; the first bad line is the one named.
pub(crate) fn read_rows<'a, T>(
    text: &'a str,
    columns: &str,
    bad: impl Fn(String) -> Error,
    mut parse: impl FnMut(Row<'a>, &dyn Fn(&str) -> Error) -> Result<T>,
) -> Result<Vec<T>> {
    let want = columns.split(',').count();
    let mut rows = Vec::new();
    let mut seen_columns = false;
    for (ln, l) in text.lines().enumerate() {
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let line = ln + 1;
        let bad = |m: &str| bad(format!("line {line}: {m}"));
        if !seen_columns {
            if l.trim_end() != columns {
                return Err(bad(&format!(
                    "column names {:?}, want {columns:?} (columns are read in that order)",
                    l.trim_end()
                )));
            }
            seen_columns = true;
            continue;
        }
        let fields: Vec<&str> = l.split(',').collect();
        if fields.len() != want {
            return Err(bad(&format!(
                "{} fields, want {want} ({columns})",
                fields.len()
            )));
        }
        let index = fields[0]
            .parse()
            .map_err(|_| bad("index is not a number"))?;
        let genes = fields[1]
            .split_whitespace()
            .map(|g| g.parse::<usize>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad("genes are not numbers"))?;
        let row = Row {
            index,
            genes,
            fields,
        };
        rows.push(parse(row, &bad)?);
    }
    Ok(rows)
}

/// Appends to the row file `out`, continuing it or starting it. Of an
/// existing file only the whole lines count (a kill mid-row leaves a last
/// line without its newline): `resume` reads and checks them and returns
/// the plan indices they hold, and only then is a last row cut short
/// dropped from the file. A new file (and its folder) is written with
/// `header` and the `columns` line. Returns the indices done and the file
/// opened for appending.
pub(crate) fn start_or_resume(
    out: &Path,
    header: &str,
    columns: &str,
    resume: impl FnOnce(&str) -> Result<HashSet<usize>>,
) -> Result<(HashSet<usize>, std::fs::File)> {
    let done = if out.exists() {
        let text = std::fs::read_to_string(out).map_err(|e| Error::io(out, e))?;
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let done = resume(whole)?;
        if whole.len() < text.len() {
            std::fs::write(out, whole).map_err(|e| Error::io(out, e))?;
        }
        done
    } else {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(out, format!("{header}{columns}\n")).map_err(|e| Error::io(out, e))?;
        HashSet::new()
    };
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(out)
        .map_err(|e| Error::io(out, e))?;
    Ok((done, file))
}

/// Writes the row `row(i, arch)` of each architecture of `plan` whose index
/// is not in `done`, flushing each to `file` (the file `out`) before the
/// next; `progress(done, total)` before the first and after each; stops
/// between two rows once `stop` is set. Returns the rows written and
/// whether it stopped early.
pub(crate) fn append_rows(
    (file, out): (&mut std::fs::File, &Path),
    plan: &[Arch],
    done: &HashSet<usize>,
    stop: &std::sync::atomic::AtomicBool,
    mut progress: impl FnMut(usize, usize),
    mut row: impl FnMut(usize, &Arch) -> Result<String>,
) -> Result<(usize, bool)> {
    let total = plan.len();
    let mut written = 0;
    progress(done.len(), total);
    for (i, arch) in plan.iter().enumerate() {
        if done.contains(&i) {
            continue;
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok((written, true));
        }
        let row = row(i, arch)?;
        file.write_all(row.as_bytes())
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(out, e))?;
        written += 1;
        progress(done.len() + written, total);
    }
    Ok((written, false))
}
