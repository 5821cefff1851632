//! The ranking-consistency loss (`[ranking]` in a recipe): off, a run is
//! byte-identical to one without it; on, the engine's step equals candle's
//! autograd of the whole objective (each subnet's loss plus λ times the mean
//! hinge over the prior-ordered pairs, in one graph); its coefficients,
//! margin and warm-up are as specified on hand-computed cases; bad values
//! are refused naming the field.

mod common;

use candle_core::{Device, Tensor, Var};
use common::{images, repo_path, small_quickstart, space, supernet, uniform};
use rand::{rngs::StdRng, SeedableRng};
use std::path::{Path, PathBuf};
use vitnas::engine::{Config, Weights};
use vitnas::space::{flops, Space};
use vitnas::train::loss::{cross_entropy, Distill, Kl, Prior, Ranking, RankingConfig};
use vitnas::train::recipe::{Recipe, SamplerConfig};
use vitnas::train::sampler::{Plan, Sampler, Sandwich};
use vitnas::train::step::{accumulate_groups, Batch, Input, Params, Path as StepPath, StepLosses};
use vitnas::train::{self, CHECKPOINT_FILE, METRICS_FILE, SUPERNET_FILE};

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-ranking-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn train_run(r: &Recipe, resume: bool, max_steps: Option<usize>) -> vitnas::train::Summary {
    common::train_in_process(r, resume, max_steps, false).unwrap()
}

/// The step lines of a run's metrics.jsonl.
fn step_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("losses").is_some())
        .collect()
}

fn ranking(weight: f64, margin: f64, prior: Prior, warmup_epochs: f64) -> RankingConfig {
    RankingConfig {
        weight,
        margin,
        prior,
        warmup_epochs,
    }
}

