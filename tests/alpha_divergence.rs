//! The alpha-divergence distillation loss against AlphaNet's formula, the
//! size of its gradient, and the gradient diagnosis of a training run
//! (evaluate/studies/2026-12-06-alpha-divergence.md).

mod common;

use candle_core::{Device, Tensor, Var};
use common::repo_path;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use vitnas::train::loss::{self, AlphaDivergence, Distill, Kl};
use vitnas::train::recipe::Recipe;
use vitnas::train::recipe::{AlphaSurrogate, DistillConfig};
use vitnas::train::{self, RunOptions, METRICS_FILE, SUPERNET_FILE};

/// Logits of 4 examples × 5 classes where the student puts mass where a
/// confident teacher has little (the case where AlphaNet's importance
/// weights `(p/q)^−1 = q/p` are large), plus one near agreement. In the
/// first, the student splits its mass between the teacher's class and one
/// the teacher rules out: there AlphaNet's gradient (iw_clip 5) is 1.58,
/// KL's 0.70.
const STUDENT: [f64; 20] = [
    2.0, 2.0, -4.0, -4.0, -4.0, //
    0.0, 2.5, 2.5, 0.0, -1.0, //
    0.0, 0.0, 0.0, 0.0, 0.0, //
    1.0, 0.5, 0.0, -0.5, 0.2,
];
const TEACHER: [f64; 20] = [
    -6.0, 6.0, 0.0, 0.0, 0.0, //
    5.0, -3.0, -3.0, 0.0, 1.0, //
    8.0, 0.0, 0.0, 0.0, 0.0, //
    1.1, 0.4, 0.0, -0.6, 0.3,
];
const ROWS: usize = 4;
const CLASSES: usize = 5;

fn tensor(v: &[f64]) -> Tensor {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, (ROWS, CLASSES), &Device::Cpu).unwrap()
}

fn alpha(iw_clip: f64, surrogate: AlphaSurrogate) -> AlphaDivergence {
    AlphaDivergence {
        alpha_min: -1.0,
        alpha_max: 1.0,
        iw_clip,
        surrogate,
    }
}

