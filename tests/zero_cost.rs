//! Zero-cost proxies (`vitnas::rank::proxy`): deterministic, finite, the
//! pieces checked against brute force, and the known size bias of naswot
//! and synflow on fmnist-small.
//!
//! `cargo test --release --test zero_cost -- --nocapture` prints each
//! proxy's time on the largest fmnist-small architecture and the τ values.

mod common;

use candle_core::{Device, Tensor};
use common::{repo_path, space};
use std::time::Instant;
use vitnas::data::batch::{make_batch, Normalize};
use vitnas::data::{idx, Split};
use vitnas::rank::proxy::{naswot_kernel, score, score_model, slogdet, Proxy};
use vitnas::rank::stats::kendall_tau_b;
use vitnas::space::flops;
use vitnas::supernet::init::InitScheme;
use vitnas::train::loss::cross_entropy;
use vitnas::train::standalone::{build, Init};
use vitnas::{Arch, Space};

const INIT: InitScheme = InitScheme::TorchDefault;

/// The first `n` test images of the bundled Fashion-MNIST sample,
/// normalised, and their labels.
fn fmnist_batch(n: usize) -> (Tensor, Tensor) {
    let ds = idx::load_split(&repo_path("data/fashion-mnist-sample"), Split::Test).unwrap();
    let norm = Normalize {
        mean: vec![0.286],
        std: vec![0.353],
    };
    let indices: Vec<usize> = (0..n).collect();
    make_batch(&ds, &indices, &norm, None, &Device::Cpu).unwrap()
}

#[test]
fn each_proxy_is_deterministic_finite_and_seed_dependent_on_smallest_and_largest() {
    let s = space("fmnist-small");
    let (images, labels) = fmnist_batch(64);
    for (which, arch) in [("smallest", s.smallest()), ("largest", s.largest())] {
        let t0 = Instant::now();
        build(&s, &arch, 0, &Init::Scratch(INIT)).unwrap();
        println!(
            "{which:8} model from scratch alone: {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        for proxy in Proxy::ALL {
            let t0 = Instant::now();
            let a = score(proxy, &s, &arch, INIT, 0, &images, &labels).unwrap();
            let elapsed = t0.elapsed();
            let b = score(proxy, &s, &arch, INIT, 0, &images, &labels).unwrap();
            let other = score(proxy, &s, &arch, INIT, 1, &images, &labels).unwrap();
            println!(
                "{which:8} {:9} seed 0: {a:.6e} (seed 1: {other:.6e}), {:.1} ms \
                 (64 images, model built from scratch included)",
                proxy.name(),
                elapsed.as_secs_f64() * 1e3
            );
            assert_eq!(a.to_bits(), b.to_bits(), "{which} {proxy}: {a} vs {b}");
            assert!(a.is_finite(), "{which} {proxy}: {a}");
            assert_ne!(
                a.to_bits(),
                other.to_bits(),
                "{which} {proxy}: seed ignored"
            );
        }
    }
}

/// log |det| by the Leibniz formula (every permutation), for tiny matrices.
fn brute_force_det(a: &[f64], n: usize) -> f64 {
    fn permute(cols: &mut Vec<usize>, k: usize, a: &[f64], n: usize, total: &mut f64) {
        if k == n {
            let mut inversions = 0;
            for i in 0..n {
                for j in i + 1..n {
                    inversions += usize::from(cols[i] > cols[j]);
                }
            }
            let sign = if inversions % 2 == 0 { 1.0 } else { -1.0 };
            *total += sign * (0..n).map(|r| a[r * n + cols[r]]).product::<f64>();
            return;
        }
        for i in k..n {
            cols.swap(k, i);
            permute(cols, k + 1, a, n, total);
            cols.swap(k, i);
        }
    }
    let mut total = 0.0;
    permute(&mut (0..n).collect(), 0, a, n, &mut total);
    total
}

