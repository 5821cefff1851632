//! Element-wise and row math over f32 slices: exp, exact (erf) GELU and its
//! derivative, a scaled row softmax, layer-norm rows and their backward,
//! the AdamW update. Written once against `pulp`'s portable `Simd` trait
//! and run at the process's SIMD level ([`crate::kernels::simd`]): AVX-512, AVX2+FMA,
//! NEON or scalar, the same formulas at each, so results differ between
//! levels by rounding only.
//!
//! exp: range reduction `x = n ln2 + r` (n rounded by the 1.5·2²³ trick),
//! degree-6 Taylor polynomial on |r| ≤ ln2/2 (relative error ≈ 1e-7), `2ⁿ`
//! built in the exponent bits. erf: Abramowitz & Stegun 7.1.26
//! (|error| < 1.5e-7).
//!
//! The hand-written AVX-512 intrinsics these replace were no faster: the
//! pulp versions run the training and inference benchmarks as fast or
//! faster on AVX-512 (`evaluate/studies/2026-11-29-portable-simd.md`), so none are
//! kept. Hot loops use no closures: a closure is compiled without the
//! level's target features and its intrinsics would not inline.

use crate::kernels::simd::{isa, Isa};
use pulp::{Simd, WithSimd};

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// exp is clamped to [EXP_MIN, EXP_MAX]: 2ⁿ stays a normal float.
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.3;
/// Adding 1.5·2²³ rounds |x| < 2²² to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const ROUND_MAGIC_BITS: u32 = 0x4B40_0000;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_73,
    1.421_413_7,
    -1.453_152_1,
    1.061_405_4,
];

// ------------------------------------------------------------ lane formulas

#[inline(always)]
fn exp_v<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let x = s.min_f32s(s.max_f32s(x, s.splat_f32s(EXP_MIN)), s.splat_f32s(EXP_MAX));
    let t = s.mul_add_e_f32s(x, s.splat_f32s(LOG2E), s.splat_f32s(ROUND_MAGIC));
    let n = s.sub_f32s(t, s.splat_f32s(ROUND_MAGIC));
    let r = s.negate_mul_add_e_f32s(n, s.splat_f32s(LN2_HI), x);
    let r = s.negate_mul_add_e_f32s(n, s.splat_f32s(LN2_LO), r);
    let mut p = s.mul_add_e_f32s(s.splat_f32s(1.0 / 720.0), r, s.splat_f32s(1.0 / 120.0));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(1.0 / 24.0));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(1.0 / 6.0));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(0.5));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(1.0));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(1.0));
    // The low bits of t hold n (two's complement): (n + 127) << 23 is 2ⁿ.
    let biased = s.sub_u32s(
        s.transmute_u32s_f32s(t),
        s.splat_u32s(ROUND_MAGIC_BITS.wrapping_sub(127)),
    );
    let pow2 = s.transmute_f32s_u32s(s.wrapping_dyn_shl_u32s(biased, s.splat_u32s(23)));
    s.mul_f32s(p, pow2)
}

#[inline(always)]
fn erf_v<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let a = s.abs_f32s(x);
    let t = s.div_f32s(
        s.splat_f32s(1.0),
        s.mul_add_e_f32s(s.splat_f32s(ERF_P), a, s.splat_f32s(1.0)),
    );
    let mut poly = s.mul_add_e_f32s(s.splat_f32s(ERF_A[4]), t, s.splat_f32s(ERF_A[3]));
    poly = s.mul_add_e_f32s(poly, t, s.splat_f32s(ERF_A[2]));
    poly = s.mul_add_e_f32s(poly, t, s.splat_f32s(ERF_A[1]));
    poly = s.mul_add_e_f32s(poly, t, s.splat_f32s(ERF_A[0]));
    poly = s.mul_f32s(poly, t);
    let e = exp_v(s, s.neg_f32s(s.mul_f32s(a, a)));
    // erf(|x|) ≥ 0; give it x's sign bit.
    let y = s.negate_mul_add_e_f32s(poly, e, s.splat_f32s(1.0));
    s.or_f32s(y, s.and_f32s(x, s.splat_f32s(-0.0)))
}

