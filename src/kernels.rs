//! Fused CPU kernels with backward, for f32 tensors: layer norm (with its
//! affine part), bias add (column-sum backward), scaled softmax over the
//! last dimension, exact GELU, multi-head attention (`attention.rs`) and
//! the linear layer (`linear.rs`).
//! Each forward is a candle custom op whose `bwd` calls a second fused
//! kernel, so autograd flows through them (unlike candle's fast
//! `LayerNorm` / `softmax_last_dim`). Rows are split across threads only
//! when the tensor is large enough to pay for the dispatch.
//!
//! A kernel on contiguous inputs implements [`Kernel`] (its name, its
//! forward on `f32` slices, its backward); [`Fused`] turns it into candle's
//! `CustomOp1` / `CustomOp2` / `CustomOp3`, so the storage plumbing is
//! written once. The linear layer, which reads strided inputs, implements
//! `CustomOp3` itself.

mod attention;
mod linear;
pub mod simd;
pub mod vecmath;

pub use attention::attention;
pub use linear::linear;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// A fused f32 kernel on `N` contiguous inputs: the part of a candle
/// custom op that differs from one op to the next.
trait Kernel<const N: usize>: Send + Sync {
    /// The op's name, in candle's graph and in error messages.
    const NAME: &'static str;

    /// The output and its shape, from the inputs' data and layouts.
    fn fwd(&self, x: [&[f32]; N], l: [&Layout; N]) -> Result<(Vec<f32>, Shape)>;

    /// The inputs' gradients, from the inputs, the output and its gradient;
    /// a kernel only applied without backward keeps this default.
    fn bwd(&self, _x: [&Tensor; N], _res: &Tensor, _grad: &Tensor) -> Result<[Option<Tensor>; N]> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`Kernel`] as a candle custom op of its arity: the inputs checked to
/// be contiguous f32 CPU storage, the output wrapped back.
struct Fused<K>(K);

impl<K: Kernel<1>> CustomOp1 for Fused<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = self.0.fwd([slice(s, l, K::NAME)?], [l])?;
        Ok((CpuStorage::F32(out), shape))
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [dx] = self.0.bwd([x], res, grad)?;
        Ok(dx)
    }
}

impl<K: Kernel<2>> CustomOp2 for Fused<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = [slice(s1, l1, K::NAME)?, slice(s2, l2, K::NAME)?];
        let (out, shape) = self.0.fwd(x, [l1, l2])?;
        Ok((CpuStorage::F32(out), shape))
    }
    fn bwd(
        &self,
        x1: &Tensor,
        x2: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [d1, d2] = self.0.bwd([x1, x2], res, grad)?;
        Ok((d1, d2))
    }
}

impl<K: Kernel<3>> CustomOp3 for Fused<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = [
            slice(s1, l1, K::NAME)?,
            slice(s2, l2, K::NAME)?,
            slice(s3, l3, K::NAME)?,
        ];
        let (out, shape) = self.0.fwd(x, [l1, l2, l3])?;
        Ok((CpuStorage::F32(out), shape))
    }
    fn bwd(
        &self,
        x1: &Tensor,
        x2: &Tensor,
        x3: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [d1, d2, d3] = self.0.bwd([x1, x2, x3], res, grad)?;
        Ok((d1, d2, d3))
    }
}

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

