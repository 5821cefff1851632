//! Training runs on the bundled Fashion-MNIST sample: resume equals an
//! uninterrupted run, Ctrl-C checkpoints, NaN handling, corrupt checkpoints,
//! sampler properties, losses and the schedule.

mod common;

use candle_core::{Device, Tensor};
use common::{repo_path, space};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use vitnas::space::{flops, Space};
use vitnas::train::checkpoint::read_safetensors;
use vitnas::train::loss::{cross_entropy, AlphaDivergence, Distill, Kl};
use vitnas::train::optim::lr_at;
use vitnas::train::recipe::{GradientConfig, NonFinite, Recipe};
use vitnas::train::sampler::{Attentive, Fair, Sampler, Sandwich};
use vitnas::train::{self, RunOptions, Summary, CHECKPOINT_FILE, METRICS_FILE, SUPERNET_FILE};
use vitnas::Error;

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A tiny but real run: `common::small_quickstart` (256 training images
/// of the bundled sample, batch 32, 2 epochs, sandwich with one random
/// subnet) with the quickstart recipe's own optimizer (clipping at 5).
fn small_recipe(out: &Path) -> Recipe {
    let text = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let quickstart = Recipe::from_toml_str(&text, Path::new("quickstart.toml")).unwrap();
    Recipe {
        optimizer: quickstart.optimizer,
        ..common::small_quickstart(out)
    }
}

fn run(r: &Recipe, resume: bool, max_steps: Option<usize>, stop: bool) -> vitnas::Result<Summary> {
    common::train_in_process(r, resume, max_steps, stop)
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    read_safetensors(&dir.join(CHECKPOINT_FILE), &Device::Cpu)
        .unwrap()
        .0
}

fn assert_same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    assert_eq!(a.len(), b.len());
    for (name, t) in a {
        let u = &b[name];
        let d = common::max_abs(&(t - u).unwrap());
        assert_eq!(d, 0.0, "{name} differs by {d}");
    }
}

