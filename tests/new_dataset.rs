//! What a new user meets on a new text dataset (issue 33), through the
//! binary: the classes come from the data's labels (a space that states
//! another number is refused, naming both), the cost length from the
//! recipe; `eval --dump` holds what it writes, not every example's
//! activations; eval reports macro-F1, per-class scores and confusion
//! counts; a search prints every bound in force and drops the recipe's with
//! `--no-recipe-bounds`. The tokenizer is all-MiniLM-L6-v2's (../shared).

mod common;

use common::{repo_path, s, scratch, vitnas};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The bundled spam sample relabelled into three classes (`ham`, `spam`,
/// and `eggs` for every third line), as train.jsonl and test.jsonl.
fn three_class_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for split in ["train", "test"] {
        let text =
            std::fs::read_to_string(repo_path(&format!("data/spam-sample/{split}.jsonl"))).unwrap();
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            if i % 3 == 0 {
                v["label"] = "eggs".into();
            }
            out += &format!("{v}\n");
        }
        std::fs::write(data.join(format!("{split}.jsonl")), out).unwrap();
    }
    data
}

/// A tiny text space (`classes`: the num_classes line, or none) and a
/// recipe stating the cost length 24 (the space says 32).
fn setup(dir: &Path, data: &Path, classes: &str, max_len: usize) -> PathBuf {
    let space = dir.join("space.toml");
    std::fs::write(&space, common::tiny_text_space_toml(128, classes)).unwrap();
    let recipe = dir.join("recipe.toml");
    let text = format!("max_len = {max_len}\ncost_seq_len = 24");
    let toml = common::tiny_text_recipe_toml((&space, data, &dir.join("run")), 60, &text, 1);
    std::fs::write(&recipe, toml).unwrap();
    recipe
}

