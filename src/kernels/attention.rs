//! Fused multi-head attention with backward. `q`, `k`, `v` and the output
//! are `[batch · T, heads · head_dim]` (the layout the linears produce), so
//! no head split/merge copies are made: each (sequence, head) pair is a
//! strided `T × head_dim` view, multiplied with `gemm` directly, one pair per
//! task on the thread pool. The backward recomputes the attention
//! probabilities instead of storing them (as flash attention does).

use super::{slice, Fused, Kernel};
use candle_core::{bail, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    head_dim: usize,
    t: usize,
    scale: f32,
}

impl Dims {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// A raw pointer shared across tasks that write disjoint regions.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `dst (m×n) = beta · lhs (m×k) · rhs (k×n)`; strides in elements.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    beta: f32,
) {
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        0.0,
        beta,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// `P = softmax(scale · Q Kᵀ)` for one (sequence, head), into `p` (`T × T`).
unsafe fn probs(d: &Dims, q: *const f32, k: *const f32, p: &mut [f32]) {
    let (t, w) = (d.t, d.width() as isize);
    mm(
        t,
        t,
        d.head_dim,
        p.as_mut_ptr(),
        t,
        q,
        w,
        1,
        k,
        1,
        w,
        d.scale,
    );
    for row in p.chunks_mut(t) {
        super::vecmath::softmax_row(row, 1.0);
    }
}

struct Attention(Dims);

struct AttentionBwd {
    d: Dims,
    grad: Tensor,
}

impl Dims {
    fn check(&self, l: &Layout) -> Result<()> {
        if l.dims() != [self.batch * self.t, self.width()] {
            bail!(
                "fused attention: expected [{}, {}], found {:?}",
                self.batch * self.t,
                self.width(),
                l.dims()
            );
        }
        Ok(())
    }

    /// Pointer offset of (sequence b, head h) in a `[batch · T, width]` buffer.
    fn at(&self, b: usize, h: usize) -> usize {
        b * self.t * self.width() + h * self.head_dim
    }
}

impl Kernel<3> for Attention {
    const NAME: &'static str = "vitnas-attention";

    fn fwd(&self, [q, k, v]: [&[f32]; 3], ls: [&Layout; 3]) -> Result<(Vec<f32>, Shape)> {
        let d = self.0;
        for l in ls {
            d.check(l)?;
        }
        let mut out = vec![0f32; q.len()];
        let o = SharedMut(out.as_mut_ptr());
        let w = d.width() as isize;
        (0..d.batch * d.heads).into_par_iter().for_each_init(
            || vec![0f32; d.t * d.t],
            |p, bh| {
                let (b, h) = (bh / d.heads, bh % d.heads);
                let off = d.at(b, h);
                // The whole `SharedMut` (not its raw-pointer field, which is
                // not Send) is captured: edition-2021 closures capture fields.
                #[allow(clippy::redundant_locals)]
                let o = o;
                // SAFETY: offsets stay inside the [batch · T, width] buffers;
                // every task writes its own (sequence, head) block of `out`.
                unsafe {
                    probs(&d, q.as_ptr().add(off), k.as_ptr().add(off), p);
                    mm(
                        d.t,
                        d.head_dim,
                        d.t,
                        o.0.add(off),
                        d.width(),
                        p.as_ptr(),
                        d.t as isize,
                        1,
                        v.as_ptr().add(off),
                        w,
                        1,
                        1.0,
                    );
                }
            },
        );
        Ok((out, ls[0].shape().clone()))
    }

    fn bwd(
        &self,
        [q, k, v]: [&Tensor; 3],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let bwd = Fused(AttentionBwd {
            d: self.0,
            grad: grad.contiguous()?,
        });
        let g = q.apply_op3_no_bwd(k, v, &bwd)?;
        Ok([Some(g.get(0)?), Some(g.get(1)?), Some(g.get(2)?)])
    }
}

impl Kernel<3> for AttentionBwd {
    const NAME: &'static str = "vitnas-attention-bwd";

    fn fwd(&self, [q, k, v]: [&[f32]; 3], _: [&Layout; 3]) -> Result<(Vec<f32>, Shape)> {
        let d = self.d;
        let (gs, gl) = self.grad.storage_and_layout();
        let go = match &*gs {
            candle_core::Storage::Cpu(s) => slice(s, gl, "attention output gradient")?,
            _ => bail!("fused attention: CPU only"),
        };
        let n = q.len();
        let mut out = vec![0f32; 3 * n];
        let o = SharedMut(out.as_mut_ptr());
        let (t, w) = (d.t, d.width() as isize);
        (0..d.batch * d.heads).into_par_iter().for_each_init(
            || (vec![0f32; t * t], vec![0f32; t * t]),
            |(p, dp), bh| {
                let (b, h) = (bh / d.heads, bh % d.heads);
                let off = d.at(b, h);
                // The whole `SharedMut` (not its raw-pointer field, which is
                // not Send) is captured: edition-2021 closures capture fields.
                #[allow(clippy::redundant_locals)]
                let o = o;
                // SAFETY: as in the forward; the three gradients are the
                // thirds of `out`, each task writing its own blocks.
                unsafe {
                    let (qp, kp, vp, gp) = (
                        q.as_ptr().add(off),
                        k.as_ptr().add(off),
                        v.as_ptr().add(off),
                        go.as_ptr().add(off),
                    );
                    probs(&d, qp, kp, p);
                    // dV = Pᵀ dO
                    mm(
                        t,
                        d.head_dim,
                        t,
                        o.0.add(2 * n + off),
                        d.width(),
                        p.as_ptr(),
                        1,
                        t as isize,
                        gp,
                        w,
                        1,
                        1.0,
                    );
                    // dP = dO Vᵀ
                    mm(
                        t,
                        t,
                        d.head_dim,
                        dp.as_mut_ptr(),
                        t,
                        gp,
                        w,
                        1,
                        vp,
                        1,
                        w,
                        1.0,
                    );
                    // dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale, in place in dp
                    for (pr, dr) in p.chunks(t).zip(dp.chunks_mut(t)) {
                        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                        for (x, &pv) in dr.iter_mut().zip(pr) {
                            *x = pv * (*x - dot) * d.scale;
                        }
                    }
                    // dQ = dS K, dK = dSᵀ Q
                    mm(
                        t,
                        d.head_dim,
                        t,
                        o.0.add(off),
                        d.width(),
                        dp.as_ptr(),
                        t as isize,
                        1,
                        kp,
                        w,
                        1,
                        1.0,
                    );
                    mm(
                        t,
                        d.head_dim,
                        t,
                        o.0.add(n + off),
                        d.width(),
                        dp.as_ptr(),
                        1,
                        t as isize,
                        qp,
                        w,
                        1,
                        1.0,
                    );
                }
            },
        );
        Ok((out, Shape::from((3, d.batch * d.t, d.width()))))
    }
}

/// Multi-head attention over `batch` sequences; `q`, `k`, `v`:
/// `[batch · T, heads · head_dim]`. Differentiable in all three.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: usize,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let t = q.dim(0)? / batch.max(1);
    let d = Dims {
        batch,
        heads,
        head_dim,
        t,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, Fused(Attention(d)))
}
