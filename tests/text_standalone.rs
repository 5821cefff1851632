//! One text subnet trained alone, through the binary as a user runs it:
//! `vitnas retrain` from a trained text supernet's weights (inherited) or
//! from the recipe's start, `vitnas finetune` of an export, and `vitnas
//! evaluate rank` on a text supernet. Tiny space on the bundled
//! SpamAssassin sample; the tokenizer is all-MiniLM-L6-v2's (in ../shared).

mod common;

use common::{repo_path, s, vitnas};
use std::path::{Path, PathBuf};

/// A tiny text space and a recipe on the bundled sample (`epochs` epochs
/// at peak learning rate `lr`) in a fresh directory, its supernet trained
/// into `<dir>/run`.
fn trained(tag: &str, epochs: usize, lr: &str) -> PathBuf {
    let dir = common::scratch(&format!("text-sa-{tag}"));
    let space = dir.join("space.toml");
    std::fs::write(&space, common::tiny_text_space_toml(64, "num_classes = 2")).unwrap();
    let data = repo_path("data/spam-sample");
    let recipe =
        common::tiny_text_recipe_toml((&space, &data, &dir.join("run")), 100, "max_len = 32", 5);
    let recipe = with(&recipe, "epochs = 1", &format!("epochs = {epochs}"));
    let recipe = with(&recipe, "\nlr = 1e-3", &format!("\nlr = {lr}"));
    std::fs::write(dir.join("recipe.toml"), recipe).unwrap();
    let (ok, _, err) = vitnas(&["train", s(&dir.join("recipe.toml"))]);
    assert!(ok, "{err}");
    dir
}

/// `text` with `from` (which must be there) replaced by `to`.
fn with(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from}");
    text.replace(from, to)
}

