//! The `vitnas` binary on real MPI ranks: `mpirun -np 2` against one
//! process, a killed rank, a hung rank, mismatched recipes. Needs a build
//! with the `mpi` feature and OpenMPI's `mpirun`; run by `.ci/mpi.sh`:
//!
//! ```sh
//! cargo test --release --features mpi --test mpi -- --ignored --test-threads=1
//! ```
#![cfg(feature = "mpi")]

mod common;

use candle_core::{Device, Tensor};
use common::{max_abs_diff, repo_path, small_quickstart};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use vitnas::train::checkpoint::read_safetensors;
use vitnas::train::recipe::Recipe;
use vitnas::train::{CHECKPOINT_FILE, METRICS_FILE, STATE_FILE};

const BIN: &str = env!("CARGO_BIN_EXE_vitnas");

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-mpi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `vitnas <args>` on `np` ranks of one thread each (`env`: more
/// variables for every rank).
fn mpirun(np: usize, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "-np",
        &np.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ]);
    c.args(["-x", "RAYON_NUM_THREADS=1"]);
    for (k, v) in env {
        c.args(["-x", &format!("{k}={v}")]);
    }
    c.arg(BIN).args(args);
    c.current_dir(repo_path(""))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

/// `vitnas <args>` as one ordinary process on one thread.
fn alone(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(repo_path(""))
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes `r` to `dir/recipe.toml` and returns its path.
fn write_recipe(r: &Recipe, dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, r.to_toml_string()).unwrap();
    p.display().to_string()
}

fn losses(dir: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(dir.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| {
            let l = v.get("losses")?.as_array()?.clone();
            Some(l.iter().map(|x| x.as_f64().unwrap()).collect())
        })
        .collect()
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    read_safetensors(&dir.join(CHECKPOINT_FILE), &Device::Cpu)
        .unwrap()
        .0
}

fn state_step(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["step"].as_u64().map(|s| s as usize)
}