#[inline(always)]
fn cdf_v<S: Simd>(s: S, u: S::f32s) -> S::f32s {
    let half = s.splat_f32s(0.5);
    s.mul_add_e_f32s(
        half,
        erf_v(s, s.mul_f32s(u, s.splat_f32s(FRAC_1_SQRT_2))),
        half,
    )
}

#[inline(always)]
fn gelu_v<S: Simd>(s: S, u: S::f32s) -> S::f32s {
    s.mul_f32s(u, cdf_v(s, u))
}

#[inline(always)]
fn gelu_grad_v<S: Simd>(s: S, u: S::f32s) -> S::f32s {
    let pdf = s.mul_f32s(
        s.splat_f32s(INV_SQRT_2PI),
        exp_v(s, s.mul_f32s(s.splat_f32s(-0.5), s.mul_f32s(u, u))),
    );
    s.mul_add_e_f32s(u, pdf, cdf_v(s, u))
}

/// Sum of a slice.
#[inline(always)]
fn sum_v<S: Simd>(s: S, x: &[f32]) -> f32 {
    let (h, t) = S::as_simd_f32s(x);
    let mut acc = s.splat_f32s(0.0);
    for &v in h {
        acc = s.add_f32s(acc, v);
    }
    s.reduce_sum_f32s(acc) + t.iter().sum::<f32>()
}

// ---------------------------------------------------------------- the ops

/// `out ← f(x)` lane-wise over equal-length slices. A macro, not a function
/// taking a closure: a closure would be compiled without the level's
/// target features, and the vector intrinsics in it would not inline.
macro_rules! map_lanes {
    ($s:ident, $x:expr, $out:expr, |$v:ident| $f:expr) => {{
        let (xh, xt) = S::as_simd_f32s($x);
        let (oh, ot) = S::as_mut_simd_f32s($out);
        for (o, &$v) in oh.iter_mut().zip(xh) {
            *o = $f;
        }
        if !xt.is_empty() {
            let $v = $s.partial_load_f32s(xt);
            $s.partial_store_f32s(ot, $f);
        }
    }};
}

struct Gelu<'a>(&'a [f32], &'a mut [f32]);
impl WithSimd for Gelu<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        map_lanes!(s, self.0, self.1, |v| gelu_v(s, v));
    }
}

struct GeluBackward<'a>(&'a [f32], &'a mut [f32]);
impl WithSimd for GeluBackward<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (u, g) = (self.0, self.1);
        let (uh, ut) = S::as_simd_f32s(u);
        let (gh, gt) = S::as_mut_simd_f32s(g);
        for (g, &u) in gh.iter_mut().zip(uh) {
            *g = s.mul_f32s(*g, gelu_grad_v(s, u));
        }
        if !ut.is_empty() {
            let v = s.mul_f32s(
                s.partial_load_f32s(gt),
                gelu_grad_v(s, s.partial_load_f32s(ut)),
            );
            s.partial_store_f32s(gt, v);
        }
    }
}

/// `row ← softmax(scale · row)`.
struct Softmax<'a>(&'a mut [f32], f32);
impl WithSimd for Softmax<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (row, scale) = (self.0, self.1);
        let max = {
            let (h, t) = S::as_simd_f32s(row);
            let mut m = s.splat_f32s(f32::NEG_INFINITY);
            for &v in h {
                m = s.max_f32s(m, v);
            }
            t.iter().copied().fold(s.reduce_max_f32s(m), f32::max)
        };
        let (mx, sc) = (s.splat_f32s(max), s.splat_f32s(scale));
        let (h, t) = S::as_mut_simd_f32s(row);
        let mut acc = s.splat_f32s(0.0);
        for v in h.iter_mut() {
            *v = exp_v(s, s.mul_f32s(s.sub_f32s(*v, mx), sc));
            acc = s.add_f32s(acc, *v);
        }
        let mut sum = s.reduce_sum_f32s(acc);
        if !t.is_empty() {
            let e = exp_v(s, s.mul_f32s(s.sub_f32s(s.partial_load_f32s(t), mx), sc));
            s.partial_store_f32s(t, e);
            sum += t.iter().sum::<f32>();
        }
        let inv = s.splat_f32s(1.0 / sum);
        for v in h.iter_mut() {
            *v = s.mul_f32s(*v, inv);
        }
        for v in t.iter_mut() {
            *v *= 1.0 / sum;
        }
    }
}