/// A recipe with `weight = 0` (and every other field set) trains
/// byte-identically to the same recipe without a `[ranking]` table: the
/// same checkpoint and supernet files, byte for byte, and the same step
/// lines in metrics.jsonl (no ranking entry).
#[test]
fn a_zero_weight_ranking_table_trains_byte_identically_to_none() {
    let (da, db) = (tmp_dir("none"), tmp_dir("zero"));
    let a = small_quickstart(&da);
    let mut b = small_quickstart(&db);
    b.ranking = Some(ranking(0.0, 0.3, Prior::Params, 1.0));
    b.validate(Path::new("zero.toml")).unwrap();
    train_run(&a, false, None);
    train_run(&b, false, None);
    for f in [CHECKPOINT_FILE, SUPERNET_FILE] {
        let (x, y) = (
            std::fs::read(da.join(f)).unwrap(),
            std::fs::read(db.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs");
    }
    let (la, lb) = (step_lines(&da), step_lines(&db));
    assert_eq!(la.len(), 16);
    assert_eq!(la, lb);
    assert!(lb.iter().all(|l| l.get("ranking").is_none()));
    // The resolved recipe records the table; one without it writes none.
    let resolved = |d: &Path| std::fs::read_to_string(d.join(train::RECIPE_FILE)).unwrap();
    assert!(!resolved(&da).contains("[ranking]"));
    assert!(resolved(&db).contains("[ranking]"));
    let _ = std::fs::remove_dir_all(&da);
    let _ = std::fs::remove_dir_all(&db);
}

/// A run with the loss on logs it at every step (λ ramping from 0 over
/// the warm-up epoch, the active fraction in [0, 1]), and, interrupted
/// and resumed, ends bit-identical to an uninterrupted run.
#[test]
fn a_ranking_run_logs_the_loss_and_resumes_exactly() {
    let (full, cut) = (tmp_dir("full"), tmp_dir("cut"));
    let recipe = |d: &Path| {
        let mut r = small_quickstart(d);
        r.sampler = SamplerConfig::Sandwich { num_random: 2 };
        r.ranking = Some(ranking(0.5, 0.05, Prior::Flops, 1.0));
        r
    };
    train_run(&recipe(&full), false, None);
    train_run(&recipe(&cut), false, Some(5));
    train_run(&recipe(&cut), true, None);
    let (x, y) = (
        std::fs::read(full.join(CHECKPOINT_FILE)).unwrap(),
        std::fs::read(cut.join(CHECKPOINT_FILE)).unwrap(),
    );
    assert!(x == y, "the resumed run's checkpoint differs");
    let lines = step_lines(&full);
    assert_eq!(lines.len(), 16);
    for (i, l) in lines.iter().enumerate() {
        let r = &l["ranking"];
        // 8 steps an epoch: λ = 0.5 · step / 8 over the first epoch.
        let want = 0.5 * (i.min(8) as f64) / 8.0;
        assert!((r["weight"].as_f64().unwrap() - want).abs() < 1e-12, "{l}");
        // Largest, smallest and two random subnets: at most 6 ordered pairs.
        let pairs = r["pairs"].as_u64().unwrap();
        assert!((1..=6).contains(&pairs), "{l}");
        let active = r["active"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&active), "{l}");
        assert!(r["loss"].as_f64().unwrap() >= 0.0, "{l}");
    }
    let _ = std::fs::remove_dir_all(&full);
    let _ = std::fs::remove_dir_all(&cut);
}

/// A supernet whose parameters are not at their initial constants.
fn perturbed(space: &Space) -> (vitnas::Supernet, Params) {
    let (net, vm) = supernet(space, 3);
    let params = Params::from_varmap(&vm);
    for (i, v) in params.vars.iter().enumerate() {
        let t = (v.as_tensor() + uniform(v.dims(), 100 + i as u64, 0.05)).unwrap();
        v.set(&t).unwrap();
    }
    (net, params)
}

/// One step of `plan` by `path` into one group of gradient buffers.
fn step(path: StepPath, plan: &Plan, batch: Batch, params: &Params) -> (StepLosses, Vec<Vec<f32>>) {
    let mut g = params.zero_grads();
    let one = vec![0; plan.archs.len()];
    let out = accumulate_groups(path, plan, batch, &one, &mut [&mut g[..]]).unwrap();
    (out, g)
}

/// The whole objective of a step in one candle graph: the largest's
/// label-smoothed CE, the others' KL from its detached logits, plus
/// `λ / P · Σ max(0, CE_a − CE_b + m)` over the `P` ordered pairs with
/// `prior[a] > prior[b]`; its gradients by candle's autograd, and the CEs.
#[allow(clippy::too_many_arguments)]
fn whole_objective(
    net: &vitnas::Supernet,
    params: &Params,
    plan: &Plan,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    r: &Ranking,
) -> (Vec<Vec<f32>>, Vec<f64>) {
    let mut total = Tensor::new(0f32, &Device::Cpu).unwrap();
    let mut ces = Vec::new();
    let mut teacher: Option<Tensor> = None;
    for arch in &plan.archs {
        let logits = net.forward(x, arch, true).unwrap();
        let ce = cross_entropy(&logits, y, eps).unwrap();
        let own = match &teacher {
            Some(t) => Kl.loss(&logits, t).unwrap().0,
            None => {
                teacher = Some(logits.detach());
                ce.clone()
            }
        };
        total = (total + own).unwrap();
        ces.push(ce);
    }
    let n = ces.len();
    let (mut hinges, mut pairs) = (Tensor::new(0f32, &Device::Cpu).unwrap(), 0);
    for a in 0..n {
        for b in 0..n {
            if r.prior[a] > r.prior[b] {
                pairs += 1;
                let d = ((&ces[a] - &ces[b]).unwrap() + r.margin).unwrap();
                hinges = (hinges + d.relu().unwrap()).unwrap();
            }
        }
    }
    let total = (total + (hinges * (r.weight / pairs as f64)).unwrap()).unwrap();
    let g = total.backward().unwrap();
    let grads = params
        .vars
        .iter()
        .map(|v: &Var| match g.get(v.as_tensor()) {
            Some(t) => t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            None => vec![0.0; v.elem_count()],
        })
        .collect();
    let ces = ces
        .iter()
        .map(|c| c.to_scalar::<f32>().unwrap() as f64)
        .collect();
    (grads, ces)
}

/// Every gradient within `tol` of the reference, relative to the
/// reference tensor's largest gradient (the key biases, whose true
/// gradient is 0, relative to at least 1e-2).
fn assert_close(params: &Params, what: &str, got: &[Vec<f32>], want: &[Vec<f32>], tol: f32) {
    for (k, name) in params.names.iter().enumerate() {
        let floor = if name.ends_with("key.bias") {
            1e-2
        } else {
            1e-12
        };
        let scale = want[k].iter().fold(0f32, |m, v| m.max(v.abs())).max(floor);
        let d = got[k]
            .iter()
            .zip(&want[k])
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            d / scale <= tol,
            "{what}, {name}: differs by {} relative",
            d / scale
        );
    }
}

