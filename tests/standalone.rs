//! Standalone training (retrain from scratch, finetune an export) and the
//! rank-correlation harness, on the bundled Fashion-MNIST sample.

mod common;

use candle_core::{Device, Tensor};
use common::{repo_path, space};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use vitnas::models::export::{export, load_dir};
use vitnas::rank::{self, Budget, RankConfig};
use vitnas::space::{flops, Arch};
use vitnas::train::checkpoint::read_safetensors;
use vitnas::train::recipe::Recipe;
use vitnas::train::standalone::{self, Init};
use vitnas::train::step::{accumulate, Backend};
use vitnas::train::{self, sampler::Plan, RunOptions, Summary, CHECKPOINT_FILE};

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-sa-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// 128 training images of the bundled sample, batch 32: 4 steps per epoch.
fn tiny_recipe(out: &Path) -> Recipe {
    let mut r = Recipe::from_file(repo_path("recipes/quickstart.toml")).unwrap();
    common::on_fmnist_sample(&mut r, "fmnist-tiny", 128, 32);
    r.data.eval_batch_size = 500;
    r.train.epochs = 1;
    r.train.checkpoint_every = 2;
    r.output_dir = out.to_path_buf();
    r
}

fn opts(flag: &AtomicBool, resume: bool, max_steps: Option<usize>) -> RunOptions<'_> {
    RunOptions {
        resume,
        stop: flag,
        progress: false,
        max_steps,
        force: false,
        collective: &vitnas::dist::Single,
    }
}

fn model_tensors(dir: &Path) -> HashMap<String, Tensor> {
    read_safetensors(&dir.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .0
}

fn max_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(n, t)| common::max_abs_diff(t, &b[n]))
        .fold(0.0, f32::max)
}

fn some_arch(seed: u64) -> Arch {
    space("fmnist-tiny").sample(&mut StdRng::seed_from_u64(seed))
}

#[test]
fn every_parameter_of_a_standalone_model_gets_a_gradient() {
    let s = space("fmnist-tiny");
    let arch = some_arch(3);
    let (model, _vm, params) =
        standalone::build(&s, &arch, 0, &Init::Scratch(Default::default())).unwrap();
    // Exactly the tensors of the exported layout, nothing more.
    assert_eq!(params.names.len(), model.tensors().len());
    let x = common::images(&s, 4, 1);
    let y = Tensor::new(&[1u32, 3, 5, 7], &Device::Cpu).unwrap();
    let plan = Plan {
        archs: vec![arch],
        teacher_first: false,
    };
    let mut g = params.zero_grads();
    accumulate(
        &model,
        &params,
        &plan,
        &x,
        &y,
        0.1,
        None,
        &mut g,
        Backend::Engine,
    )
    .unwrap();
    for (name, grad) in params.names.iter().zip(&g) {
        let nonzero = grad.iter().any(|v| *v != 0.0);
        // Softmax is invariant to a per-query constant, so the key bias's
        // true gradient is 0 (see tests/supernet.rs).
        if !name.ends_with("attention.key.bias") {
            assert!(nonzero, "{name}: no gradient");
        }
    }
}