#[test]
fn resumed_run_matches_an_uninterrupted_run_exactly() {
    let (da, db, dc) = (
        tmp_dir("resume-a"),
        tmp_dir("resume-b"),
        tmp_dir("resume-c"),
    );
    let full = run(&small_recipe(&da), false, Some(10), false).unwrap();
    assert_eq!(full.steps, 10);

    // Stop after 5 steps (not on a checkpoint boundary of 3: the stop itself
    // writes one), then resume to 10.
    let part = run(&small_recipe(&db), false, Some(5), false).unwrap();
    assert_eq!(part.steps, 5);
    let rest = run(&small_recipe(&db), true, Some(10), false).unwrap();
    assert_eq!(rest.steps, 10);
    // Weights and AdamW moments are bit-identical.
    assert_same(&weights(&da), &weights(&db));

    // Ctrl-C: the stop flag finishes the current step, checkpoints, returns.
    let stopped = run(&small_recipe(&dc), false, Some(10), true).unwrap();
    assert!(stopped.interrupted);
    assert_eq!(stopped.steps, 1);
    run(&small_recipe(&dc), true, Some(10), false).unwrap();
    assert_same(&weights(&da), &weights(&dc));

    // Metrics are not duplicated by the resume: one line per step.
    let steps: Vec<u64> = std::fs::read_to_string(db.join(METRICS_FILE))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("losses").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    for d in [da, db, dc] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn a_new_run_refuses_to_overwrite_an_existing_one() {
    let d = tmp_dir("exists");
    run(&small_recipe(&d), false, Some(1), false).unwrap();
    let msg = run(&small_recipe(&d), false, Some(1), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--resume"), "{msg}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn nonfinite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let d = tmp_dir("nan-stop");
    let mut r = small_recipe(&d);
    r.optimizer.lr = 1e30; // the first update blows the weights up
    r.optimizer.warmup_epochs = 0.0;
    r.optimizer.clip_grad_norm = None;
    r.train.checkpoint_every = 1;
    let err = run(&r, false, Some(6), false).unwrap_err();
    let Error::NonFiniteLoss { step, .. } = err else {
        panic!("expected NonFiniteLoss, got {err}")
    };
    assert!(step >= 2, "step {step}");
    let (_, meta) = read_safetensors(&d.join(CHECKPOINT_FILE), &Device::Cpu).unwrap();
    let state: serde_json::Value = serde_json::from_str(&meta["vitnas.train_state"]).unwrap();
    assert_eq!(state["step"].as_u64().unwrap() as usize, step - 1);
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn nonfinite_loss_can_skip_steps_and_counts_them() {
    let d = tmp_dir("nan-skip");
    let mut r = small_recipe(&d);
    r.optimizer.lr = 1e30;
    r.optimizer.warmup_epochs = 0.0;
    r.optimizer.clip_grad_norm = None;
    r.train.on_nonfinite_loss = NonFinite::Skip;
    let s = run(&r, false, Some(4), false).unwrap();
    assert_eq!(s.steps, 4);
    assert!(
        s.skipped_steps >= 1 && s.skipped_steps <= 3,
        "{}",
        s.skipped_steps
    );
    let metrics = std::fs::read_to_string(d.join(METRICS_FILE)).unwrap();
    assert_eq!(metrics.matches("\"skipped\":true").count(), s.skipped_steps);
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn truncated_checkpoint_is_a_clear_error() {
    let d = tmp_dir("truncated");
    run(&small_recipe(&d), false, Some(2), false).unwrap();
    for f in [CHECKPOINT_FILE, SUPERNET_FILE] {
        let p = d.join(f);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let msg = read_safetensors(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(
            msg.contains(f) && msg.contains("truncated or corrupt"),
            "{msg}"
        );
    }
    let msg = run(&small_recipe(&d), true, Some(4), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(CHECKPOINT_FILE), "{msg}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn missing_data_directory_names_the_path() {
    let d = tmp_dir("nodata");
    let mut r = small_recipe(&d);
    r.data.path = Some(PathBuf::from("/nonexistent/fashion-mnist"));
    let msg = run(&r, false, Some(1), false).unwrap_err().to_string();
    assert!(msg.contains("/nonexistent/fashion-mnist"), "{msg}");
}

fn fixed_depth(s: &Space) -> Space {
    let mut s = s.clone();
    s.choices.depth = vec![s.supernet.depth];
    s
}

#[test]
fn fair_sampler_uses_every_choice_equally_often_per_round() {
    for sp in [fixed_depth(&space("fmnist-tiny")), space("autoformer-tiny")] {
        let mut rng = StdRng::seed_from_u64(3);
        for step in 0..5 {
            let plan = Fair.plan(&sp, step, &mut rng);
            let genes: Vec<Vec<usize>> = plan
                .archs
                .iter()
                .map(|a| a.to_genes(&sp).unwrap())
                .collect();
            let card = vitnas::space::arch::gene_cardinalities(&sp);
            let m = plan.archs.len();
            assert_eq!(m % card.iter().copied().max().unwrap(), 0);
            for (g, &c) in card.iter().enumerate() {
                // Genes of layers every subnet uses (all, at fixed depth; the
                // global genes and the shallowest layers otherwise).
                if g >= 2 && (g - 2) % sp.max_depth() >= *sp.choices.depth.iter().min().unwrap() {
                    continue;
                }
                let mut counts = vec![0; c];
                for v in &genes {
                    counts[v[g]] += 1;
                }
                assert!(
                    counts.iter().all(|&n| n == m / c),
                    "{} gene {g}: counts {counts:?}",
                    sp.name
                );
            }
        }
    }
}

#[test]
fn sandwich_and_attentive_samplers_frame_the_step_with_largest_and_smallest() {
    let s = space("fmnist-tiny");
    let mut rng = StdRng::seed_from_u64(1);
    let p = Sandwich { num_random: 2 }.plan(&s, 0, &mut rng);
    assert_eq!(p.archs.len(), 4);
    assert!(p.teacher_first);
    assert_eq!((&p.archs[0], &p.archs[1]), (&s.largest(), &s.smallest()));
    let mut rng = StdRng::seed_from_u64(1);
    let pick = |pick| {
        let a = Attentive {
            num_random: 1,
            num_candidates: 8,
            pick,
        };
        let mut rng = StdRng::seed_from_u64(9);
        flops(&s, &a.plan(&s, 0, &mut rng).archs[2])
    };
    use vitnas::train::recipe::AttentivePick;
    assert!(pick(AttentivePick::Best) > pick(AttentivePick::Worst));
    // The same seed draws the same plan.
    let again = Sandwich { num_random: 2 }.plan(&s, 0, &mut rng);
    assert_eq!(again.archs.len(), 4);
}

fn t(v: &[f32], rows: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (rows, v.len() / rows), &Device::Cpu).unwrap()
}

#[test]
fn cross_entropy_with_label_smoothing_matches_the_formula() {
    let logits = t(&[2.0, 0.0, -1.0, 0.5, 0.5, 0.5], 2);
    let labels = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
    let got = cross_entropy(&logits, &labels, 0.1)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let lse0 = (2f32.exp() + 1.0 + (-1f32).exp()).ln();
    let lse1 = (3.0 * 0.5f32.exp()).ln();
    let nll = ((lse0 - 2.0) + (lse1 - 0.5)) / 2.0;
    let smooth = ((3.0 * lse0 - 1.0) / 3.0 + (3.0 * lse1 - 1.5) / 3.0) / 2.0;
    let want = 0.9 * nll + 0.1 * smooth;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn distillation_losses_vanish_when_student_equals_teacher_and_grow_apart() {
    let a = t(&[1.0, 2.0, 0.5, -1.0, 0.0, 3.0], 2);
    let b = t(&[0.0, 1.0, 2.0, 1.0, 1.0, -2.0], 2);
    let alpha = AlphaDivergence {
        alpha_min: -1.0,
        alpha_max: 1.0,
        iw_clip: 5.0,
        surrogate: Default::default(),
    };
    for (name, d) in [("kl", &Kl as &dyn Distill), ("alpha", &alpha)] {
        let (_, same) = d.loss(&a, &a).unwrap();
        let (_, apart) = d.loss(&b, &a).unwrap();
        assert!(same.abs() < 1e-6, "{name}: {same}");
        assert!(apart > 0.1, "{name}: {apart}");
    }
    // KL(p‖q) by hand for one row.
    let p: Vec<f32> = [1.0f32, 2.0, 0.5].iter().map(|v| v.exp()).collect();
    let q: Vec<f32> = [0.0f32, 1.0, 2.0].iter().map(|v| v.exp()).collect();
    let (sp, sq) = (p.iter().sum::<f32>(), q.iter().sum::<f32>());
    let kl: f32 = p
        .iter()
        .zip(&q)
        .map(|(a, b)| (a / sp) * ((a / sp) / (b / sq)).ln())
        .sum();
    let (_, got) = Kl
        .loss(&t(&[0.0, 1.0, 2.0], 1), &t(&[1.0, 2.0, 0.5], 1))
        .unwrap();
    assert!((got - kl).abs() < 1e-5, "{got} vs {kl}");
}

#[test]
fn alpha_divergence_surrogate_pulls_the_student_toward_the_teacher() {
    let teacher = t(&[3.0, 0.0, -1.0], 1);
    let student = candle_core::Var::from_tensor(&t(&[0.0, 0.0, 0.0], 1)).unwrap();
    let alpha = AlphaDivergence {
        alpha_min: -1.0,
        alpha_max: 1.0,
        iw_clip: 5.0,
        surrogate: Default::default(),
    };
    let (loss, _) = alpha.loss(student.as_tensor(), &teacher).unwrap();
    let g = loss.backward().unwrap();
    let g: Vec<f32> = g
        .get(student.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // Gradient descent raises the teacher's top class and lowers the others.
    assert!(g[0] < 0.0 && g[2] > 0.0, "{g:?}");
}

#[test]
fn schedule_warms_up_linearly_then_decays_by_cosine() {
    let text = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let r = Recipe::from_toml_str(&text, Path::new("q.toml")).unwrap();
    let o = &r.optimizer;
    let (total, warmup) = (100, 10);
    assert!((lr_at(0, total, warmup, o.lr, o) - o.warmup_lr).abs() < 1e-12);
    assert!((lr_at(5, total, warmup, o.lr, o) - (o.warmup_lr + o.lr) / 2.0).abs() < 1e-9);
    assert!((lr_at(10, total, warmup, o.lr, o) - o.lr).abs() < 1e-12);
    assert!((lr_at(55, total, warmup, o.lr, o) - (o.lr + o.min_lr) / 2.0).abs() < 1e-9);
    assert!((lr_at(100, total, warmup, o.lr, o) - o.min_lr).abs() < 1e-12);
}

#[test]
fn every_shipped_recipe_parses_and_invalid_ones_name_the_field() {
    for f in [
        "quickstart",
        "fmnist-sandwich",
        "autoformer-tiny",
        "autoformer-small",
        "autoformer-base",
        "fmnist-sandwich-long",
        "nasvit-fmnist",
        "nasvit-imagenet",
    ] {
        let r = Recipe::from_file(repo_path(&format!("recipes/{f}.toml"))).unwrap();
        Space::from_file(repo_path(r.space.to_str().unwrap())).unwrap();
    }
    let text = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let bad = text.replace("epochs = 7", "epochs = 0");
    let msg = Recipe::from_toml_str(&bad, Path::new("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bad.toml") && msg.contains("train.epochs"),
        "{msg}"
    );
    let bad = text.replace("num_random = 0", "num_random = 0\nnum_rand = 2");
    let msg = Recipe::from_toml_str(&bad, Path::new("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("num_rand"), "{msg}");
}

#[test]
fn nasvit_recipe_values_are_checked_naming_the_field() {
    let text = std::fs::read_to_string(repo_path("recipes/nasvit-fmnist.toml")).unwrap();
    let r = Recipe::from_toml_str(&text, Path::new("nasvit.toml")).unwrap();
    assert!(r.scaling.enabled);
    assert_eq!(
        r.gradient,
        GradientConfig::Nasvit {
            start_epoch: 5,
            clip_small: 1.0
        }
    );
    // The resolved recipe keeps both sections; a recipe without them
    // writes neither (and means plain sum, no scaling).
    let again = Recipe::from_toml_str(&r.to_toml_string(), Path::new("resolved.toml")).unwrap();
    assert_eq!(again, r);
    let plain = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let p = Recipe::from_toml_str(&plain, Path::new("q.toml")).unwrap();
    assert_eq!(
        (p.gradient.clone(), p.scaling.enabled),
        (GradientConfig::Sum, false)
    );
    let resolved = p.to_toml_string();
    assert!(
        !resolved.contains("[gradient]") && !resolved.contains("[scaling]"),
        "{resolved}"
    );
    let refused =
        |from: &str, to: &str, field: &str| common::assert_recipe_refused(&text, from, to, field);
    refused("init = 1e-4", "init = -0.5", "scaling.init");
    refused("init = 1e-4", "init = 1e-4\nswich = \"none\"", "swich");
    refused("switch = \"depth\"", "switch = \"width\"", "width");
    refused(
        "start_epoch = 5",
        "start_epoch = 20",
        "gradient.start_epoch",
    );
    refused("start_epoch = 5", "start_epoch = 5\nstart = 1", "start");
    refused(
        "clip_small = 1.0",
        "clip_small = 0.0",
        "gradient.clip_small",
    );
    refused("kind = \"nasvit\"", "kind = \"nasvit2\"", "nasvit2");
    refused(
        "kind = \"sandwich\"\nnum_random = 2",
        "kind = \"uniform\"",
        "gradient.kind",
    );
    refused("enabled = true\n", "", "enabled");
}

#[test]
fn scaling_tables_get_no_weight_decay() {
    use vitnas::train::optim::no_weight_decay;
    assert!(no_weight_decay("vit.encoder.layer.3.scaling.attention"));
    assert!(no_weight_decay("vit.encoder.layer.0.scaling.mlp"));
    assert!(!no_weight_decay("vit.encoder.layer.0.output.dense.weight"));
}

/// A short NASViT run on the sample (scaling layers, the largest apart from
/// the rest, projection from the second epoch): interrupted and resumed it
/// ends bit-identical to an uninterrupted run (scaling tables and their
/// AdamW moments included); the epoch's gradient agreement is logged; the
/// run loads back with its tables, which fold into extracted subnets.
#[test]
fn nasvit_run_with_scaling_layers_resumes_exactly_and_logs_gradient_agreement() {
    let nasvit = Recipe::from_file(repo_path("recipes/nasvit-fmnist.toml")).unwrap();
    let recipe = |out: &Path| {
        let mut r = small_recipe(out);
        r.sampler = nasvit.sampler.clone();
        r.loss = nasvit.loss.clone();
        r.scaling = nasvit.scaling.clone();
        r.optimizer.weight_decay = 0.0;
        r.optimizer.clip_grad_norm = None;
        r.gradient = GradientConfig::Nasvit {
            start_epoch: 1,
            clip_small: 1.0,
        };
        r
    };
    let (da, db) = (tmp_dir("nasvit-a"), tmp_dir("nasvit-b"));
    run(&recipe(&da), false, Some(10), false).unwrap();
    run(&recipe(&db), false, Some(5), false).unwrap();
    run(&recipe(&db), true, Some(10), false).unwrap();
    let (wa, wb) = (weights(&da), weights(&db));
    assert_same(&wa, &wb);
    for name in [
        "vit.encoder.layer.0.scaling.attention",
        "optimizer.m.vit.encoder.layer.5.scaling.mlp",
    ] {
        assert!(wa.contains_key(name), "{name} missing from the checkpoint");
    }
    let table = &wa["vit.encoder.layer.0.scaling.attention"];
    assert_eq!(table.dims(), &[6, 128]);
    assert!(
        common::max_abs(&(table - 1e-4).unwrap()) > 0.0,
        "tables not trained"
    );
    // One epoch of 8 steps: its end logs the agreement of g_L and g_S.
    let epoch_end = |d: &Path| -> serde_json::Value {
        std::fs::read_to_string(d.join(METRICS_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v.get("epoch_end").is_some())
            .unwrap()
    };
    let end = epoch_end(&da);
    // the resumed run's agreement totals went through its checkpoint
    assert_eq!(end, epoch_end(&db));
    let g = &end["gradient"];
    let fraction = g["conflict_fraction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&fraction), "{g}");
    assert!(g["cosine_mean"].as_f64().unwrap().abs() <= 1.0, "{g}");
    assert_eq!(
        g["coef_mean"].as_f64(),
        Some(0.0),
        "epoch 0 does not project: {g}"
    );
    assert!(g["tensors_compared"].as_u64().unwrap() > 0, "{g}");
    assert_eq!(g["strategy"]["kind"], "nasvit");
    // The run as eval/search/export load it: tables included, folded away.
    let trained = vitnas::train::TrainedRun::load(&da).unwrap();
    assert!(trained.net.scaling.is_some());
    let s = &trained.space;
    let x = common::images(s, 2, 3);
    let arch = s.smallest();
    let d = common::max_abs_diff(
        &trained.net.forward(&x, &arch, false).unwrap(),
        &trained.net.extract(&arch).unwrap().forward(&x).unwrap(),
    );
    assert!(d <= 1e-5, "{d}");
    for d in [da, db] {
        std::fs::remove_dir_all(d).ok();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn resume_writes_into_the_given_directory_not_the_recorded_output_dir() {
    let (orig, copy, moved) = (
        tmp_dir("self-orig"),
        tmp_dir("self-copy"),
        tmp_dir("self-moved"),
    );
    run(&small_recipe(&orig), false, Some(4), false).unwrap();
    let before = std::fs::read(orig.join(CHECKPOINT_FILE)).unwrap();
    copy_dir(&orig, &copy);
    // Resume the copy with fewer steps than it has: nothing rewinds the
    // original, the copy continues.
    let opts_for = |dir: &Path| {
        let mut r = small_recipe(dir);
        r.output_dir = dir.to_path_buf();
        r
    };
    let s = run(&opts_for(&copy), true, Some(6), false).unwrap();
    assert_eq!(s.steps, 6);
    assert_eq!(s.run_dir, copy);
    assert_eq!(std::fs::read(orig.join(CHECKPOINT_FILE)).unwrap(), before);
    // A moved run resumes where it now is.
    std::fs::rename(&orig, &moved).unwrap();
    let s = run(&opts_for(&moved), true, Some(5), false).unwrap();
    assert_eq!(s.steps, 5);
    assert!(!orig.exists());
    // The same steps from the same state: copy (6) and moved (5 → 6) agree.
    run(&opts_for(&moved), true, Some(6), false).unwrap();
    assert_same(&weights(&copy), &weights(&moved));
    for d in [copy, moved] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn a_new_run_refuses_a_non_empty_directory_that_is_not_a_run_unless_forced() {
    let d = tmp_dir("foreign");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("notes.txt"), "keep me").unwrap();
    let err = run(&small_recipe(&d), false, Some(1), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&d.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    let flag = AtomicBool::new(false);
    let opts = RunOptions {
        resume: false,
        stop: &flag,
        progress: false,
        max_steps: Some(1),
        force: true,
        collective: &vitnas::dist::Single,
    };
    train::train(&small_recipe(&d), &opts).unwrap();
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).unwrap(),
        "keep me"
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn resume_of_a_directory_without_a_checkpoint_names_the_file() {
    let d = tmp_dir("no-ckpt");
    std::fs::create_dir_all(&d).unwrap();
    let err = run(&small_recipe(&d), true, Some(1), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(CHECKPOINT_FILE) && err.contains("nothing to resume"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&d).unwrap().next().is_none(),
        "resume wrote into {d:?}"
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn adamw_on_flat_buffers_equals_adamw_on_candle_variables() {
    use candle_core::Var;
    use vitnas::train::optim::AdamW;
    let text = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let r = Recipe::from_toml_str(&text, Path::new("quickstart.toml")).unwrap();
    let names = vec!["a.weight".to_string(), "a.bias".to_string()];
    let init = [
        common::uniform(&[7, 5], 1, 1.0),
        common::uniform(&[7], 2, 1.0),
    ];
    let vars: Vec<Var> = init.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let mut flat: Vec<Vec<f32>> = init
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    let sizes = [35, 7];
    let (mut a, mut b) = (
        AdamW::new(&names, &sizes, r.optimizer.clone()),
        AdamW::new(&names, &sizes, r.optimizer.clone()),
    );
    for s in 0..5u64 {
        let grads: Vec<Vec<f32>> = [(&[7, 5][..], 35), (&[7][..], 7)]
            .iter()
            .enumerate()
            .map(|(k, (shape, _))| {
                let g = common::uniform(shape, 10 + s * 2 + k as u64, 3.0);
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect();
        let na = a.step(&vars, &grads, 1e-2).unwrap();
        let nb = b.step_flat(&mut flat, &grads, 1e-2);
        assert_eq!(na, nb);
    }
    for (v, f) in vars.iter().zip(&flat) {
        assert_eq!(
            &v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            f
        );
    }
    assert_eq!(a.m, b.m);
    assert_eq!(a.v, b.v);
}

#[test]
fn a_failed_atomic_write_leaves_no_temp_file_behind() {
    use vitnas::train::checkpoint::write_atomic;
    let d = tmp_dir("atomic");
    // The destination is a non-empty directory: the rename fails after the
    // temp file was written in full.
    let target = d.join("state.json");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    let err = write_atomic(&target, b"{}").unwrap_err().to_string();
    assert!(err.contains("state.json"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["state.json"], "{left:?}");
    std::fs::remove_dir_all(d).ok();
}
