//! The CPU engine (hand-written forward and backward) against the candle
//! supernet and candle's autograd: logits within 1e-4, every gradient within
//! 1e-4 relative to its tensor's largest gradient, on odd batch sizes,
//! non-uniform subnets, with and without the class-token-only last block.

mod common;

use candle_core::{Device, Tensor};
use common::{
    accumulate_once, images, max_abs, max_abs_and_diff, max_abs_diff, scaled_supernet, space,
    supernet, uniform, SWITCHES,
};
use rand::{rngs::StdRng, SeedableRng};
use vitnas::engine::{self, Config, Input, Weights};
use vitnas::supernet::scaling::Switch;
use vitnas::train::gradient::{GradientStrategy, Nasvit};
use vitnas::train::loss::{AlphaDivergence, Distill, Kl};
use vitnas::train::sampler::{Sampler, Sandwich};
use vitnas::train::step::{accumulate_groups, Backend, Batch, Input as StepInput, Params, Path};
use vitnas::{Arch, Space};

/// A supernet whose biases and norm parameters are not at their initial
/// constants (so their gradients are tested on generic values).
fn perturbed(space: &Space) -> (vitnas::Supernet, Params) {
    let (net, vm) = supernet(space, 3);
    perturb(net, &vm)
}

/// A supernet with scaling layers (`switch`), every scale in [0.5, 1.5)
/// (each row and column its own value), the rest as [`perturbed`].
fn perturbed_scaled(space: &Space, switch: Switch) -> (vitnas::Supernet, Params) {
    let (net, vm) = scaled_supernet(space, 3, switch, 1.0);
    perturb(net, &vm)
}

fn perturb(net: vitnas::Supernet, vm: &candle_nn::VarMap) -> (vitnas::Supernet, Params) {
    let params = Params::from_varmap(vm);
    for (i, (v, name)) in params.vars.iter().zip(&params.names).enumerate() {
        let spread = if name.contains(".scaling.") {
            0.5
        } else {
            0.05
        };
        let t = (v.as_tensor() + uniform(v.dims(), 100 + i as u64, spread)).unwrap();
        v.set(&t).unwrap();
    }
    (net, params)
}

/// Odd sizes everywhere: 3 channels, 12×12 images in 3×3 patches (17
/// tokens), embed 19–37, head dim 7, MLP ratios giving widths like 28 or 92,
/// 7 classes: gemm edges and vector-lane tails in every kernel.
fn odd_space() -> Space {
    Space::from_toml_str(
        r#"
name = "odd"
[input]
image_size = 12
patch_size = 3
channels = 3
num_classes = 7
[supernet]
embed_dim = 37
depth = 3
num_heads = 5
mlp_ratio = 2.5
head_dim = 7
layer_norm_eps = 1e-6
[choices]
embed_dim = [19, 30, 37]
depth = [1, 2, 3]
num_heads = [1, 3, 5]
mlp_ratio = [1.5, 2.5]
"#,
        "odd.toml",
    )
    .unwrap()
}

fn archs(space: &Space) -> Vec<Arch> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut v = vec![space.largest(), space.smallest()];
    v.extend((0..3).map(|_| space.sample(&mut rng)));
    v
}

#[test]
fn engine_logits_match_the_supernet() {
    logits_match(&space("fmnist-tiny"));
    logits_match(&odd_space());
}

fn logits_match(space: &Space) {
    let (net, params) = perturbed(space);
    logits_match_net(space, &net, &params);
}