/// Layer norm of one row: writes `x̂` and `y = x̂ · γ + β`, returns 1/σ.
struct NormRow<'a> {
    x: &'a [f32],
    g: &'a [f32],
    b: &'a [f32],
    eps: f32,
    y: &'a mut [f32],
    xhat: &'a mut [f32],
}
impl WithSimd for NormRow<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> f32 {
        let NormRow {
            x,
            g,
            b,
            eps,
            y,
            xhat,
        } = self;
        let d = x.len() as f32;
        let mean = sum_v(s, x) / d;
        let var = {
            let (h, t) = S::as_simd_f32s(x);
            let m = s.splat_f32s(mean);
            let mut acc = s.splat_f32s(0.0);
            for &v in h {
                let c = s.sub_f32s(v, m);
                acc = s.mul_add_e_f32s(c, c, acc);
            }
            s.reduce_sum_f32s(acc) + t.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
        } / d;
        let rstd = 1.0 / (var + eps).sqrt();
        let (m, r) = (s.splat_f32s(mean), s.splat_f32s(rstd));
        let (xh, xt) = S::as_simd_f32s(x);
        let (gh, gt) = S::as_simd_f32s(g);
        let (bh, bt) = S::as_simd_f32s(b);
        let (yh, yt) = S::as_mut_simd_f32s(y);
        let (hh, ht) = S::as_mut_simd_f32s(xhat);
        for ((((y, h), &x), &g), &b) in yh.iter_mut().zip(hh.iter_mut()).zip(xh).zip(gh).zip(bh) {
            *h = s.mul_f32s(s.sub_f32s(x, m), r);
            *y = s.mul_add_e_f32s(*h, g, b);
        }
        for ((((y, h), &x), &g), &b) in yt.iter_mut().zip(ht.iter_mut()).zip(xt).zip(gt).zip(bt) {
            *h = (x - mean) * rstd;
            *y = *h * g + b;
        }
        rstd
    }
}

/// `dx += rstd · (dy·γ − mean(dy·γ) − x̂ · mean(dy·γ·x̂))` for one row.
struct NormRowBackward<'a> {
    dy: &'a [f32],
    xhat: &'a [f32],
    g: &'a [f32],
    rstd: f32,
    dx: &'a mut [f32],
}
impl WithSimd for NormRowBackward<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let NormRowBackward {
            dy,
            xhat,
            g,
            rstd,
            dx,
        } = self;
        let d = dy.len() as f32;
        let (dyh, dyt) = S::as_simd_f32s(dy);
        let (xh, xt) = S::as_simd_f32s(xhat);
        let (gh, gt) = S::as_simd_f32s(g);
        let (mut a1, mut a2) = (s.splat_f32s(0.0), s.splat_f32s(0.0));
        for ((&dy, &x), &g) in dyh.iter().zip(xh).zip(gh) {
            let t = s.mul_f32s(dy, g);
            a1 = s.add_f32s(a1, t);
            a2 = s.mul_add_e_f32s(t, x, a2);
        }
        let (mut c1, mut c2) = (s.reduce_sum_f32s(a1), s.reduce_sum_f32s(a2));
        for ((&dy, &x), &g) in dyt.iter().zip(xt).zip(gt) {
            c1 += dy * g;
            c2 += dy * g * x;
        }
        let (c1, c2) = (c1 / d, c2 / d);
        let (v1, v2, r) = (s.splat_f32s(c1), s.splat_f32s(c2), s.splat_f32s(rstd));
        let (dxh, dxt) = S::as_mut_simd_f32s(dx);
        for (((o, &dy), &x), &g) in dxh.iter_mut().zip(dyh).zip(xh).zip(gh) {
            let inner = s.sub_f32s(s.mul_f32s(dy, g), s.mul_add_e_f32s(x, v2, v1));
            *o = s.mul_add_e_f32s(r, inner, *o);
        }
        for (((o, &dy), &x), &g) in dxt.iter_mut().zip(dyt).zip(xt).zip(gt) {
            *o += rstd * (dy * g - c1 - x * c2);
        }
    }
}

