//! Robustness of every input parser against hostile input: a seeded
//! mutation fuzzer (no coverage guidance) over the space parser, the recipe
//! parser, architecture JSON, the IDX reader, config.json loading,
//! safetensors loading, the latency CSV, the latency predictor JSON and
//! the text data files (JSON lines and CSV). Every input must give `Ok` or a clear `Err`: never
//! a panic, and never an allocation above [`MAX_LIVE_BYTES`] (measured by a
//! counting global allocator in this test binary).
//!
//! The default run tries [`CASES`] inputs per parser (seconds). A long run:
//!
//! ```sh
//! VITNAS_FUZZ_SECS=600 cargo test --release --test fuzz -- --ignored --nocapture
//! ```
//!
//! runs each parser for that many seconds with fresh seeds and prints the
//! counts. Inputs that once failed are kept in `REGRESSIONS` below.

mod common;

use common::repo_path;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use vitnas::data::idx::parse_idx_u8;
use vitnas::models::export::load_dir;
use vitnas::space::{Arch, Space};
use vitnas::train::checkpoint::read_weights;
use vitnas::train::recipe::Recipe;

/// The most memory one parse may hold live at once (above what was live
/// before it).
const MAX_LIVE_BYTES: usize = 256 << 20;
const CASES: usize = 300;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One parse at a time, so that the peak belongs to it.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `parse` on `input`; panics (failing the test) with the input when
/// it panics or allocates more than the bound.
fn check(target: &str, input: &[u8], parse: &dyn Fn(&[u8])) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(input)));
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let shown = String::from_utf8_lossy(&input[..input.len().min(4000)]).into_owned();
    assert!(r.is_ok(), "{target}: panicked on input:\n{shown}");
    assert!(
        peak <= MAX_LIVE_BYTES,
        "{target}: {peak} bytes live at once on input:\n{shown}"
    );
}

/// Values that break arithmetic and allocation.
const INTERESTING: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "7",
    "1e300",
    "-1e300",
    "nan",
    "inf",
    "-inf",
    "1e-320",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "1000000000",
    "100000000",
    "1000000000000",
    "\"\"",
    "[]",
    "[0]",
    "{}",
    "true",
    "0.0",
];

/// A mutation of `seed`: byte flips, insertions, deletions, truncation,
/// splices, and numbers replaced by interesting values.
fn mutate(seed: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let n = v.len();
        match rng.random_range(0..7) {
            0 if n > 0 => {
                let i = rng.random_range(0..n);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=n);
                v.insert(i, rng.random());
            }
            2 if n > 0 => {
                let i = rng.random_range(0..n);
                let len = rng.random_range(1..=(n - i).min(16));
                v.drain(i..i + len);
            }
            3 => v.truncate(rng.random_range(0..=n)),
            4 if n > 0 => {
                let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
                let (a, b) = (a.min(b), a.max(b));
                let chunk = v[a..b].to_vec();
                let i = rng.random_range(0..=v.len());
                v.splice(i..i, chunk);
            }
            _ => {
                // Replace a run of digits with an interesting value.
                let starts: Vec<usize> = (0..n)
                    .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
                    .collect();
                if let Some(&s) = starts.get(rng.random_range(0..starts.len().max(1))) {
                    let mut e = s;
                    while e < n && (v[e].is_ascii_digit() || v[e] == b'.') {
                        e += 1;
                    }
                    let val = INTERESTING[rng.random_range(0..INTERESTING.len())];
                    v.splice(s..e, val.bytes());
                }
            }
        }
    }
    v
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A parser under test: it must return (Ok or Err) for any input.
type Parse = Box<dyn Fn(&[u8])>;

struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    parse: Parse,
}

fn text(p: &str) -> Vec<u8> {
    std::fs::read(repo_path(p)).unwrap()
}

