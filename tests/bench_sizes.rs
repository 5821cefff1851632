//! `vitnas bench` at other sizes (issue 32): any space file, a ViT's image
//! and patch size, a text space's sequence length; every mode reports the
//! size it ran at, time per step, throughput, the model FLOPs of a step and
//! the peak resident memory, at tiny counts so the whole file runs in
//! seconds.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use vitnas::space::{flops, Space};

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs `vitnas bench ARGS` in the repository: its JSON line, or its
/// standard error when it failed.
fn bench(args: &[&str]) -> std::result::Result<Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .arg("bench")
        .args(args)
        .current_dir(repo_path(""))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}

fn num(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{field}` in {v}"))
}

/// The space file with its geometry replaced, as the benchmark builds it.
fn space_at(file: &str, edit: impl FnOnce(&mut Space)) -> Space {
    let mut space = Space::from_file(repo_path(file)).unwrap();
    edit(&mut space);
    space
}

/// The fields every sized mode prints, consistent with each other: time
/// per step and throughput describe the same run (`batch` inputs a step),
/// and a Linux process has a peak resident memory.
fn assert_sized(v: &Value, space: &str, tokens: u64, batch: f64) {
    assert_eq!(v["space"], space, "{v}");
    assert_eq!(v["tokens"].as_u64(), Some(tokens), "{v}");
    let (ms, thr) = (num(v, "ms_per_step"), num(v, "throughput"));
    assert!(ms > 0.0 && thr > 0.0, "{v}");
    assert!(
        (thr * ms / 1e3 / batch - 1.0).abs() < 1e-9,
        "throughput {thr}/s and {ms} ms per step of {batch} disagree: {v}"
    );
    assert!(num(v, "model_gflop_per_step") > 0.0, "{v}");
    if cfg!(target_os = "linux") {
        assert!(num(v, "peak_rss_mib") > 1.0, "{v}");
    }
}

#[test]
fn autoformer_tiny_at_64px_patch_16_trains_and_infers_on_17_tokens() {
    let at = ["--image-size", "64", "--patch-size", "16", "--threads", "1"];
    let space = ["--space", "search_spaces/autoformer-tiny.toml"];
    let train = bench(
        &[
            &["train"][..],
            &space,
            &at,
            &["--batch", "2", "--steps", "1", "--warmup", "0"],
        ]
        .concat(),
    )
    .unwrap();
    assert_sized(&train, "autoformer-tiny", 17, 2.0);
    assert_eq!(train["image_size"].as_u64(), Some(64), "{train}");
    assert_eq!(train["patch_size"].as_u64(), Some(16), "{train}");
    assert_eq!(train["throughput_unit"], "images_per_s", "{train}");

    let infer = bench(
        &[
            &["infer"][..],
            &space,
            &at,
            &["--batch", "3", "--iters", "2", "--warmup", "1"],
        ]
        .concat(),
    )
    .unwrap();
    assert_sized(&infer, "autoformer-tiny", 17, 3.0);
    // the FLOPs are those of the largest subnet at 64² (17 tokens), not at
    // the space's own 224² (197 tokens)
    let s = space_at("search_spaces/autoformer-tiny.toml", |s| {
        let i = s.input.as_mut().unwrap();
        i.image_size = 64;
        i.patch_size = 16;
    });
    let want = 2.0 * flops(&s, &s.largest()) as f64 * 3.0 / 1e9;
    let got = num(&infer, "model_gflop_per_step");
    assert!((got / want - 1.0).abs() < 1e-9, "{got} GFLOP, want {want}");
}

#[test]
fn a_text_space_runs_the_text_workload_at_the_asked_length() {
    let space = ["--space", "search_spaces/bert-minilm-mean.toml"];
    let at = ["--seq-len", "24", "--threads", "1"];
    let infer = bench(
        &[
            &["infer"][..],
            &space,
            &at,
            &["--batch", "2", "--iters", "2", "--warmup", "0"],
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(infer["mode"], "bert-infer", "{infer}");
    assert_sized(&infer, "bert-minilm-mean", 24, 2.0);
    assert_eq!(infer["throughput_unit"], "sequences_per_s", "{infer}");
    let s = space_at("search_spaces/bert-minilm-mean.toml", |s| {
        s.text.as_mut().unwrap().seq_len = 24;
    });
    let want = 2.0 * flops(&s, &s.largest()) as f64 * 2.0 / 1e9;
    let got = num(&infer, "model_gflop_per_step");
    assert!((got / want - 1.0).abs() < 1e-9, "{got} GFLOP, want {want}");

    let search = bench(
        &[
            &["search"][..],
            &space,
            &at,
            &["--archs", "2", "--images", "3"],
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(search["mode"], "search", "{search}");
    // one step is one candidate's evaluation of its 3 sequences
    assert_sized(&search, "bert-minilm-mean", 24, 3.0);
}

#[test]
fn sizes_that_do_not_fit_the_space_are_refused_naming_the_field() {
    let err = bench(&["infer", "--seq-len", "64", "--iters", "1"]).unwrap_err();
    assert!(
        err.contains("fmnist-tiny") && err.contains("--seq-len is for text spaces"),
        "{err}"
    );
    let err = bench(&["train", "--image-size", "30", "--steps", "1"]).unwrap_err();
    assert!(
        err.contains("--image-size 30") && err.contains("input.patch_size"),
        "{err}"
    );
    let err = bench(&[
        "infer",
        "--space",
        "search_spaces/bert-minilm.toml",
        "--seq-len",
        "600",
    ])
    .unwrap_err();
    assert!(
        err.contains("text.seq_len") && err.contains("max_position_embeddings 512"),
        "{err}"
    );
    let err = bench(&[
        "search",
        "--space",
        "search_spaces/bert-minilm.toml",
        "--patch-size",
        "8",
    ])
    .unwrap_err();
    assert!(err.contains("for image spaces"), "{err}");
}
