//! Accuracy predictors: seeded fits that rank a known monotone target well,
//! refusals that name the file, screened search, and the attentive sampler
//! by predicted accuracy.

mod common;

use common::{repo_path, space, supernet, with_fmnist_evaluator};
use rand::{rngs::StdRng, SeedableRng};
use std::path::{Path, PathBuf};
use vitnas::search::config::{Screening, SearchConfig};
use vitnas::search::{self, Search};
use vitnas::space::{flops, Arch, Space};
use vitnas::train::predictor::{dataset, fit, AccuracyPredictor};
use vitnas::train::recipe::{AttentivePick, AttentiveProxy, Recipe, SamplerConfig};
use vitnas::train::sampler::{self, Attentive, AttentiveByPredictor, Sampler};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-predictor-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A known monotone target: accuracy rises with log-FLOPs from 0.3 (the
/// smallest subnet) to 0.9 (the largest).
fn target(s: &Space, a: &Arch) -> f64 {
    let (lo, hi) = (
        (flops(s, &s.smallest()) as f64).ln(),
        (flops(s, &s.largest()) as f64).ln(),
    );
    0.3 + 0.6 * ((flops(s, a) as f64).ln() - lo) / (hi - lo)
}

/// A dataset of `n` architectures scored by [`target`], as if by the
/// supernet `supernet_hash`.
fn synthetic_csv(dir: &Path, s: &Space, n: usize, supernet_hash: &str) -> PathBuf {
    let csv = dir.join(format!("acc-{n}.csv"));
    let header = dataset::Header::new(s, supernet_hash, 1, n, 100);
    let never = std::sync::atomic::AtomicBool::new(false);
    let (scored, stopped) = dataset::collect(
        s,
        &header,
        &csv,
        &never,
        |a| Ok((target(s, a), 1.0)),
        |_, _| {},
    )
    .unwrap();
    assert_eq!((scored, stopped), (n, false));
    csv
}

fn fitted(csv: &Path, seed: u64, mlp_steps: usize) -> AccuracyPredictor {
    let opts = fit::Options {
        holdout: 0.2,
        seed,
        mlp_steps,
    };
    dataset::fit(&dataset::read(csv).unwrap(), &opts, csv)
        .unwrap()
        .0
}

#[test]
fn fit_is_seeded_and_keeps_a_model_that_ranks_a_monotone_target_with_tau_above_0_8() {
    let s = space("fmnist-tiny");
    let dir = tmp("seeded");
    let csv = synthetic_csv(&dir, &s, 150, "feed");
    let a = fitted(&csv, 7, 600);
    let b = fitted(&csv, 7, 600);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap(),
        "same seed, same file"
    );
    // Both models were scored on the held-out 20 %, the kept one is the
    // better by τ, and the file says why.
    assert_eq!(a.heldout.len(), 2);
    let kept = a.scores().unwrap();
    assert_eq!(kept.n, 30);
    assert!(a
        .heldout
        .values()
        .all(|o| kept.kendall_tau >= o.kendall_tau));
    assert!(kept.kendall_tau > 0.8, "held-out τ {}", kept.kendall_tau);
    assert!(a.chosen_because.contains("τ") && a.chosen_because.contains(a.model.name()));
    assert_eq!(a.supernet_hash, "feed");
    // Saved and loaded, it predicts the same; the largest subnet is
    // predicted above the smallest.
    let file = dir.join("p.json");
    a.save(&file).unwrap();
    let back = AccuracyPredictor::load(&file).unwrap();
    assert_eq!(back, a);
    assert!(back.predict(&s, &s.largest()) > back.predict(&s, &s.smallest()));
    // A different seed splits differently.
    assert_ne!(fitted(&csv, 8, 600).heldout, a.heldout);
}