#[test]
fn slogdet_matches_brute_force_determinant_on_hand_built_kernels() {
    // Binary codes of 5 "images" over 9 units; K[i][j] = agreements.
    let codes: [[u8; 9]; 5] = [
        [1, 0, 1, 1, 0, 0, 1, 0, 1],
        [1, 1, 0, 1, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 1, 1],
        [1, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 1, 1, 0, 1, 0, 1, 0, 1],
    ];
    let n = codes.len();
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            k[i * n + j] = (0..9).filter(|&u| codes[i][u] == codes[j][u]).count() as f64;
        }
    }
    let det = brute_force_det(&k, n);
    let (sign, logdet) = slogdet(&k, n);
    println!("hand-built K: det {det}, slogdet ({sign}, {logdet})");
    assert!(det > 0.0, "{det}");
    assert_eq!(sign, 1.0);
    assert!(
        (logdet - det.ln()).abs() < 1e-12,
        "{logdet} vs {}",
        det.ln()
    );

    // A general matrix with a negative determinant (pivoting needed: a
    // zero on the diagonal).
    let a = [
        0.0, 2.0, 1.0, 3.0, -1.0, 4.0, 1.0, 5.0, 2.0, 0.0, 3.0, 6.0, -2.0, 0.5, 7.0, 1.0,
    ];
    let det = brute_force_det(&a, 4);
    let (sign, logdet) = slogdet(&a, 4);
    assert!(det < 0.0, "{det}");
    assert_eq!(sign, -1.0);
    assert!((logdet - det.abs().ln()).abs() < 1e-12, "{logdet} vs {det}");

    // Two images with the same code: K is singular.
    let singular = [9.0, 9.0, 4.0, 9.0, 9.0, 4.0, 4.0, 4.0, 9.0];
    assert_eq!(brute_force_det(&singular, 3), 0.0);
    assert_eq!(slogdet(&singular, 3), (0.0, f64::NEG_INFINITY));
}

#[test]
fn naswot_kernel_counts_sign_agreements_with_units_on_its_diagonal() {
    let s = space("fmnist-small");
    let arch = s.smallest();
    let (model, _, _) = build(&s, &arch, 3, &Init::Scratch(INIT)).unwrap();
    let (images, labels) = fmnist_batch(8);
    let k = naswot_kernel(&model, &images).unwrap();

    // Units: tokens × MLP width, summed over the layers.
    let tokens = model.config.seq_len();
    let units: usize = (0..arch.depth).map(|l| tokens * arch.mlp_width(l)).sum();
    assert_eq!(k.units, units);
    assert_eq!(k.n, 8);
    for i in 0..8 {
        assert_eq!(k.k[i * 8 + i], units as f64, "K[{i}][{i}]");
    }

    // Brute force from the hidden pre-activations.
    let (_, hidden) = model.forward_with_mlp_hidden(&images).unwrap();
    let codes: Vec<Vec<bool>> = (0..8)
        .map(|i| {
            hidden
                .iter()
                .flat_map(|h| {
                    let per_image = h.reshape((8, ())).unwrap();
                    let row: Vec<f32> = per_image.get(i).unwrap().to_vec1().unwrap();
                    row.into_iter().map(|v| v > 0.0)
                })
                .collect()
        })
        .collect();
    for i in 0..8 {
        for j in 0..8 {
            let agree = (0..units).filter(|&u| codes[i][u] == codes[j][u]).count();
            assert_eq!(k.k[i * 8 + j], agree as f64, "K[{i}][{j}]");
        }
    }
    // Distinct images are told apart somewhere, but not everywhere.
    assert!(k.k[1] < units as f64 && k.k[1] > 0.0, "{}", k.k[1]);

    let naswot = score_model(Proxy::Naswot, &model, &images, &labels).unwrap();
    assert_eq!(naswot, slogdet(&k.k, 8).1);
    assert!(naswot.is_finite());
}

