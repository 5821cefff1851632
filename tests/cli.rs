//! The `vitnas` binary, run as a user would.

mod common;

use common::repo_path;
use std::process::Command;

fn vitnas(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args(args)
        .current_dir(repo_path(""))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

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
    r.space = repo_path("search_spaces/fmnist-tiny.toml");
    r.data.path = Some(repo_path("data/fashion-mnist-sample"));
    r.data.val_size = 64;
    r.data.train_limit = Some(512);
    r.train.batch_size = 16;
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
    let (ok, out, err) = vitnas(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--max-steps",
        &(step + 2).to_string(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\"steps\": {}", step + 2)), "{out}");
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
    let (ok, out, err) = vitnas(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--max-steps",
        &(step + 1).to_string(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\"steps\": {}", step + 1)), "{out}");
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
    assert!(run.join(vitnas::rundir::LOCK_FILE).exists());
    let step = state_step(&run);
    let (ok, out, err) = vitnas(&[
        "train",
        "--resume",
        dir,
        "--max-steps",
        &(step + 1).to_string(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\"steps\": {}", step + 1)), "{out}");
    // Released on exit.
    assert!(!run.join(vitnas::rundir::LOCK_FILE).exists());
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