/// `dg += dy · x̂`, `db += dy` for one row.
struct NormParamGrads<'a> {
    dy: &'a [f32],
    xhat: &'a [f32],
    dg: &'a mut [f32],
    db: &'a mut [f32],
}
impl WithSimd for NormParamGrads<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (dyh, dyt) = S::as_simd_f32s(self.dy);
        let (xh, xt) = S::as_simd_f32s(self.xhat);
        let (gh, gt) = S::as_mut_simd_f32s(self.dg);
        let (bh, bt) = S::as_mut_simd_f32s(self.db);
        for (((g, b), &dy), &x) in gh.iter_mut().zip(bh.iter_mut()).zip(dyh).zip(xh) {
            *g = s.mul_add_e_f32s(dy, x, *g);
            *b = s.add_f32s(*b, dy);
        }
        for (((g, b), &dy), &x) in gt.iter_mut().zip(bt.iter_mut()).zip(dyt).zip(xt) {
            *g += dy * x;
            *b += dy;
        }
    }
}

/// The constants of one AdamW update.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// Multiplies the gradient (norm clipping).
    pub clip: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `lr · weight_decay` (0 for undecayed tensors).
    pub decay: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
    /// `sqrt(1 − β₂ᵗ)`.
    pub bc2_sqrt: f32,
}

impl AdamWStep {
    #[inline(always)]
    fn one(&self, w: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        let g = g * self.clip;
        *m = self.beta1 * *m + (1.0 - self.beta1) * g;
        *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
        *w -= self.decay * *w;
        *w -= self.step_size * *m / (v.sqrt() / self.bc2_sqrt + self.eps);
    }
}

struct AdamW<'a> {
    w: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: &'a [f32],
    c: AdamWStep,
}
impl WithSimd for AdamW<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let AdamW { w, m, v, g, c } = self;
        let (wh, wt) = S::as_mut_simd_f32s(w);
        let (mh, mt) = S::as_mut_simd_f32s(m);
        let (vh, vt) = S::as_mut_simd_f32s(v);
        let (gh, gt) = S::as_simd_f32s(g);
        let (b1, b2) = (s.splat_f32s(c.beta1), s.splat_f32s(c.beta2));
        let (nb1, nb2) = (s.splat_f32s(1.0 - c.beta1), s.splat_f32s(1.0 - c.beta2));
        let (keep, step, inv_bc2, eps) = (
            s.splat_f32s(1.0 - c.decay),
            s.splat_f32s(c.step_size),
            s.splat_f32s(1.0 / c.bc2_sqrt),
            s.splat_f32s(c.eps),
        );
        let clip = s.splat_f32s(c.clip);
        for (((w, m), v), &g) in wh.iter_mut().zip(mh.iter_mut()).zip(vh.iter_mut()).zip(gh) {
            let g = s.mul_f32s(g, clip);
            *m = s.mul_add_e_f32s(b1, *m, s.mul_f32s(nb1, g));
            *v = s.mul_add_e_f32s(b2, *v, s.mul_f32s(nb2, s.mul_f32s(g, g)));
            let denom = s.mul_add_e_f32s(s.sqrt_f32s(*v), inv_bc2, eps);
            *w = s.negate_mul_add_e_f32s(step, s.div_f32s(*m, denom), s.mul_f32s(keep, *w));
        }
        for (((w, m), v), &g) in wt.iter_mut().zip(mt.iter_mut()).zip(vt.iter_mut()).zip(gt) {
            c.one(w, m, v, g);
        }
    }
}