/// A sandwich step (largest on labels, three subnets distilled with KL)
/// with the ranking loss (λ = 0.7, margin 0.02, FLOPs prior) by the engine
/// and by the autograd path gives the same losses, the same ranking terms
/// and the same gradients within 1e-4 (relative to each tensor's largest
/// gradient), and both equal candle's autograd of the whole objective in
/// one graph; pairs are active, the term changes the gradient, and every
/// parameter gets a gradient.
#[test]
fn the_engine_step_with_the_ranking_loss_equals_autograd_of_the_whole_objective() {
    let s = space("fmnist-tiny");
    let (net, params) = perturbed(&s);
    // 17 images: split into chunks when the pool has threads.
    let x = images(&s, 17, 3);
    let y = Tensor::from_vec((0..17u32).map(|i| i % 10).collect(), 17, &Device::Cpu).unwrap();
    let plan = Sandwich { num_random: 2 }.plan(&s, 0, &mut StdRng::seed_from_u64(1));
    assert!(plan.teacher_first && plan.archs.len() == 4);
    let prior: Vec<f64> = plan.archs.iter().map(|a| flops(&s, a) as f64).collect();
    let r = Ranking {
        weight: 0.7,
        margin: 0.02,
        prior: &prior,
    };
    let eps = 0.1;
    let batch = |ranking| Batch {
        input: Input::Images(&x),
        labels: &y,
        label_smoothing: eps,
        distill: Some(&Kl),
        ranking,
        teacher: None,
    };
    let w = Weights::from_tensors(&params.tensors()).unwrap();
    let cfg = Config::from_supernet(&net);
    let engine = StepPath::Engine {
        weights: &w,
        config: &cfg,
        recompute: Default::default(),
    };
    let autograd = StepPath::Autograd {
        net: &net,
        params: &params,
    };
    let (le, ge) = step(engine, &plan, batch(Some(r)), &params);
    let (la, ga) = step(autograd, &plan, batch(Some(r)), &params);
    let (_, plain) = step(engine, &plan, batch(None), &params);
    let (gw, ces) = whole_objective(&net, &params, &plan, &x, &y, eps, &r);

    // The terms each path reports are those of the CEs of the whole graph.
    let (te, ta) = (le.ranking.unwrap(), la.ranking.unwrap());
    let want = r.terms(&ces);
    assert!(want.active >= 1, "no active pair: {want:?}");
    assert_eq!(want.pairs, 6, "four subnets of distinct FLOPs");
    for t in [&te, &ta] {
        assert_eq!((t.pairs, t.active), (want.pairs, want.active));
        assert!((t.loss - want.loss).abs() <= 1e-5, "{t:?} vs {want:?}");
        for (c, d) in t.coefficients.iter().zip(&want.coefficients) {
            assert!((c - d).abs() < 1e-12, "{t:?} vs {want:?}");
        }
    }
    for (a, b) in le.losses.iter().zip(&la.losses) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "losses {a} vs {b}"
        );
    }
    assert_close(&params, "engine vs autograd path", &ge, &ga, 1e-4);
    assert_close(&params, "engine vs whole objective", &ge, &gw, 1e-4);
    assert_close(&params, "autograd path vs whole objective", &ga, &gw, 1e-4);
    // The term moved the gradient well beyond the tolerance.
    let head = params
        .names
        .iter()
        .position(|n| n == "classifier.weight")
        .unwrap();
    let moved = ge[head]
        .iter()
        .zip(&plain[head])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let scale = plain[head].iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        moved > 1e-2 * scale,
        "the ranking term left the gradient unchanged"
    );
    for (k, name) in params.names.iter().enumerate() {
        assert!(ge[k].iter().any(|v| *v != 0.0), "{name} gets no gradient");
        assert!(
            ga[k].iter().any(|v| *v != 0.0),
            "{name} gets no gradient (autograd)"
        );
    }
}

