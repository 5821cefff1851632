//! Element-wise math over f32 slices: exp, exact (erf) GELU and its
//! derivative, a scaled row softmax. AVX-512 versions (16 lanes, chosen at
//! run time) with a scalar fallback using the same formulas, so results do
//! not depend on the path beyond rounding.
//!
//! exp: range reduction `x = n ln2 + r`, degree-6 Taylor polynomial on
//! |r| ≤ ln2/2 (relative error ≈ 1e-7), `2ⁿ` applied by `scalef`.
//! erf: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.7;
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

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline]
fn exp_scalar(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    p * (n as i32 as f32).exp2()
}

/// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26).
#[inline]
pub fn erf_scalar(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
    let y = 1.0 - poly * exp_scalar(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

#[inline]
fn gelu_scalar(u: f32) -> f32 {
    0.5 * u * (1.0 + erf_scalar(u * FRAC_1_SQRT_2))
}

#[inline]
fn gelu_grad_scalar(u: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_scalar(u * FRAC_1_SQRT_2));
    cdf + u * INV_SQRT_2PI * exp_scalar(-0.5 * u * u)
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::*;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)),
            _mm512_set1_ps(EXP_MAX),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let c = |v: f32| _mm512_set1_ps(v);
        let mut p = _mm512_fmadd_ps(c(1.0 / 720.0), r, c(1.0 / 120.0));
        p = _mm512_fmadd_ps(p, r, c(1.0 / 24.0));
        p = _mm512_fmadd_ps(p, r, c(1.0 / 6.0));
        p = _mm512_fmadd_ps(p, r, c(0.5));
        p = _mm512_fmadd_ps(p, r, c(1.0));
        p = _mm512_fmadd_ps(p, r, c(1.0));
        _mm512_scalef_ps(p, n)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn erf(x: __m512) -> __m512 {
        let c = |v: f32| _mm512_set1_ps(v);
        let a = _mm512_abs_ps(x);
        let t = _mm512_div_ps(c(1.0), _mm512_fmadd_ps(c(ERF_P), a, c(1.0)));
        let mut poly = _mm512_fmadd_ps(c(ERF_A[4]), t, c(ERF_A[3]));
        poly = _mm512_fmadd_ps(poly, t, c(ERF_A[2]));
        poly = _mm512_fmadd_ps(poly, t, c(ERF_A[1]));
        poly = _mm512_fmadd_ps(poly, t, c(ERF_A[0]));
        poly = _mm512_mul_ps(poly, t);
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
        let y = _mm512_fnmadd_ps(poly, e, c(1.0));
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        _mm512_mask_sub_ps(y, neg, _mm512_setzero_ps(), y)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gelu(u: __m512) -> __m512 {
        let half = _mm512_set1_ps(0.5);
        let cdf = _mm512_fmadd_ps(
            half,
            erf(_mm512_mul_ps(u, _mm512_set1_ps(FRAC_1_SQRT_2))),
            half,
        );
        _mm512_mul_ps(u, cdf)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gelu_grad(u: __m512) -> __m512 {
        let half = _mm512_set1_ps(0.5);
        let cdf = _mm512_fmadd_ps(
            half,
            erf(_mm512_mul_ps(u, _mm512_set1_ps(FRAC_1_SQRT_2))),
            half,
        );
        let pdf = _mm512_mul_ps(
            _mm512_set1_ps(INV_SQRT_2PI),
            exp(_mm512_mul_ps(_mm512_set1_ps(-0.5), _mm512_mul_ps(u, u))),
        );
        _mm512_fmadd_ps(u, pdf, cdf)
    }

    /// Calls `f(i, mask)` for `i = 0, 16, 32, …` below `n`, with `mask`
    /// selecting the lanes of `i..min(i + 16, n)` (all 16 but in the tail).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes(n: usize, mut f: impl FnMut(usize, __mmask16)) {
        let mut i = 0;
        while i < n {
            let left = n - i;
            f(
                i,
                if left >= 16 {
                    0xffff
                } else {
                    ((1u32 << left) - 1) as u16
                },
            );
            i += 16;
        }
    }

    /// Applies `f` to 16 lanes at a time of `x`, writing `out`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn map(x: &[f32], out: &mut [f32], f: impl Fn(__m512) -> __m512) {
        let n = x.len().min(out.len());
        // SAFETY: `lanes` masks every access to [0, n) of both slices.
        lanes(n, |i, m| unsafe {
            let v = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, f(v));
        });
    }

    #[target_feature(enable = "avx512f")]
    pub fn gelu_slice(u: &[f32], a: &mut [f32]) {
        map(u, a, |v| gelu(v));
    }

    #[target_feature(enable = "avx512f")]
    pub fn gelu_bwd_slice(u: &[f32], g: &mut [f32]) {
        let n = u.len().min(g.len());
        // SAFETY: `lanes` masks every access to [0, n) of both slices.
        lanes(n, |i, m| unsafe {
            let v = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
            let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
            _mm512_mask_storeu_ps(g.as_mut_ptr().add(i), m, _mm512_mul_ps(gv, gelu_grad(v)));
        });
    }

    /// `row ← exp(scale · (row − max))`, returning the sum.
    #[target_feature(enable = "avx512f")]
    pub fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
        let n = row.len();
        let (mx, sc) = (_mm512_set1_ps(max), _mm512_set1_ps(scale));
        let mut acc = _mm512_setzero_ps();
        // SAFETY: `lanes` masks every access to [0, n) of `row`.
        lanes(n, |i, m| unsafe {
            let v = _mm512_maskz_loadu_ps(m, row.as_ptr().add(i));
            let e = _mm512_maskz_mov_ps(m, exp(_mm512_mul_ps(_mm512_sub_ps(v, mx), sc)));
            acc = _mm512_add_ps(acc, e);
            _mm512_mask_storeu_ps(row.as_mut_ptr().add(i), m, e);
        });
        _mm512_reduce_add_ps(acc)
    }
}

