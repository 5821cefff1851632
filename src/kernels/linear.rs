//! Fused linear layer `y = x · wᵀ + b` with backward. The forward is one
//! `gemm` call into a destination pre-filled with the bias (no separate
//! bias node), reading `x` and `w` through their strides (a supernet's
//! narrowed weight slice needs no copy), and multi-threaded only when the
//! product is large enough to pay for waking the thread pool (candle's
//! matmul always dispatches, which dominated batch-1 inference). The
//! backward returns `dx = g · w`, `dw = gᵀ · x` (candle matmuls) and
//! `db = Σ_rows g`.

use super::column_sum;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};

/// Below this many multiply-adds the forward gemm runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 22;

struct Linear;

fn f32s<'a>(s: &'a CpuStorage, op: &str) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        _ => bail!("{op}: only f32 is supported"),
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "vitnas-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            f32s(sx, self.name())?,
            f32s(sw, self.name())?,
            super::slice(sb, lb, self.name())?,
        );
        let (&[m, k], &[n, k2]) = (lx.dims(), lw.dims()) else {
            bail!(
                "{}: expected 2-D input and weight, found {:?} and {:?}",
                self.name(),
                lx.dims(),
                lw.dims()
            );
        };
        if k != k2 || b.len() != n {
            bail!(
                "{}: input {:?}, weight {:?} and bias of {} do not fit",
                self.name(),
                lx.dims(),
                lw.dims(),
                b.len()
            );
        }
        let mut out = Vec::with_capacity(m * n);
        for _ in 0..m {
            out.extend_from_slice(b);
        }
        if m == 0 || n == 0 || k == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        let (xs, ws) = (lx.stride(), lw.stride());
        let threads = rayon::current_num_threads();
        let par = if m * n * k >= PAR_MIN_MACS && threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        // SAFETY: the strides and offsets come from the layouts of storages
        // holding at least the elements they address; `out` is m × n.
        unsafe {
            gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr().add(lx.start_offset()),
                xs[1] as isize,
                xs[0] as isize,
                w.as_ptr().add(lw.start_offset()),
                ws[0] as isize,
                ws[1] as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.matmul(w)?;
        let dw = grad.t()?.matmul(x)?;
        let db = column_sum(&grad.contiguous()?, b.elem_count())?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `x · wᵀ + b` for 2-D f32 `x` (`[m, k]`), `w` (`[n, k]`, any strides) and
/// `b` (`[n]`); differentiable in all three.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.apply_op3(w, &b.contiguous()?, Linear)
}