/// The pid of rank `rank` among mpirun's children.
fn rank_pid(mpirun: u32, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid …: the fields after the last ')'.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid != Some(mpirun) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// Waits for `child` to exit, at most `limit`; its output and how long it
/// took.
fn wait_bounded(mut child: Child, limit: Duration) -> (Output, Duration) {
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("mpirun still running after {limit:?}: the job hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `cmd` in the background and waits until its run directory
/// `dir` holds a checkpoint of at least step `step`.
fn start_until_step(mut cmd: Command, dir: &Path, step: usize) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while state_step(dir).is_none_or(|s| s < step) {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "ended ({st}) before step {step}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no step {step}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// `vitnas train <recipe>` for `steps` steps in one process into `one`
/// and on 2 ranks into `two`; rank 0 alone prints the summary, of a
/// 2-rank world.
fn train_alone_and_on_two_ranks(recipe: &str, one: &Path, two: &Path, steps: usize) {
    let (o, t) = (one.display().to_string(), two.display().to_string());
    let steps = ["--max-steps".to_string(), steps.to_string()];
    let steps = [steps[0].as_str(), steps[1].as_str()];
    ok(alone(
        &[&["train", recipe, "--output-dir", &o][..], &steps].concat(),
    ));
    let out = ok(mpirun(
        2,
        &[&["train", recipe, "--output-dir", &t][..], &steps].concat(),
        &[],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("\"run_dir\"").count(), 1, "{stdout}");
    assert!(stdout.contains("\"world_size\": 2"), "{stdout}");
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn two_mpi_ranks_train_what_one_process_trains_on_the_same_global_batch() {
    let d = tmp_dir("equal");
    let mut r = small_quickstart(&d.join("unused"));
    r.train.epochs = 2;
    let recipe = write_recipe(&r, &d, "recipe.toml");
    let (one, two) = (d.join("one"), d.join("two"));
    train_alone_and_on_two_ranks(&recipe, &one, &two, 12);
    assert_trained_alike(&one, &two, 12);
    let _ = std::fs::remove_dir_all(d);
}

/// That the runs in `one` and `two` logged `steps` steps whose losses
/// agree within 1e-5 (relative) and ended on weights within 5e-4.
fn assert_trained_alike(one: &Path, two: &Path, steps: usize) {
    let (a, b) = (losses(one), losses(two));
    assert_eq!((a.len(), b.len()), (steps, steps));
    for (s, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), y.len(), "step {}", s + 1);
        for (x, y) in x.iter().zip(y) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "step {}: {x} vs {y}",
                s + 1
            );
        }
    }
    let (wa, wb) = (tensors(one), tensors(two));
    assert_eq!(wa.len(), wb.len());
    for (name, ta) in &wa {
        let diff = max_abs_diff(ta, &wb[name]);
        assert!(diff < 5e-4, "{name}: max difference {diff}");
    }
}

/// The bundled SpamAssassin sample with its texts cut to 1 to 24 words
/// (most are longer than any `max_len` here, which would pad every batch
/// alike), written to `dir`.
fn short_texts(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for split in ["train", "test"] {
        let file = format!("{split}.jsonl");
        let text = std::fs::read_to_string(repo_path("data/spam-sample").join(&file)).unwrap();
        let cut: String = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let words: Vec<&str> = v["text"].as_str().unwrap().split_whitespace().collect();
                let short = words[..words.len().min(1 + i * 7 % 24)].join(" ");
                v["text"] = short.into();
                format!("{v}\n")
            })
            .collect();
        std::fs::write(dir.join(&file), cut).unwrap();
    }
    dir.to_path_buf()
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn two_mpi_ranks_train_a_text_supernet_and_subnet_as_one_process_does_on_the_same_batches() {
    let d = tmp_dir("text");
    let space = d.join("space.toml");
    std::fs::write(&space, common::tiny_text_space_toml(64, "num_classes = 2")).unwrap();
    let data = short_texts(&d.join("data"));
    // Rewiring at init must leave both ranks on the same weights (checked
    // by checksum before the first step).
    let recipe = d.join("recipe.toml");
    let text = common::tiny_text_recipe_toml(
        (&space, &data, &d.join("unused")),
        100,
        "max_len = 64\nrewire_batches = 2",
        1,
    );
    std::fs::write(&recipe, text).unwrap();
    let recipe = recipe.display().to_string();
    let (one, two) = (d.join("one"), d.join("two"));
    let (o, t) = (one.display().to_string(), two.display().to_string());
    train_alone_and_on_two_ranks(&recipe, &one, &two, 8);
    for f in ["labels.json", "tokenizer.json", "rewire-report.json"] {
        assert!(two.join(f).is_file(), "{f} missing in {}", two.display());
    }
    assert_trained_alike(&one, &two, 8);
    // The global batches padded to different lengths (each rank pads its
    // own half: the losses above agree all the same).
    let padded: std::collections::HashSet<u64> = std::fs::read_to_string(one.join(METRICS_FILE))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tokens"].as_u64())
        .collect();
    assert!(padded.len() > 2, "padded lengths {padded:?}");
    // One subnet alone, from the supernet's weights (`retrain --inherit`).
    let (ro, rt) = (d.join("retrain-one"), d.join("retrain-two"));
    let (ros, rts) = (ro.display().to_string(), rt.display().to_string());
    let retrain = [
        "retrain",
        "--supernet",
        &o,
        "--arch",
        "smallest",
        "--inherit",
        "--max-steps",
        "4",
        "--output-dir",
    ];
    ok(alone(&[&retrain[..], &[ros.as_str()]].concat()));
    ok(mpirun(2, &[&retrain[..], &[rts.as_str()]].concat(), &[]));
    assert_trained_alike(&ro, &rt, 4);
    // The supernet runs resume (rank 0 locks and truncates the metrics).
    let to = ["--max-steps", "12"];
    ok(alone(&[&["train", "--resume", &o][..], &to].concat()));
    ok(mpirun(
        2,
        &[&["train", "--resume", &t][..], &to].concat(),
        &[],
    ));
    assert_trained_alike(&one, &two, 12);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn every_mpi_rank_holds_the_same_weights_at_every_checkpoint() {
    let d = tmp_dir("checksum");
    let r = small_quickstart(&d.join("run"));
    let recipe = write_recipe(&r, &d, "recipe.toml");
    let out = ok(mpirun(
        2,
        &["-v", "train", &recipe, "--max-steps", "12"],
        &[],
    ));
    let log = String::from_utf8_lossy(&out.stderr);
    // "rank R of 2: weights checksum H after step S", from each rank.
    let mut seen: HashMap<(usize, usize), String> = HashMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("rank ").nth(1) else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        if w.len() >= 9 && w[2] == "2:" && w[3] == "weights" {
            let key = (w[0].parse().unwrap(), w[8].parse().unwrap());
            seen.insert(key, w[5].to_string());
        }
    }
    for step in [0, 3, 6, 9, 12] {
        let (a, b) = (seen.get(&(0, step)), seen.get(&(1, step)));
        assert!(
            a.is_some() && a == b,
            "step {step}: rank 0 {a:?}, rank 1 {b:?}\n{log}"
        );
    }
    assert_ne!(seen[&(0, 0)], seen[&(0, 12)], "the weights changed");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn killing_one_rank_ends_the_job_within_seconds_and_the_last_checkpoint_resumes() {
    let d = tmp_dir("kill");
    let run = d.join("run");
    let mut r = small_quickstart(&run);
    r.train.checkpoint_every = 2;
    r.train.epochs = 4;
    let recipe = write_recipe(&r, &d, "recipe.toml");
    let child = start_until_step(mpirun(2, &["train", &recipe], &[]), &run, 4);
    let pid = rank_pid(child.id(), 1).expect("rank 1 runs under mpirun");
    signal(pid, "-KILL");
    let (out, took) = wait_bounded(child, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(20), "stopped after {took:?}");
    assert!(
        err.contains("rank 1") && err.contains("signal 9"),
        "the launcher names the rank: {err}"
    );
    let at = state_step(&run).unwrap();
    assert!((4..16).contains(&at), "killed at step {at}");
    // The last checkpoint loads and continues, at the same number of
    // ranks, to what an uninterrupted run reaches.
    let run_s = run.display().to_string();
    ok(mpirun(
        2,
        &["train", "--resume", &run_s, "--max-steps", "16"],
        &[],
    ));
    let straight = d.join("straight").display().to_string();
    ok(mpirun(
        2,
        &[
            "train",
            &recipe,
            "--output-dir",
            &straight,
            "--max-steps",
            "16",
        ],
        &[],
    ));
    let (a, b) = (tensors(&run), tensors(Path::new(&straight)));
    assert_eq!(state_step(&run), Some(16));
    for (name, t) in &a {
        assert_eq!(
            max_abs_diff(t, &b[name]),
            0.0,
            "{name}: resumed differs from uninterrupted"
        );
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn a_rank_that_hangs_is_stopped_by_the_watchdog_of_the_others() {
    let d = tmp_dir("hang");
    let run = d.join("run");
    let mut r = small_quickstart(&run);
    r.train.checkpoint_every = 2;
    r.train.epochs = 4;
    let recipe = write_recipe(&r, &d, "recipe.toml");
    let cmd = mpirun(2, &["train", &recipe], &[("VITNAS_MPI_TIMEOUT", "3")]);
    let child = start_until_step(cmd, &run, 2);
    let pid = rank_pid(child.id(), 1).expect("rank 1 runs under mpirun");
    signal(pid, "-STOP");
    let (out, took) = wait_bounded(child, Duration::from_secs(60));
    // Should the launcher leave the stopped rank behind, end it.
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(25), "stopped after {took:?}");
    assert!(
        err.contains("error (rank 0 of 2): waited") && err.contains("a rank died or hangs"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn ranks_started_with_different_recipes_refuse_to_train() {
    let d = tmp_dir("mismatch");
    let run = d.join("run");
    let r = small_quickstart(&run);
    let a = write_recipe(&r, &d, "a.toml");
    let mut r2 = r.clone();
    r2.optimizer.lr *= 2.0;
    let b = write_recipe(&r2, &d, "b.toml");
    // MPMD: rank 0 runs a.toml, rank 1 b.toml.
    let mut c = mpirun(1, &["train", &a], &[]);
    c.args([":", "-np", "1", BIN, "train", &b]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("rank 1 of 2 holds a different build, resolved recipe or space"),
        "{err}"
    );
    assert!(!run.join(CHECKPOINT_FILE).exists(), "nothing trained");
    let _ = std::fs::remove_dir_all(d);
}

/// A finished small supernet run in `dir` (one process), for search and
/// evaluate rank.
fn trained_supernet(dir: &Path) -> (Recipe, String) {
    let mut r = small_quickstart(&dir.join("supernet"));
    r.train.epochs = 1;
    r.search.population = 10;
    r.search.parents = 4;
    r.search.mutations = 6;
    r.search.crossovers = 6;
    r.search.generations = 3;
    r.search.val_subset = 64;
    r.search.early_reject_images = 32;
    let recipe = write_recipe(&r, dir, "supernet.toml");
    ok(alone(&["train", &recipe]));
    (r, recipe)
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn a_search_shared_over_two_ranks_records_what_one_process_records() {
    let d = tmp_dir("search");
    let (r, _) = trained_supernet(&d);
    let run = r.output_dir.display().to_string();
    let (one, two) = (d.join("s1"), d.join("s2"));
    let (o, t) = (one.display().to_string(), two.display().to_string());
    ok(alone(&["search", &run, "--out", &o]));
    ok(mpirun(2, &["search", &run, "--out", &t], &[]));
    let records = |dir: &Path| {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(vitnas::search::STATE_FILE)).unwrap(),
        )
        .unwrap();
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["genes"].clone(),
                    r["accuracy"].as_f64(),
                    r["loss"].as_f64(),
                    r["rejected_early"].as_bool(),
                    r["images"].as_u64(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (records(&one), records(&two));
    assert!(a.len() > 10, "{} records", a.len());
    assert!(
        a.iter().any(|r| r.3 == Some(true)),
        "some were rejected early"
    );
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn evaluate_rank_shared_over_two_ranks_reports_what_one_process_reports() {
    let d = tmp_dir("rank");
    let (_, recipe) = trained_supernet(&d);
    let config = |out: &Path| {
        let text = format!(
            "name = \"mpi\"\nsupernet = \"{recipe}\"\noutput_dir = \"{}\"\nk = 3\n\
             [standalone]\nepochs = 1\ntrain_limit = 128\n",
            out.display()
        );
        let p = out.with_extension("toml");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (one, two) = (d.join("r1"), d.join("r2"));
    ok(alone(&["evaluate", "rank", &config(&one)]));
    ok(mpirun(2, &["evaluate", "rank", &config(&two)], &[]));
    let entries = |dir: &Path| {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(vitnas::rank::REPORT_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(v["complete"], true);
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let f = |k: &str| e[k].as_f64();
                (
                    e["arch"].clone(),
                    f("inherited_val"),
                    f("inherited_test"),
                    f("standalone_val"),
                    f("standalone_test"),
                )
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (entries(&one), entries(&two));
    assert_eq!(a.len(), 3);
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn a_command_that_runs_in_one_process_refuses_several_ranks() {
    let out = mpirun(2, &["space", "show", "search_spaces/fmnist-tiny.toml"], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("this command runs in one process: start it without mpirun"),
        "{err}"
    );
}

#[test]
#[ignore = "needs mpirun and the mpi feature: .ci/mpi.sh"]
fn evaluate_reference_shared_over_two_ranks_records_what_one_process_records() {
    let d = tmp_dir("reference");
    let mut r = Recipe::from_file(repo_path("recipes/fmnist-small-standalone.toml")).unwrap();
    r.space = repo_path("search_spaces/fmnist-small.toml");
    r.data.path = Some(repo_path("data/fashion-mnist-sample"));
    r.data.val_size = 64;
    r.data.train_limit = Some(128);
    r.train.batch_size = 32;
    r.train.epochs = 1;
    let recipe = write_recipe(&r, &d, "standalone.toml");
    let config = |out: &Path| {
        let text = format!(
            "name = \"mpi\"\nspace = \"{}\"\nrecipe = \"{recipe}\"\noutput_dir = \"{}\"\n\
             stratified = 3\nbudgets = [0.5]\nper_budget = 2\nseeds = [0, 1]\n",
            repo_path("search_spaces/fmnist-small.toml").display(),
            out.display()
        );
        let p = out.with_extension("toml");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (one, two) = (d.join("r1"), d.join("r2"));
    ok(alone(&["evaluate", "reference", &config(&one)]));
    ok(mpirun(2, &["evaluate", "reference", &config(&two)], &[]));
    let runs = |dir: &Path| {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(vitnas::rank::reference::REFERENCE_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(v["complete"], true);
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| {
                let arch = e["arch"].clone();
                e["runs"].as_array().unwrap().iter().map(move |r| {
                    (
                        arch.clone(),
                        r["seed"].clone(),
                        r["epochs"].clone(),
                        r["val"].as_f64(),
                        r["test"].as_f64(),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (runs(&one), runs(&two));
    assert_eq!(a.len(), 3 * 2 + 2 + 2 * 2);
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(d);
}
