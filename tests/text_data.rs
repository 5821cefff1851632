//! Text classification data: JSON lines and CSV files, label ids, errors
//! that name the file and the line, tokenization with the real
//! all-MiniLM-L6-v2 tokenizer (in ../shared; those tests skip without it)
//! and batches padded per batch.

mod common;

use candle_core::Device;
use common::repo_path;
use std::io::Write;
use std::path::{Path, PathBuf};
use vitnas::data::text::{load_text, TextDataset, TextFields, TokenizedDataset};
use vitnas::models::text::TextTokenizer;
use vitnas::Error;

const CLS: u32 = 101;
const SEP: u32 = 102;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vitnas-text-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp(name);
    if name.ends_with(".gz") {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
    } else {
        std::fs::write(&p, bytes).unwrap();
    }
    p
}

fn load(p: &Path) -> vitnas::Result<TextDataset> {
    load_text(p, &TextFields::default(), None)
}

/// Checks that `e` is about line `line` of `path`, and that its message
/// names both and contains each of `needles`.
fn assert_line_error(e: Error, path: &Path, line: usize, needles: &[&str]) {
    let msg = e.to_string();
    match &e {
        Error::DataLine {
            path: p, line: l, ..
        } => {
            assert_eq!((p.as_path(), *l), (path, line), "{msg}");
        }
        other => panic!("expected an error about a line, got {other:?}"),
    }
    assert!(
        msg.starts_with(&format!("{}:{line}: ", path.display())),
        "message does not name file and line: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
}

fn spam_names() -> Vec<String> {
    vec!["ham".into(), "spam".into()]
}

#[test]
fn shipped_spam_sample_loads_with_ham_0_spam_1_and_stratified_counts() {
    let train = load(&repo_path("data/spam-sample/train.jsonl")).unwrap();
    assert_eq!(train.label_names, spam_names());
    assert_eq!((train.len(), train.class_counts()), (400, vec![275, 125]));
    let test = load_text(
        &repo_path("data/spam-sample/test.jsonl"),
        &TextFields::default(),
        Some(&train.label_names),
    )
    .unwrap();
    assert_eq!(test.label_names, spam_names());
    assert_eq!((test.len(), test.class_counts()), (200, vec![136, 64]));
    for t in train.texts.iter().chain(&test.texts) {
        let n = t.chars().count();
        assert!(n <= 1000 && !t.trim().is_empty(), "text of {n} chars");
    }
    let bytes: u64 = ["train.jsonl", "test.jsonl", "README.md"]
        .iter()
        .map(|f| {
            std::fs::metadata(repo_path(&format!("data/spam-sample/{f}")))
                .unwrap()
                .len()
        })
        .sum();
    assert!(bytes < 600 * 1024, "the sample is {bytes} bytes");
}

/// Rows that exercise CSV quoting: commas, quotes, line breaks, non-ASCII.
const ROWS: [(&str, i64); 5] = [
    ("plain text", 1),
    ("a comma, inside", 0),
    ("a \"quoted\" word", 1),
    ("two\nlines, and é ü 漢字", 2),
    ("  leading spaces kept", 0),
];

fn jsonl_of(rows: &[(&str, i64)]) -> String {
    rows.iter()
        .map(|(t, l)| format!("{}\n", serde_json::json!({"label": l, "text": t, "id": 7})))
        .collect()
}

fn csv_of(rows: &[(&str, i64)]) -> String {
    let mut s = String::from("id,text,label\r\n");
    for (t, l) in rows {
        s += &format!("7,\"{}\",{l}\r\n", t.replace('"', "\"\""));
    }
    s
}

#[test]
fn csv_and_jsonl_of_the_same_rows_give_the_same_dataset() {
    let json = load(&write("same.jsonl", jsonl_of(&ROWS).as_bytes())).unwrap();
    let csv = load(&write("same.csv", csv_of(&ROWS).as_bytes())).unwrap();
    assert_eq!(json.texts, ROWS.map(|r| r.0.to_string()));
    assert_eq!(json.labels, vec![1, 0, 1, 2, 0]);
    assert_eq!(json.label_names, ["0", "1", "2"]);
    assert_eq!(
        (&csv.texts, &csv.labels, &csv.label_names),
        (&json.texts, &json.labels, &json.label_names)
    );
    // Gzipped, and with a byte-order mark, they read the same.
    let gz = load(&write("same.jsonl.gz", jsonl_of(&ROWS).as_bytes())).unwrap();
    let bom = format!("\u{feff}{}", csv_of(&ROWS));
    let csv_gz = load(&write("same.csv.gz", bom.as_bytes())).unwrap();
    for d in [&gz, &csv_gz] {
        assert_eq!((&d.texts, &d.labels), (&json.texts, &json.labels));
    }
}

#[test]
fn integer_labels_are_named_by_their_decimal_string_and_sorted_as_numbers() {
    let rows = "{\"text\":\"a\",\"label\":10}\n{\"text\":\"b\",\"label\":2}\n\n\
                {\"text\":\"c\",\"label\":-1}\n{\"text\":\"d\",\"label\":2}\n";
    let d = load(&write("ints.jsonl", rows.as_bytes())).unwrap();
    assert_eq!(d.label_names, ["-1", "2", "10"]);
    assert_eq!(d.labels, [2, 1, 0, 1]);
    // Names that are not all integers sort as strings.
    let d = load(&write("strs.csv", b"text,label\na,b\nc,10\ne,2\n")).unwrap();
    assert_eq!(d.label_names, ["10", "2", "b"]);
}

#[test]
fn field_names_are_configurable_and_default_to_text_and_label() {
    let fields: TextFields = serde_json::from_str("{\"label\": \"y\"}").unwrap();
    assert_eq!((fields.text.as_str(), fields.label.as_str()), ("text", "y"));
    assert_eq!(
        serde_json::from_str::<TextFields>("{}").unwrap(),
        TextFields::default()
    );
    assert!(serde_json::from_str::<TextFields>("{\"txt\": \"a\"}").is_err());
    let fields = TextFields {
        text: "sentence".into(),
        label: "y".into(),
    };
    let j = write("fields.jsonl", b"{\"sentence\":\"hi\",\"y\":\"pos\"}\n");
    let c = write("fields.csv", b"y,sentence\npos,hi\n");
    for p in [j, c] {
        let d = load_text(&p, &fields, None).unwrap();
        assert_eq!(
            (d.texts, d.label_names),
            (vec!["hi".into()], vec!["pos".into()])
        );
    }
}

#[test]
fn missing_text_field_is_an_error_naming_file_and_line() {
    let p = write(
        "no-text.jsonl",
        b"{\"text\":\"ok\",\"label\":\"a\"}\n{\"body\":\"x\",\"label\":\"a\"}\n",
    );
    assert_line_error(load(&p).unwrap_err(), &p, 2, &["`text`", "body, label"]);
}

#[test]
fn missing_label_field_is_an_error_naming_file_and_line() {
    let p = write(
        "no-label.jsonl",
        b"\n{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"x\"}\n",
    );
    assert_line_error(load(&p).unwrap_err(), &p, 3, &["no field `label`"]);
    let p = write("null-label.jsonl", b"{\"text\":\"x\",\"label\":null}\n");
    assert_line_error(load(&p).unwrap_err(), &p, 1, &["`label` is null"]);
    let p = write("float-label.jsonl", b"{\"text\":\"x\",\"label\":1.5}\n");
    assert_line_error(load(&p).unwrap_err(), &p, 1, &["1.5", "integer"]);
}

#[test]
fn empty_or_whitespace_only_text_is_an_error_naming_file_and_line() {
    let p = write(
        "blank.jsonl",
        b"{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\" \\n\\t \",\"label\":\"a\"}\n",
    );
    assert_line_error(load(&p).unwrap_err(), &p, 2, &["`text`", "empty"]);
    let p = write("blank.csv", b"text,label\nok,a\n\"\",a\n");
    assert_line_error(load(&p).unwrap_err(), &p, 3, &["`text`", "empty"]);
}

#[test]
fn non_utf8_bytes_are_an_error_naming_file_and_line() {
    let p = write(
        "latin1.jsonl",
        b"{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"caf\xe9\",\"label\":\"a\"}\n",
    );
    assert_line_error(load(&p).unwrap_err(), &p, 2, &["UTF-8"]);
    let p = write(
        "latin1.csv.gz",
        b"text,label\nok,a\n\"two\nlines\",a\ncaf\xe9,a\n",
    );
    assert_line_error(load(&p).unwrap_err(), &p, 5, &["UTF-8", "`text`"]);
}

#[test]
fn malformed_json_is_an_error_naming_file_and_line() {
    let p = write(
        "broken.jsonl",
        b"{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"x\",\"label\":\"a\"\n",
    );
    assert_line_error(load(&p).unwrap_err(), &p, 2, &["invalid JSON", "column"]);
    let p = write("array.jsonl", b"[\"x\", \"a\"]\n");
    assert_line_error(load(&p).unwrap_err(), &p, 1, &["expected a JSON object"]);
}

#[test]
fn csv_without_the_named_column_is_an_error_naming_the_header() {
    let p = write("cols.csv", b"body,label\nx,a\n");
    assert_line_error(
        load(&p).unwrap_err(),
        &p,
        1,
        &["no column `text`", "columns: body, label"],
    );
}

#[test]
fn csv_record_with_too_few_fields_is_an_error_naming_its_line() {
    let p = write("short.csv", b"text,label\n\"a\nb\",x\nlonely\n");
    assert_line_error(load(&p).unwrap_err(), &p, 4, &["1 field,", "header has 2"]);
}

#[test]
fn empty_file_is_an_error_naming_the_file() {
    for name in [
        "empty.jsonl",
        "empty.csv",
        "empty.jsonl.gz",
        "blank-lines.jsonl",
    ] {
        let body: &[u8] = if name.starts_with("blank") {
            b"\n \n"
        } else {
            b""
        };
        let p = write(name, body);
        let msg = load(&p).unwrap_err().to_string();
        assert_eq!(msg, format!("{}: the file is empty", p.display()));
    }
    let p = write("header-only.csv", b"text,label\n");
    let msg = load(&p).unwrap_err().to_string();
    assert_eq!(msg, format!("{}: no examples in the file", p.display()));
}

#[test]
fn unknown_label_in_a_test_file_is_refused_naming_it_and_the_known_labels() {
    let p = write(
        "test.jsonl",
        b"{\"text\":\"a\",\"label\":\"spam\"}\n{\"text\":\"b\",\"label\":\"eggs\"}\n",
    );
    let e = load_text(&p, &TextFields::default(), Some(&spam_names())).unwrap_err();
    assert_line_error(e, &p, 2, &["`eggs`", "ham, spam"]);
    // A test file may lack some of the training labels; ids are the training set's.
    let p = write("test-ok.jsonl", b"{\"text\":\"a\",\"label\":\"spam\"}\n");
    let d = load_text(&p, &TextFields::default(), Some(&spam_names())).unwrap();
    assert_eq!((d.labels, d.label_names), (vec![1], spam_names()));
}

#[test]
fn unknown_file_extension_is_refused() {
    let p = write("data.tsv", b"text\tlabel\na\tb\n");
    let msg = load(&p).unwrap_err().to_string();
    assert!(msg.contains("data.tsv") && msg.contains(".jsonl"), "{msg}");
}

#[test]
fn validation_split_is_seeded_disjoint_and_complete() {
    let d = load(&repo_path("data/spam-sample/train.jsonl")).unwrap();
    let (t, v) = d.validation_indices(50, 3).unwrap();
    assert_eq!((t.len(), v.len()), (350, 50));
    let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..400).collect::<Vec<_>>());
    assert_eq!(d.validation_indices(50, 3).unwrap(), (t.clone(), v.clone()));
    assert_ne!(d.validation_indices(50, 4).unwrap().1, v);
    let (tr, va) = d.split_validation(50, 3).unwrap();
    assert_eq!(va.texts[0], d.texts[v[0]]);
    assert_eq!(
        (tr.labels[5], &tr.label_names),
        (d.labels[t[5]], &d.label_names)
    );
    assert!(d.validation_indices(400, 3).is_err());
}

