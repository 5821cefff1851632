//! The search-quality benchmark: the reference set's plan, its harness
//! (resumable, convergence check, noise ceiling) and the rankers' metrics,
//! pinned against scipy.

mod common;

use common::repo_path;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use vitnas::rank::quality::{self, Ranker, Truth};
use vitnas::rank::reference::{self, Group, Reference, ReferenceConfig};
use vitnas::space::{flops, Space};
use vitnas::train::recipe::Recipe;

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-sq-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn small_space() -> Space {
    Space::from_file(repo_path("search_spaces/fmnist-small.toml")).unwrap()
}

// Values from scipy 1.17 (stats.kendalltau, stats.spearmanr) on the same
// inputs; the regrets by hand.
const ACC: [f64; 12] = [
    0.881, 0.884, 0.879, 0.890, 0.887, 0.892, 0.893, 0.889, 0.895, 0.891, 0.896, 0.894,
];
const SCORE: [f64; 12] = [1.0, 2.0, 2.0, 4.0, 3.0, 5.0, 6.5, 6.0, 8.0, 7.0, 7.5, 9.0];

fn truth(bins: Vec<Vec<usize>>, stratified: Vec<usize>) -> Truth {
    Truth {
        acc: ACC.to_vec(),
        bins,
        stratified,
        seed: 0,
    }
}

fn ranker(name: &str, scores: &[f64]) -> Ranker {
    Ranker {
        name: name.into(),
        scores: scores.to_vec(),
    }
}

#[test]
fn metrics_match_scipy_and_hand_computed_regret() {
    let t = truth(vec![(0..6).collect(), (6..12).collect()], Vec::new());
    let m = quality::score(&t, &[ranker("flops", &SCORE)]).unwrap();
    let f = &m["flops"];
    assert!((f.tau.unwrap() - 0.7481134002767627).abs() < 1e-12);
    assert!((f.rho.unwrap() - 0.9106844088398501).abs() < 1e-12);
    assert!((f.tau_in_budget[0].unwrap() - 0.8280786712108251).abs() < 1e-12);
    assert!((f.tau_in_budget[1].unwrap() - 0.4666666666666666).abs() < 1e-12);
    // Bin 1: the top score (5.0, index 5) is the best (0.892): no regret.
    // Bin 2: the top score (9.0, index 11) has 0.894, the best 0.896.
    assert!(f.regret_points[0].unwrap().abs() < 1e-9);
    assert!((f.regret_points[1].unwrap() - 0.2).abs() < 1e-9);
    assert!((f.mean_regret_points.unwrap() - 0.1).abs() < 1e-9);
    // Top 5 by score: 11, 8, 10, 9, 6; by accuracy: 10, 8, 11, 6, 5.
    assert!((f.top5_overlap - 0.8).abs() < 1e-12);
    // FLOPs is not compared with itself.
    assert!(f.vs_flops_tau_diff.is_none() && f.vs_flops_tau_diff_ci.is_none());
}

#[test]
fn bootstrap_interval_of_tau_agrees_with_scipy() {
    // One group: plain resampling of the 12 pairs, as scipy.stats.bootstrap
    // (paired, percentile, 20,000 resamples) does: [0.4915, 0.9344].
    let t = truth(Vec::new(), (0..12).collect());
    let m = quality::score(&t, &[ranker("flops", &SCORE)]).unwrap();
    let [lo, hi] = m["flops"].tau_ci.unwrap();
    assert!((lo - 0.4915).abs() < 0.05, "{lo}");
    assert!((hi - 0.9344).abs() < 0.03, "{hi}");
    // Seeded: the same interval again.
    let again = quality::score(&t, &[ranker("flops", &SCORE)]).unwrap();
    assert_eq!(again["flops"].tau_ci, m["flops"].tau_ci);
}

#[test]
fn paired_intervals_are_zero_for_a_copy_of_flops_and_positive_for_the_truth() {
    let t = truth(vec![(0..6).collect(), (6..12).collect()], Vec::new());
    let m = quality::score(
        &t,
        &[
            ranker("flops", &SCORE),
            ranker("copy", &SCORE),
            ranker("oracle", &ACC),
        ],
    )
    .unwrap();
    let c = &m["copy"];
    assert_eq!(c.vs_flops_tau_diff, Some(0.0));
    assert_eq!(c.vs_flops_tau_diff_ci, Some([0.0, 0.0]));
    assert_eq!(c.vs_flops_regret_diff_ci, Some([0.0, 0.0]));
    let o = &m["oracle"];
    assert_eq!(o.tau, Some(1.0));
    assert!(o.regret_points.iter().all(|r| *r == Some(0.0)));
    assert!(o.vs_flops_tau_diff.unwrap() > 0.2);
    // The oracle is never worse than FLOPs on a resample.
    let [lo, _] = o.vs_flops_tau_diff_ci.unwrap();
    assert!(lo >= 0.0, "{lo}");
    let [_, hi] = o.vs_flops_regret_diff_ci.unwrap();
    assert!(hi <= 0.0, "{hi}");
}