// ------------------------------------------------------------- public API

/// `a = GELU(u)` (exact, erf form), element-wise.
pub fn gelu(u: &[f32], a: &mut [f32]) {
    gelu_on(isa(), u, a)
}

/// `g ← g · GELU'(u)`, element-wise.
pub fn gelu_backward(u: &[f32], g: &mut [f32]) {
    gelu_backward_on(isa(), u, g)
}

/// `row ← softmax(scale · row)` (`scale` > 0).
pub fn softmax_row(row: &mut [f32], scale: f32) {
    isa().run(Softmax(row, scale))
}

/// Layer norm of the row `x` with `γ = g`, `β = b`: writes the normalised
/// row to `xhat` and the output to `y`, returns `1/σ`.
pub fn norm_row(x: &[f32], g: &[f32], b: &[f32], eps: f32, y: &mut [f32], xhat: &mut [f32]) -> f32 {
    let d = x.len();
    isa().run(NormRow {
        x,
        g: &g[..d],
        b: &b[..d],
        eps,
        y: &mut y[..d],
        xhat: &mut xhat[..d],
    })
}

/// Adds the layer-norm input gradient of one row to `dx`.
pub fn norm_row_backward(dy: &[f32], xhat: &[f32], g: &[f32], rstd: f32, dx: &mut [f32]) {
    let d = dy.len();
    isa().run(NormRowBackward {
        dy,
        xhat: &xhat[..d],
        g: &g[..d],
        rstd,
        dx: &mut dx[..d],
    })
}

/// Adds one row's `∂L/∂γ = dy · x̂` and `∂L/∂β = dy` to `dg`, `db`.
pub fn norm_param_grads(dy: &[f32], xhat: &[f32], dg: &mut [f32], db: &mut [f32]) {
    let d = dy.len();
    isa().run(NormParamGrads {
        dy,
        xhat: &xhat[..d],
        dg: &mut dg[..d],
        db: &mut db[..d],
    })
}

/// One AdamW update of a tensor `w` with moments `m`, `v` and gradient `g`
/// (all the same length).
pub fn adamw(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: AdamWStep) {
    let n = w.len();
    isa().run(AdamW {
        w,
        m: &mut m[..n],
        v: &mut v[..n],
        g: &g[..n],
        c,
    })
}

fn gelu_on(isa: Isa, u: &[f32], a: &mut [f32]) {
    let n = u.len().min(a.len());
    isa.run(Gelu(&u[..n], &mut a[..n]))
}

