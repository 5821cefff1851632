//! Evolutionary and random search: reproducible, resumable, constrained,
//! with correct Pareto fronts.

mod common;

use common::{space, supernet, with_fmnist_evaluator};
use vitnas::search::config::{Algorithm, SearchConfig, SETTINGS_SOURCE};
use vitnas::search::pareto::{front, Measure};
use vitnas::search::{self, Evaluator, Record, STATE_FILE};
use vitnas::space::{params, Space};

fn config() -> SearchConfig {
    common::small_search_config()
}

fn with_evaluator<T>(f: impl FnOnce(&Space, &Evaluator) -> T) -> T {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 5);
    with_fmnist_evaluator(&net, 48, None, |ev| f(&s, ev))
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-search-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn same_seed_gives_the_same_search_and_resume_matches_uninterrupted() {
    with_evaluator(|s, ev| {
        let (a, b, c) = (tmp("a"), tmp("b"), tmp("c"));
        let full = search::run(s, config(), ev, &a, false, false).unwrap();
        let again = search::run(s, config(), ev, &b, false, false).unwrap();
        assert_eq!(full.records, again.records);
        assert_eq!(full.best_per_generation, again.best_per_generation);
        assert_eq!(full.generation, 4);
        // Best fitness never decreases (elitism).
        assert!(full.best_per_generation.windows(2).all(|w| w[1] >= w[0]));

        // Stop after 2 generations, resume to 4.
        let mut short = config();
        short.generations = 2;
        search::run(s, short, ev, &c, false, false).unwrap();
        let mut st = search::Search::load_state(&c.join(STATE_FILE)).unwrap();
        st.config.generations = 4;
        std::fs::write(c.join(STATE_FILE), serde_json::to_string(&st).unwrap()).unwrap();
        let resumed = search::run(s, config(), ev, &c, true, false).unwrap();
        assert_eq!(resumed.records, full.records);
        for f in [
            "results.json",
            "results.csv",
            "pareto-params.svg",
            "pareto-flops.svg",
        ] {
            assert!(a.join(f).is_file(), "{f} missing");
        }
        let svg = std::fs::read_to_string(a.join("pareto-params.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("Pareto front"));
        assert!(search::run(s, config(), ev, &a, false, false)
            .unwrap_err()
            .to_string()
            .contains("--resume"));
        for d in [a, b, c] {
            std::fs::remove_dir_all(d).ok();
        }
    });
}

#[test]
fn every_candidate_satisfies_the_constraints_and_repeats_cost_nothing() {
    with_evaluator(|s, ev| {
        let budget = (params(s, &s.smallest()) + params(s, &s.largest())) / 2;
        for alg in [Algorithm::Evolution, Algorithm::Random] {
            let mut cfg = config();
            cfg.algorithm = alg;
            cfg.constraints.params_max = Some(budget);
            let d = tmp("constrained");
            let st = search::run(s, cfg, ev, &d, false, false).unwrap();
            assert!(st.records.iter().all(|r| r.params <= budget));
            // Records are unique architectures: each evaluated once.
            let mut g: Vec<_> = st.records.iter().map(|r| r.genes.clone()).collect();
            g.sort();
            g.dedup();
            assert_eq!(g.len(), st.records.len());
            assert_eq!(st.images_evaluated, 48 * st.records.len());
            std::fs::remove_dir_all(d).ok();
        }
    });
}

#[test]
fn unsatisfiable_constraint_names_the_bound_and_the_space_range() {
    let s = space("fmnist-tiny");
    let mut cfg = config();
    cfg.constraints.params_max = Some(1000);
    let msg = search::Search::new(&s, cfg).err().unwrap().to_string();
    assert!(
        msg.contains("params_max") && msg.contains("139018") && msg.contains("1199882"),
        "{msg}"
    );
    let mut cfg = config();
    cfg.constraints.flops_min = Some(u64::MAX);
    let msg = search::Search::new(&s, cfg).err().unwrap().to_string();
    assert!(
        msg.contains("flops_min") && msg.contains("62924032"),
        "{msg}"
    );
}

/// The field an InvalidConfig error names, after checking that it names
/// the search settings as its source.
fn settings_field(err: vitnas::Error) -> String {
    match err {
        vitnas::Error::InvalidConfig { file, field, .. } => {
            assert_eq!(file, SETTINGS_SOURCE);
            field
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn search_settings_errors_are_config_errors_naming_the_field() {
    let s = space("fmnist-tiny");
    let new_err = |cfg: SearchConfig| search::Search::new(&s, cfg).err().unwrap();
    let mut cfg = config();
    cfg.parents = 0;
    assert_eq!(settings_field(new_err(cfg)), "search.parents");
    let mut cfg = config();
    cfg.population = 0;
    assert_eq!(settings_field(new_err(cfg)), "search.population");
    let mut cfg = config();
    cfg.constraints.params_max = Some(1000);
    let err = new_err(cfg);
    let msg = err.to_string();
    assert_eq!(settings_field(err), "search.constraints.params_max");
    assert!(msg.contains("fmnist-tiny"), "{msg}");
    // Bounds inside the space's range that no architecture meets exactly:
    // the search gives up after max_resample draws, naming the constraints.
    let p_lo = params(&s, &s.smallest());
    with_evaluator(|s, ev| {
        let mut cfg = config();
        cfg.max_resample = 5;
        cfg.constraints.params_min = Some(p_lo + 1);
        cfg.constraints.params_max = Some(p_lo + 1);
        let d = tmp("unmeetable");
        let err = search::run(s, cfg, ev, &d, false, false).unwrap_err();
        let msg = err.to_string();
        assert_eq!(settings_field(err), "search.constraints");
        assert!(
            msg.contains("5 uniform draws") && msg.contains("max_resample"),
            "{msg}"
        );
        std::fs::remove_dir_all(d).ok();
    });
}

#[test]
fn early_rejection_evaluates_fewer_images() {
    with_evaluator(|s, ev| {
        let mut cfg = config();
        cfg.early_reject_images = 16;
        let d = tmp("early");
        let st = search::run(s, cfg, ev, &d, false, false).unwrap();
        let rejected = st.records.iter().filter(|r| r.rejected_early).count();
        // Screened-in candidates cost the full 48 images, rejected ones 16.
        assert_eq!(
            st.images_evaluated,
            48 * (st.records.len() - rejected) + 16 * rejected
        );
        // Rejected candidates were measured on the early subset only.
        assert!(st
            .records
            .iter()
            .filter(|r| r.rejected_early)
            .all(|r| r.images == 16));
        std::fs::remove_dir_all(d).ok();
    });
}

fn rec(acc: f64, p: u64, rejected: bool) -> Record {
    let s = space("fmnist-tiny");
    let arch = s.smallest();
    Record {
        genes: vec![],
        arch,
        params: p,
        flops: p,
        latency_ms: None,
        predicted_latency_ms: None,
        accuracy: acc,
        loss: 0.0,
        images: 1,
        rejected_early: rejected,
        screen_accuracy: None,
        generation: 0,
        predicted_accuracy: None,
    }
}

#[test]
fn pareto_front_keeps_exactly_the_non_dominated_records() {
    let rs = vec![
        rec(0.80, 100, false), // front
        rec(0.85, 200, false), // front
        rec(0.84, 250, false), // dominated by (0.85, 200)
        rec(0.90, 400, false), // front
        rec(0.80, 150, false), // dominated by (0.80, 100)
        rec(0.95, 50, true),   // rejected early: never on the front
    ];
    assert_eq!(
        front(&rs, Measure::Params),
        vec![true, true, false, true, false, false]
    );
    assert_eq!(front(&rs, Measure::Latency), vec![false; 6]);
}

/// A search directory in use by another process is refused (the run lock,
/// as for training), so that one search's results never silently replace
/// another's; the lock is released when the search ends.
#[test]
fn a_search_directory_in_use_by_another_process_is_refused() {
    with_evaluator(|s, ev| {
        let d = tmp("locked");
        std::fs::create_dir_all(&d).unwrap();
        let held = vitnas::train::rundir::RunLock::acquire(&d).unwrap();
        let e = search::run(s, config(), ev, &d, false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use by another vitnas process"), "{e}");
        assert!(!d.join(STATE_FILE).exists());
        drop(held);
        let mut short = config();
        short.generations = 1;
        search::run(s, short, ev, &d, false, false).unwrap();
        assert!(!d.join(vitnas::train::rundir::LOCK_FILE).exists());
        std::fs::remove_dir_all(d).ok();
    });
}

/// `--resume` continues with the saved settings: `generations` may grow
/// (applied and saved), any other difference (a bound, the predictor, the
/// population, the seed) is refused naming the field, and nothing is
/// written.
#[test]
fn a_resumed_search_refuses_changed_settings_naming_them_and_applies_more_generations() {
    with_evaluator(|s, ev| {
        let d = tmp("resume-settings");
        let mut short = config();
        short.generations = 1;
        search::run(s, short.clone(), ev, &d, false, false).unwrap();
        let before = std::fs::read(d.join(STATE_FILE)).unwrap();
        type Change = fn(&mut SearchConfig);
        let changes: [(&str, Change); 4] = [
            ("search.constraints.params_max", |c| {
                c.constraints.params_max = Some(1000)
            }),
            ("search.constraints.latency_predictor", |c| {
                c.constraints.latency_predictor = Some("p.json".into())
            }),
            ("search.population", |c| c.population = 9),
            ("search.seed", |c| c.seed = 12),
        ];
        for (field, change) in changes {
            let mut c = short.clone();
            c.generations = 2;
            change(&mut c);
            let e = search::run(s, c, ev, &d, true, false)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(field) && e.contains("saved search used"),
                "{field}: {e}"
            );
            assert_eq!(std::fs::read(d.join(STATE_FILE)).unwrap(), before);
        }
        let mut fewer = short.clone();
        fewer.generations = 0;
        let e = search::run(s, fewer, ev, &d, true, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("search.generations"), "{e}");
        let mut more = short.clone();
        more.generations = 2;
        let state = search::run(s, more, ev, &d, true, false).unwrap();
        assert_eq!((state.generation, state.config.generations), (2, 2));
        std::fs::remove_dir_all(d).ok();
    });
}