#[test]
fn a_ranker_with_a_nan_score_or_the_wrong_length_is_refused_by_name() {
    let t = truth(Vec::new(), (0..12).collect());
    let mut bad = SCORE.to_vec();
    bad[3] = f64::NAN;
    let e = quality::score(&t, &[ranker("naswot", &bad)]).unwrap_err();
    assert!(
        e.to_string().contains("naswot") && e.to_string().contains("score 3"),
        "{e}"
    );
    let e = quality::score(&t, &[ranker("short", &SCORE[..5])]).unwrap_err();
    assert!(
        e.to_string().contains("short") && e.to_string().contains("5 scores"),
        "{e}"
    );
}

fn config(out: &Path) -> ReferenceConfig {
    ReferenceConfig {
        name: "tiny".into(),
        space: repo_path("search_spaces/fmnist-small.toml"),
        recipe: out.join("recipe.toml"),
        output_dir: out.join("reference"),
        seed: 0,
        stratified: 3,
        log_flops: true,
        budgets: vec![0.5],
        per_budget: 2,
        tolerance: 0.05,
        seeds: vec![0, 1],
        convergence_factor: 2,
    }
}

#[test]
fn the_plan_has_stratified_budget_and_convergence_architectures() {
    let s = small_space();
    let mut cfg = config(Path::new("/nonexistent"));
    cfg.stratified = 16;
    cfg.budgets = vec![0.25, 0.5, 0.75];
    cfg.per_budget = 10;
    let plan = reference::plan(&cfg, &s, 20).unwrap();
    assert_eq!(plan, reference::plan(&cfg, &s, 20).unwrap(), "seeded");
    assert_eq!(plan.len(), 16 + 30 + 2);
    let largest = flops(&s, &s.largest()) as f64;
    for (i, e) in plan.iter().enumerate() {
        assert!(
            !plan[..i]
                .iter()
                .any(|o| o.arch == e.arch && o.ranked() && e.ranked()),
            "architecture {i} repeats"
        );
        match e.group {
            Group::Stratified => {
                assert_eq!(e.runs.iter().map(|r| r.seed).collect::<Vec<_>>(), [0, 1]);
            }
            Group::Budget(b) => {
                let rel = (e.flops as f64 - b * largest).abs() / (b * largest);
                assert!(
                    rel <= 0.05,
                    "arch {i}: {} MACs is {rel} from budget {b}",
                    e.flops
                );
                assert_eq!(e.runs.len(), 1);
            }
            Group::Largest | Group::Smallest => {
                assert_eq!(
                    e.runs.iter().map(|r| r.epochs).collect::<Vec<_>>(),
                    [20, 40]
                );
            }
        }
    }
    // Log-FLOPs strata: the stratified FLOPs grow and span the space.
    let f: Vec<f64> = plan[..16].iter().map(|e| e.flops as f64).collect();
    assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
    assert!(f[0] < 2.0 * flops(&s, &s.smallest()) as f64 && f[15] > 0.7 * largest);
}

#[test]
fn an_invalid_reference_file_names_the_field() {
    let out = tmp_dir("bad");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("r.toml");
    let mut text = toml::to_string(&config(&out)).unwrap();
    text = text.replace("seeds = [0, 1]", "seeds = [0, 0]");
    std::fs::write(&path, &text).unwrap();
    let e = ReferenceConfig::from_file(&path).unwrap_err().to_string();
    assert!(e.contains("seeds") && e.contains("r.toml"), "{e}");
    std::fs::write(
        &path,
        text.replace("seeds = [0, 0]", "seeds = [0, 1]")
            .replace("budgets = [0.5]", "budgets = [1.5]"),
    )
    .unwrap();
    let e = ReferenceConfig::from_file(&path).unwrap_err().to_string();
    assert!(e.contains("budgets") && e.contains("1.5"), "{e}");
}

/// 256 training images of the bundled sample, batch 64, 1 epoch.
fn tiny_recipe() -> Recipe {
    let mut r = Recipe::from_file(repo_path("recipes/fmnist-small-standalone.toml")).unwrap();
    common::on_fmnist_sample(&mut r, "fmnist-small", 256, 64);
    r.train.epochs = 1;
    r.train.checkpoint_every = 2;
    r.optimizer.warmup_epochs = 0.0;
    r
}

