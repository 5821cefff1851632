//! The `vitnas` binary, run as a user would.

mod common;

use common::{repo_path, s, vitnas, vitnas_env};
use std::process::Command;

#[test]
fn arch_params_prints_the_autoformer_t_count_with_off_grid() {
    let (ok, out, err) = vitnas(&[
        "arch",
        "params",
        "search_spaces/autoformer-tiny.toml",
        "search_spaces/autoformer-t.arch.json",
        "--off-grid",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("params 5768104"), "{out}");
    let (ok, _, err) = vitnas(&[
        "arch",
        "params",
        "search_spaces/autoformer-tiny.toml",
        "search_spaces/autoformer-t.arch.json",
    ]);
    assert!(!ok);
    assert!(
        err.contains("mlp_ratio[2]") && err.contains("--off-grid"),
        "{err}"
    );
}

#[test]
fn space_show_reports_size_params_and_flops() {
    let (ok, out, err) = vitnas(&["space", "show", "search_spaces/fmnist-tiny.toml"]);
    assert!(ok, "{err}");
    assert!(out.contains("1791153 architectures"), "{out}");
    assert!(out.contains("139018 .. 1199882"), "{out}");
    assert!(out.contains("7884416 .. 62924032 multiply-adds"), "{out}");
}

#[test]
fn arch_sample_is_seeded_and_valid_json() {
    let (ok, a, err) = vitnas(&[
        "arch",
        "sample",
        "search_spaces/fmnist-tiny.toml",
        "--seed",
        "5",
    ]);
    assert!(ok, "{err}");
    let (_, b, _) = vitnas(&[
        "arch",
        "sample",
        "search_spaces/fmnist-tiny.toml",
        "--seed",
        "5",
    ]);
    assert_eq!(a, b);
    let arch: vitnas::Arch = serde_json::from_str(&a).unwrap();
    arch.validate(&common::space("fmnist-tiny")).unwrap();
    let (_, l, _) = vitnas(&[
        "arch",
        "sample",
        "search_spaces/fmnist-tiny.toml",
        "--largest",
    ]);
    let l: vitnas::Arch = serde_json::from_str(&l).unwrap();
    assert_eq!(l, common::space("fmnist-tiny").largest());
}

#[test]
fn bad_space_file_fails_with_the_path_in_the_message() {
    let (ok, _, err) = vitnas(&["space", "show", "search_spaces/missing.toml"]);
    assert!(!ok);
    assert!(err.contains("search_spaces/missing.toml"), "{err}");
}

#[test]
fn help_lists_every_subcommand() {
    let (ok, out, _) = vitnas(&["--help"]);
    assert!(ok);
    for sub in ["space", "arch"] {
        assert!(out.contains(sub), "{out}");
    }
}

/// A long-running recipe on the bundled sample, written to a temp dir.
fn long_recipe(tag: &str, checkpoint_every: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("vitnas-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut r =
        vitnas::train::recipe::Recipe::from_file(repo_path("recipes/quickstart.toml")).unwrap();
    common::on_fmnist_sample(&mut r, "fmnist-tiny", 512, 16);
    r.train.epochs = 100;
    r.train.checkpoint_every = checkpoint_every;
    r.output_dir = dir.join("run");
    let path = dir.join("recipe.toml");
    std::fs::write(&path, r.to_toml_string()).unwrap();
    (path, dir.join("run"))
}

/// `vitnas train <recipe>` in the background, its output discarded.
fn spawn_train(recipe: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args(["train", recipe.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn steps_logged(run: &std::path::Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .matches("\"losses\"")
        .count()
}

fn wait_for_steps(run: &std::path::Path, n: usize) {
    let t0 = std::time::Instant::now();
    while steps_logged(run) < n {
        assert!(t0.elapsed().as_secs() < 120, "training made no progress");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Resumes `run` up to step `steps`, which its summary must report.
fn resume_to(run: &std::path::Path, steps: u64) {
    let max = steps.to_string();
    let (ok, out, err) = vitnas(&["train", "--resume", s(run), "--max-steps", &max]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\"steps\": {steps}")), "{out}");
}

fn state_step(run: &std::path::Path) -> u64 {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    s["step"].as_u64().unwrap()
}

#[test]
fn sigint_finishes_the_step_writes_a_checkpoint_and_resume_continues() {
    let (recipe, run) = long_recipe("sigint", 1000);
    let child = Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args(["train", recipe.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&run, 3);
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Interrupted, checkpointed and resumable: exit code 75, not success.
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("train --resume"), "{stderr}");
    assert!(stdout.contains("\"interrupted\": true"), "{stdout}");
    let step = state_step(&run);
    assert!(
        step >= 3 && step as usize == steps_logged(&run),
        "checkpoint at {step}"
    );
    resume_to(&run, step + 2);
    std::fs::remove_dir_all(run.parent().unwrap()).ok();
}

#[test]
fn kill_9_loses_at_most_the_steps_since_the_last_checkpoint() {
    let (recipe, run) = long_recipe("kill9", 1);
    let mut child = spawn_train(&recipe);
    wait_for_steps(&run, 4);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The checkpoint on disk is whole (never half-written) and resumes.
    let step = state_step(&run);
    assert!(step >= 3, "{step}");
    resume_to(&run, step + 1);
    std::fs::remove_dir_all(run.parent().unwrap()).ok();
}

#[test]
fn a_second_train_on_a_run_in_use_is_refused_and_a_killed_runs_lock_is_taken_over() {
    let (recipe, run) = long_recipe("lock", 1);
    let mut child = spawn_train(&recipe);
    wait_for_steps(&run, 2);
    let dir = run.to_str().unwrap();
    let (ok, _, err) = vitnas(&["train", "--resume", dir, "--max-steps", "3"]);
    assert!(!ok);
    assert!(
        err.contains(dir)
            && err.contains("in use by another vitnas process")
            && err.contains(&format!("pid {}", child.id())),
        "{err}"
    );
    // A new run with the same output_dir is refused too.
    let (ok, _, err) = vitnas(&["train", recipe.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains(dir), "{err}");
    child.kill().unwrap(); // SIGKILL: the lock file stays behind, stale
    child.wait().unwrap();
    assert!(run.join(vitnas::train::rundir::LOCK_FILE).exists());
    let step = state_step(&run);
    resume_to(&run, step + 1);
    // Released on exit.
    assert!(!run.join(vitnas::train::rundir::LOCK_FILE).exists());
    std::fs::remove_dir_all(run.parent().unwrap()).ok();
}

#[test]
fn export_refuses_a_training_run_and_an_existing_model_without_force() {
    let (recipe, run) = long_recipe("export-safety", 1000);
    let dir = run.to_str().unwrap();
    let (ok, _, err) = vitnas(&["train", recipe.to_str().unwrap(), "--max-steps", "1"]);
    assert!(ok, "{err}");
    let recipe_before = std::fs::read(run.join("recipe.toml")).unwrap();
    // Into the run itself, or any training run: refused, even with --force.
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec![
            "export",
            "--supernet",
            dir,
            "--arch",
            "smallest",
            "--out",
            dir,
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = vitnas(&args);
        assert!(!ok);
        assert!(err.contains(dir), "{err}");
    }
    assert_eq!(
        std::fs::read(run.join("recipe.toml")).unwrap(),
        recipe_before
    );
    // A fresh directory, then the same again: refused without --force.
    let model = run.parent().unwrap().join("model");
    let m = model.to_str().unwrap();
    let export = |force: bool| {
        let mut args = vec![
            "export",
            "--supernet",
            dir,
            "--arch",
            "smallest",
            "--out",
            m,
        ];
        if force {
            args.push("--force");
        }
        vitnas(&args)
    };
    assert!(export(false).0);
    let (ok, _, err) = export(false);
    assert!(!ok);
    assert!(
        err.contains("already holds an exported model") && err.contains("--force"),
        "{err}"
    );
    assert!(export(true).0);
    // A non-empty directory of something else: refused without --force.
    let other = run.parent().unwrap().join("notes");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("todo.txt"), "mine").unwrap();
    let (ok, _, err) = vitnas(&[
        "export",
        "--supernet",
        dir,
        "--arch",
        "smallest",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("not an exported model"), "{err}");
    // finetune into its own model directory is refused.
    let (ok, _, err) = vitnas(&[
        "finetune",
        "--model",
        m,
        "--output-dir",
        m,
        "--max-steps",
        "1",
    ]);
    assert!(!ok);
    assert!(err.contains("overwrite the input"), "{err}");
    std::fs::remove_dir_all(run.parent().unwrap()).ok();
}

#[test]
fn eval_and_export_refuse_off_grid_architectures_without_the_flag() {
    let (recipe, run) = long_recipe("off-grid", 1000);
    let dir = run.to_str().unwrap();
    let (ok, _, err) = vitnas(&["train", recipe.to_str().unwrap(), "--max-steps", "1"]);
    assert!(ok, "{err}");
    // embed 80 fits the supernet (128) but is not one of 64 / 96 / 128.
    let arch = run.parent().unwrap().join("off.json");
    std::fs::write(
        &arch,
        r#"{"embed_dim": 80, "depth": 4, "num_heads": [2, 2, 2, 2], "mlp_ratio": [2.0, 2.0, 2.0, 2.0]}"#,
    )
    .unwrap();
    let a = arch.to_str().unwrap();
    let out = run.parent().unwrap().join("m");
    let o = out.to_str().unwrap();
    for args in [
        vec!["eval", "--supernet", dir, "--arch", a],
        vec!["export", "--supernet", dir, "--arch", a, "--out", o],
    ] {
        let (ok, _, err) = vitnas(&args);
        assert!(!ok);
        assert!(
            err.contains("embed_dim") && err.contains("--off-grid"),
            "{err}"
        );
        let mut with = args.clone();
        with.push("--off-grid");
        let (ok, _, err) = vitnas(&with);
        assert!(ok, "{err}");
    }
    std::fs::remove_dir_all(run.parent().unwrap()).ok();
}

#[test]
fn a_missing_run_directory_is_named_in_the_error() {
    for cmd in [
        vec!["eval", "--supernet", "no/such/run"],
        vec!["search", "no/such/run"],
        vec![
            "export",
            "--supernet",
            "no/such/run",
            "--arch",
            "smallest",
            "--out",
            "/tmp/vitnas-never",
        ],
    ] {
        let (ok, _, err) = vitnas(&cmd);
        assert!(!ok);
        assert!(
            err.contains("no/such/run") && err.contains("not found"),
            "{err}"
        );
    }
}

/// A `VITNAS_SIMD` that names no level, or one the build lacks, is an error
/// naming the variable and the levels available; a valid one is reported.
#[test]
fn a_bad_simd_level_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args(["bench", "gemm", "--n", "16", "--threads", "1"])
        .env("VITNAS_SIMD", "sse9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("VITNAS_SIMD") && err.contains("scalar"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args(["bench", "gemm", "--n", "16", "--threads", "1"])
        .env("VITNAS_SIMD", "scalar")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"simd\":\"scalar\""));
}

/// `latency measure`, `fit`, `check` and `predict` end to end on a small
/// real measurement; a truncated predictor file is a clear error.
#[test]
fn latency_measure_fit_and_predict_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("vitnas-cli-latency-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, pred, arch) = (dir.join("l.csv"), dir.join("p.json"), dir.join("a.json"));
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ok, _, err) = vitnas(&[
        "latency",
        "measure",
        "search_spaces/fmnist-tiny.toml",
        "--n",
        "60",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--runs",
        "2",
        "--out",
        &s(&csv),
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = vitnas(&[
        "latency",
        "fit",
        &s(&csv),
        "--out",
        &s(&pred),
        "--mlp-steps",
        "20",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("\"kept\"") && out.contains("hat_mlp") && out.contains("additive"),
        "{out}"
    );
    let (ok, out, err) = vitnas(&["latency", "check", &s(&pred), &s(&csv)]);
    assert!(ok && out.contains("mean_rel_error"), "{err}");
    let (ok, out, _) = vitnas(&[
        "arch",
        "sample",
        "search_spaces/fmnist-tiny.toml",
        "--largest",
    ]);
    assert!(ok);
    std::fs::write(&arch, out).unwrap();
    let (ok, out, err) = vitnas(&["latency", "predict", &s(&pred), &s(&arch)]);
    assert!(ok && out.contains("predicted_ms"), "{err}");
    let text = std::fs::read_to_string(&pred).unwrap();
    std::fs::write(&pred, &text[..text.len() / 2]).unwrap();
    let (ok, _, err) = vitnas(&["latency", "predict", &s(&pred), &s(&arch)]);
    assert!(
        !ok && err.contains("p.json") && !err.contains("panicked"),
        "{err}"
    );
}

#[cfg(not(feature = "mpi"))]
#[test]
fn under_an_mpi_launcher_a_build_without_mpi_refuses_and_says_how_to_build_it() {
    let out_dir = std::env::temp_dir().join(format!("vitnas-nompi-{}", std::process::id()));
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vitnas"))
            .args(["train", "recipes/quickstart.toml", "--output-dir"])
            .arg(&out_dir)
            .env(var, "2")
            .current_dir(repo_path(""))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("{var}=2"))
                && err.contains("cargo build --release --features mpi"),
            "{err}"
        );
        assert!(!out_dir.exists(), "nothing is written");
    }
    // One process under a launcher is an ordinary run.
    let (ok, _, err) = vitnas(&["space", "show", "search_spaces/fmnist-tiny.toml"]);
    assert!(ok, "{err}");
}

/// Every file name in `dir` with its bytes, sorted (the lock file aside).
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// An output path is judged where it resolves, not as it is spelled: a
/// path through a missing directory and `..`, or a symbolic link, that
/// reaches a training run is refused by every command that chooses an
/// output (export, search, train, retrain, finetune, latency measure and
/// fit, eval --dump), with --force too, and the run is left byte for byte
/// as it was, with no new directory in it.
#[test]
fn every_output_is_checked_where_it_resolves_not_as_spelled() {
    let (recipe, run) = long_recipe("resolved", 1000);
    let r = recipe.to_str().unwrap();
    let dir = run.to_str().unwrap();
    let (ok, _, err) = vitnas(&["train", r, "--max-steps", "1"]);
    assert!(ok, "{err}");
    let base = run.parent().unwrap();
    let model = base.join("model");
    let m = model.to_str().unwrap();
    let (ok, _, err) = vitnas(&[
        "export",
        "--supernet",
        dir,
        "--arch",
        "smallest",
        "--out",
        m,
    ]);
    assert!(ok, "{err}");
    let link = base.join("link");
    std::os::unix::fs::symlink(&run, &link).unwrap();
    let before = snapshot(&run);
    let model_before = snapshot(&model);
    for spelled in [format!("{dir}/x/.."), link.to_str().unwrap().to_string()] {
        let s = spelled.as_str();
        let (in_csv, in_json, in_dump) = (
            format!("{s}/l.csv"),
            format!("{s}/p.json"),
            format!("{s}/d.safetensors"),
        );
        let commands: Vec<Vec<&str>> = vec![
            vec![
                "export",
                "--supernet",
                dir,
                "--arch",
                "smallest",
                "--out",
                s,
            ],
            vec!["search", dir, "--out", s, "--generations", "1"],
            vec!["train", r, "--output-dir", s, "--max-steps", "1"],
            vec![
                "retrain",
                "--space",
                "search_spaces/fmnist-tiny.toml",
                "--arch",
                "smallest",
                "--recipe",
                r,
                "--output-dir",
                s,
                "--max-steps",
                "1",
            ],
            vec![
                "finetune",
                "--model",
                m,
                "--output-dir",
                s,
                "--max-steps",
                "1",
            ],
            vec![
                "latency",
                "measure",
                "search_spaces/fmnist-tiny.toml",
                "--n",
                "1",
                "--threads",
                "1",
                "--out",
                &in_csv,
            ],
            vec!["latency", "fit", "no-such.csv", "--out", &in_json],
            vec![
                "eval",
                "--model",
                m,
                "--data",
                "data/fashion-mnist-sample",
                "--dump",
                &in_dump,
            ],
        ];
        for cmd in commands {
            for force in [false, true] {
                let mut args = cmd.clone();
                if force && !["measure", "eval"].iter().any(|c| args.contains(c)) {
                    args.push("--force");
                }
                let (ok, _, err) = vitnas(&args);
                assert!(!ok, "{args:?} succeeded");
                assert!(err.contains(s), "{args:?}: {err}");
                assert!(
                    err.contains("training run")
                        || err.contains("run already exists")
                        || err.contains("overwrite the input"),
                    "{args:?}: {err}"
                );
            }
        }
        // The model, reached through `..`, is the finetune's own input.
        let through_model = format!("{m}/x/..");
        let (ok, _, err) = vitnas(&[
            "finetune",
            "--model",
            m,
            "--output-dir",
            &through_model,
            "--max-steps",
            "1",
        ]);
        assert!(!ok && err.contains("overwrite the input"), "{err}");
    }
    assert!(snapshot(&run) == before, "the run's files changed");
    assert!(
        snapshot(&model) == model_before,
        "the model's files changed"
    );
    assert!(!run.join("x").exists() && !model.join("x").exists());
    std::fs::remove_dir_all(base).ok();
}

/// `latency fit` and `latency recalibrate` (and `measure`) never write
/// over one of their inputs, not even with --force; an existing file at
/// --out needs --force.
#[test]
fn latency_outputs_never_replace_an_input_and_replace_a_file_only_with_force() {
    let dir = std::env::temp_dir().join(format!("vitnas-cli-latency-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, pred, other) = (dir.join("l.csv"), dir.join("p.json"), dir.join("o.json"));
    for (f, text) in [(&csv, "csv"), (&pred, "predictor"), (&other, "other")] {
        std::fs::write(f, text).unwrap();
    }
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let through = |p: &std::path::Path| {
        format!(
            "{}/x/../{}",
            dir.display(),
            p.file_name().unwrap().to_str().unwrap()
        )
    };
    for force in [false, true] {
        let mut cases = vec![
            vec![
                "latency".to_string(),
                "fit".into(),
                s(&csv),
                "--out".into(),
                s(&csv),
            ],
            vec![
                "latency".into(),
                "fit".into(),
                s(&csv),
                "--out".into(),
                through(&csv),
            ],
            vec![
                "latency".into(),
                "recalibrate".into(),
                s(&pred),
                s(&csv),
                "--out".into(),
                s(&pred),
            ],
            vec![
                "latency".into(),
                "recalibrate".into(),
                s(&pred),
                s(&csv),
                "--out".into(),
                through(&csv),
            ],
        ];
        if force {
            for c in &mut cases {
                c.push("--force".into());
            }
        }
        cases.push(vec![
            "latency".into(),
            "measure".into(),
            "search_spaces/fmnist-tiny.toml".into(),
            "--out".into(),
            s(&repo_path("search_spaces/fmnist-tiny.toml")),
        ]);
        for c in cases {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            let (ok, _, err) = vitnas(&args);
            assert!(
                !ok && err.contains("overwrite the input"),
                "{args:?}: {err}"
            );
        }
    }
    // Another existing file: refused without --force, naming it.
    for c in [
        vec!["latency", "fit", &s(&csv), "--out", &s(&other)],
        vec![
            "latency",
            "recalibrate",
            &s(&pred),
            &s(&csv),
            "--out",
            &s(&other),
        ],
    ] {
        let (ok, _, err) = vitnas(&c);
        assert!(
            !ok && err.contains("o.json") && err.contains("--force"),
            "{c:?}: {err}"
        );
    }
    // With --force the output is accepted and the inputs are read (and
    // here refused as what they are: not a dataset).
    let (ok, _, err) = vitnas(&["latency", "fit", &s(&csv), "--out", &s(&other), "--force"]);
    assert!(
        !ok && err.contains("l.csv") && !err.contains("--force"),
        "{err}"
    );
    for (f, text) in [(&csv, "csv"), (&pred, "predictor"), (&other, "other")] {
        assert_eq!(std::fs::read_to_string(f).unwrap(), text);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A directory or file that a command writes over time is locked while it
/// runs: a second search into the same --out, or a second measurement into
/// the same CSV, is refused naming the holder. A search's --out follows
/// the rules of every output directory (a non-empty directory that is not
/// a search needs --force).
#[test]
fn outputs_written_over_time_are_locked_and_a_search_out_follows_the_rules() {
    let (recipe, run) = long_recipe("search-out", 1000);
    let (ok, _, err) = vitnas(&["train", recipe.to_str().unwrap(), "--max-steps", "1"]);
    assert!(ok, "{err}");
    let dir = run.to_str().unwrap();
    let base = run.parent().unwrap();
    let out = base.join("search");
    std::fs::create_dir_all(&out).unwrap();
    let held = vitnas::train::rundir::RunLock::acquire(&out).unwrap();
    let (ok, _, err) = vitnas(&["search", dir, "--out", out.to_str().unwrap()]);
    assert!(
        !ok && err.contains("in use by another vitnas process"),
        "{err}"
    );
    assert!(!out.join(vitnas::search::STATE_FILE).exists());
    drop(held);
    let csv = base.join("l.csv");
    let held = vitnas::train::rundir::RunLock::acquire_file(&csv).unwrap();
    let (ok, _, err) = vitnas(&[
        "latency",
        "measure",
        "search_spaces/fmnist-tiny.toml",
        "--n",
        "2",
        "--threads",
        "1",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("in use by another vitnas process"),
        "{err}"
    );
    assert!(!csv.exists());
    drop(held);
    let notes = base.join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("todo.txt"), "mine").unwrap();
    let (ok, _, err) = vitnas(&["search", dir, "--out", notes.to_str().unwrap()]);
    assert!(
        !ok && err.contains("--force") && err.contains("notes"),
        "{err}"
    );
    std::fs::remove_dir_all(base).ok();
}

/// Thread counts are bounded on every command: 0 or more than 4 per
/// logical CPU, from --threads or RAYON_NUM_THREADS, is refused naming
/// where it came from (it used to hang, or be recorded as 0).
#[test]
fn thread_counts_out_of_range_are_refused_on_every_command() {
    let csv = std::env::temp_dir().join(format!("vitnas-cli-threads-{}.csv", std::process::id()));
    let c = csv.to_str().unwrap();
    for threads in ["0", "100000"] {
        for args in [
            vec![
                "latency",
                "measure",
                "search_spaces/fmnist-tiny.toml",
                "--n",
                "1",
                "--threads",
                threads,
                "--out",
                c,
            ],
            vec!["bench", "gemm", "--n", "8", "--threads", threads],
            vec!["bench", "infer", "--iters", "1", "--threads", threads],
        ] {
            let (ok, _, err) = vitnas(&args);
            assert!(
                !ok && err.contains(&format!("--threads {threads}")),
                "{args:?}: {err}"
            );
        }
    }
    assert!(!csv.exists());
    for args in [
        vec!["space", "show", "search_spaces/fmnist-tiny.toml"],
        vec![
            "latency",
            "measure",
            "search_spaces/fmnist-tiny.toml",
            "--n",
            "1",
            "--threads",
            "1",
            "--out",
            c,
        ],
    ] {
        let (ok, _, err) = vitnas_env(&args, &[("RAYON_NUM_THREADS", "100000")]);
        assert!(
            !ok && err.contains("RAYON_NUM_THREADS 100000"),
            "{args:?}: {err}"
        );
        let (ok, _, err) = vitnas_env(&args, &[("RAYON_NUM_THREADS", "lots")]);
        assert!(!ok && err.contains("RAYON_NUM_THREADS"), "{args:?}: {err}");
    }
    assert!(!csv.exists());
    let (ok, _, err) = vitnas_env(
        &["space", "show", "search_spaces/fmnist-tiny.toml"],
        &[("RAYON_NUM_THREADS", "1")],
    );
    assert!(ok, "{err}");
}

/// Ctrl-C stops `latency measure` as it stops training: whole rows kept,
/// the command to continue printed, exit 75, and the same command
/// continues; it stops `latency fit` at once, writing nothing.
#[test]
fn sigint_stops_latency_measure_resumably_and_fit_at_once() {
    let dir = std::env::temp_dir().join(format!("vitnas-cli-sigint-lat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, pred) = (dir.join("l.csv"), dir.join("p.json"));
    let measure: Vec<String> = [
        "latency",
        "measure",
        "search_spaces/fmnist-tiny.toml",
        "--n",
        "60",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--runs",
        "2",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([csv.to_str().unwrap().to_string()])
    .collect();
    let rows = |csv: &std::path::Path| {
        std::fs::read_to_string(csv)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("index,") && l.contains(','))
            .count()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args(&measure)
        .current_dir(repo_path(""))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while rows(&csv) < 3 {
        assert!(started.elapsed().as_secs() < 120, "no rows measured");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("vitnas latency measure") && stderr.contains("--n 60"),
        "{stderr}"
    );
    let kept = rows(&csv);
    assert!((3..60).contains(&kept), "{kept} rows");
    assert!(std::fs::read_to_string(&csv).unwrap().ends_with('\n'));
    assert!(!dir.join("l.csv.lock").exists());
    let args: Vec<&str> = measure.iter().map(String::as_str).collect();
    let (ok, out, err) = vitnas(&args);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("\"measured_now\": {}", 60 - kept)),
        "{out}"
    );
    // fit: stopped within seconds of Ctrl-C, nothing written.
    let child = Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args([
            "latency",
            "fit",
            csv.to_str().unwrap(),
            "--out",
            pred.to_str().unwrap(),
            "--mlp-steps",
            "100000000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let stopped = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        stopped.elapsed().as_secs() < 5,
        "fit took {:?} to stop",
        stopped.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pred.exists());
    std::fs::remove_dir_all(dir).ok();
}

/// Rewrites the safetensors file `path` with its first tensor (by name)
/// holding a NaN; returns that tensor's name.
fn poison(path: &std::path::Path) -> String {
    use vitnas::train::checkpoint::{read_safetensors, to_safetensors_bytes};
    let (tensors, meta) = read_safetensors(path, &candle_core::Device::Cpu).unwrap();
    let mut named: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let (name, t) = named
        .iter_mut()
        .find(|(_, t)| t.dtype().is_float())
        .unwrap();
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mid = v.len() / 2;
    v[mid] = f32::NAN;
    *t = candle_core::Tensor::from_vec(v, t.dims(), &candle_core::Device::Cpu).unwrap();
    let name = name.clone();
    std::fs::write(path, to_safetensors_bytes(&named, Some(meta)).unwrap()).unwrap();
    name
}

/// Weights holding a NaN or an infinity are refused at load, naming the
/// file and the tensor, by every command that reads weights (eval of a
/// supernet or a model, export, search, finetune), instead of running to a
/// `null` loss and chance accuracy.
#[test]
fn non_finite_weights_are_refused_at_load_by_every_command() {
    let (recipe, run) = long_recipe("nan", 1000);
    let (ok, _, err) = vitnas(&["train", recipe.to_str().unwrap(), "--max-steps", "1"]);
    assert!(ok, "{err}");
    let dir = run.to_str().unwrap();
    let base = run.parent().unwrap();
    let model = base.join("model");
    let m = model.to_str().unwrap();
    let (ok, _, err) = vitnas(&[
        "export",
        "--supernet",
        dir,
        "--arch",
        "smallest",
        "--out",
        m,
    ]);
    assert!(ok, "{err}");
    let bad = poison(&run.join("supernet.safetensors"));
    let out2 = base.join("out2");
    let o2 = out2.to_str().unwrap();
    for args in [
        vec!["eval", "--supernet", dir, "--arch", "smallest"],
        vec![
            "export",
            "--supernet",
            dir,
            "--arch",
            "smallest",
            "--out",
            o2,
        ],
        vec!["search", dir, "--out", o2, "--generations", "1"],
    ] {
        let (ok, out, err) = vitnas(&args);
        assert!(
            !ok && err.contains("supernet.safetensors")
                && err.contains(&bad)
                && err.contains("non-finite"),
            "{args:?}: {out} {err}"
        );
    }
    let bad = poison(&model.join("model.safetensors"));
    for args in [
        vec!["eval", "--model", m, "--data", "data/fashion-mnist-sample"],
        vec![
            "finetune",
            "--model",
            m,
            "--output-dir",
            o2,
            "--max-steps",
            "1",
        ],
    ] {
        let (ok, out, err) = vitnas(&args);
        assert!(
            !ok && err.contains("model.safetensors")
                && err.contains(&bad)
                && err.contains("non-finite"),
            "{args:?}: {out} {err}"
        );
    }
    std::fs::remove_dir_all(base).ok();
}

/// A run that stopped before its first checkpoint is no dead end: a new
/// run there says to pass --force, --resume says why there is nothing to
/// resume and how to start over, and --force starts over in it; it is
/// still a training run for every other command.
#[test]
fn a_run_that_stopped_before_its_first_checkpoint_can_be_started_over_with_force() {
    let (recipe, run) = long_recipe("unstarted", 1000);
    let r = recipe.to_str().unwrap();
    let dir = run.to_str().unwrap();
    let (ok, _, err) = vitnas(&["train", r, "--max-steps", "1"]);
    assert!(ok, "{err}");
    // What a run leaves when it fails before its first checkpoint.
    for f in [
        "checkpoint.safetensors",
        "state.json",
        "supernet.safetensors",
    ] {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    let (ok, _, err) = vitnas(&["train", r, "--max-steps", "1"]);
    assert!(
        !ok && err.contains("before its first checkpoint") && err.contains("--force"),
        "{err}"
    );
    let (ok, _, err) = vitnas(&["train", "--resume", dir]);
    assert!(
        !ok && err.contains("before its first checkpoint") && err.contains("--force"),
        "{err}"
    );
    let (ok, _, err) = vitnas(&[
        "export",
        "--supernet",
        dir,
        "--arch",
        "smallest",
        "--out",
        dir,
        "--force",
    ]);
    assert!(!ok && err.contains(dir), "{err}");
    let (ok, out, err) = vitnas(&["train", r, "--max-steps", "1", "--force"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"steps\": 1"), "{out}");
    assert!(run.join("checkpoint.safetensors").is_file());
    std::fs::remove_dir_all(run.parent().unwrap()).ok();
}

/// A model whose config.json has no `vitnas` block is evaluated with a
/// normalisation it names: a Hugging Face preprocessor_config.json's when
/// there is one, else the split's own statistics with a warning; never a
/// silent default.
#[test]
fn eval_of_a_model_without_a_vitnas_block_names_its_normalisation() {
    let (recipe, run) = long_recipe("no-block", 1000);
    let (ok, _, err) = vitnas(&["train", recipe.to_str().unwrap(), "--max-steps", "1"]);
    assert!(ok, "{err}");
    let model = run.parent().unwrap().join("model");
    let m = model.to_str().unwrap();
    let (ok, _, err) = vitnas(&[
        "export",
        "--supernet",
        run.to_str().unwrap(),
        "--arch",
        "smallest",
        "--out",
        m,
        "--hf-pad",
    ]);
    assert!(ok, "{err}");
    let cfg = model.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("vitnas");
    std::fs::write(&cfg, v.to_string()).unwrap();
    let eval = || {
        vitnas(&[
            "eval",
            "--model",
            m,
            "--data",
            "data/fashion-mnist-sample",
            "--limit",
            "32",
        ])
    };
    let (ok, out, err) = eval();
    assert!(ok, "{err}");
    assert!(err.contains("records no input normalisation"), "{err}");
    assert!(out.contains("statistics of the evaluated split"), "{out}");
    std::fs::write(
        model.join("preprocessor_config.json"),
        r#"{"image_mean": [0.25], "image_std": [0.5]}"#,
    )
    .unwrap();
    let (ok, out, err) = eval();
    assert!(ok, "{err}");
    assert!(!err.contains("records no input normalisation"), "{err}");
    assert!(
        out.contains("preprocessor_config.json") && out.contains("0.25"),
        "{out}"
    );
    std::fs::write(
        model.join("preprocessor_config.json"),
        r#"{"image_mean": [0.25, 0.1], "image_std": [0.5, 0.5]}"#,
    )
    .unwrap();
    let (ok, _, err) = eval();
    assert!(!ok && err.contains("preprocessor_config.json"), "{err}");
    std::fs::remove_dir_all(run.parent().unwrap()).ok();
}

/// Messages send the user the right way: a model of the other kind is
/// named as such (not "missing field"), `--data` naming a file says so, and
/// a population that the recipe's `search.parents` does not fit points at
/// the flag that changes it.
#[test]
fn messages_name_what_is_wrong_and_the_way_out() {
    let vit = repo_path("tests/fixtures/hf-tiny-vit");
    let bert = repo_path("tests/fixtures/hf-tiny-bert");
    let e = vitnas::models::bert::Bert::load_dir(&vit)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model_type") && e.contains("a ViT") && e.contains("a BERT"),
        "{e}"
    );
    let e = vitnas::models::export::load_dir(&bert)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model_type") && e.contains("a BERT") && e.contains("a ViT"),
        "{e}"
    );
    let (ok, _, err) = vitnas(&["embed", "--model", vit.to_str().unwrap(), "hello"]);
    assert!(!ok && err.contains("model_type"), "{err}");

    let (recipe, run) = long_recipe("messages", 1000);
    let r = recipe.to_str().unwrap();
    let dir = run.to_str().unwrap();
    let (ok, _, err) = vitnas(&["train", r, "--data", r, "--max-steps", "1"]);
    assert!(
        !ok && err.contains("is a file, not a data directory"),
        "{err}"
    );
    let (ok, _, err) = vitnas(&["train", r, "--max-steps", "1"]);
    assert!(ok, "{err}");
    let (ok, _, err) = vitnas(&["eval", "--supernet", dir, "--data", r]);
    assert!(
        !ok && err.contains("is a file, not a data directory"),
        "{err}"
    );
    let out = run.parent().unwrap().join("search");
    let o = out.to_str().unwrap();
    let (ok, _, err) = vitnas(&["search", dir, "--out", o, "--population", "8"]);
    assert!(
        !ok && err.contains("search.parents") && err.contains("--parents"),
        "{err}"
    );
    let (ok, _, err) = vitnas(&[
        "search",
        dir,
        "--out",
        o,
        "--population",
        "8",
        "--parents",
        "3",
        "--mutations",
        "3",
        "--crossovers",
        "2",
        "--generations",
        "1",
        "--val-subset",
        "16",
    ]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(run.parent().unwrap()).ok();
}

/// Weights and config must belong together: an export whose config lists
/// fewer layers than its weights hold, or whose weights carry a tensor the
/// model does not read, is refused naming the tensors (it used to run the
/// shorter model); a Hugging Face directory whose config lists fewer layers
/// than its weights is refused too.
#[test]
fn weights_that_the_config_does_not_use_are_refused_naming_them() {
    use vitnas::train::checkpoint::{read_safetensors, to_safetensors_bytes};
    let (recipe, run) = long_recipe("unused", 1000);
    let (ok, _, err) = vitnas(&["train", recipe.to_str().unwrap(), "--max-steps", "1"]);
    assert!(ok, "{err}");
    let base = run.parent().unwrap().to_path_buf();
    let model = base.join("model");
    let (ok, _, err) = vitnas(&[
        "export",
        "--supernet",
        run.to_str().unwrap(),
        "--arch",
        "largest",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(vitnas::models::export::load_dir(&model).is_ok());
    // One layer fewer in the config (block and HF fields agreeing).
    let cfg = model.join("config.json");
    let original = std::fs::read_to_string(&cfg).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    let depth = v["num_hidden_layers"].as_u64().unwrap();
    v["num_hidden_layers"] = (depth - 1).into();
    for k in ["num_heads", "intermediate_sizes"] {
        v["vitnas"]["config"][k].as_array_mut().unwrap().pop();
    }
    std::fs::write(&cfg, v.to_string()).unwrap();
    let e = vitnas::models::export::load_dir(&model)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains(&format!("vit.encoder.layer.{}.", depth - 1)),
        "{e}"
    );
    let (ok, _, err) = vitnas(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        "data/fashion-mnist-sample",
    ]);
    assert!(!ok && err.contains("does not use"), "{err}");
    std::fs::write(&cfg, &original).unwrap();
    // A stray tensor.
    let st = model.join("model.safetensors");
    let (tensors, meta) = read_safetensors(&st, &candle_core::Device::Cpu).unwrap();
    let mut named: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
    named.push((
        "stray.weight".into(),
        candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    ));
    std::fs::write(&st, to_safetensors_bytes(&named, Some(meta)).unwrap()).unwrap();
    let e = vitnas::models::export::load_dir(&model)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`stray.weight`"), "{e}");
    // A Hugging Face directory with a layer its config does not list.
    let hf = base.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    let fixture = repo_path("tests/fixtures/hf-tiny-vit");
    std::fs::copy(
        fixture.join("model.safetensors"),
        hf.join("model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    std::fs::write(
        hf.join("config.json"),
        text.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2"),
    )
    .unwrap();
    let e = vitnas::models::export::load_dir(&hf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("vit.encoder.layer.2."), "{e}");
    // And a Hugging Face BERT directory.
    let hfb = base.join("hf-bert");
    std::fs::create_dir_all(&hfb).unwrap();
    let fixture = repo_path("tests/fixtures/hf-tiny-bert");
    std::fs::copy(
        fixture.join("model.safetensors"),
        hfb.join("model.safetensors"),
    )
    .unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    let depth = v["num_hidden_layers"].as_u64().unwrap();
    v["num_hidden_layers"] = (depth - 1).into();
    std::fs::write(hfb.join("config.json"), v.to_string()).unwrap();
    let e = vitnas::models::bert::Bert::load_dir(&hfb)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("encoder.layer.{}.", depth - 1)) && e.contains("does not use"),
        "{e}"
    );
    std::fs::remove_dir_all(base).ok();
}