fn logits_match_net(space: &Space, net: &vitnas::Supernet, params: &Params) {
    let space = space.clone();
    let w = Weights::from_tensors(&params.tensors()).unwrap();
    let cfg = Config::from_supernet(net);
    let x = images(&space, 3, 1);
    let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let classes = space.image().num_classes;
    for arch in archs(&space) {
        w.check(&cfg, &arch).unwrap();
        let want = net.forward(&x, &arch, false).unwrap();
        for cls_only in [true, false] {
            let (l, _) = engine::forward_with(&w, &cfg, &arch, Input::Images(&flat), cls_only);
            let got = Tensor::from_vec(l, (3, classes), &Device::Cpu).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= 1e-4 * max_abs(&want).max(1.0),
                "{arch:?} cls_only {cls_only}: logits differ by {d}"
            );
        }
        // batch 3: data-parallel chunks; batch 1: token rows split over threads
        let got = engine::logits(&w, &cfg, &arch, &x).unwrap();
        assert!(max_abs_diff(&got, &want) <= 1e-4 * max_abs(&want).max(1.0));
        let one = x.narrow(0, 1, 1).unwrap();
        let got = engine::logits(&w, &cfg, &arch, &one).unwrap();
        let want = want.narrow(0, 1, 1).unwrap();
        assert!(
            max_abs_diff(&got, &want) <= 1e-4 * max_abs(&want).max(1.0),
            "{arch:?}: batch 1"
        );
    }
}

#[test]
fn engine_gradients_match_candle_autograd() {
    gradients_match(&space("fmnist-tiny"));
    gradients_match(&odd_space());
}

fn gradients_match(space: &Space) {
    let (net, params) = perturbed(space);
    gradients_match_net(space, &net, &params);
}