fn gelu_backward_on(isa: Isa, u: &[f32], g: &mut [f32]) {
    let n = u.len().min(g.len());
    isa.run(GeluBackward(&u[..n], &mut g[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::Level;

    /// Every level this CPU and build run.
    fn isas() -> Vec<Isa> {
        Level::available()
            .into_iter()
            .map(|l| Isa::new(l).unwrap())
            .collect()
    }

    fn inputs(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 - n as f32 / 2.0) * 0.0173)
            .collect()
    }

    const ODD_LENGTHS: [usize; 9] = [0, 1, 3, 7, 15, 17, 31, 33, 1003];

    struct Exp<'a>(&'a [f32], &'a mut [f32]);
    impl WithSimd for Exp<'_> {
        type Output = ();
        fn with_simd<S: Simd>(self, s: S) {
            map_lanes!(s, self.0, self.1, |v| exp_v(s, v));
        }
    }

    #[test]
    fn exp_matches_f64_at_every_level() {
        let x: Vec<f32> = inputs(1003)
            .into_iter()
            .map(|v| v * 8.0)
            .chain([-87.0, -80.0, -20.5, 0.0, 30.25, 80.0, 88.0])
            .collect();
        for isa in isas() {
            let mut y = vec![0.0; x.len()];
            isa.run(Exp(&x, &mut y));
            for (&x, &y) in x.iter().zip(&y) {
                let want = (x as f64).exp();
                let rel = (y as f64 - want).abs() / want;
                assert!(
                    rel <= 4e-7,
                    "{:?}: exp({x}) = {y}, want {want}",
                    isa.level()
                );
            }
        }
    }

    #[test]
    fn gelu_and_its_derivative_match_f64_at_every_level_and_length() {
        for isa in isas() {
            for n in ODD_LENGTHS {
                let u = inputs(n);
                let mut a = vec![0.0; n];
                gelu_on(isa, &u, &mut a);
                let mut g = vec![1.5; n];
                gelu_backward_on(isa, &u, &mut g);
                for ((&x, &y), &d) in u.iter().zip(&a).zip(&g) {
                    let x64 = x as f64;
                    let cdf = 0.5 * (1.0 + erf_f64(x64 / std::f64::consts::SQRT_2));
                    let want = x64 * cdf;
                    let want_d = 1.5
                        * (cdf
                            + x64 * (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt());
                    let l = isa.level();
                    assert!(
                        (y as f64 - want).abs() < 1e-6,
                        "{l} n {n}: gelu({x}) = {y}, want {want}"
                    );
                    assert!(
                        (d as f64 - want_d).abs() < 2e-6,
                        "{l} n {n}: gelu'({x}) = {d}, want {want_d}"
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_rows_match_f64_at_every_level_and_length() {
        for isa in isas() {
            for n in ODD_LENGTHS.into_iter().filter(|&n| n > 0) {
                let mut row: Vec<f32> =
                    (0..n).map(|i| ((i * 7) % 11) as f32 * 0.9 - 30.0).collect();
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let e: Vec<f64> = row.iter().map(|&x| ((x as f64 - m) * 0.5).exp()).collect();
                let sum: f64 = e.iter().sum();
                isa.run(Softmax(&mut row, 0.5));
                for (g, w) in row.iter().zip(&e) {
                    let w = w / sum;
                    assert!(
                        (*g as f64 - w).abs() < 1e-6,
                        "{} n {n}: {g} vs {w}",
                        isa.level()
                    );
                }
            }
        }
    }

    #[test]
    fn norm_rows_and_their_backward_match_f64_at_every_level_and_length() {
        for isa in isas() {
            for d in ODD_LENGTHS.into_iter().filter(|&n| n > 0) {
                let x: Vec<f32> = (0..d)
                    .map(|i| ((i * 13) % 17) as f32 * 0.31 + 2.0)
                    .collect();
                let g: Vec<f32> = (0..d).map(|i| 1.0 + (i % 5) as f32 * 0.1).collect();
                let b: Vec<f32> = (0..d).map(|i| (i % 3) as f32 * 0.2 - 0.2).collect();
                let dy: Vec<f32> = (0..d).map(|i| ((i * 5) % 7) as f32 * 0.3 - 0.9).collect();
                let eps = 1e-5;
                let (mut y, mut xh) = (vec![0.0; d], vec![0.0; d]);
                let rstd = isa.run(NormRow {
                    x: &x,
                    g: &g,
                    b: &b,
                    eps,
                    y: &mut y,
                    xhat: &mut xh,
                });
                let mut dx = vec![0.25; d];
                isa.run(NormRowBackward {
                    dy: &dy,
                    xhat: &xh,
                    g: &g,
                    rstd,
                    dx: &mut dx,
                });
                let (mut dg, mut db) = (vec![1.0; d], vec![-1.0; d]);
                isa.run(NormParamGrads {
                    dy: &dy,
                    xhat: &xh,
                    dg: &mut dg,
                    db: &mut db,
                });
                // f64 reference
                let n = d as f64;
                let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                let mean = x64.iter().sum::<f64>() / n;
                let var = x64.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let r = 1.0 / (var + eps as f64).sqrt();
                let h: Vec<f64> = x64.iter().map(|v| (v - mean) * r).collect();
                let t: Vec<f64> = dy
                    .iter()
                    .zip(&g)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .collect();
                let c1 = t.iter().sum::<f64>() / n;
                let c2 = t.iter().zip(&h).map(|(a, b)| a * b).sum::<f64>() / n;
                let l = isa.level();
                assert!((rstd as f64 - r).abs() <= 1e-5 * r, "{l} d {d}: rstd");
                for i in 0..d {
                    let want_y = h[i] * g[i] as f64 + b[i] as f64;
                    assert!((y[i] as f64 - want_y).abs() < 1e-5, "{l} d {d}: y[{i}]");
                    let want_dx = 0.25 + r * (t[i] - c1 - h[i] * c2);
                    assert!(
                        (dx[i] as f64 - want_dx).abs() < 1e-4,
                        "{l} d {d}: dx[{i}] {} vs {want_dx}",
                        dx[i]
                    );
                    assert!((dg[i] as f64 - (1.0 + dy[i] as f64 * h[i])).abs() < 1e-5);
                    assert!((db[i] as f64 - (-1.0 + dy[i] as f64)).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn adamw_matches_f64_at_every_level_and_length() {
        let c = AdamWStep {
            clip: 0.5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decay: 1e-3 * 0.05,
            step_size: 1e-3 / (1.0 - 0.9f32.powi(3)),
            bc2_sqrt: (1.0 - 0.999f32.powi(3)).sqrt(),
        };
        for isa in isas() {
            for n in ODD_LENGTHS {
                let w0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
                let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 0.1).collect();
                let m0: Vec<f32> = (0..n).map(|i| (i % 4) as f32 * 0.01).collect();
                let v0: Vec<f32> = (0..n).map(|i| (i % 3) as f32 * 0.001).collect();
                let (mut w, mut m, mut v) = (w0.clone(), m0.clone(), v0.clone());
                isa.run(AdamW {
                    w: &mut w,
                    m: &mut m,
                    v: &mut v,
                    g: &g,
                    c,
                });
                for i in 0..n {
                    let gi = g[i] as f64 * c.clip as f64;
                    // (1 − β) as the f32 code rounds it
                    let (nb1, nb2) = ((1.0 - c.beta1) as f64, (1.0 - c.beta2) as f64);
                    let mi = c.beta1 as f64 * m0[i] as f64 + nb1 * gi;
                    let vi = c.beta2 as f64 * v0[i] as f64 + nb2 * gi * gi;
                    let wi = w0[i] as f64 * (1.0 - c.decay as f64)
                        - c.step_size as f64 * mi / (vi.sqrt() / c.bc2_sqrt as f64 + 1e-8);
                    let l = isa.level();
                    assert!((m[i] as f64 - mi).abs() < 1e-7, "{l} n {n}: m[{i}]");
                    assert!((v[i] as f64 - vi).abs() < 1e-8, "{l} n {n}: v[{i}]");
                    let tol = 1e-6 * wi.abs().max(1.0);
                    assert!(
                        (w[i] as f64 - wi).abs() < tol,
                        "{l} n {n}: w[{i}] {} vs {wi}",
                        w[i]
                    );
                }
            }
        }
    }

    /// erf in f64 by its Taylor series (exact to ~1e-12 on |x| < 5.5).
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 5.5 {
            return x.signum();
        }
        // erf(x) = 2/sqrt(pi) * exp(-x²) * Σ 2ⁿ x^(2n+1) / (1·3·…·(2n+1))
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= 2.0 * x * x / (2 * n + 1) as f64;
            sum += term;
            if term.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }
}