/// `∂loss/∂student logits`, one row per example.
fn logit_grad(d: &dyn Distill) -> Vec<Vec<f32>> {
    let z = Var::from_tensor(&tensor(&STUDENT)).unwrap();
    let (loss, _) = d.loss(z.as_tensor(), &tensor(&TEACHER)).unwrap();
    let g = loss.backward().unwrap();
    g.get(z.as_tensor()).unwrap().to_vec2().unwrap()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// AlphaNet's `f_divergence` (facebookresearch/AlphaNet, loss_ops.py) for
/// one example and `alpha ∉ {0, 1}`: `(value, ∂grad_loss/∂z)`, where
/// `grad_loss = −Σ q·ρ_f·log q` with q and ρ_f detached, so
/// `∂/∂z_j = −(c_j − q_j Σ c)`, `c = q·ρ_f`.
fn alphanet_general(z: &[f64], t: &[f64], alpha: f64, iw_clip: f64) -> (f64, Vec<f64>) {
    let (q, p) = (softmax(z), softmax(t));
    let iw: Vec<f64> = p
        .iter()
        .zip(&q)
        .map(|(p, q)| (p / q).powf(alpha).clamp(0.0, iw_clip))
        .collect();
    let base = 1.0 / alpha / (alpha - 1.0);
    let value: f64 = q.iter().zip(&iw).map(|(q, w)| q * (w * base - base)).sum();
    let c: Vec<f64> = q
        .iter()
        .zip(&iw)
        .map(|(q, w)| q * (w / alpha + base))
        .collect();
    let sc: f64 = c.iter().sum();
    (
        value,
        c.iter().zip(&q).map(|(c, q)| -(c - q * sc)).collect(),
    )
}

/// AlphaNet's alpha = 1 branch: KL(p‖q) and its gradient `q − p`.
fn alphanet_kl(z: &[f64], t: &[f64]) -> (f64, Vec<f64>) {
    let (q, p) = (softmax(z), softmax(t));
    let value = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
    (value, q.iter().zip(&p).map(|(q, p)| q - p).collect())
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn alphanet_surrogate_matches_alphanet_loss_ops_on_fixed_logits() {
    let got = logit_grad(&alpha(5.0, AlphaSurrogate::Alphanet));
    for r in 0..ROWS {
        let (z, t) = (
            &STUDENT[r * CLASSES..][..CLASSES],
            &TEACHER[r * CLASSES..][..CLASSES],
        );
        let (v_lo, g_lo) = alphanet_general(z, t, -1.0, 5.0);
        let (v_hi, g_hi) = alphanet_kl(z, t);
        // The batch mean of the branch with the larger value.
        let want = if v_lo > v_hi { g_lo } else { g_hi };
        for (j, w) in want.iter().enumerate() {
            let w = w / ROWS as f64;
            assert!(
                (got[r][j] as f64 - w).abs() < 1e-5,
                "row {r} class {j}: {} vs AlphaNet {w}",
                got[r][j]
            );
        }
    }
}

#[test]
fn normalized_surrogate_is_alphanets_divided_by_the_mean_importance_weight() {
    let a = logit_grad(&alpha(5.0, AlphaSurrogate::Alphanet));
    let n = logit_grad(&alpha(5.0, AlphaSurrogate::Normalized));
    for r in 0..ROWS {
        let (z, t) = (
            &STUDENT[r * CLASSES..][..CLASSES],
            &TEACHER[r * CLASSES..][..CLASSES],
        );
        let (q, p) = (softmax(z), softmax(t));
        let (v_lo, _) = alphanet_general(z, t, -1.0, 5.0);
        let (v_hi, _) = alphanet_kl(z, t);
        // E_q[w]: w = min(q/p, 5) on the alpha = −1 branch, p/q (mean 1)
        // on the alpha = 1 branch.
        let mean_w = if v_lo > v_hi {
            q.iter().zip(&p).map(|(q, p)| q * (q / p).min(5.0)).sum()
        } else {
            1.0
        };
        for j in 0..CLASSES {
            let want = a[r][j] as f64 / mean_w;
            assert!(
                (n[r][j] as f64 - want).abs() < 1e-5,
                "row {r} class {j}: {} vs {want}",
                n[r][j]
            );
        }
    }
}

/// The cause of the sandwich base's instability: on the alpha = −1 branch
/// AlphaNet's gradient grows with `E_q[min(q/p, iw_clip)]`, up to
/// `iw_clip` times a KL gradient's size. The recipe default
/// (`distill = { kind = "alpha", ... }` without `surrogate`) must bound
/// every example's logit gradient as KL does (`‖q − p‖ ≤ √2`), whatever
/// `iw_clip` is.
#[test]
fn default_alpha_divergence_gradient_is_bounded_like_kl_whatever_the_clip() {
    let kl = logit_grad(&Kl);
    let kl_max = kl.iter().map(|g| norm(g)).fold(0.0, f64::max) * ROWS as f64;
    for iw_clip in [2.0, 5.0, 50.0] {
        let text =
            format!("kind = \"alpha\"\nalpha_min = -1.0\nalpha_max = 1.0\niw_clip = {iw_clip:?}\n");
        let cfg: DistillConfig = toml::from_str(&text).unwrap();
        let d = loss::from_config(&cfg).unwrap();
        let g = logit_grad(d.as_ref());
        for (r, row) in g.iter().enumerate() {
            // Per example: the batch mean divides by ROWS.
            let size = norm(row) * ROWS as f64;
            assert!(
                size <= 2f64.sqrt() + 1e-5,
                "iw_clip {iw_clip}, row {r}: |grad| {size} above the KL bound √2 (KL's largest here {kl_max})"
            );
        }
    }
    // The published surrogate is not bounded so: it grows with the clip
    // (17.4 at iw_clip 50 on the first example, 25 times KL's there).
    let a = logit_grad(&alpha(50.0, AlphaSurrogate::Alphanet));
    let worst = a.iter().map(|g| norm(g)).fold(0.0, f64::max) * ROWS as f64;
    assert!(worst > 10.0 * 2f64.sqrt(), "AlphaNet's largest: {worst}");
}

/// A 4-step run on the bundled sample: sandwich with one random subnet
/// (3 subnets, 2 distilled by the default alpha-divergence), in `out`.
fn tiny_run(out: &Path, diagnose: bool) -> serde_json::Value {
    let text = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let mut r = Recipe::from_toml_str(&text, Path::new("quickstart.toml")).unwrap();
    common::on_fmnist_sample(&mut r, "fmnist-tiny", 128, 32);
    r.train.log_every = 2;
    r.train.diagnose_gradients = diagnose;
    r.sampler = vitnas::train::recipe::SamplerConfig::Sandwich { num_random: 1 };
    r.loss.distill =
        toml::from_str("kind = \"alpha\"\nalpha_min = -1.0\nalpha_max = 1.0\niw_clip = 5.0\n")
            .unwrap();
    let _ = std::fs::remove_dir_all(out);
    r.output_dir = out.to_path_buf();
    let flag = AtomicBool::new(false);
    let opts = RunOptions {
        resume: false,
        stop: &flag,
        progress: false,
        max_steps: Some(4),
        force: false,
        collective: &vitnas::dist::Single,
    };
    train::train(&r, &opts).unwrap();
    let lines = std::fs::read_to_string(out.join(METRICS_FILE)).unwrap();
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    serde_json::json!(lines)
}

#[test]
fn gradient_diagnosis_logs_every_subnet_and_changes_no_weight() {
    let base = std::env::temp_dir().join(format!("vitnas-test-alpha-diag-{}", std::process::id()));
    let (off, on) = (base.join("off"), base.join("on"));
    let plain = tiny_run(&off, false);
    let diag = tiny_run(&on, true);
    let read = |d: &Path| std::fs::read(d.join(SUPERNET_FILE)).unwrap();
    assert!(
        read(&off) == read(&on),
        "diagnosis changed the trained weights"
    );
    let steps = |m: &serde_json::Value| -> Vec<serde_json::Value> {
        m.as_array()
            .unwrap()
            .iter()
            .filter(|l| l.get("losses").is_some())
            .cloned()
            .collect()
    };
    let (plain, diag) = (steps(&plain), steps(&diag));
    assert!(plain.iter().all(|l| l.get("diagnosis").is_none()));
    // Step 1 and every log_every = 2 steps: 1, 2, 4.
    let with: Vec<u64> = diag
        .iter()
        .filter(|l| l.get("diagnosis").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(with, [1, 2, 4]);
    for l in diag.iter().filter(|l| l.get("diagnosis").is_some()) {
        let d = l["diagnosis"].as_array().unwrap();
        assert_eq!(d.len(), 3, "one entry per subnet: {l}");
        assert_eq!(d[0]["distilled"], false);
        // The diagnosis reports the losses the step reported.
        for (k, s) in d.iter().enumerate() {
            assert_eq!(s["loss"], l["losses"][k], "subnet {k}");
            assert!(s["grad_norm"].as_f64().unwrap() > 0.0, "subnet {k}: {s}");
        }
        for s in &d[1..] {
            assert_eq!(s["distilled"], true);
            let ce = &s["ce"];
            assert!(ce["grad_norm"].as_f64().unwrap() > 0.0, "{s}");
            assert!(ce["cosine"].as_f64().unwrap().abs() <= 1.0 + 1e-9, "{s}");
            let a = &s["distill"];
            let f = a["alpha_min_fraction"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&f), "{s}");
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