/// `a = GELU(u)` (exact, erf form), element-wise.
pub fn gelu(u: &[f32], a: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { avx::gelu_slice(u, a) };
    }
    for (o, &v) in a.iter_mut().zip(u) {
        *o = gelu_scalar(v);
    }
}

/// `g ← g · GELU'(u)`, element-wise.
pub fn gelu_backward(u: &[f32], g: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { avx::gelu_bwd_slice(u, g) };
    }
    for (o, &v) in g.iter_mut().zip(u) {
        *o *= gelu_grad_scalar(v);
    }
}

/// `row ← softmax(scale · row)` (`scale` > 0).
pub fn softmax_row(row: &mut [f32], scale: f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_shifted(row, max, scale);
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { avx::exp_shifted(row, max, scale) };
    }
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = exp_scalar((*x - max) * scale);
        sum += *x;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<f32> {
        (0..1003).map(|i| (i as f32 - 501.0) * 0.0173).collect()
    }

    #[test]
    fn exp_matches_std() {
        for x in inputs().into_iter().chain([-80.0, -20.5, 0.0, 30.25, 80.0]) {
            let (got, want) = (exp_scalar(x), x.exp());
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn vector_and_scalar_gelu_agree_with_the_erf_form() {
        let u = inputs();
        let mut a = vec![0.0; u.len()];
        gelu(&u, &mut a);
        let mut g = vec![1.0; u.len()];
        gelu_backward(&u, &mut g);
        for ((&x, &y), &d) in u.iter().zip(&a).zip(&g) {
            let x64 = x as f64;
            let cdf = 0.5 * (1.0 + libm_erf(x64 / std::f64::consts::SQRT_2));
            let want = x64 * cdf;
            let want_d = cdf + x64 * (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!(
                (y as f64 - want).abs() < 1e-6,
                "gelu({x}) = {y}, want {want}"
            );
            assert!(
                (d as f64 - want_d).abs() < 1e-6,
                "gelu'({x}) = {d}, want {want_d}"
            );
            assert!((y - gelu_scalar(x)).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_rows_of_odd_length() {
        for n in [1, 15, 16, 17, 50] {
            let mut row: Vec<f32> = (0..n).map(|i| ((i * 7) % 11) as f32 * 0.9 - 3.0).collect();
            let want: Vec<f64> = {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let e: Vec<f64> = row.iter().map(|&x| ((x as f64 - m) * 0.5).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(|v| v / s).collect()
            };
            softmax_row(&mut row, 0.5);
            for (g, w) in row.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-6, "n {n}: {g} vs {w}");
            }
        }
    }

    /// erf in f64 (W. J. Cody's rational approximations are overkill here:
    /// a 40-term Taylor/continued series is exact to 1e-12 on |x| < 6).
    fn libm_erf(x: f64) -> f64 {
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
