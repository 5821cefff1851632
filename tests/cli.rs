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