#[test]
fn a_predictor_is_refused_for_another_space_another_supernet_and_too_few_rows_naming_the_file() {
    let s = space("fmnist-tiny");
    let dir = tmp("refusals");
    let weights = dir.join("supernet.safetensors");
    std::fs::write(&weights, b"the weights this predictor learnt").unwrap();
    let hash = vitnas::train::predictor::supernet_hash(&weights).unwrap();
    let file = dir.join("p.json");
    fitted(&synthetic_csv(&dir, &s, 60, &hash), 0, 100)
        .save(&file)
        .unwrap();
    let p = AccuracyPredictor::load(&file).unwrap();
    let shown = file.display().to_string();

    p.check_space(&file, &s).unwrap();
    let text = std::fs::read_to_string(repo_path("search_spaces/fmnist-tiny.toml")).unwrap();
    let other =
        Space::from_toml_str(&text.replace("[64, 96, 128]", "[96, 128]"), "other.toml").unwrap();
    let e = p.check_space(&file, &other).unwrap_err().to_string();
    assert!(e.contains(&shown) && e.contains("space"), "{e}");

    p.check_supernet(&file, &weights).unwrap();
    let retrained = dir.join("other.safetensors");
    std::fs::write(&retrained, b"the weights of another training").unwrap();
    let e = p.check_supernet(&file, &retrained).unwrap_err().to_string();
    assert!(e.contains(&shown) && e.contains("another supernet"), "{e}");

    let few = synthetic_csv(&dir, &s, fit::MIN_ROWS - 1, &hash);
    let e = dataset::fit(
        &dataset::read(&few).unwrap(),
        &fit::Options::default(),
        &few,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(&few.display().to_string()) && e.contains("at least"),
        "{e}"
    );

    // The attentive sampler refuses it for another space, naming the field
    // and the file.
    let c = SamplerConfig::Attentive {
        num_random: 1,
        num_candidates: 4,
        pick: AttentivePick::Best,
        proxy: AttentiveProxy::Predictor(file.clone()),
    };
    sampler::from_config(&c, &s).unwrap();
    let e = sampler::from_config(&c, &other).err().unwrap().to_string();
    assert!(
        e.contains("sampler.proxy.predictor") && e.contains(&shown),
        "{e}"
    );
}

#[test]
fn attentive_sampler_by_predictor_picks_the_candidate_with_the_best_or_worst_prediction() {
    let s = space("fmnist-tiny");
    let dir = tmp("attentive");
    let p = fitted(&synthetic_csv(&dir, &s, 60, "feed"), 0, 100);
    // The plan draws its candidates after the largest and smallest, which
    // take no draws: the same 8 as drawn here.
    let cands: Vec<Arch> = {
        let mut rng = StdRng::seed_from_u64(9);
        (0..8).map(|_| s.sample(&mut rng)).collect()
    };
    let pred: Vec<f64> = cands.iter().map(|a| p.predict(&s, a)).collect();
    let arg = |better: fn(f64, f64) -> bool| {
        (0..8).fold(0, |b, i| if better(pred[i], pred[b]) { i } else { b })
    };
    for (pick, want) in [
        (AttentivePick::Best, arg(|a, b| a > b)),
        (AttentivePick::Worst, arg(|a, b| a < b)),
    ] {
        let sampler = AttentiveByPredictor {
            attentive: Attentive {
                num_random: 1,
                num_candidates: 8,
                pick,
            },
            predictor: p.clone(),
        };
        let plan = sampler.plan(&s, 0, &mut StdRng::seed_from_u64(9));
        assert_eq!(
            (&plan.archs[0], &plan.archs[1]),
            (&s.largest(), &s.smallest())
        );
        assert_eq!(plan.archs[2], cands[want], "{pick:?}");
    }
    assert!(pred[arg(|a, b| a > b)] > pred[arg(|a, b| a < b)]);
}

#[test]
fn the_sampler_proxy_defaults_to_flops_and_a_recipe_without_it_is_unchanged() {
    let text = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let attentive = text.replace(
        "kind = \"sandwich\"\nnum_random = 0",
        "kind = \"attentive\"\nnum_random = 1\nnum_candidates = 4\npick = \"best\"",
    );
    let r = Recipe::from_toml_str(&attentive, Path::new("a.toml")).unwrap();
    let SamplerConfig::Attentive { proxy, .. } = &r.sampler else {
        panic!("attentive")
    };
    assert_eq!(*proxy, AttentiveProxy::Flops);
    assert!(
        !r.to_toml_string().contains("proxy"),
        "the default is not written"
    );
    let flops = attentive.replace("pick = \"best\"", "pick = \"best\"\nproxy = \"flops\"");
    assert_eq!(
        Recipe::from_toml_str(&flops, Path::new("f.toml")).unwrap(),
        r
    );
    let by = attentive.replace(
        "pick = \"best\"",
        "pick = \"best\"\nproxy = { predictor = \"p.json\" }",
    );
    let r2 = Recipe::from_toml_str(&by, Path::new("p.toml")).unwrap();
    let SamplerConfig::Attentive { proxy, .. } = &r2.sampler else {
        panic!("attentive")
    };
    assert_eq!(*proxy, AttentiveProxy::Predictor("p.json".into()));
    assert_eq!(
        Recipe::from_toml_str(&r2.to_toml_string(), Path::new("again.toml")).unwrap(),
        r2
    );
    let bad = attentive.replace("pick = \"best\"", "pick = \"best\"\nproxy = \"params\"");
    let e = Recipe::from_toml_str(&bad, Path::new("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml"), "{e}");
}