fn targets() -> Vec<Target> {
    let fmnist = Space::from_file(repo_path("search_spaces/fmnist-tiny.toml")).unwrap();
    let arch_space = fmnist.clone();
    let cfg_dir = scratch("config");
    let model = repo_path("tests/fixtures/hf-tiny-vit");
    std::fs::copy(
        model.join("model.safetensors"),
        cfg_dir.join("model.safetensors"),
    )
    .unwrap();
    let st_file = scratch("safetensors").join("model.safetensors");
    let bert = repo_path("tests/fixtures/hf-tiny-bert");
    let bert_dir = scratch("bert");
    std::fs::copy(
        bert.join("model.safetensors"),
        bert_dir.join("model.safetensors"),
    )
    .unwrap();
    let idx_path = Path::new("fuzz.idx").to_path_buf();
    // A real (quick) latency measurement and the predictor fitted on it,
    // made once for every test of this binary.
    static LATENCY_SEEDS: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    let (lat_csv_seed, predictor_seed) = LATENCY_SEEDS
        .get_or_init(|| {
            let csv = scratch("latency-seed").join("seed.csv");
            let _ = std::fs::remove_file(&csv);
            let quick = vitnas::latency::dataset::MeasureOptions {
                n: 60,
                batch: 1,
                threads: 1,
                seed: 0,
                protocol: vitnas::latency::Protocol {
                    warmup: 0,
                    runs: 1,
                    trim: 0.0,
                },
            };
            vitnas::latency::dataset::measure(&fmnist, &quick, &csv, |_, _| {}).unwrap();
            let d = vitnas::latency::dataset::read(&csv).unwrap();
            let fitted =
                vitnas::latency::fit::fit(&d.space, &d.samples, 0.2, 0, 5, "seed").unwrap();
            let p = vitnas::latency::Predictor::from_fit(&d, &fitted);
            (
                std::fs::read(&csv).unwrap(),
                serde_json::to_vec_pretty(&p).unwrap(),
            )
        })
        .clone();
    let lat_dir = scratch("latency");
    let (lat_csv, pred_file) = (lat_dir.join("fuzz.csv"), lat_dir.join("fuzz.json"));
    let text_dir = scratch("text");
    let (text_jsonl, text_csv) = (text_dir.join("fuzz.jsonl"), text_dir.join("fuzz.csv"));
    let spam = text("data/spam-sample/train.jsonl");
    let cut = spam
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(3)
        .map_or(spam.len(), |(i, _)| i + 1);
    let text_seeds = vec![
        spam[..cut].to_vec(),
        b"text,label\nhello there,spam\n\"a, \"\"quoted\"\" one\",ham\n".to_vec(),
        b"{\"text\": \"x\", \"label\": 1}\n{\"text\": \"y\", \"label\": 0}\n".to_vec(),
    ];
    let idx_seed = {
        // A real IDX file: 3 images of 4×4 bytes.
        let mut b = vec![0u8, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 4];
        b.extend((0..48).map(|i| i as u8));
        b
    };
    vec![
        Target {
            name: "space",
            seeds: [
                "search_spaces/fmnist-tiny.toml",
                "search_spaces/autoformer-tiny.toml",
            ]
            .iter()
            .map(|p| text(p))
            .collect(),
            parse: Box::new(|b| {
                if let Ok(s) = Space::from_toml_str(&String::from_utf8_lossy(b), "fuzz.toml") {
                    // A space that parses must be usable: sizes, costs, samples.
                    let _ = s.size();
                    let (lo, hi) = (s.smallest(), s.largest());
                    let _ = (
                        vitnas::space::params(&s, &hi),
                        vitnas::space::flops(&s, &lo),
                    );
                    let _ = s.sample(&mut StdRng::seed_from_u64(0));
                }
            }),
        },
        Target {
            name: "recipe",
            seeds: ["recipes/quickstart.toml", "recipes/fmnist-sandwich.toml"]
                .iter()
                .map(|p| text(p))
                .collect(),
            parse: Box::new(|b| {
                let _ = Recipe::from_toml_str(&String::from_utf8_lossy(b), Path::new("fuzz.toml"));
            }),
        },
        Target {
            name: "arch-json",
            seeds: vec![
                text("search_spaces/autoformer-t.arch.json"),
                fmnist.largest().to_json().into_bytes(),
                fmnist.smallest().to_json().into_bytes(),
            ],
            parse: Box::new(move |b| {
                if let Ok(a) = serde_json::from_slice::<Arch>(b) {
                    if a.validate(&arch_space).is_ok() {
                        let _ = vitnas::space::flops(&arch_space, &a);
                        let _ = a.to_genes(&arch_space);
                    }
                    let _ = a.check_fits(&arch_space);
                }
            }),
        },
        Target {
            name: "idx",
            seeds: vec![idx_seed, vec![0, 0, 8, 1, 0, 0, 0, 2, 7, 9]],
            parse: Box::new(move |b| {
                let _ = parse_idx_u8(&idx_path, b);
            }),
        },
        Target {
            name: "config.json",
            seeds: vec![std::fs::read(model.join("config.json")).unwrap()],
            parse: Box::new(move |b| {
                std::fs::write(cfg_dir.join("config.json"), b).unwrap();
                let _ = load_dir(&cfg_dir);
            }),
        },
        Target {
            name: "bert-config.json",
            seeds: vec![std::fs::read(bert.join("config.json")).unwrap()],
            parse: Box::new(move |b| {
                std::fs::write(bert_dir.join("config.json"), b).unwrap();
                let _ = vitnas::models::bert::Bert::load_dir(&bert_dir);
            }),
        },
        Target {
            name: "latency-csv",
            seeds: vec![lat_csv_seed],
            parse: Box::new(move |b| {
                std::fs::write(&lat_csv, b).unwrap();
                let _ = vitnas::latency::dataset::read(&lat_csv);
            }),
        },
        Target {
            name: "predictor.json",
            seeds: vec![predictor_seed],
            parse: Box::new(move |b| {
                std::fs::write(&pred_file, b).unwrap();
                if let Ok(p) = vitnas::latency::Predictor::load(&pred_file) {
                    // A predictor that loads predicts a finite, positive
                    // latency for the space's subnets.
                    let s = p.space().unwrap();
                    for a in [s.smallest(), s.largest()] {
                        let ms = p.predict(&s, &a);
                        assert!(ms.is_finite() && ms > 0.0, "{ms}");
                    }
                }
            }),
        },
        Target {
            name: "text-data",
            seeds: text_seeds,
            parse: Box::new(move |b| {
                let fields = vitnas::data::text::TextFields {
                    text: "text".into(),
                    label: "label".into(),
                };
                for f in [&text_jsonl, &text_csv] {
                    std::fs::write(f, b).unwrap();
                    let _ = vitnas::data::text::load_text(f, &fields, None);
                }
            }),
        },
        Target {
            name: "safetensors",
            seeds: vec![std::fs::read(model.join("model.safetensors")).unwrap()],
            parse: Box::new(move |b| {
                std::fs::write(&st_file, b).unwrap();
                let _ = read_weights(&st_file, &candle_core::Device::Cpu);
            }),
        },
    ]
}