#[test]
fn a_text_run_takes_its_classes_from_the_data_and_its_cost_length_from_the_recipe() {
    let dir = scratch("new-classes");
    let data = three_class_data(&dir);
    // A space that states 2 classes is refused before training, naming
    // both numbers, the space file and the data file.
    let recipe = setup(&dir, &data, "num_classes = 2", 32);
    let (ok, _, err) = vitnas(&["train", s(&recipe), "--max-steps", "2"]);
    assert!(!ok, "a 2-class space trained on 3 classes");
    for want in [
        "3 classes",
        "num_classes = 2",
        s(&dir.join("space.toml")),
        s(&data.join("train.jsonl")),
    ] {
        assert!(err.contains(want), "no {want:?} in: {err}");
    }
    assert!(!dir.join("run/checkpoint.safetensors").exists());
    // One that states 3 trains, as does one that states none.
    for (tag, classes) in [("stated", "num_classes = 3"), ("left-out", "")] {
        let recipe = setup(&dir, &data, classes, 32);
        let run = dir.join(format!("run-{tag}"));
        let (ok, _, err) = vitnas(&[
            "train",
            s(&recipe),
            "--max-steps",
            "2",
            "--output-dir",
            s(&run),
        ]);
        assert!(ok, "{tag}: {err}");
        // The data summary: examples, classes, token lengths, cuts.
        assert!(
            err.contains("3 classes (eggs ") && err.contains("p50") && err.contains("max_len 32"),
            "{tag}: {err}"
        );
        let space: toml::Value =
            toml::from_str(&std::fs::read_to_string(run.join("space.toml")).unwrap()).unwrap();
        assert_eq!(space["text"]["num_classes"].as_integer(), Some(3), "{tag}");
        assert_eq!(space["text"]["seq_len"].as_integer(), Some(24), "{tag}");
        // Eval states costs at that length and reports the three classes.
        let (ok, out, err) = vitnas(&["eval", "--supernet", s(&run), "--split", "test"]);
        assert!(ok, "{tag}: {err}");
        let e: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(e["flops_at_tokens"], 24, "{out}");
        check_class_report(&e, 3);
        assert!(err.contains("macro-F1"), "no per-class table: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `classes` of an eval report: one row per class, confusion counts that
/// add up to the examples with the correct ones on the diagonal, and a
/// macro-F1 that is the mean of the per-class F1.
fn check_class_report(e: &serde_json::Value, n: usize) {
    let c = &e["classes"];
    let rows = c["per_class"].as_array().expect("per_class");
    assert_eq!(rows.len(), n, "{c}");
    let counts: Vec<Vec<u64>> = serde_json::from_value(c["confusion"]["counts"].clone()).unwrap();
    assert_eq!(counts.len(), n);
    let total: u64 = counts.iter().flatten().sum();
    assert_eq!(total, e["examples"].as_u64().unwrap(), "{c}");
    let diag: u64 = (0..n).map(|i| counts[i][i]).sum();
    let acc = e["accuracy"].as_f64().unwrap();
    assert!(
        (diag as f64 / total as f64 - acc).abs() < 1e-9,
        "diagonal {diag}/{total} vs accuracy {acc}"
    );
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(
            r["support"].as_u64().unwrap(),
            counts[i].iter().sum::<u64>()
        );
    }
    let present: Vec<f64> = rows
        .iter()
        .filter(|r| r["support"].as_u64().unwrap() + r["predicted"].as_u64().unwrap() > 0)
        .map(|r| r["f1"].as_f64().unwrap())
        .collect();
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    assert!((c["macro_f1"].as_f64().unwrap() - mean).abs() < 1e-9, "{c}");
}

/// The peak resident memory (VmHWM, KiB) of `vitnas args`, read from
/// /proc while it runs, and whether it succeeded.
fn peak_rss_kib(args: &[&str]) -> (bool, u64, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args(args)
        .current_dir(repo_path(""))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let code = loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code.success(), peak, err)
}

/// 4,000 texts of 128 tokens through a model with 128-token attention:
/// one batch of every example (the old dump) holds about 0.6 MB per
/// example, over 2 GB; the dump gathers logits batch by batch and holds a
/// few KB per example. Bound: 400 MB peak for the whole process.
#[test]
fn eval_dump_of_a_text_model_holds_what_it_writes_not_every_activation() {
    let dir = scratch("new-dump");
    let data = three_class_data(&dir);
    let recipe = setup(&dir, &data, "", 128);
    let run = dir.join("run");
    let (ok, _, err) = vitnas(&["train", s(&recipe), "--max-steps", "1"]);
    assert!(ok, "{err}");
    let exp = dir.join("export");
    common::export(&run, "largest", &exp);
    // Long texts: every one reaches max_len.
    let n = 4000;
    let big = dir.join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
    let words = "lorem ipsum dolor sit amet consectetur adipiscing elit ".repeat(40);
    for i in 0..n {
        let label = ["ham", "spam", "eggs"][i % 3];
        writeln!(
            f,
            "{}",
            serde_json::json!({"text": format!("{i} {words}"), "label": label})
        )
        .unwrap();
    }
    drop(f);
    let dump = dir.join("dump.safetensors");
    let (ok, peak, err) = peak_rss_kib(&[
        "eval",
        "--model",
        s(&exp),
        "--data",
        s(&big),
        "--dump",
        s(&dump),
    ]);
    assert!(ok, "{err}");
    let bound = 400 * 1024;
    assert!(
        peak < bound,
        "eval --dump of {n} texts peaked at {} MB (bound {} MB)",
        peak / 1024,
        bound / 1024
    );
    let t = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["input_ids"].dims(), &[n, 128]);
    assert_eq!(t["attention_mask"].dims(), &[n, 128]);
    assert_eq!(t["logits"].dims(), &[n, 3]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recipe with a latency bound, searched with --flops-max: the search
/// says both bounds and where each came from; --no-recipe-bounds drops the
/// recipe's, leaving the flag's.
#[test]
fn search_prints_every_bound_in_force_and_drops_the_recipes_on_request() {
    let dir = scratch("new-bounds");
    let mut r =
        vitnas::train::recipe::Recipe::from_file(repo_path("recipes/quickstart.toml")).unwrap();
    common::on_fmnist_sample(&mut r, "fmnist-tiny", 64, 16);
    r.data.val_size = 32;
    r.train.epochs = 1;
    r.output_dir = dir.join("run");
    r.search.constraints.latency_ms_max = Some(1000.0);
    r.search.constraints.params_max = Some(10_000_000);
    let recipe = dir.join("recipe.toml");
    std::fs::write(&recipe, r.to_toml_string()).unwrap();
    let (ok, _, err) = vitnas(&["train", s(&recipe), "--max-steps", "1"]);
    assert!(ok, "{err}");
    let run = dir.join("run");
    let search = |out: &str, extra: &[&str]| {
        let o = dir.join(out);
        let mut args = vec![
            "search",
            s(&run),
            "--out",
            s(&o),
            "--population",
            "4",
            "--parents",
            "2",
            "--mutations",
            "1",
            "--crossovers",
            "1",
            "--generations",
            "1",
            "--val-subset",
            "16",
            "--flops-max",
            "1000000000",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = vitnas(&args);
        assert!(ok, "{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("bounds in force"))
            .unwrap_or_else(|| panic!("no bounds line in: {err}"))
            .to_string();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (line, v["bounds"].clone(), err)
    };
    let (line, bounds, err) = search("kept", &[]);
    assert!(
        line.contains("latency ≤ 1000 ms") && line.contains("[recipe]"),
        "{line}"
    );
    assert!(line.contains("params ≤ 10000000 [recipe]"), "{line}");
    assert!(
        line.contains("multiply-adds ≤ 1000000000 [--flops-max]"),
        "{line}"
    );
    assert!(err.contains("--no-recipe-bounds"), "{err}");
    assert_eq!(bounds["latency_ms_max"], 1000.0);
    let (line, bounds, _) = search("dropped", &["--no-recipe-bounds"]);
    assert!(
        !line.contains("latency") && !line.contains("params"),
        "{line}"
    );
    assert!(line.contains("[--flops-max]"), "{line}");
    assert!(bounds["latency_ms_max"].is_null(), "{bounds}");
    assert!(bounds["params_max"].is_null(), "{bounds}");
    assert_eq!(bounds["flops_max"], 1_000_000_000u64);
    let _ = std::fs::remove_dir_all(&dir);
}