fn config(screening: Option<Screening>) -> SearchConfig {
    SearchConfig {
        screening,
        ..common::small_search_config()
    }
}

#[test]
fn screened_search_scores_only_the_best_predicted_fraction_and_keeps_its_parents_among_them() {
    let s = space("fmnist-tiny");
    let dir = tmp("screened");
    let p = fitted(&synthetic_csv(&dir, &s, 60, "feed"), 0, 100);
    let (net, _vm) = supernet(&s, 5);
    with_fmnist_evaluator(&net, 48, None, |ev| {
        let screening = Screening {
            predictor: dir.join("p.json"),
            fraction: 0.5,
        };

        // Generation 0 draws the same 8 candidates with and without screening;
        // screened, only the 4 with the best predictions are scored.
        let mut plain = Search::new(&s, config(None)).unwrap();
        plain.step(ev).unwrap();
        let mut all: Vec<(f64, Vec<usize>)> = plain
            .state
            .records
            .iter()
            .map(|r| (p.predict(&s, &r.arch), r.genes.clone()))
            .collect();
        assert_eq!(all.len(), 8);
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut screened = Search::new(&s, config(Some(screening.clone())))
            .unwrap()
            .with_accuracy_predictor(Some(&p));
        screened.step(ev).unwrap();
        let mut got: Vec<Vec<usize>> = screened
            .state
            .records
            .iter()
            .map(|r| r.genes.clone())
            .collect();
        got.sort();
        let mut want: Vec<Vec<usize>> = all[..4].iter().map(|(_, g)| g.clone()).collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(screened.state.screened_out, 4);

        // Every later generation: the population (hence the next parents) is
        // made of scored candidates only, the previous generation's parents
        // among them, and a fraction of the new ones was left unscored.
        for g in 1..4 {
            let before_out = screened.state.screened_out;
            let before = screened.state.records.len();
            let mut ranked: Vec<&search::Record> = screened
                .state
                .population
                .iter()
                .map(|g| {
                    screened
                        .state
                        .records
                        .iter()
                        .find(|r| &r.genes == g)
                        .unwrap()
                })
                .collect();
            ranked.sort_by(|a, b| {
                b.accuracy
                    .total_cmp(&a.accuracy)
                    .then_with(|| a.genes.cmp(&b.genes))
            });
            let parents: Vec<Vec<usize>> = ranked.iter().take(3).map(|r| r.genes.clone()).collect();
            screened.step(ev).unwrap();
            let st = &screened.state;
            assert!(
                st.population
                    .iter()
                    .all(|g| st.records.iter().any(|r| &r.genes == g)),
                "generation {g}: an unscored candidate in the population"
            );
            assert!(parents.iter().all(|p| st.population.contains(p)));
            let new = st.records.len() - before;
            let out = st.screened_out - before_out;
            assert!(
                new >= 1 && new == (0.5 * (new + out) as f64).ceil() as usize,
                "{new} {out}"
            );
        }
        assert!(screened
            .state
            .records
            .iter()
            .all(|r| r.predicted_accuracy == Some(p.predict(&s, &r.arch))));
        let best = screened.best().unwrap();
        assert!(screened.state.records.contains(best));

        // Through `run_with`: a resumed screened search replays the
        // uninterrupted one; a screening config without its predictor is refused.
        let (a, c) = (dir.join("a"), dir.join("c"));
        let full = search::run_with(
            &s,
            config(Some(screening.clone())),
            ev,
            Some(&p),
            &a,
            false,
            false,
        )
        .unwrap();
        assert_eq!(full.records, screened.state.records);
        let mut short = config(Some(screening.clone()));
        short.generations = 2;
        search::run_with(&s, short, ev, Some(&p), &c, false, false).unwrap();
        let resumed = search::run_with(
            &s,
            config(Some(screening.clone())),
            ev,
            Some(&p),
            &c,
            true,
            false,
        )
        .unwrap();
        assert_eq!(resumed.records, full.records);
        assert_eq!(resumed.population, full.population);
        assert_eq!(resumed.screened_out, full.screened_out);
        let e = search::run_with(
            &s,
            config(Some(screening)),
            ev,
            None,
            &dir.join("d"),
            false,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("search.screening"), "{e}");
    })
}