fn minilm_tokenizer(max_len: usize) -> Option<TextTokenizer> {
    let p = repo_path("../shared/models/all-MiniLM-L6-v2/tokenizer.json");
    if !p.is_file() {
        eprintln!("skipped: {} not present", p.display());
        return None;
    }
    Some(TextTokenizer::from_file(&p, max_len).unwrap())
}

fn dataset(texts: &[&str]) -> TextDataset {
    TextDataset {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        labels: (0..texts.len() as u32).map(|i| i % 2).collect(),
        label_names: spam_names(),
        source: "in memory".into(),
    }
}

#[test]
fn batch_is_padded_to_its_longest_member_with_mask_zero_exactly_at_padding() {
    let Some(tok) = minilm_tokenizer(64) else {
        return;
    };
    assert_eq!(tok.pad_id(), 0);
    let data = dataset(&[
        "Hi.",
        "A man is eating food.",
        "Free money!!! Click here now to claim your prize, limited offer.",
    ]);
    let enc = TokenizedDataset::new(&data, &tok).unwrap();
    // [CLS] a man is eating food . [SEP]
    assert_eq!(enc.ids[1], [CLS, 1037, 2158, 2003, 5983, 2833, 1012, SEP]);
    let b = enc.batch(&[1, 0, 2], &Device::Cpu).unwrap();
    let lens: Vec<usize> = [1, 0, 2].iter().map(|&i| enc.ids[i].len()).collect();
    assert_eq!(b.lengths, lens);
    let t = *lens.iter().max().unwrap();
    assert_eq!(b.ids.dims(), [3, t]);
    assert_eq!(b.attention_mask.dims(), [3, t]);
    assert_eq!(b.labels.to_vec1::<u32>().unwrap(), [1, 0, 0]);
    let ids = b.ids.to_vec2::<u32>().unwrap();
    let mask = b.attention_mask.to_vec2::<u32>().unwrap();
    for (row, &i) in [1, 0, 2].iter().enumerate() {
        let n = lens[row];
        assert_eq!(ids[row][..n], enc.ids[i][..]);
        assert!(ids[row][n..].iter().all(|&x| x == 0), "pad id 0");
        assert!(mask[row][..n].iter().all(|&m| m == 1));
        assert!(mask[row][n..].iter().all(|&m| m == 0));
        assert_eq!((ids[row][0], ids[row][n - 1]), (CLS, SEP));
    }
    // The unpadded ids are what the padded `encode` gives, less the padding.
    let (pids, pmask) = tok
        .encode(&data.texts.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .unwrap();
    let (pids, pmask) = (
        pids.to_vec2::<u32>().unwrap(),
        pmask.to_vec2::<u32>().unwrap(),
    );
    for i in 0..3 {
        let n = pmask[i].iter().filter(|&&m| m == 1).count();
        assert_eq!(pids[i][..n], enc.ids[i][..]);
    }
    // A batch of one has no padding.
    let one = enc.batch(&[0], &Device::Cpu).unwrap();
    assert_eq!(
        one.attention_mask.to_vec2::<u32>().unwrap(),
        [vec![1; enc.ids[0].len()]]
    );
    assert!(enc.batch(&[], &Device::Cpu).is_err());
    assert!(enc.batch(&[3], &Device::Cpu).is_err());
}

#[test]
fn ids_are_truncated_to_max_len_with_sep_last() {
    let (Some(short), Some(long)) = (minilm_tokenizer(16), minilm_tokenizer(512)) else {
        return;
    };
    let text = "the quick brown fox jumps over the lazy dog ".repeat(10);
    let data = dataset(&[&text, "short one"]);
    let cut = TokenizedDataset::new(&data, &short).unwrap();
    let full = TokenizedDataset::new(&data, &long).unwrap();
    assert_eq!(full.ids[0].len(), 92, "[CLS] + 90 words + [SEP]");
    assert_eq!(cut.ids[0].len(), 16);
    assert_eq!(cut.ids[0][..15], full.ids[0][..15]);
    assert_eq!(cut.ids[0][15], SEP);
    assert_eq!(cut.ids[1], full.ids[1], "short texts are not cut");
    let b = cut.batch(&[0, 1], &Device::Cpu).unwrap();
    assert_eq!(b.ids.dims(), [2, 16]);
}

#[test]
fn full_spam_assassin_corpus_loads_all_rows_with_two_labels() {
    let dir = repo_path("../shared/data/spam-assassin");
    if !dir.is_dir() {
        eprintln!("skipped: {} not present", dir.display());
        return;
    }
    let train = load(&dir.join("train.jsonl.gz")).unwrap();
    assert_eq!(train.label_names, spam_names());
    assert_eq!(
        (train.len(), train.class_counts()),
        (4837, vec![3330, 1507])
    );
    let test = load_text(
        &dir.join("test.jsonl.gz"),
        &TextFields::default(),
        Some(&train.label_names),
    )
    .unwrap();
    assert_eq!((test.len(), test.class_counts()), (1209, vec![820, 389]));
    let Some(tok) = minilm_tokenizer(128) else {
        return;
    };
    let start = std::time::Instant::now();
    let enc = TokenizedDataset::new(&train, &tok).unwrap();
    eprintln!(
        "tokenized {} e-mails in {:.2} s",
        enc.len(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(enc.len(), 4837);
    assert!(enc
        .ids
        .iter()
        .all(|s| s.len() <= 128 && s[0] == CLS && s[s.len() - 1] == SEP));
}

/// A huge line is cut before it is tokenized (with a margin, at a
/// whitespace), so its memory is bounded by `max_len`, not by the line;
/// the ids are those of the whole text: a prefix that gives fewer than
/// `max_len` tokens (here, one hidden behind 200,000 spaces) is grown until
/// it fills them.
#[test]
fn a_huge_line_is_cut_before_tokenizing_and_gives_the_whole_texts_ids() {
    let Some(tok) = minilm_tokenizer(16) else {
        return;
    };
    let words = "the quick brown fox jumps over the lazy dog ";
    let huge = words.repeat(200_000); // 8.8 MB
    let short = words.repeat(4);
    let ids = tok.encode_ids(&[&huge, &short]).unwrap();
    assert_eq!(ids[0].len(), 16);
    assert_eq!(ids[0], ids[1]);
    let spaced = format!("hello{}{}", " ".repeat(200_000), words.repeat(50_000));
    let plain = format!("hello {}", words.repeat(4));
    let ids = tok.encode_ids(&[&spaced, &plain]).unwrap();
    assert_eq!(ids[0].len(), 16);
    assert_eq!(ids[0], ids[1]);
    // Short texts are untouched.
    let ids = tok.encode_ids(&["hello", "hello world"]).unwrap();
    assert!(ids[0].len() == 3 && ids[1].len() == 4, "{ids:?}");
}
