//! Fused CPU kernels with backward, for f32 tensors: layer normalisation
//! (without the affine part), softmax over the last dimension, exact GELU.
//! Each forward is a candle `CustomOp1` whose `bwd` calls a second fused
//! kernel, so autograd flows through them (unlike candle's fast
//! `LayerNorm` / `softmax_last_dim`). Rows are split across threads only
//! when the tensor is large enough to pay for the dispatch.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 15;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v,
        _ => bail!("{op}: only f32 is supported"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// Runs `f(row_in.., row_out)` over rows of length `d`, in parallel when large.
fn map_rows(n: usize, d: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    if d == 0 {
        return out;
    }
    if n >= PAR_MIN_ELEMS {
        out.par_chunks_mut(d).enumerate().for_each(|(r, o)| f(r, o));
    } else {
        out.chunks_mut(d).enumerate().for_each(|(r, o)| f(r, o));
    }
    out
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

// ---------------------------------------------------------------- layer norm

/// `(x − mean) / sqrt(var + eps)` over the last dimension.
struct Normalize {
    eps: f32,
}
/// Its gradient: `rstd · (g − mean(g) − x̂ · mean(g · x̂))`, from `(x, g)`.
struct NormalizeBwd {
    eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "vitnas-normalize"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = last_dim(l);
        let out = map_rows(x.len(), d, |r, o| {
            let xr = &x[r * d..(r + 1) * d];
            let (mean, rstd) = row_stats(xr, self.eps);
            for (o, v) in o.iter_mut().zip(xr) {
                *o = (v - mean) * rstd;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &NormalizeBwd { eps: self.eps })?))
    }
}

impl CustomOp2 for NormalizeBwd {
    fn name(&self) -> &'static str {
        "vitnas-normalize-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let d = last_dim(l1);
        let out = map_rows(x.len(), d, |r, o| {
            let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let (mean, rstd) = row_stats(xr, self.eps);
            let (mut sg, mut sgx) = (0f32, 0f32);
            for (v, gv) in xr.iter().zip(gr) {
                sg += gv;
                sgx += gv * (v - mean) * rstd;
            }
            let (mg, mgx) = (sg / d as f32, sgx / d as f32);
            for ((o, v), gv) in o.iter_mut().zip(xr).zip(gr) {
                *o = rstd * (gv - mg - (v - mean) * rstd * mgx);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Layer normalisation over the last dimension, without affine parameters.
pub fn normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Normalize { eps: eps as f32 })
}

// ------------------------------------------------------------------ softmax

struct Softmax;
/// `y · (g − Σ g·y)` from `(y, g)`.
struct SoftmaxBwd;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "vitnas-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = last_dim(l);
        let out = map_rows(x.len(), d, |r, o| {
            let xr = &x[r * d..(r + 1) * d];
            let m = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, v) in o.iter_mut().zip(xr) {
                *o = (v - m).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?))
    }
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "vitnas-softmax-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let d = last_dim(l1);
        let out = map_rows(y.len(), d, |r, o| {
            let (yr, gr) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, yv), gv) in o.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

// --------------------------------------------------------------------- GELU

/// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26).
#[inline]
fn erf(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_73) * t + 0.254_829_6)
            * t
            * (-a * a).exp();
    s * y
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

struct Gelu;
/// `g · (Φ(x) + x φ(x))` from `(x, g)`.
struct GeluBwd;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "vitnas-gelu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let f = |v: f32| 0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2));
        let out: Vec<f32> = if x.len() >= PAR_MIN_ELEMS {
            x.par_iter().map(|&v| f(v)).collect()
        } else {
            x.iter().map(|&v| f(v)).collect()
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwd)?))
    }
}

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "vitnas-gelu-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let f = |v: f32, gv: f32| {
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * (-0.5 * v * v).exp();
            gv * (cdf + v * pdf)
        };
        let out: Vec<f32> = if x.len() >= PAR_MIN_ELEMS {
            x.par_iter().zip(g.par_iter()).map(|(&v, &gv)| f(v, gv)).collect()
        } else {
            x.iter().zip(g).map(|(&v, &gv)| f(v, gv)).collect()
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Exact (erf) GELU, differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}