#[test]
fn scratch_init_is_the_supernets_slice() {
    let s = space("fmnist-tiny");
    let arch = some_arch(5);
    let (model, _, _) =
        standalone::build(&s, &arch, 7, &Init::Scratch(Default::default())).unwrap();
    let (net, _) = common::supernet(&s, 7);
    let x = common::images(&s, 2, 2);
    let a = model.forward(&x).unwrap();
    let b = net.forward(&x, &arch, false).unwrap();
    assert!(common::max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn retrain_writes_an_export_and_resumes_exactly() {
    let s = space("fmnist-tiny");
    let arch = some_arch(11);
    let flag = AtomicBool::new(false);
    let (a, b) = (tmp_dir("retrain-a"), tmp_dir("retrain-b"));
    let whole: Summary = standalone::retrain(
        &s,
        &arch,
        &tiny_recipe(&a),
        a.clone(),
        &opts(&flag, false, None),
    )
    .unwrap();
    assert_eq!((whole.steps, whole.total_steps), (4, 4));
    assert!(whole.val_model.is_some() && whole.test_model.is_some());
    assert!(whole.val_largest.is_none());
    // Half, then resumed through the generic `train --resume` path.
    let half = standalone::retrain(
        &s,
        &arch,
        &tiny_recipe(&b),
        b.clone(),
        &opts(&flag, false, Some(2)),
    )
    .unwrap();
    assert_eq!(half.steps, 2);
    let rest = train::resume(&b, &opts(&flag, true, None)).unwrap();
    assert_eq!(rest.steps, 4);
    assert_eq!(max_diff(&model_tensors(&a), &model_tensors(&b)), 0.0);
    // The run directory is an exported model directory.
    let (model, norm) = load_dir(&a).unwrap();
    assert!(norm.is_some());
    assert_eq!(model.config.num_heads, arch.num_heads);
    let (read_arch, _) = standalone::read_arch_file(&a).unwrap();
    assert_eq!(read_arch, arch);
    // Training moved the weights away from the initialisation.
    let (init, _, _) = standalone::build(&s, &arch, 0, &Init::Scratch(Default::default())).unwrap();
    let init: HashMap<String, Tensor> = init.tensors().into_iter().collect();
    assert!(max_diff(&init, &model_tensors(&a)) > 0.0);
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn finetune_starts_from_the_exported_weights() {
    let s = space("fmnist-tiny");
    let arch = some_arch(13);
    let (net, _) = common::supernet(&s, 21);
    let model = net.extract(&arch).unwrap();
    let src = tmp_dir("ft-src");
    export(&model, &s, &arch, None, &src).unwrap();
    let exported = model_tensors(&src);
    let flag = AtomicBool::new(false);
    // lr 1e-30 (a learning rate must be positive): one step moves no
    // weight by more than 1e-29, so the run started from the exported values.
    let frozen = tmp_dir("ft-frozen");
    let mut r = tiny_recipe(&frozen);
    r.optimizer.lr = 1e-30;
    r.optimizer.warmup_lr = 0.0;
    r.optimizer.min_lr = 0.0;
    standalone::finetune(&src, &r, frozen.clone(), &opts(&flag, false, Some(1))).unwrap();
    assert!(max_diff(&exported, &model_tensors(&frozen)) <= 1e-29);
    // A real step moves them.
    let moved = tmp_dir("ft-moved");
    standalone::finetune(
        &src,
        &tiny_recipe(&moved),
        moved.clone(),
        &opts(&flag, false, Some(1)),
    )
    .unwrap();
    assert!(max_diff(&exported, &model_tensors(&moved)) > 0.0);
    // A model directory without arch.json is refused by name.
    std::fs::remove_file(src.join("arch.json")).unwrap();
    let err = standalone::finetune(
        &src,
        &tiny_recipe(&moved),
        tmp_dir("ft-x"),
        &opts(&flag, false, None),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("arch.json"), "{err}");
    for d in [src, frozen, moved] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn inherited_init_is_the_trained_supernets_slice() {
    let s = space("fmnist-tiny");
    let arch = some_arch(17);
    let flag = AtomicBool::new(false);
    let run = tmp_dir("inherit-run");
    train::train(&tiny_recipe(&run), &opts(&flag, false, Some(2))).unwrap();
    let (model, _, _) = standalone::build(&s, &arch, 0, &Init::Inherited(run.clone())).unwrap();
    let trained = train::TrainedRun::load(&run).unwrap();
    let x = common::images(&s, 2, 3);
    let a = model.forward(&x).unwrap();
    let b = trained.net.forward(&x, &arch, false).unwrap();
    assert!(common::max_abs_diff(&a, &b) < 1e-5);
    // Not the seeded initialisation: the two steps moved it.
    let (fresh, _, _) =
        standalone::build(&s, &arch, 0, &Init::Scratch(trained.recipe.init)).unwrap();
    assert!(common::max_abs_diff(&fresh.forward(&x).unwrap(), &a) > 1e-6);
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn stratified_sample_covers_the_flops_range_deterministically() {
    let s = space("fmnist-tiny");
    let a = rank::stratified(&s, 16, 0);
    assert_eq!(a, rank::stratified(&s, 16, 0));
    assert_ne!(a, rank::stratified(&s, 16, 1));
    assert_eq!(a.len(), 16);
    for (i, x) in a.iter().enumerate() {
        assert!(!a[..i].contains(x), "duplicate architecture {i}");
    }
    let lo = flops(&s, &s.smallest()) as f64;
    let hi = flops(&s, &s.largest()) as f64;
    let f: Vec<f64> = a.iter().map(|x| flops(&s, x) as f64).collect();
    // One per bin: each within (or, at the sparse extremes, near) its bin.
    let w = (hi - lo) / 16.0;
    for (i, v) in f.iter().enumerate() {
        let centre = lo + w * (i as f64 + 0.5);
        assert!(
            (v - centre).abs() <= w,
            "arch {i}: {v} far from bin centre {centre}"
        );
    }
}

#[test]
fn rank_harness_runs_end_to_end_and_skips_finished_work() {
    let out = tmp_dir("rank");
    let sup = out.join("supernet");
    let mut r = tiny_recipe(&sup);
    r.sampler = vitnas::train::recipe::SamplerConfig::Sandwich { num_random: 0 };
    let recipe_path = out.join("supernet.toml");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(&recipe_path, r.to_toml_string()).unwrap();
    let cfg = RankConfig {
        name: "tiny".into(),
        supernet: recipe_path,
        output_dir: out.join("rank"),
        k: 3,
        seed: 0,
        top_k: 2,
        standalone: Budget {
            epochs: 1,
            lr: None,
            warmup_epochs: Some(0.0),
            batch_size: Some(64),
            seed: None,
            train_limit: None,
        },
        reference: Vec::new(),
    };
    let flag = AtomicBool::new(false);
    let o = rank::Options {
        stop: &flag,
        progress: false,
        collective: &vitnas::dist::Single,
    };
    // Trains the missing supernet first, then everything else.
    let rep = rank::run(&cfg, &o).unwrap();
    assert!(rep.complete);
    assert!(sup.join(CHECKPOINT_FILE).exists());
    assert_eq!(rep.entries.len(), 3);
    let t = rep.test.as_ref().unwrap();
    assert_eq!((t.n, t.top_k), (3, 2));
    for e in &rep.entries {
        assert!(e.inherited_val.is_some() && e.standalone_test.is_some());
        assert!(e.standalone_dir.join("model.safetensors").exists());
    }
    for f in ["rank.json", "rank.csv", "rank.svg", "archs/arch-02.json"] {
        assert!(cfg.output_dir.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(cfg.output_dir.join("rank.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    // A rerun trains nothing: the standalone checkpoints stay untouched.
    let ck = rep.entries[0].standalone_dir.join(CHECKPOINT_FILE);
    let before = std::fs::metadata(&ck).unwrap().modified().unwrap();
    let again = rank::run(&cfg, &o).unwrap();
    assert_eq!(again.entries, rep.entries);
    assert_eq!(std::fs::metadata(&ck).unwrap().modified().unwrap(), before);
    // Another sample in the same output_dir is refused, not mixed in.
    let mut other = cfg.clone();
    other.seed = 1;
    let msg = rank::run(&other, &o).unwrap_err().to_string();
    assert!(
        msg.contains("another architecture") && msg.contains("arch-0"),
        "{msg}"
    );
    // ... and the first experiment's report is left as it was.
    let kept: rank::Report = serde_json::from_str(
        &std::fs::read_to_string(cfg.output_dir.join(rank::REPORT_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(kept.entries, rep.entries);

    // A second standalone seed of the same architectures, on the same split.
    let mut s1 = cfg.clone();
    s1.output_dir = out.join("rank-s1");
    s1.standalone.seed = Some(1);
    let rep1 = rank::run(&s1, &o).unwrap();
    assert!(rep1.complete);
    let split = |d: &std::path::Path| std::fs::read_to_string(d.join("data-split.json")).unwrap();
    assert_eq!(
        split(&rep.entries[0].standalone_dir),
        split(&rep1.entries[0].standalone_dir),
        "another seed, the same validation split"
    );
    // Reusing both as the reference set trains nothing, takes the means
    // and reports the seed-to-seed correlation as the noise ceiling.
    let mut reuse = cfg.clone();
    reuse.output_dir = out.join("rank-reuse");
    reuse.reference = vec![cfg.output_dir.clone(), s1.output_dir.clone()];
    let r = rank::run(&reuse, &o).unwrap();
    assert!(r.complete && r.noise_ceiling_test.is_some());
    assert!(
        !reuse.output_dir.join("standalone").exists(),
        "nothing trained"
    );
    for ((e, a), b) in r.entries.iter().zip(&rep.entries).zip(&rep1.entries) {
        let (a, b) = (a.standalone_test.unwrap(), b.standalone_test.unwrap());
        assert_eq!(e.standalone_test_per_reference, vec![a, b]);
        assert!((e.standalone_test.unwrap() - (a + b) / 2.0).abs() < 1e-12);
        assert_eq!(e.inherited_test, rep.entries[e.index].inherited_test);
    }
    // A reference trained with another budget is refused, naming it.
    let mut other_budget = reuse.clone();
    other_budget.output_dir = out.join("rank-reuse-2");
    other_budget.standalone.epochs = 2;
    let msg = rank::run(&other_budget, &o).unwrap_err().to_string();
    assert!(
        msg.contains("standalone") && msg.contains("rank.json"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn rank_config_errors_name_the_field() {
    let d = tmp_dir("rank-cfg");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("bad.toml");
    std::fs::write(
        &p,
        "name='x'\nsupernet='r.toml'\noutput_dir='o'\nk=1\n[standalone]\nepochs=1\n",
    )
    .unwrap();
    let e = RankConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("k") && e.contains("bad.toml"), "{e}");
    std::fs::write(
        &p,
        "name='x'\nsupernet='r.toml'\noutput_dir='o'\n[standalone]\nepochs=1\nepoch=2\n",
    )
    .unwrap();
    let e = RankConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("epoch"), "{e}");
    let shipped = RankConfig::from_file(repo_path("evaluate/rank-fmnist-sandwich.toml")).unwrap();
    assert_eq!(shipped.k, 16);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn rank_config_values_are_config_errors_naming_the_file_and_field() {
    let d = tmp_dir("rank-values");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("bad.toml");
    let head = "name='x'\nsupernet='r.toml'\noutput_dir='o'\n";
    for (body, want) in [
        ("k=1\n[standalone]\nepochs=1\n", "k"),
        ("top_k=0\n[standalone]\nepochs=1\n", "top_k"),
        ("[standalone]\nepochs=0\n", "standalone.epochs"),
        (
            "[standalone]\nepochs=1\nbatch_size=0\n",
            "standalone.batch_size",
        ),
        ("[standalone]\nepochs=1\nlr=-0.001\n", "standalone.lr"),
        (
            "[standalone]\nepochs=1\nwarmup_epochs=-1.0\n",
            "standalone.warmup_epochs",
        ),
    ] {
        std::fs::write(&p, format!("{head}{body}")).unwrap();
        match RankConfig::from_file(&p).unwrap_err() {
            vitnas::Error::InvalidConfig { file, field, .. } => {
                assert_eq!(field, want);
                assert_eq!(file, p.display().to_string());
            }
            other => panic!("{want}: expected InvalidConfig, got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}