fn gradients_match_net(space: &Space, net: &vitnas::Supernet, params: &Params) {
    let space = space.clone();
    let w = Weights::from_tensors(&params.tensors()).unwrap();
    let cfg = Config::from_supernet(net);
    let b = 5;
    let x = images(&space, b, 2);
    let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let r = uniform(&[b, space.image().num_classes], 9, 1.0);
    let dl = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for arch in archs(&space) {
        let logits = net.forward(&x, &arch, true).unwrap();
        let g = (logits * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for cls_only in [true, false] {
            let (_, tape) = engine::forward_with(&w, &cfg, &arch, Input::Images(&flat), cls_only);
            let mut grads = w.zero_grads();
            engine::backward(&w, &cfg, &arch, &tape, &dl, &mut grads);
            for ((name, var), got) in params.names.iter().zip(&params.vars).zip(&grads) {
                match g.get(var.as_tensor()) {
                    Some(want) => {
                        let got = Tensor::from_slice(got, want.dims(), &Device::Cpu).unwrap();
                        // The key bias shifts every score of a row equally: its true
                        // gradient is 0 and both sides hold rounding noise, so it
                        // is compared absolutely (1e-4 of a 1e-2 floor).
                        let floor = if name.ends_with("key.bias") {
                            1e-2
                        } else {
                            1e-12
                        };
                        let scale = max_abs(want).max(floor);
                        let d = max_abs_diff(&got, want) / scale;
                        assert!(d <= 1e-4, "{name} ({arch:?}, cls_only {cls_only}): gradient differs by {d} (relative)");
                    }
                    None => assert!(
                        got.iter().all(|v| *v == 0.0),
                        "{name} is unused by {arch:?} but got a gradient"
                    ),
                }
            }
        }
    }
}

#[test]
fn every_parameter_of_the_largest_subnet_gets_a_gradient() {
    let space = space("fmnist-tiny");
    let (_, params) = perturbed(&space);
    let w = Weights::from_tensors(&params.tensors()).unwrap();
    let cfg = Config::from_space(&space);
    let x = images(&space, 2, 4)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let arch = space.largest();
    let (_, tape) = engine::forward(&w, &cfg, &arch, Input::Images(&x));
    let mut grads = w.zero_grads();
    engine::backward(&w, &cfg, &arch, &tape, &[1.0; 20], &mut grads);
    for (name, g) in w.names.iter().zip(&grads) {
        let nonzero = g.iter().filter(|v| **v != 0.0).count();
        assert!(
            nonzero * 2 > g.len(),
            "{name}: only {nonzero} of {} gradient entries are non-zero",
            g.len()
        );
    }
}

#[test]
fn engine_runs_a_static_model_and_rejects_an_arch_that_does_not_fit() {
    let space = space("fmnist-tiny");
    let (net, _) = perturbed(&space);
    let mut rng = StdRng::seed_from_u64(11);
    let arch = space.sample(&mut rng);
    let vit = net.extract(&arch).unwrap();
    let w = Weights::from_tensors(&vit.tensors()).unwrap();
    let cfg = Config::from_vit(&vit.config);
    let x = images(&space, 4, 5);
    let want = vit.forward(&x).unwrap();
    let got = engine::logits(&w, &cfg, &arch, &x).unwrap();
    assert!(max_abs_diff(&got, &want) <= 1e-4 * max_abs(&want).max(1.0));
    let err = engine::logits(&w, &cfg, &space.largest(), &x)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vit."), "error should name a tensor: {err}");
    let bad = images(&space, 1, 5).reshape((1, 1, 784)).unwrap();
    let err = engine::logits(&w, &cfg, &arch, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("input images"), "{err}");
}

/// A whole sandwich step (largest with label-smoothed CE, then smallest and
/// two random subnets distilled from it) by the engine and by candle's
/// autograd: same losses, same accumulated gradients. (Run with at least two
/// threads, as `cargo test` does on any multi-core machine, the batch is
/// split into data-parallel chunks.)
#[test]
fn engine_and_autograd_sandwich_steps_agree() {
    let s = space("fmnist-tiny");
    let (net, params) = perturbed(&s);
    // 17 images: split into data-parallel chunks when the pool has threads.
    let x = images(&s, 17, 3);
    let y = Tensor::from_vec((0..17u32).map(|i| i % 10).collect(), 17, &Device::Cpu).unwrap();
    let plan = Sandwich { num_random: 2 }.plan(&s, 0, &mut StdRng::seed_from_u64(1));
    let alpha = AlphaDivergence {
        alpha_min: -1.0,
        alpha_max: 1.0,
        iw_clip: 5.0,
        surrogate: Default::default(),
    };
    let distills: [&dyn Distill; 2] = [&Kl, &alpha];
    for distill in distills {
        let run = |backend| accumulate_once(&net, &params, &plan, &x, &y, Some(distill), backend);
        let (le, ge) = run(Backend::Engine);
        assert_eq!(le.nonfinite, None);
        // against the fused kernels and against the unfused candle composites
        for (la, ga) in [run(Backend::Autograd), run(Backend::Composite)] {
            for (a, b) in le.losses.iter().zip(&la.losses) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "losses {a} vs {b}"
                );
            }
            for (k, name) in params.names.iter().enumerate() {
                let floor = if name.ends_with("key.bias") {
                    1e-2
                } else {
                    1e-12
                };
                let (scale, d) = max_abs_and_diff(&ge[k], &ga[k]);
                let scale = scale.max(floor);
                assert!(
                    d / scale <= 1e-4,
                    "{name}: gradients differ by {} relative",
                    d / scale
                );
            }
        }
    }
}

/// `VITNAS_SIMD` takes effect: these tests run at the level it names (CI
/// runs this file at every level the machine has).
#[test]
fn the_forced_simd_level_is_the_one_in_use() {
    let have = vitnas::engine::simd::Level::available();
    match std::env::var(vitnas::engine::simd::ENV) {
        Ok(v) if !v.is_empty() => assert_eq!(vitnas::engine::simd::level().name(), v),
        _ => assert_eq!(vitnas::engine::simd::level(), have[0]),
    }
    #[cfg(target_arch = "x86_64")]
    if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
        assert!(have.contains(&vitnas::engine::simd::Level::Avx512));
    }
    assert!(!have.contains(&vitnas::engine::simd::Level::Avx512) || cfg!(feature = "avx512"));
}