/// Inputs that once broke a parser (kept so that they stay fixed).
const REGRESSIONS: &[(&str, &str)] = &[
    // A config.json with patch_size 0 divided by zero.
    ("config.json", r#"{"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 3, "intermediate_size": 96, "image_size": 28, "patch_size": 0, "num_channels": 1, "id2label": {"0": "a"}}"#),
    // 1e8 layers allocated per-layer lists of 1.6 GB before any check.
    ("config.json", r#"{"hidden_size": 48, "num_hidden_layers": 100000000, "num_attention_heads": 3, "intermediate_size": 96, "image_size": 28, "patch_size": 7, "num_channels": 1, "id2label": {"0": "a"}}"#),
    // A BERT config with 1e12 layers tried to allocate 8 TB.
    ("bert-config.json", r#"{"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1000000000000, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 512, "type_vocab_size": 2}"#),
    // A recipe with log_every = 0 divided by zero.
    ("recipe", "name='x'\nspace='s.toml'\nseed=0\noutput_dir='o'\n[data]\nformat='idx'\nval_size=1\n[sampler]\nkind='uniform'\n[loss]\ndistill={kind='none'}\n[optimizer]\nlr=1e-3\nmin_lr=0.0\nwarmup_lr=0.0\nwarmup_epochs=0.0\nweight_decay=0.0\n[train]\nepochs=1\nbatch_size=1\ncheckpoint_every=1\nlog_every=0\n"),
];

fn run_target(t: &Target, cases: usize, seed: u64) -> usize {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = StdRng::seed_from_u64(seed);
    for s in &t.seeds {
        check(t.name, s, &*t.parse);
    }
    for _ in 0..cases {
        let s = &t.seeds[rng.random_range(0..t.seeds.len())];
        let input = mutate(s, &mut rng);
        check(t.name, &input, &*t.parse);
    }
    cases
}

#[test]
fn every_parser_survives_mutated_inputs_within_the_memory_bound() {
    for t in targets() {
        run_target(&t, CASES, 1);
    }
}

#[test]
fn inputs_that_once_failed_are_clear_errors() {
    let ts = targets();
    for (name, input) in REGRESSIONS {
        let t = ts.iter().find(|t| t.name == *name).unwrap();
        check(name, input.as_bytes(), &*t.parse);
    }
    let recipe = REGRESSIONS.iter().find(|r| r.0 == "recipe").unwrap().1;
    let err = Recipe::from_toml_str(recipe, Path::new("r.toml")).unwrap_err();
    assert!(err.to_string().contains("train.log_every"), "{err}");
}

#[test]
#[ignore = "long fuzzing run: VITNAS_FUZZ_SECS=<seconds per parser>"]
fn long_fuzzing_run() {
    let secs: u64 = std::env::var("VITNAS_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for t in targets() {
        let start = std::time::Instant::now();
        let (mut n, mut round) = (0usize, 0u64);
        while start.elapsed().as_secs() < secs {
            n += run_target(&t, 200, 1000 + round);
            round += 1;
        }
        println!(
            "{}: {n} inputs in {secs} s, no panic, none over {MAX_LIVE_BYTES} bytes",
            t.name
        );
    }
}
