//! Every fused kernel against the unfused candle composite: forward within
//! 1e-5 (max abs), gradients within 1e-4 (relative to the largest gradient),
//! on random inputs with odd sizes; and a whole-supernet gradient comparison
//! on one sandwich step.

mod common;

use candle_core::{Device, Tensor, Var};
use common::{accumulate_once, images, max_abs_and_diff, max_abs_diff, space, supernet, uniform};
use rand::{rngs::StdRng, SeedableRng};
use vitnas::engine::ops::{self, composite};
use vitnas::train::loss::Kl;
use vitnas::train::sampler::{Sampler, Sandwich};
use vitnas::train::step::{Backend, Params};

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = common::max_abs(b).max(1e-12);
    max_abs_diff(a, b) / scale
}

/// Compares `fused` and `reference` on inputs of `shape`: forward values and
/// the gradient of `Σ w · f(x)` with respect to `x` (w random).
fn compare(
    shape: &[usize],
    scale: f32,
    fused: impl Fn(&Tensor) -> Tensor,
    reference: impl Fn(&Tensor) -> Tensor,
) {
    let x = Var::from_tensor(&uniform(shape, 1, scale)).unwrap();
    let w = uniform(shape, 2, 1.0);
    let (yf, yr) = (fused(x.as_tensor()), reference(x.as_tensor()));
    let d = max_abs_diff(&yf, &yr);
    assert!(d <= 1e-5, "{shape:?}: forward differs by {d}");
    let gf = (yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (yr * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let (gf, gr) = (
        gf.get(x.as_tensor()).unwrap(),
        gr.get(x.as_tensor()).unwrap(),
    );
    let r = rel_diff(gf, gr);
    assert!(r <= 1e-4, "{shape:?}: gradient differs by {r} (relative)");
}

const SHAPES: &[&[usize]] = &[&[1, 1], &[3, 7], &[2, 5, 33], &[4, 50, 128], &[64, 50, 97]];

#[test]
fn fused_softmax_matches_composite() {
    for s in SHAPES {
        compare(
            s,
            4.0,
            |x| ops::softmax_last_scaled(x, 0.7).unwrap(),
            |x| composite::softmax_last(&(x * 0.7).unwrap()).unwrap(),
        );
    }
}

#[test]
fn fused_gelu_matches_composite() {
    for s in SHAPES {
        compare(
            s,
            5.0,
            |x| ops::gelu(x).unwrap(),
            |x| composite::gelu(x).unwrap(),
        );
    }
}

#[test]
fn fused_layer_norm_matches_composite_including_gamma_and_beta_gradients() {
    for s in SHAPES {
        let d = *s.last().unwrap();
        let gamma = Var::from_tensor(&(uniform(&[d], 3, 0.5) + 1.0).unwrap()).unwrap();
        let beta = Var::from_tensor(&uniform(&[d], 4, 0.5)).unwrap();
        compare(
            s,
            3.0,
            |x| ops::layer_norm(x, &gamma, &beta, 1e-5).unwrap(),
            |x| composite::layer_norm(x, &gamma, &beta, 1e-5).unwrap(),
        );
        let x = uniform(s, 5, 3.0);
        let w = uniform(s, 6, 1.0);
        let g_of = |y: Tensor| (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = g_of(ops::layer_norm(&x, &gamma, &beta, 1e-5).unwrap());
        let gr = g_of(composite::layer_norm(&x, &gamma, &beta, 1e-5).unwrap());
        for v in [&gamma, &beta] {
            let r = rel_diff(
                gf.get(v.as_tensor()).unwrap(),
                gr.get(v.as_tensor()).unwrap(),
            );
            assert!(r <= 1e-4, "{s:?}: gamma/beta gradient differs by {r}");
        }
    }
}

#[test]
fn fused_bias_add_matches_broadcast_add_including_bias_gradient() {
    for s in SHAPES {
        let d = *s.last().unwrap();
        let b = Var::from_tensor(&uniform(&[d], 3, 1.0)).unwrap();
        compare(
            s,
            1.0,
            |x| ops::bias_add(x, &b).unwrap(),
            |x| x.broadcast_add(&b).unwrap(),
        );
        let x = uniform(s, 5, 1.0);
        let w = uniform(s, 6, 1.0);
        let g_of = |y: Tensor| (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = g_of(ops::bias_add(&x, &b).unwrap());
        let gr = g_of(x.broadcast_add(&b).unwrap());
        let r = rel_diff(
            gf.get(b.as_tensor()).unwrap(),
            gr.get(b.as_tensor()).unwrap(),
        );
        assert!(r <= 1e-4, "{s:?}: bias gradient differs by {r}");
    }
    // A bias over the two trailing dimensions (position embeddings).
    let pos = Var::from_tensor(&uniform(&[50, 97], 7, 1.0)).unwrap();
    compare(
        &[3, 50, 97],
        1.0,
        |x| ops::bias_add(x, &pos).unwrap(),
        |x| x.broadcast_add(&pos).unwrap(),
    );
}

#[test]
fn kernels_reject_non_f32_input() {
    let x = Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
    let msg = ops::gelu(&x).unwrap_err().to_string();
    assert!(msg.contains("f32"), "{msg}");
}

#[test]
fn fused_and_composite_supernets_agree_on_a_sandwich_step() {
    let s = space("fmnist-tiny");
    let (net, vm) = supernet(&s, 7);
    let params = Params::from_varmap(&vm);
    let x = images(&s, 8, 3);
    let y = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7], &Device::Cpu).unwrap();
    let plan = Sandwich { num_random: 2 }.plan(&s, 0, &mut StdRng::seed_from_u64(1));
    let run = |backend| accumulate_once(&net, &params, &plan, &x, &y, Some(&Kl), backend);
    let (lf, gf) = run(Backend::Autograd);
    let (lr, gr) = run(Backend::Composite);
    for (a, b) in lf.losses.iter().zip(&lr.losses) {
        assert!((a - b).abs() <= 1e-5, "losses {a} vs {b}");
    }
    for (k, name) in params.names.iter().enumerate() {
        let (scale, d) = max_abs_and_diff(&gf[k], &gr[k]);
        let scale = scale.max(1e-8);
        // The key bias's true gradient is 0 (softmax shift invariance): both are rounding noise.
        if name.ends_with("key.bias") {
            assert!(d <= 1e-5, "{name}: {d}");
            continue;
        }
        assert!(
            d / scale <= 1e-3,
            "{name}: gradients differ by {} relative",
            d / scale
        );
    }
}

#[test]
fn fused_attention_matches_composite_in_values_and_all_three_gradients() {
    for &(b, t, h, hd) in &[
        (1usize, 1usize, 1usize, 1usize),
        (3, 7, 2, 5),
        (2, 50, 4, 32),
        (5, 17, 3, 8),
    ] {
        let shape = [b * t, h * hd];
        let vars: Vec<Var> = (0..3)
            .map(|k| Var::from_tensor(&uniform(&shape, 10 + k, 2.0)).unwrap())
            .collect();
        let w = uniform(&shape, 20, 1.0);
        let (q, k, v) = (
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        );
        let fused = ops::attention(q, k, v, b, h, hd).unwrap();
        let reference = ops::composite::attention(q, k, v, b, h, hd).unwrap();
        let d = max_abs_diff(&fused, &reference);
        assert!(d <= 1e-5, "({b},{t},{h},{hd}): forward differs by {d}");
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in ["q", "k", "v"].iter().zip(&vars) {
            let r = rel_diff(
                gf.get(var.as_tensor()).unwrap(),
                gr.get(var.as_tensor()).unwrap(),
            );
            // dK's true value is ~0 when T = 1 (softmax of one score).
            if t > 1 {
                assert!(
                    r <= 1e-4,
                    "({b},{t},{h},{hd}): d{name} differs by {r} (relative)"
                );
            }
        }
    }
}

#[test]
fn fused_linear_matches_composite_with_strided_weight_slices() {
    for &(m, k, n, kmax, nmax) in &[
        (1usize, 1usize, 1usize, 1usize, 1usize),
        (7, 5, 3, 9, 4),
        (50, 128, 96, 128, 128),
        (3200, 96, 384, 128, 512),
    ] {
        let x = Var::from_tensor(&uniform(&[m, k], 1, 2.0)).unwrap();
        let w_full = Var::from_tensor(&uniform(&[nmax, kmax], 2, 0.5)).unwrap();
        let b_full = Var::from_tensor(&uniform(&[nmax], 3, 0.5)).unwrap();
        // Leading slices, as the supernet's elastic linears take them.
        let w = w_full.narrow(0, 0, n).unwrap().narrow(1, 0, k).unwrap();
        let b = b_full.narrow(0, 0, n).unwrap();
        let g = uniform(&[m, n], 4, 1.0);
        let fused = ops::linear(x.as_tensor(), &w, Some(&b)).unwrap();
        let reference = x
            .as_tensor()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        // Relative to the largest output: a different summation order
        // over k = 128 moves single values by ~1e-6 of their size.
        let d = rel_diff(&fused, &reference);
        assert!(
            d <= 1e-5,
            "({m},{k},{n}): forward differs by {d} (relative)"
        );
        let gf = (fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in [("x", &x), ("w", &w_full), ("b", &b_full)] {
            let r = rel_diff(
                gf.get(var.as_tensor()).unwrap(),
                gr.get(var.as_tensor()).unwrap(),
            );
            assert!(
                r <= 1e-4,
                "({m},{k},{n}): d{name} differs by {r} (relative)"
            );
        }
    }
}