/// `γ · (x − mean) / sqrt(var + eps) + β` over the last dimension.
struct LayerNorm {
    eps: f32,
}
/// `dx = rstd · (gγ − mean(gγ) − x̂ · mean(gγ · x̂))` from `(x, g, γ)`.
struct LayerNormBwdX {
    eps: f32,
}
/// `[Σ g · x̂, Σ g]` over all rows, shape `[2, d]`, from `(x, g)`.
struct LayerNormBwdParams {
    eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

impl Kernel<3> for LayerNorm {
    const NAME: &'static str = "vitnas-layer-norm";
    fn fwd(
        &self,
        [x, gamma, beta]: [&[f32]; 3],
        [l1, ..]: [&Layout; 3],
    ) -> Result<(Vec<f32>, Shape)> {
        let d = last_dim(l1);
        if gamma.len() != d || beta.len() != d {
            bail!(
                "{}: gamma/beta have {}/{} entries for rows of {d}",
                Self::NAME,
                gamma.len(),
                beta.len()
            );
        }
        let out = map_rows(x.len(), d, |r, o| {
            let xr = &x[r * d..(r + 1) * d];
            let (mean, rstd) = row_stats(xr, self.eps);
            for (((o, v), g), b) in o.iter_mut().zip(xr).zip(gamma).zip(beta) {
                *o = (v - mean) * rstd * g + b;
            }
        });
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        [x, gamma, _]: [&Tensor; 3],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let g = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(&g, gamma, &Fused(LayerNormBwdX { eps: self.eps }))?;
        let p = x.apply_op2_no_bwd(&g, &Fused(LayerNormBwdParams { eps: self.eps }))?;
        Ok([Some(dx), Some(p.get(0)?), Some(p.get(1)?)])
    }
}

impl Kernel<3> for LayerNormBwdX {
    const NAME: &'static str = "vitnas-layer-norm-bwd-x";
    fn fwd(&self, [x, g, gamma]: [&[f32]; 3], [l1, ..]: [&Layout; 3]) -> Result<(Vec<f32>, Shape)> {
        let d = last_dim(l1);
        let out = map_rows(x.len(), d, |r, o| {
            let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let (mean, rstd) = row_stats(xr, self.eps);
            let (mut sg, mut sgx) = (0f32, 0f32);
            for ((v, gv), ga) in xr.iter().zip(gr).zip(gamma) {
                let gg = gv * ga;
                sg += gg;
                sgx += gg * (v - mean) * rstd;
            }
            let (mg, mgx) = (sg / d as f32, sgx / d as f32);
            for (((o, v), gv), ga) in o.iter_mut().zip(xr).zip(gr).zip(gamma) {
                *o = rstd * (gv * ga - mg - (v - mean) * rstd * mgx);
            }
        });
        Ok((out, l1.shape().clone()))
    }
}

impl Kernel<2> for LayerNormBwdParams {
    const NAME: &'static str = "vitnas-layer-norm-bwd-params";
    fn fwd(&self, [x, g]: [&[f32]; 2], [l1, _]: [&Layout; 2]) -> Result<(Vec<f32>, Shape)> {
        let d = last_dim(l1);
        let rows = x.len() / d.max(1);
        let partial = |r0: usize, r1: usize| {
            let mut acc = vec![0f32; 2 * d];
            for r in r0..r1 {
                let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
                let (mean, rstd) = row_stats(xr, self.eps);
                let (dg, db) = acc.split_at_mut(d);
                for (((a, b), v), gv) in dg.iter_mut().zip(db.iter_mut()).zip(xr).zip(gr) {
                    *a += gv * (v - mean) * rstd;
                    *b += gv;
                }
            }
            acc
        };
        let out = sum_partials(rows, x.len(), 2 * d, partial);
        Ok((out, Shape::from((2, d))))
    }
}

/// Sums `partial(r0, r1)` (a vector of `width`) over row ranges, split in
/// two halves on the thread pool when the input is large.
fn sum_partials(
    rows: usize,
    elems: usize,
    width: usize,
    partial: impl Fn(usize, usize) -> Vec<f32> + Sync,
) -> Vec<f32> {
    if elems < PAR_MIN_ELEMS || rows < 2 {
        return partial(0, rows);
    }
    let threads = rayon::current_num_threads().clamp(1, rows);
    let chunk = rows.div_ceil(threads);
    let parts: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| partial((t * chunk).min(rows), ((t + 1) * chunk).min(rows)))
        .collect();
    let mut out = vec![0f32; width];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Layer norm over the last dimension with `gamma` and `beta`, differentiable
/// in all three.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        Fused(LayerNorm { eps: eps as f32 }),
    )
}

// ----------------------------------------------------------------- bias add

/// `x + b` with `b` broadcast over the leading dimensions of `x`
/// (`b`'s shape is `x`'s trailing dimensions, flattened).
struct BiasAdd;
/// Column sums of `g` viewed as `[rows, n]`.
struct ColumnSum {
    n: usize,
}

impl Kernel<2> for BiasAdd {
    const NAME: &'static str = "vitnas-bias-add";
    fn fwd(&self, [x, b]: [&[f32]; 2], [l1, _]: [&Layout; 2]) -> Result<(Vec<f32>, Shape)> {
        let n = b.len();
        if n == 0 || x.len() % n != 0 {
            bail!(
                "{}: bias of {n} does not tile an input of {}",
                Self::NAME,
                x.len()
            );
        }
        let out = map_rows(x.len(), n, |r, o| {
            for ((o, v), bv) in o.iter_mut().zip(&x[r * n..(r + 1) * n]).zip(b) {
                *o = v + bv;
            }
        });
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        [_, b]: [&Tensor; 2],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let db = column_sum(&grad.contiguous()?, b.elem_count())?;
        Ok([Some(grad.clone()), Some(db.reshape(b.shape())?)])
    }
}