/// Runs the binary, which must succeed, and parses its stdout as JSON.
fn json_of(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = vitnas(args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The metrics lines of a run.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The training loss of the first step (the model's own, before any update).
fn first_loss(dir: &Path) -> f64 {
    let first = metrics(dir)
        .into_iter()
        .find(|l| l["step"] == 1 && l.get("losses").is_some())
        .unwrap();
    first["losses"][0].as_f64().unwrap()
}

#[test]
fn text_retrain_from_inherited_weights_starts_at_the_supernets_accuracy() {
    let dir = trained("inherit", 1, "1e-3");
    let run = dir.join("run");
    // The supernet's smallest subnet on the validation split.
    let eval = json_of(&["eval", "--supernet", s(&run), "--arch", "smallest"]);
    assert_eq!(eval["split"], "val", "{eval}");
    // A learning rate too small to move any weight: the standalone run's
    // first validation (end of epoch 1) is the inherited subnet's.
    let recipe = std::fs::read_to_string(dir.join("recipe.toml")).unwrap();
    let still = with(&recipe, "\nlr = 1e-3", "\nlr = 1e-12");
    let still = with(&still, "min_lr = 1e-5", "min_lr = 0.0");
    let still = with(&still, "warmup_lr = 1e-5", "warmup_lr = 0.0");
    std::fs::write(dir.join("still.toml"), still).unwrap();
    let out = dir.join("inherit-still");
    let summary = json_of(&[
        "retrain",
        "--supernet",
        s(&run),
        "--arch",
        "smallest",
        "--inherit",
        "--recipe",
        s(&dir.join("still.toml")),
        "--output-dir",
        s(&out),
    ]);
    let val = &summary["val_model"];
    assert_eq!(val["accuracy"], eval["accuracy"], "{summary} vs {eval}");
    let (a, b) = (
        val["loss"].as_f64().unwrap(),
        eval["loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "loss {a} vs inherited {b}");
    let first_val = metrics(&out)
        .into_iter()
        .find(|l| l.get("val_model").is_some())
        .unwrap();
    assert_eq!(first_val["val_model"], *val, "one epoch, one validation");
    assert_eq!(summary["test_model"]["examples"], 200, "{summary}");
}

#[test]
fn text_retrain_trains_and_from_scratch_starts_elsewhere() {
    let dir = trained("scratch", 1, "1e-3");
    let run = dir.join("run");
    let inherited = dir.join("inherit");
    let a = json_of(&[
        "retrain",
        "--supernet",
        s(&run),
        "--arch",
        "largest",
        "--inherit",
        "--output-dir",
        s(&inherited),
    ]);
    assert_eq!(
        (a["steps"].as_u64(), a["total_steps"].as_u64()),
        (Some(18), Some(18))
    );
    // It trains: the validation loss falls below the inherited subnet's.
    let eval = json_of(&["eval", "--supernet", s(&run), "--arch", "largest"]);
    let (after, before) = (
        a["val_model"]["loss"].as_f64().unwrap(),
        eval["loss"].as_f64().unwrap(),
    );
    assert!(
        after < before - 1e-3,
        "val loss {after} after, {before} inherited"
    );
    // From the recipe's start (here random, as the recipe has no
    // init_from): another first loss, other weights.
    let scratch = dir.join("scratch");
    let (space, recipe) = (dir.join("space.toml"), dir.join("recipe.toml"));
    let from_space = [
        "retrain",
        "--space",
        s(&space),
        "--recipe",
        s(&recipe),
        "--arch",
        "largest",
        "--output-dir",
        s(&scratch),
    ];
    // Inherited weights need the supernet they come from.
    let (ok, _, err) = vitnas(&[&from_space[..], &["--inherit"]].concat());
    assert!(!ok && err.contains("--supernet"), "{err}");
    assert!(!scratch.exists(), "refused after writing a run directory");
    let b = json_of(&from_space);
    assert_eq!(b["steps"], 18, "{b}");
    let (fi, fs) = (first_loss(&inherited), first_loss(&scratch));
    assert!((fi - fs).abs() > 1e-4, "first losses {fi} and {fs}");
    let wa = std::fs::read(inherited.join("model.safetensors")).unwrap();
    let wb = std::fs::read(scratch.join("model.safetensors")).unwrap();
    assert!(
        wa != wb,
        "inherited and scratch runs ended with the same weights"
    );
    // Both run directories are exported models that `vitnas eval` reads,
    // with the test accuracy their summaries report.
    for (dir, summary) in [(&inherited, &a), (&scratch, &b)] {
        let e = json_of(&[
            "eval",
            "--model",
            s(dir),
            "--data",
            s(&repo_path("data/spam-sample")),
        ]);
        assert_eq!(e["accuracy"], summary["test_model"]["accuracy"], "{e}");
    }
}

#[test]
fn text_finetune_of_an_export_resumes_bit_exactly() {
    let dir = trained("finetune", 1, "1e-3");
    let export = dir.join("export");
    common::export(&dir.join("run"), "smallest", &export);
    let whole = dir.join("ft");
    let a = json_of(&[
        "finetune",
        "--model",
        s(&export),
        "--epochs",
        "2",
        "--output-dir",
        s(&whole),
    ]);
    assert_eq!(a["steps"], 36, "{a}");
    // Interrupted after 11 steps (between checkpoints), then resumed.
    let half = dir.join("ft-half");
    let b = json_of(&[
        "finetune",
        "--model",
        s(&export),
        "--epochs",
        "2",
        "--output-dir",
        s(&half),
        "--max-steps",
        "11",
    ]);
    assert_eq!(b["steps"], 11, "{b}");
    let c = json_of(&["finetune", "--resume", s(&half)]);
    assert_eq!(c["steps"], 36, "{c}");
    for f in [
        "model.safetensors",
        "checkpoint.safetensors",
        "metrics.jsonl",
    ] {
        let (x, y) = (
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(half.join(f)).unwrap(),
        );
        assert!(
            x == y,
            "{f}: a resumed finetune differs from an uninterrupted one"
        );
    }
    assert_eq!(a["test_model"], c["test_model"]);
    // It trained: the finetuned weights are not the export's.
    let w0 = std::fs::read(export.join("model.safetensors")).unwrap();
    let w1 = std::fs::read(whole.join("model.safetensors")).unwrap();
    assert!(w0 != w1, "finetuning changed nothing");
    // A finetuned run finetunes again (it is an export with its recipe).
    let again = json_of(&[
        "finetune",
        "--model",
        s(&whole),
        "--output-dir",
        s(&dir.join("ft-again")),
    ]);
    assert_eq!(again["steps"], 18, "{again}");
}

#[test]
fn text_finetune_refuses_data_with_other_labels() {
    let dir = trained("labels", 1, "1e-3");
    let export = dir.join("export");
    common::export(&dir.join("run"), "smallest", &export);
    // The same texts and classes under other names.
    let renamed = dir.join("renamed");
    std::fs::create_dir_all(&renamed).unwrap();
    for split in ["train.jsonl", "test.jsonl"] {
        let text = std::fs::read_to_string(repo_path("data/spam-sample").join(split)).unwrap();
        let text = text
            .replace("\"label\": \"ham\"", "\"label\": \"good\"")
            .replace("\"label\": \"spam\"", "\"label\": \"bad\"");
        std::fs::write(renamed.join(split), text).unwrap();
    }
    let (ok, _, err) = vitnas(&[
        "finetune",
        "--model",
        s(&export),
        "--data",
        s(&renamed),
        "--output-dir",
        s(&dir.join("ft")),
    ]);
    assert!(!ok);
    assert!(
        err.contains("config.json") && err.contains("id2label") && err.contains("\"good\""),
        "{err}"
    );
    assert!(
        !dir.join("ft").exists(),
        "refused after writing a run directory"
    );
}

#[test]
fn text_rank_writes_kendall_tau_and_its_bootstrap_interval() {
    // Five epochs at 3e-3: the tiny subnets learn past the majority class,
    // so that accuracies differ and τ is defined.
    let dir = trained("rank", 5, "3e-3");
    let out = dir.join("rank");
    let cfg = format!(
        "name = \"tiny-text\"\nsupernet = \"{}\"\noutput_dir = \"{}\"\nk = 4\nseed = 0\n\
         top_k = 2\n[standalone]\nepochs = 4\n",
        dir.join("recipe.toml").display(),
        out.display()
    );
    std::fs::write(dir.join("rank.toml"), cfg).unwrap();
    let res = json_of(&["evaluate", "rank", s(&dir.join("rank.toml"))]);
    assert_eq!(res["complete"], true, "{res}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("rank.json")).unwrap()).unwrap();
    let entries = report["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    for e in entries {
        for f in [
            "inherited_val",
            "inherited_test",
            "standalone_val",
            "standalone_test",
        ] {
            assert!(
                e[f].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)),
                "{e}"
            );
        }
        let sa = PathBuf::from(e["standalone_dir"].as_str().unwrap());
        assert!(sa.join("tokenizer.json").is_file() && sa.join("model.safetensors").is_file());
    }
    let t = &report["test"];
    let tau = t["kendall_tau"].as_f64().expect("τ defined");
    let ci = t["kendall_tau_ci"].as_array().expect("τ's interval");
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(
        (-1.0..=1.0).contains(&tau) && -1.0 <= lo && lo <= hi && hi <= 1.0,
        "τ {tau}, interval [{lo}, {hi}]"
    );
    assert_eq!(res["test"], *t);
    for f in ["rank.csv", "rank.svg", "archs/arch-03.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
}