/// With scaling layers under every switch, on the odd-sized space: the
/// engine's logits and every gradient (the scaling tables' included, zero
/// outside the row and columns the subnet uses) agree with the candle
/// supernet and its autograd.
#[test]
fn engine_matches_the_supernet_with_scaling_layers() {
    let space = odd_space();
    for switch in SWITCHES {
        let (net, params) = perturbed_scaled(&space, switch);
        logits_match_net(&space, &net, &params);
        gradients_match_net(&space, &net, &params);
    }
}

/// A NASViT step (scaling layers keyed by depth, a sandwich of four with
/// alpha-divergence, the largest's gradient apart from the rest) on the
/// odd-sized space by the engine and by candle's autograd: the same losses,
/// the same gradients of each group, the same combined update.
#[test]
fn engine_and_autograd_nasvit_steps_agree_with_scaling_layers() {
    let s = odd_space();
    let (net, params) = perturbed_scaled(&s, Switch::Depth);
    let x = images(&s, 9, 3);
    let y = Tensor::from_vec((0..9u32).map(|i| i % 7).collect(), 9, &Device::Cpu).unwrap();
    let plan = Sandwich { num_random: 2 }.plan(&s, 0, &mut StdRng::seed_from_u64(1));
    let alpha = AlphaDivergence {
        alpha_min: -1.0,
        alpha_max: 1.0,
        iw_clip: 5.0,
        surrogate: Default::default(),
    };
    let strategy = Nasvit {
        start_epoch: 0,
        clip_small: 1.0,
    };
    let group_of = strategy.groups(&plan);
    assert_eq!(group_of, vec![0, 1, 1, 1]);
    let batch = Batch {
        input: StepInput::Images(&x),
        labels: &y,
        label_smoothing: 0.1,
        distill: Some(&alpha),
        ranking: None,
        teacher: None,
    };
    let w = Weights::from_tensors(&params.tensors()).unwrap();
    let cfg = Config::from_supernet(&net);
    let run = |path: Path| {
        let mut groups = vec![params.zero_grads(), params.zero_grads()];
        let losses = {
            let mut targets: Vec<&mut [Vec<f32>]> = groups.iter_mut().map(|g| &mut g[..]).collect();
            accumulate_groups(path, &plan, batch, &group_of, &mut targets).unwrap()
        };
        assert_eq!(losses.nonfinite, None);
        let before = groups.clone();
        let agreement = strategy.combine(&mut groups, 0).unwrap();
        (losses.losses, before, groups.swap_remove(0), agreement)
    };
    let (le, ge, ue, ae) = run(Path::Engine {
        weights: &w,
        config: &cfg,
        recompute: Default::default(),
    });
    let (la, ga, ua, aa) = run(Path::Autograd {
        net: &net,
        params: &params,
    });
    for (a, b) in le.iter().zip(&la) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "losses {a} vs {b}"
        );
    }
    let close = |what: &str, name: &str, e: &[f32], a: &[f32]| {
        let floor = if name.ends_with("key.bias") {
            1e-2
        } else {
            1e-12
        };
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(floor);
        let d = e.iter().zip(a).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            d / scale <= 1e-4,
            "{what} of {name}: differs by {} relative",
            d / scale
        );
    };
    for (k, name) in params.names.iter().enumerate() {
        close("g_L", name, &ge[0][k], &ga[0][k]);
        close("g_S", name, &ge[1][k], &ga[1][k]);
        close("update", name, &ue[k], &ua[k]);
    }
    // The scaling tables are trained, by both groups.
    let table = params
        .names
        .iter()
        .position(|n| n.ends_with("layer.0.scaling.mlp"))
        .unwrap();
    assert!(ge[0][table].iter().any(|v| *v != 0.0) && ge[1][table].iter().any(|v| *v != 0.0));
    // The key biases' true gradients are 0 (rounding noise on both sides):
    // their conflicts may differ.
    assert_eq!(ae.compared, aa.compared);
    assert!(ae.conflicting.abs_diff(aa.conflicting) <= s.supernet.depth as u64);
    assert!((ae.coef_sum - aa.coef_sum).abs() <= 1e-3 * aa.coef_sum.max(1.0));
}