/// At λ = 0 (the first step of a warm-up) the step's gradients are
/// bit-identical to a step without the term, though it still reports its
/// pairs and loss; by both paths.
#[test]
fn a_step_at_zero_weight_has_exactly_the_gradients_of_a_step_without_the_term() {
    let s = space("fmnist-tiny");
    let (net, params) = perturbed(&s);
    let x = images(&s, 9, 4);
    let y = Tensor::from_vec((0..9u32).map(|i| i % 10).collect(), 9, &Device::Cpu).unwrap();
    let plan = Sandwich { num_random: 2 }.plan(&s, 3, &mut StdRng::seed_from_u64(2));
    let prior: Vec<f64> = plan.archs.iter().map(|a| flops(&s, a) as f64).collect();
    let cfg_r = ranking(0.5, 0.1, Prior::Flops, 1.0);
    let r = cfg_r.at(0, 10, &prior);
    assert_eq!(r.weight, 0.0);
    let batch = |ranking| Batch {
        input: Input::Images(&x),
        labels: &y,
        label_smoothing: 0.1,
        distill: Some(&Kl),
        ranking,
        teacher: None,
    };
    let w = Weights::from_tensors(&params.tensors()).unwrap();
    let cfg = Config::from_supernet(&net);
    let paths = [
        StepPath::Engine {
            weights: &w,
            config: &cfg,
            recompute: Default::default(),
        },
        StepPath::Autograd {
            net: &net,
            params: &params,
        },
    ];
    for path in paths {
        let (lr, gr) = step(path, &plan, batch(Some(r)), &params);
        let (ln, gn) = step(path, &plan, batch(None), &params);
        assert_eq!(lr.losses, ln.losses);
        assert_eq!(gr, gn);
        let t = lr.ranking.unwrap();
        assert_eq!((t.weight, t.pairs), (0.0, 6));
        assert!(
            t.active >= 1 && t.loss > 0.0,
            "margin 0.1 makes pairs active: {t:?}"
        );
    }
}

/// Three subnets with known CEs, prior 3 > 2 > 1: the expected
/// coefficients and loss with margin 0 and 0.25, ties in the prior make no
/// pair, and λ ramps linearly over the warm-up.
#[test]
fn coefficients_margin_and_warmup_are_as_hand_computed() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let prior = [3.0, 2.0, 1.0];
    let ces = [1.0, 1.2, 0.9];
    // Margin 0. Pairs (0,1): 1.0 − 1.2 < 0, inactive; (0,2): 0.1; (1,2): 0.3.
    let t = Ranking {
        weight: 0.5,
        margin: 0.0,
        prior: &prior,
    }
    .terms(&ces);
    assert_eq!((t.pairs, t.active, t.weight), (3, 2, 0.5));
    assert!(close(t.loss, 0.4 / 3.0), "{t:?}");
    let want = [1.0 / 3.0, 1.0 / 3.0, -2.0 / 3.0];
    assert!(
        t.coefficients.iter().zip(want).all(|(c, w)| close(*c, w)),
        "{t:?}"
    );
    assert!(close(t.active_fraction().unwrap(), 2.0 / 3.0));
    // Margin 0.25: every pair active; 0.05 + 0.35 + 0.55.
    let t = Ranking {
        weight: 0.5,
        margin: 0.25,
        prior: &prior,
    }
    .terms(&ces);
    assert_eq!((t.pairs, t.active), (3, 3));
    assert!(close(t.loss, 0.95 / 3.0), "{t:?}");
    let want = [2.0 / 3.0, 0.0, -2.0 / 3.0];
    assert!(
        t.coefficients.iter().zip(want).all(|(c, w)| close(*c, w)),
        "{t:?}"
    );
    // The coefficients are the gradient of the loss with respect to the CEs
    // (central differences; the loss is linear around these CEs).
    for i in 0..3 {
        let r = Ranking {
            weight: 1.0,
            margin: 0.25,
            prior: &prior,
        };
        let (mut up, mut down) = (ces, ces);
        up[i] += 1e-6;
        down[i] -= 1e-6;
        let num = (r.terms(&up).loss - r.terms(&down).loss) / 2e-6;
        assert!((num - t.coefficients[i]).abs() < 1e-6, "subnet {i}: {num}");
    }
    // Ties in the prior make no pair: only (0,2) and (1,2).
    let t = Ranking {
        weight: 1.0,
        margin: 0.0,
        prior: &[3.0, 3.0, 1.0],
    }
    .terms(&ces);
    assert_eq!((t.pairs, t.active), (2, 2));
    assert!(close(t.loss, 0.4 / 2.0));
    assert!([0.5, 0.5, -1.0]
        .iter()
        .zip(&t.coefficients)
        .all(|(w, c)| close(*c, *w)));
    // One subnet (or all tied): no pair, nothing added.
    let t = Ranking {
        weight: 1.0,
        margin: 0.5,
        prior: &[1.0],
    }
    .terms(&[2.0]);
    assert_eq!((t.pairs, t.active, t.loss), (0, 0, 0.0));
    assert_eq!(t.coefficients, vec![0.0]);
    assert_eq!(t.active_fraction(), None);
    // Warm-up: 1 epoch of 10 steps, linear from 0.
    let c = ranking(0.5, 0.0, Prior::Flops, 1.0);
    for (step, w) in [
        (0, 0.0),
        (1, 0.05),
        (5, 0.25),
        (9, 0.45),
        (10, 0.5),
        (500, 0.5),
    ] {
        assert!(
            close(c.weight_at(step, 10), w),
            "step {step}: {}",
            c.weight_at(step, 10)
        );
    }
    // No warm-up: the full weight from the first step; a fraction of an
    // epoch rounds to whole steps (0.25 × 10 → 3, as the learning rate's).
    assert_eq!(ranking(0.5, 0.0, Prior::Flops, 0.0).weight_at(0, 10), 0.5);
    let c = ranking(0.6, 0.0, Prior::Flops, 0.25);
    assert!(close(c.weight_at(1, 10), 0.2) && close(c.weight_at(3, 10), 0.6));
    // The priors: FLOPs and parameter counts of the space's cost functions.
    let s = space("fmnist-tiny");
    let (big, small) = (s.largest(), s.smallest());
    assert!(Prior::Flops.score(&s, &big) > Prior::Flops.score(&s, &small));
    assert_eq!(
        Prior::Params.score(&s, &big),
        vitnas::space::params(&s, &big) as f64
    );
}

