//! Multi-head attention on `[rows, heads · head_dim]` buffers, one task per
//! (sequence, head): scores, softmax and weighted sum forward; the
//! probabilities are kept for the backward.
//!
//! Queries may be fewer than keys: `tq` query rows per sequence against `t`
//! key/value rows (`tq = 1` when only the class token is needed).

use super::blas::mm;
use crate::kernels::vecmath;
use rayon::prelude::*;

#[derive(Clone, Copy)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Key / value rows per sequence.
    pub t: usize,
    /// Query rows per sequence.
    pub tq: usize,
}

impl Dims {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
    fn tasks(&self) -> usize {
        self.batch * self.heads
    }
    /// Offset of (sequence b, head h) in a buffer with `rows` rows per sequence.
    fn at(&self, b: usize, h: usize, rows: usize) -> usize {
        b * rows * self.width() + h * self.head_dim
    }
    fn parallel(&self) -> bool {
        self.tasks() > 1 && super::par_ok(self.tasks() * self.tq * self.t * self.head_dim, 1 << 18)
    }
}

/// A raw pointer shared by tasks that write disjoint regions.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

fn for_each_task(d: &Dims, f: impl Fn(usize, usize) + Sync + Send) {
    if d.parallel() {
        (0..d.tasks())
            .into_par_iter()
            .for_each(|i| f(i / d.heads, i % d.heads));
    } else {
        (0..d.tasks()).for_each(|i| f(i / d.heads, i % d.heads));
    }
}

/// Context `[batch · tq, width]` and probabilities `[batch, heads, tq, t]`.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], d: Dims) -> (Vec<f32>, Vec<f32>) {
    let w = d.width();
    assert!(q.len() == d.batch * d.tq * w && k.len() == d.batch * d.t * w && v.len() == k.len());
    let mut ctx = vec![0f32; q.len()];
    let mut probs = vec![0f32; d.tasks() * d.tq * d.t];
    let (cp, pp) = (Shared(ctx.as_mut_ptr()), Shared(probs.as_mut_ptr()));
    let scale = d.scale();
    for_each_task(&d, |b, h| {
        let (cp, pp) = (cp, pp);
        let i = b * d.heads + h;
        // SAFETY: task (b, h) writes only its probability block and the
        // head-h columns of sequence b's context rows; reads stay in bounds.
        unsafe {
            let p = std::slice::from_raw_parts_mut(pp.0.add(i * d.tq * d.t), d.tq * d.t);
            let (qp, kp, vp) = (
                q.as_ptr().add(d.at(b, h, d.tq)),
                k.as_ptr().add(d.at(b, h, d.t)),
                v.as_ptr().add(d.at(b, h, d.t)),
            );
            mm(
                d.tq,
                d.t,
                d.head_dim,
                p.as_mut_ptr(),
                d.t,
                false,
                qp,
                w,
                1,
                kp,
                1,
                w,
                false,
            );
            for row in p.chunks_mut(d.t) {
                vecmath::softmax_row(row, scale);
            }
            mm(
                d.tq,
                d.head_dim,
                d.t,
                cp.0.add(d.at(b, h, d.tq)),
                w,
                false,
                p.as_ptr(),
                d.t,
                1,
                vp,
                w,
                1,
                false,
            );
        }
    });
    (ctx, probs)
}

/// `(dq, dk, dv)` from the context gradient.
pub fn backward(
    dctx: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = d.width();
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    let (dqp, dkp, dvp) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    let scale = d.scale();
    for_each_task(&d, |b, h| {
        let (dqp, dkp, dvp) = (dqp, dkp, dvp);
        let i = b * d.heads + h;
        let p = &probs[i * d.tq * d.t..(i + 1) * d.tq * d.t];
        let mut ds = vec![0f32; d.tq * d.t];
        let (oq, okv) = (d.at(b, h, d.tq), d.at(b, h, d.t));
        // SAFETY: task (b, h) writes only the head-h columns of sequence b's
        // rows of dq, dk, dv; reads stay in bounds.
        unsafe {
            let go = dctx.as_ptr().add(oq);
            // dP = dO · Vᵀ
            mm(
                d.tq,
                d.t,
                d.head_dim,
                ds.as_mut_ptr(),
                d.t,
                false,
                go,
                w,
                1,
                v.as_ptr().add(okv),
                1,
                w,
                false,
            );
            // dV = Pᵀ · dO
            mm(
                d.t,
                d.head_dim,
                d.tq,
                dvp.0.add(okv),
                w,
                false,
                p.as_ptr(),
                1,
                d.t,
                go,
                w,
                1,
                false,
            );
            // dS = scale · P ⊙ (dP − Σ_j dP·P)
            for (dsr, pr) in ds.chunks_mut(d.t).zip(p.chunks(d.t)) {
                let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                for (x, pv) in dsr.iter_mut().zip(pr) {
                    *x = scale * pv * (*x - dot);
                }
            }
            // dQ = dS · K, dK = dSᵀ · Q
            mm(
                d.tq,
                d.head_dim,
                d.t,
                dqp.0.add(oq),
                w,
                false,
                ds.as_ptr(),
                d.t,
                1,
                k.as_ptr().add(okv),
                w,
                1,
                false,
            );
            mm(
                d.t,
                d.head_dim,
                d.tq,
                dkp.0.add(okv),
                w,
                false,
                ds.as_ptr(),
                1,
                d.t,
                q.as_ptr().add(oq),
                w,
                1,
                false,
            );
        }
    });
    (dq, dk, dv)
}