/// On a real sandwich step (engine, scaling layers on), NASViT's combined
/// update is `g_S + g_L` exactly for every tensor whose two gradients do not
/// conflict (or that only one group touches), and differs from it, by
/// `c·g_S`, exactly for the conflicting ones; the plain `sum` strategy's
/// update matches it on the others.
#[test]
fn nasvit_changes_only_the_conflicting_tensors_of_a_real_step() {
    let s = odd_space();
    let (net, params) = perturbed_scaled(&s, Switch::Depth);
    let x = images(&s, 6, 5);
    let y = Tensor::from_vec((0..6u32).map(|i| i % 7).collect(), 6, &Device::Cpu).unwrap();
    let plan = Sandwich { num_random: 2 }.plan(&s, 0, &mut StdRng::seed_from_u64(4));
    let batch = Batch {
        input: StepInput::Images(&x),
        labels: &y,
        label_smoothing: 0.1,
        distill: Some(&Kl),
        ranking: None,
        teacher: None,
    };
    let w = Weights::from_tensors(&params.tensors()).unwrap();
    let cfg = Config::from_supernet(&net);
    let path = Path::Engine {
        weights: &w,
        config: &cfg,
        recompute: Default::default(),
    };
    // No clipping of g_S, so that the plain sum is the reference.
    let strategy = Nasvit {
        start_epoch: 0,
        clip_small: 1e30,
    };
    let mut groups = vec![params.zero_grads(), params.zero_grads()];
    {
        let mut targets: Vec<&mut [Vec<f32>]> = groups.iter_mut().map(|g| &mut g[..]).collect();
        accumulate_groups(path, &plan, batch, &strategy.groups(&plan), &mut targets).unwrap();
    }
    let (g_l, g_s) = (groups[0].clone(), groups[1].clone());
    let a = strategy.combine(&mut groups, 0).unwrap();
    let mut summed = params.zero_grads();
    {
        let one = vec![0; plan.archs.len()];
        accumulate_groups(path, &plan, batch, &one, &mut [&mut summed[..]]).unwrap();
    }
    let (mut conflicting, mut agreeing) = (0, 0);
    for (k, name) in params.names.iter().enumerate() {
        let (l, sm, u) = (&g_l[k], &g_s[k], &groups[0][k]);
        let dot: f64 = l.iter().zip(sm).map(|(a, b)| *a as f64 * *b as f64).sum();
        let ss: f64 = sm.iter().map(|v| (*v as f64).powi(2)).sum();
        let plain: Vec<f32> = l.iter().zip(sm).map(|(a, b)| a + b).collect();
        if dot >= 0.0 || ss == 0.0 {
            agreeing += 1;
            assert_eq!(
                u, &plain,
                "{name}: no conflict, but the update is not g_S + g_L"
            );
            // (the key bias: rounding noise only, compared absolutely)
            let floor: f32 = if name.ends_with("key.bias") {
                1e-2
            } else {
                1e-12
            };
            let scale = summed[k].iter().fold(floor, |m, v| m.max(v.abs()));
            let d = u
                .iter()
                .zip(&summed[k])
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                d / scale <= 1e-5,
                "{name}: differs from the sum strategy by {d}"
            );
        } else {
            conflicting += 1;
            let c = (-dot / (ss + 1e-6)).clamp(0.0, 2.0);
            for i in 0..u.len() {
                let want = (1.0 + c) * sm[i] as f64 + l[i] as f64;
                assert!(
                    (u[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1e-3),
                    "{name}[{i}]"
                );
            }
        }
    }
    assert_eq!(a.conflicting, conflicting as u64);
    assert!(
        conflicting > 0 && agreeing > 0,
        "{conflicting} conflicting, {agreeing} agreeing"
    );
}