impl Kernel<1> for ColumnSum {
    const NAME: &'static str = "vitnas-column-sum";
    fn fwd(&self, [g]: [&[f32]; 1], _: [&Layout; 1]) -> Result<(Vec<f32>, Shape)> {
        let n = self.n;
        let rows = g.len() / n.max(1);
        let out = sum_partials(rows, g.len(), n, |r0, r1| {
            let mut acc = vec![0f32; n];
            for r in r0..r1 {
                for (a, v) in acc.iter_mut().zip(&g[r * n..(r + 1) * n]) {
                    *a += v;
                }
            }
            acc
        });
        Ok((out, Shape::from(n)))
    }
}

/// Column sums `[n]` of a contiguous `g` viewed as `[rows, n]` (a bias
/// gradient); no backward.
fn column_sum(g: &Tensor, n: usize) -> Result<Tensor> {
    g.apply_op1_no_bwd(&Fused(ColumnSum { n }))
}

/// `x + b`, `b` broadcast over `x`'s leading dimensions; differentiable, with
/// the bias gradient a direct column sum.
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, Fused(BiasAdd))
}

// ------------------------------------------------------------------ softmax

/// `softmax(scale · x)` over the last dimension.
struct Softmax {
    scale: f32,
}
/// `scale · y · (g − Σ g·y)` from `(y, g)`.
struct SoftmaxBwd {
    scale: f32,
}

impl Kernel<1> for Softmax {
    const NAME: &'static str = "vitnas-softmax";
    fn fwd(&self, [x]: [&[f32]; 1], [l]: [&Layout; 1]) -> Result<(Vec<f32>, Shape)> {
        let d = last_dim(l);
        let out = map_rows(x.len(), d, |r, o| {
            o.copy_from_slice(&x[r * d..(r + 1) * d]);
            vecmath::softmax_row(o, self.scale);
        });
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _: [&Tensor; 1], res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 1]> {
        let bwd = Fused(SoftmaxBwd { scale: self.scale });
        Ok([Some(res.apply_op2_no_bwd(&grad.contiguous()?, &bwd)?)])
    }
}

impl Kernel<2> for SoftmaxBwd {
    const NAME: &'static str = "vitnas-softmax-bwd";
    fn fwd(&self, [y, g]: [&[f32]; 2], [l1, _]: [&Layout; 2]) -> Result<(Vec<f32>, Shape)> {
        let d = last_dim(l1);
        let out = map_rows(y.len(), d, |r, o| {
            let (yr, gr) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, yv), gv) in o.iter_mut().zip(yr).zip(gr) {
                *o = self.scale * yv * (gv - dot);
            }
        });
        Ok((out, l1.shape().clone()))
    }
}

/// `softmax(scale · x)` over the last dimension (`scale` > 0), differentiable.
pub fn softmax_last_scaled(x: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Fused(Softmax {
        scale: scale as f32,
    }))
}

// --------------------------------------------------------------------- GELU

struct Gelu;
/// `g · (Φ(x) + x φ(x))` from `(x, g)`.
struct GeluBwd;

/// Chunk of an element-wise kernel given to one task.
const CHUNK: usize = 1 << 13;

impl Kernel<1> for Gelu {
    const NAME: &'static str = "vitnas-gelu";
    fn fwd(&self, [x]: [&[f32]; 1], [l]: [&Layout; 1]) -> Result<(Vec<f32>, Shape)> {
        let mut out = vec![0f32; x.len()];
        if x.len() >= PAR_MIN_ELEMS {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(o, x)| vecmath::gelu(x, o));
        } else {
            vecmath::gelu(x, &mut out);
        }
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, [x]: [&Tensor; 1], _res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 1]> {
        Ok([Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &Fused(GeluBwd))?,
        )])
    }
}

impl Kernel<2> for GeluBwd {
    const NAME: &'static str = "vitnas-gelu-bwd";
    fn fwd(&self, [x, g]: [&[f32]; 2], [l1, _]: [&Layout; 2]) -> Result<(Vec<f32>, Shape)> {
        let mut out = g.to_vec();
        if x.len() >= PAR_MIN_ELEMS {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(g, x)| vecmath::gelu_backward(x, g));
        } else {
            vecmath::gelu_backward(x, &mut out);
        }
        Ok((out, l1.shape().clone()))
    }
}

/// Exact (erf) GELU, differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Fused(Gelu))
}