#[test]
fn the_reference_harness_runs_resumes_and_reports_its_checks() {
    let out = tmp_dir("ref");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("recipe.toml"), tiny_recipe().to_toml_string()).unwrap();
    let cfg = config(&out);
    let flag = AtomicBool::new(false);
    let o = vitnas::rank::Options {
        stop: &flag,
        progress: false,
        collective: &vitnas::dist::Single,
    };
    let r = reference::run(&cfg, &o, Default::default()).unwrap();
    assert!(r.complete);
    // 3 stratified × 2 seeds, 2 at the budget, largest and smallest × 2 budgets.
    let runs: Vec<_> = r.entries.iter().flat_map(|e| &e.runs).collect();
    assert_eq!(runs.len(), 12);
    assert!(runs.iter().all(|x| x.test.is_some() && x.wall_s.is_some()));
    let c = &r.checks;
    assert!(c.convergence_delta_points.is_some_and(|d| d >= 0.0));
    assert!(c.noise_ceiling_tau.is_some());
    assert!(c.largest_standalone_test.is_some());
    assert_eq!(r.ranked().len(), 5);
    // Read back from disk, and scored: FLOPs and params.
    let back = Reference::from_file(&cfg.output_dir).unwrap();
    assert_eq!(back, r);
    let t = Truth::of(&back);
    assert_eq!((t.acc.len(), t.bins.len(), t.stratified.len()), (5, 1, 3));
    let m = quality::score(&t, &quality::cost_rankers(&back)).unwrap();
    assert!(m.contains_key("flops") && m.contains_key("params"));
    // The summary reads back what it wrote (undefined values as null).
    let summary = quality::SearchQuality {
        reference: quality::summarize(&back, vec!["cmd".into()]),
        rankers: m,
    };
    let file = out.join("sq.json");
    summary.save(&file).unwrap();
    assert_eq!(quality::SearchQuality::from_file(&file).unwrap(), summary);

    // Forget one result: a rerun trains nothing (the run is finished on
    // disk) and reads back the same accuracy.
    let mut edited = back.clone();
    edited.entries[1].runs[1].test = None;
    edited.entries[1].runs[1].val = None;
    std::fs::write(
        cfg.output_dir.join("reference.json"),
        serde_json::to_string(&edited).unwrap(),
    )
    .unwrap();
    let again = reference::run(&cfg, &o, Default::default()).unwrap();
    assert_eq!(again.entries[1].runs[1].test, r.entries[1].runs[1].test);
    assert!(again.complete);

    // Delete a finished run and its result: it is trained again, with the
    // same result (every run is seeded).
    let dir = &r.entries[0].runs[0].dir;
    std::fs::remove_dir_all(dir).unwrap();
    let stem = dir.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(cfg.output_dir.join("results").join(format!("{stem}.json"))).unwrap();
    edited = again.clone();
    edited.entries[0].runs[0].test = None;
    std::fs::write(
        cfg.output_dir.join("reference.json"),
        serde_json::to_string(&edited).unwrap(),
    )
    .unwrap();
    let third = reference::run(&cfg, &o, Default::default()).unwrap();
    assert!(dir.join("model.safetensors").exists());
    assert_eq!(third.entries[0].runs[0].test, r.entries[0].runs[0].test);
    assert_eq!(third.entries[0].runs[0].val, r.entries[0].runs[0].val);
}

#[test]
fn a_reference_directory_of_another_plan_is_refused() {
    let out = tmp_dir("other");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("recipe.toml"), tiny_recipe().to_toml_string()).unwrap();
    let mut cfg = config(&out);
    cfg.budgets = Vec::new();
    cfg.stratified = 2;
    let flag = AtomicBool::new(false);
    let o = vitnas::rank::Options {
        stop: &flag,
        progress: false,
        collective: &vitnas::dist::Single,
    };
    reference::run(&cfg, &o, Default::default()).unwrap();
    cfg.seed = 7; // other architectures in the same directories
    let e = reference::run(&cfg, &o, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("another architecture"), "{e}");
}

#[test]
fn two_shards_build_the_reference_that_one_process_builds() {
    let out = tmp_dir("shards");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("recipe.toml"), tiny_recipe().to_toml_string()).unwrap();
    let mut one = config(&out);
    one.output_dir = out.join("one");
    let mut two = config(&out);
    two.output_dir = out.join("two");
    let flag = AtomicBool::new(false);
    let o = vitnas::rank::Options {
        stop: &flag,
        progress: false,
        collective: &vitnas::dist::Single,
    };
    let whole = reference::run(&one, &o, Default::default()).unwrap();
    let shard = |s: &str| s.parse::<reference::Shard>().unwrap();
    // Two processes at once, each its share of the runs.
    let part = |s: &str| {
        let flag = AtomicBool::new(false);
        let o = vitnas::rank::Options {
            stop: &flag,
            progress: false,
            collective: &vitnas::dist::Single,
        };
        reference::run(&two, &o, shard(s)).unwrap()
    };
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| part("0/2"));
        let b = sc.spawn(|| part("1/2"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let done = |r: &Reference| {
        r.entries
            .iter()
            .flat_map(|e| &e.runs)
            .filter(|x| x.test.is_some())
            .count()
    };
    assert!(done(&a) >= 6 && done(&b) >= 6, "each shard did its half");
    // A last pass merges every result file and trains nothing more.
    let merged = reference::run(&two, &o, Default::default()).unwrap();
    assert!(merged.complete);
    let results = |r: &Reference| -> Vec<(Option<f64>, Option<f64>)> {
        r.entries
            .iter()
            .flat_map(|e| &e.runs)
            .map(|x| (x.val, x.test))
            .collect()
    };
    assert_eq!(results(&merged), results(&whole));
    assert!("2/2".parse::<reference::Shard>().is_err());
    assert!("1".parse::<reference::Shard>().is_err());
}