/// Every field of `[ranking]` is validated with its name, in the file
/// and after the command line's changes; unknown keys and priors are
/// refused; the shipped ranking recipe parses, differs from the sandwich
/// recipe only by its name, output and `[ranking]`, and round-trips.
#[test]
fn ranking_values_are_checked_naming_the_field() {
    let text = std::fs::read_to_string(repo_path("recipes/fmnist-small-ranking.toml")).unwrap();
    let r = Recipe::from_toml_str(&text, Path::new("ranking.toml")).unwrap();
    assert_eq!(r.ranking, Some(ranking(0.5, 0.0, Prior::Flops, 1.0)));
    let again = Recipe::from_toml_str(&r.to_toml_string(), Path::new("resolved.toml")).unwrap();
    assert_eq!(again, r);
    let sandwich = Recipe::from_file(repo_path("recipes/fmnist-small-sandwich.toml")).unwrap();
    let mut same = r.clone();
    same.ranking = None;
    same.name = sandwich.name.clone();
    same.output_dir = sandwich.output_dir.clone();
    assert_eq!(same, sandwich);
    // Defaults: margin 0, FLOPs, no warm-up.
    let minimal = text.replace(
        "weight = 0.5\nmargin = 0.0\nprior = \"flops\"\nwarmup_epochs = 1.0",
        "weight = 0.25",
    );
    let m = Recipe::from_toml_str(&minimal, Path::new("m.toml")).unwrap();
    assert_eq!(m.ranking, Some(ranking(0.25, 0.0, Prior::Flops, 0.0)));

    let refused =
        |from: &str, to: &str, field: &str| common::assert_recipe_refused(&text, from, to, field);
    refused("weight = 0.5", "weight = -0.5", "ranking.weight");
    refused("weight = 0.5", "weight = nan", "ranking.weight");
    refused("weight = 0.5", "weight = inf", "ranking.weight");
    refused("weight = 0.5\n", "", "weight");
    refused("margin = 0.0", "margin = -0.1", "ranking.margin");
    refused("margin = 0.0", "margin = nan", "ranking.margin");
    refused(
        "warmup_epochs = 1.0",
        "warmup_epochs = -1.0",
        "ranking.warmup_epochs",
    );
    refused(
        "warmup_epochs = 1.0",
        "warmup_epochs = 11.0",
        "ranking.warmup_epochs",
    );
    refused("prior = \"flops\"", "prior = \"latency\"", "latency");
    refused("margin = 0.0", "margin = 0.0\nmargn = 0.1", "margn");
    refused(
        "kind = \"sandwich\"\nnum_random = 2",
        "kind = \"uniform\"",
        "ranking.weight",
    );
    // The uniform sampler is fine when the loss is off.
    let off = text
        .replace("weight = 0.5", "weight = 0.0")
        .replace("kind = \"sandwich\"\nnum_random = 2", "kind = \"uniform\"");
    Recipe::from_toml_str(&off, Path::new("off.toml")).unwrap();
    // After changes made in code (as the command line makes them).
    let mut changed = r.clone();
    changed.ranking.as_mut().unwrap().margin = f64::INFINITY;
    let msg = changed.validate_resolved().unwrap_err().to_string();
    assert!(
        msg.contains("command-line") && msg.contains("ranking.margin"),
        "{msg}"
    );
    let mut changed = r.clone();
    changed.train.epochs = 1;
    changed.ranking.as_mut().unwrap().warmup_epochs = 2.0;
    let msg = changed.validate_resolved().unwrap_err().to_string();
    assert!(msg.contains("ranking.warmup_epochs"), "{msg}");
}