/// A space small enough for a finite-difference gradient of every weight.
fn tiny_space() -> Space {
    Space::from_toml_str(
        r#"
        name = "tiny-fd"
        [input]
        image_size = 8
        patch_size = 4
        channels = 1
        num_classes = 3
        [supernet]
        embed_dim = 8
        depth = 1
        num_heads = 2
        mlp_ratio = 2.0
        head_dim = 4
        [choices]
        embed_dim = [8]
        depth = [1]
        num_heads = [2]
        mlp_ratio = [2.0]
        "#,
        "tiny-fd.toml",
    )
    .unwrap()
}

#[test]
fn grad_norm_matches_central_differences_of_the_loss_on_a_tiny_model() {
    let s = tiny_space();
    let arch: Arch = s.largest();
    let images = common::images(&s, 6, 11);
    let labels = Tensor::new(&[0u32, 1, 2, 2, 1, 0], &Device::Cpu).unwrap();
    let seed = 4;
    let proxy = score(Proxy::GradNorm, &s, &arch, INIT, seed, &images, &labels).unwrap();

    // Independently: the same model, the loss of each weight nudged ±h.
    let (model, _, params) = build(&s, &arch, seed, &Init::Scratch(INIT)).unwrap();
    let loss = || -> f64 {
        let logits = model.forward(&images).unwrap();
        cross_entropy(&logits, &labels, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    // h = 1e-3: the class token starts at zero under torch_default and its
    // final layer norm is sharply curved there (h = 1e-2 misses its
    // gradient by 3 %); f32 rounding costs ~1e-4 of each tensor's norm.
    let h = 1e-3f32;
    let mut fd_total = 0.0;
    let mut count = 0;
    for var in &params.vars {
        let orig: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
        let mut sq = 0.0;
        for e in 0..orig.len() {
            let at = |delta: f32| {
                let mut v = orig.clone();
                v[e] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss()
            };
            let g = (at(h) - at(-h)) / (2.0 * h as f64);
            sq += g * g;
        }
        var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        fd_total += sq.sqrt();
        count += orig.len();
    }
    let rel = (proxy - fd_total).abs() / fd_total;
    println!("grad_norm {proxy:.6} vs central differences {fd_total:.6} ({count} weights): rel {rel:.2e}");
    assert!(proxy > 0.0);
    // 1e-3 of the total (measured error ~1.2e-4) is below the share of its
    // smallest non-zero tensor (query.bias, ~1.8e-3): a dropped or scaled
    // tensor gradient fails.
    assert!(
        rel < 1e-3,
        "grad_norm {proxy} vs finite differences {fd_total}"
    );
}

#[test]
fn naswot_and_synflow_rank_stratified_fmnist_small_archs_by_flops() {
    let s = space("fmnist-small");
    let archs = vitnas::rank::stratified(&s, 16, 0);
    assert_eq!(archs.len(), 16);
    let (images, labels) = fmnist_batch(64);
    let f: Vec<f64> = archs.iter().map(|a| flops(&s, a) as f64).collect();
    for proxy in [Proxy::Naswot, Proxy::Synflow, Proxy::GradNorm] {
        let scores: Vec<f64> = archs
            .iter()
            .map(|a| score(proxy, &s, a, INIT, 0, &images, &labels).unwrap())
            .collect();
        let tau = kendall_tau_b(&f, &scores).unwrap();
        println!(
            "{:9} Kendall τ vs FLOPs over 16 archs: {tau:+.3}",
            proxy.name()
        );
        if proxy != Proxy::GradNorm {
            assert!(tau > 0.3, "{proxy}: τ {tau} (scores {scores:?})");
        }
    }
}

#[test]
fn proxy_names_agree_in_files_and_on_the_command_line() {
    use clap::ValueEnum;
    let names: Vec<&str> = Proxy::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["naswot", "grad_norm", "synflow"]);
    for p in Proxy::ALL {
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{}\"", p.name()));
        assert_eq!(serde_json::from_str::<Proxy>(&json).unwrap(), p);
        assert_eq!(Proxy::from_str(p.name(), false).unwrap(), p);
    }
}
