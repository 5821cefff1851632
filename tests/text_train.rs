//! Text supernets end to end through the binary, as a user runs them: train
//! on the bundled SpamAssassin sample, resume bit-exactly, search, export in
//! `BertForSequenceClassification` layout (loaded by candle-transformers'
//! BERT), evaluate the export on a JSON-lines file. A tiny space keeps it
//! fast; the tokenizer is all-MiniLM-L6-v2's (in ../shared).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, minilm_tokenizer as tokenizer, repo_path, s, vitnas};
use std::path::{Path, PathBuf};

/// A tiny text space and a one-epoch recipe on the bundled sample, in a
/// fresh directory.
fn setup(tag: &str) -> PathBuf {
    let dir = common::scratch(&format!("text-{tag}"));
    let space = dir.join("space.toml");
    std::fs::write(&space, common::tiny_text_space_toml(64, "num_classes = 2")).unwrap();
    let data = repo_path("data/spam-sample");
    let recipe =
        common::tiny_text_recipe_toml((&space, &data, &dir.join("run")), 100, "max_len = 32", 5);
    std::fs::write(dir.join("recipe.toml"), recipe).unwrap();
    dir
}

#[test]
fn text_supernet_trains_resumes_bit_exactly_searches_and_exports() {
    let dir = setup("e2e");
    let recipe = dir.join("recipe.toml");
    let run = dir.join("run");
    let (ok, out, err) = vitnas(&["train", s(&recipe)]);
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["steps"], 18, "{out}");
    for which in ["test_largest", "test_smallest"] {
        let a = summary[which]["accuracy"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&a) && summary[which]["examples"] == 200,
            "{out}"
        );
    }
    for f in [
        "labels.json",
        "tokenizer.json",
        "supernet.safetensors",
        "checkpoint.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }

    // Interrupted after 7 steps, resumed: the same weights, byte for byte.
    let half = dir.join("half");
    let (ok, _, err) = vitnas(&[
        "train",
        s(&recipe),
        "--output-dir",
        s(&half),
        "--max-steps",
        "7",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = vitnas(&["train", "--resume", s(&half)]);
    assert!(ok, "{err}");
    let a = std::fs::read(run.join("supernet.safetensors")).unwrap();
    let b = std::fs::read(half.join("supernet.safetensors")).unwrap();
    assert!(
        a == b,
        "a resumed text run differs from an uninterrupted one"
    );
    // Its metrics too, line for line; every step line logs its padded
    // sequence length, and the last line holds the test results.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let resumed = std::fs::read_to_string(half.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics, resumed, "a resumed text run logs other metrics");
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = lines.iter().filter(|l| l.get("losses").is_some());
    assert_eq!(steps.clone().count(), 18, "{metrics}");
    assert!(steps
        .clone()
        .all(|l| l["tokens"].as_u64().is_some_and(|t| t <= 32)));
    let last = lines.last().unwrap();
    assert!(
        last["test"] == true && last["test_largest"]["examples"] == 200,
        "{last}"
    );

    // Search under a FLOPs bound: every record within it.
    let (ok, out, err) = vitnas(&[
        "search",
        s(&run),
        "--generations",
        "2",
        "--population",
        "12",
        "--val-subset",
        "40",
        "--flops-max",
        "300000",
        "--top-k",
        "2",
    ]);
    assert!(ok, "{err}");
    let res: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(res["best"]["flops"].as_u64().unwrap() <= 300_000, "{out}");
    let arch1 = run.join("search-evolution/arch-1.json");
    assert!(arch1.is_file());

    // HAT: a latency dataset of the space, its predictor, and a search
    // under 0.9 × the largest subnet's measured latency that times no
    // candidate (only the largest, for the bound, and the top-k at the end).
    // This tiny model runs in microseconds, where one timing can be half
    // of the predictor's (measured under load: 0.015 against 0.026 ms);
    // at 0.5 the bound could then fall below every prediction.
    let csv = dir.join("latency.csv");
    let pred = dir.join("latency.predictor.json");
    let space = run.join("space.toml");
    let (ok, _, err) = vitnas(&[
        "latency",
        "measure",
        s(&space),
        "--n",
        "60",
        "--warmup",
        "1",
        "--runs",
        "5",
        "--out",
        s(&csv),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = vitnas(&[
        "latency",
        "fit",
        s(&csv),
        "--out",
        s(&pred),
        "--mlp-steps",
        "200",
    ]);
    assert!(ok, "{err}");
    let hat = |fraction: &str, out: &str| {
        vitnas(&[
            "search",
            s(&run),
            "--generations",
            "2",
            "--population",
            "12",
            "--val-subset",
            "40",
            "--predictor",
            s(&pred),
            "--latency-fraction",
            fraction,
            "--top-k",
            "2",
            "--out",
            s(&run.join(out)),
        ])
    };
    let (ok, out, err) = hat("0.9", "search-hat");
    assert!(ok, "{err}");
    let res: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b = &res["latency_budget"];
    let (largest, max) = (
        b["largest_ms"].as_f64().unwrap(),
        b["max_ms"].as_f64().unwrap(),
    );
    assert!(largest > 0.0 && (max - 0.9 * largest).abs() < 1e-9, "{out}");
    // With a predictor the largest's latency is predicted, as the
    // candidates' are: the same figure `latency predict` gives.
    assert_eq!(b["largest_how"], "predicted", "{out}");
    let largest_file = run.join("largest-arch.json");
    let (ok, arch, err) = vitnas(&["arch", "sample", s(&run.join("space.toml")), "--largest"]);
    assert!(ok, "{err}");
    std::fs::write(&largest_file, arch).unwrap();
    let (ok, p, err) = vitnas(&["latency", "predict", s(&pred), s(&largest_file)]);
    assert!(ok, "{err}");
    let p: serde_json::Value = serde_json::from_str(&p).unwrap();
    assert!(
        (p["predicted_ms"].as_f64().unwrap() - largest).abs() < 1e-9,
        "{p} vs {out}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("search-hat/search-state.json")).unwrap(),
    )
    .unwrap();
    for r in state["records"].as_array().unwrap() {
        assert!(r["latency_ms"].is_null(), "a candidate was timed: {r}");
        assert!(r["predicted_latency_ms"].as_f64().unwrap() <= max, "{r}");
    }
    assert_eq!(
        res["latency_check"]["rows"].as_array().unwrap().len(),
        2,
        "{out}"
    );
    // A bound below every prediction, and a fraction above 1: clear errors.
    let (ok, _, err) = hat("0.001", "search-too-tight");
    assert!(
        !ok && err.contains("below the smallest subnet's predicted latency"),
        "{err}"
    );
    let (ok, _, err) = hat("1.5", "search-bad-fraction");
    assert!(!ok && err.contains("latency_fraction"), "{err}");

    // The largest (4 heads × 8 = hidden 32): transformers' layout, loaded
    // by candle-transformers' BERT with the same hidden states.
    let exp = dir.join("export");
    let out = common::export(&run, "largest", &exp);
    assert!(
        out.contains("BertForSequenceClassification layout"),
        "{out}"
    );
    let (ours, _) = vitnas::models::export_bert::load_dir(&exp).unwrap();
    let ids = Tensor::new(
        &[
            [101u32, 7592, 2088, 102, 0, 0],
            [101, 2023, 2003, 1037, 3231, 102],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    let want = ours.forward(&ids, &mask).unwrap();
    let theirs = candle_transformers_hidden(&exp, &ids, &mask);
    // Padded positions differ by convention only where masked: compare
    // the tokens.
    let d = max_abs_diff(
        &want.hidden_states.last().unwrap().narrow(1, 0, 4).unwrap(),
        &theirs.narrow(1, 0, 4).unwrap(),
    );
    assert!(d < 1e-4, "candle-transformers differs by {d}");

    // The export evaluated on the test file gives the supernet's accuracy
    // of the same subnet.
    let (ok, out, err) = vitnas(&[
        "eval",
        "--model",
        s(&exp),
        "--data",
        "data/spam-sample/test.jsonl",
    ]);
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (ok, out2, err) = vitnas(&[
        "eval",
        "--supernet",
        s(&run),
        "--arch",
        "largest",
        "--split",
        "test",
    ]);
    assert!(ok, "{err}");
    let e2: serde_json::Value = serde_json::from_str(&out2).unwrap();
    assert_eq!(e["accuracy"], e2["accuracy"], "{out} vs {out2}");
    assert_eq!(e["examples"], 200);

    // A searched (non-uniform) subnet: vitnas layout, or with --hf-pad
    // transformers' layout computing the same logits.
    let padded = dir.join("padded");
    let (ok, _, err) = vitnas(&[
        "export",
        "--supernet",
        s(&run),
        "--arch",
        s(&arch1),
        "--out",
        s(&padded),
        "--hf-pad",
    ]);
    assert!(ok || err.contains("no padding makes this"), "{err}");
    if ok {
        let plain = dir.join("plain");
        common::export(&run, s(&arch1), &plain);
        let (p, _) = vitnas::models::export_bert::load_dir(&padded).unwrap();
        let (q, _) = vitnas::models::export_bert::load_dir(&plain).unwrap();
        let d = max_abs_diff(
            &p.forward(&ids, &mask).unwrap().logits.unwrap(),
            &q.forward(&ids, &mask).unwrap().logits.unwrap(),
        );
        assert!(d < 1e-5, "padding changed the logits by {d}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn candle_transformers_hidden(dir: &Path, ids: &Tensor, mask: &Tensor) -> Tensor {
    use candle_transformers::models::bert::{BertModel, Config};
    let cfg: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = BertModel::load(vb, &cfg).unwrap();
    let types = ids.zeros_like().unwrap();
    model.forward(ids, &types, Some(mask)).unwrap()
}

#[test]
fn text_recipe_errors_name_the_field_or_file() {
    let dir = setup("errors");
    let recipe = dir.join("recipe.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    // No [data.text] section.
    let bad = dir.join("no-text.toml");
    let cut = text
        .replace("[data.text]\nmax_len = 32\n", "")
        .replace(&format!("tokenizer = \"{}\"\n", tokenizer().display()), "");
    std::fs::write(&bad, cut).unwrap();
    let (ok, _, err) = vitnas(&["train", s(&bad)]);
    assert!(!ok && err.contains("data.text"), "{err}");
    // A data directory without a train file.
    let (ok, _, err) = vitnas(&["train", s(&recipe), "--data", s(&dir)]);
    assert!(!ok && err.contains("no train file"), "{err}");
    // A max_len that leaves no room for the text, or that no position
    // embedding covers: refused naming data.text.max_len, before training.
    for (len, want) in [
        ("0", "minimum is 3"),
        ("2", "minimum is 3"),
        ("100000", "max_position_embeddings"),
    ] {
        let bad = dir.join(format!("len-{len}.toml"));
        std::fs::write(
            &bad,
            text.replace("max_len = 32", &format!("max_len = {len}")),
        )
        .unwrap();
        let (ok, _, err) = vitnas(&["train", s(&bad)]);
        assert!(
            !ok && err.contains("data.text.max_len") && err.contains(want),
            "{len}: {err}"
        );
    }
    // A tokenizer file that does not exist is named as such (not looked up
    // as a pretrained model on the hub).
    let bad = dir.join("no-tokenizer.toml");
    let missing = dir.join("nowhere/tokenizer.json");
    std::fs::write(
        &bad,
        text.replace(
            &tokenizer().display().to_string(),
            &missing.display().to_string(),
        ),
    )
    .unwrap();
    let (ok, _, err) = vitnas(&["train", s(&bad)]);
    assert!(
        !ok && err.contains("data.text.tokenizer") && err.contains("file not found"),
        "{err}"
    );
    // A test file that cannot be used is found before the first step,
    // naming its line; a missing one is no error: the run finishes (and
    // stays resumable) with a summary that says why it has no test results.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        repo_path("data/spam-sample/train.jsonl"),
        data.join("train.jsonl"),
    )
    .unwrap();
    std::fs::write(
        data.join("test.jsonl"),
        "{\"text\": \"a\", \"label\": \"ham\"}\n{\"text\": \"b\", \"label\": \"eggs\"}\n",
    )
    .unwrap();
    let early = dir.join("run-bad-test");
    let (ok, _, err) = vitnas(&[
        "train",
        s(&recipe),
        "--data",
        s(&data),
        "--output-dir",
        s(&early),
    ]);
    assert!(
        !ok && err.contains("test.jsonl:2") && err.contains("eggs"),
        "{err}"
    );
    assert!(!early.join("checkpoint.safetensors").exists());
    std::fs::remove_file(data.join("test.jsonl")).unwrap();
    let (ok, out, err) = vitnas(&[
        "train",
        s(&recipe),
        "--data",
        s(&data),
        "--output-dir",
        s(&dir.join("run-no-test")),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("test_error") && out.contains("no test file"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
