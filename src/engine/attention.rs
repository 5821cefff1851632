//! Multi-head attention on `[rows, heads · head_dim]` buffers laid out by a
//! [`Layout`] (sequences of their own lengths), one task per (sequence,
//! head): scores, softmax and weighted sum forward; the probabilities are
//! kept for the backward.
//!
//! Queries may be fewer than keys: `tq` query rows per sequence (the first
//! token alone for a head that reads only it; half the rows when a
//! sequence is split over threads) against all its key rows. A sequence's
//! keys are its rows from `key_from` on; a `uniform` sequence (every token
//! masked) attends with probability 1/len to each of its rows, as the
//! masked softmax of Hugging Face's BERT does there. The backward is the
//! softmax's, whatever the probabilities, so it too matches autograd.

use super::blas::mm;
use super::input::{Layout, Seq};
use crate::kernels::vecmath;
use rayon::prelude::*;

#[derive(Clone, Copy)]
pub struct Dims<'a> {
    pub layout: &'a Layout,
    pub heads: usize,
    pub head_dim: usize,
    /// Query rows per sequence, contiguous in the query buffer; `None`:
    /// every row of the layout is a query.
    pub tq: Option<usize>,
}

/// One (sequence, head) task's view.
struct Task {
    seq: Seq,
    /// First query row, query rows.
    q0: usize,
    tq: usize,
    /// First key row, key rows.
    k0: usize,
    n: usize,
    /// Offset of its probability block (`tq × n`).
    p0: usize,
}

impl Dims<'_> {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
    /// Query rows in all.
    pub fn query_rows(&self) -> usize {
        match self.tq {
            Some(tq) => self.layout.batch() * tq,
            None => self.layout.rows(),
        }
    }
    /// Each sequence's task geometry (shared by its heads) and the size of
    /// the probability buffer.
    fn tasks(&self) -> (Vec<Task>, usize) {
        let mut p0 = 0;
        let tasks = (0..self.layout.batch())
            .map(|b| {
                let seq = self.layout.seq(b);
                let (q0, tq) = match self.tq {
                    Some(tq) => (b * tq, if seq.len > 0 { tq } else { 0 }),
                    None => (seq.start, seq.len),
                };
                let n = seq.len - seq.key_from;
                let t = Task {
                    seq,
                    q0,
                    tq,
                    k0: seq.start + seq.key_from,
                    n,
                    p0,
                };
                p0 += self.heads * tq * n;
                t
            })
            .collect();
        (tasks, p0)
    }
}

/// A raw pointer shared by tasks that write disjoint regions.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

fn for_each_task(d: &Dims, tasks: &[Task], work: usize, f: impl Fn(&Task, usize) + Sync + Send) {
    let count = tasks.len() * d.heads;
    let run = |i: usize| {
        let t = &tasks[i / d.heads];
        if t.tq > 0 && t.n > 0 {
            f(t, i % d.heads)
        }
    };
    if count > 1 && super::par_ok(work, 1 << 18) {
        (0..count).into_par_iter().for_each(run);
    } else {
        (0..count).for_each(run);
    }
}

thread_local! {
    /// One task's probability block when the probabilities are not kept
    /// (inference): reused by every task on this thread, so the memory is
    /// one `tq × n` block per thread instead of `[batch, heads, tq, n]`.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch block of `len` elements (this thread's
/// [`SCRATCH`], or a fresh one if it is in use). Its contents are stale:
/// [`task_forward`] overwrites every element (a product that does not read
/// its destination, or the uniform fill) before reading any.
fn with_scratch(len: usize, f: impl FnOnce(&mut [f32])) {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            if s.len() < len {
                s.resize(len, 0.0);
            }
            f(&mut s[..len])
        }
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// Context `[query rows, width]` and the probabilities (for the backward),
/// or an empty probability buffer when `keep_probs` is false (inference:
/// each (sequence, head) task then computes its block in a per-thread
/// scratch, the same numbers without the `[batch, heads, tq, n]` buffer).
pub fn forward(q: &[f32], k: &[f32], v: &[f32], d: Dims, keep_probs: bool) -> (Vec<f32>, Vec<f32>) {
    let w = d.width();
    let (tasks, plen) = d.tasks();
    assert!(q.len() == d.query_rows() * w && k.len() == d.layout.rows() * w && v.len() == k.len());
    let mut ctx = vec![0f32; q.len()];
    let mut probs = vec![0f32; if keep_probs { plen } else { 0 }];
    let (cp, pp) = (Shared(ctx.as_mut_ptr()), Shared(probs.as_mut_ptr()));
    let (scale, hd) = (d.scale(), d.head_dim);
    for_each_task(&d, &tasks, plen * hd, |t, h| {
        let (cp, pp) = (cp, pp);
        let len = t.tq * t.n;
        if keep_probs {
            // SAFETY: task (sequence, h) owns its probability block.
            let p = unsafe { std::slice::from_raw_parts_mut(pp.0.add(t.p0 + h * len), len) };
            task_forward(q, k, v, &d, t, h, cp, p, scale);
        } else {
            with_scratch(len, |p| task_forward(q, k, v, &d, t, h, cp, p, scale));
        }
    });
    (ctx, probs)
}

/// One (sequence, head) task of [`forward`]: its probabilities into `p`
/// (`tq × n`, every element written before it is read) and its head-`h`
/// columns of the context.
#[allow(clippy::too_many_arguments)]
fn task_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: &Dims,
    t: &Task,
    h: usize,
    cp: Shared,
    p: &mut [f32],
    scale: f32,
) {
    let (w, hd) = (d.width(), d.head_dim);
    // SAFETY: task (sequence, h) writes only `p` and the head-h columns
    // of its query rows of the context; reads stay in bounds (rows from
    // the layout, checked by `forward`).
    unsafe {
        let (qp, kp, vp) = (
            q.as_ptr().add(t.q0 * w + h * hd),
            k.as_ptr().add(t.k0 * w + h * hd),
            v.as_ptr().add(t.k0 * w + h * hd),
        );
        if t.seq.uniform {
            p.fill(1.0 / t.n as f32);
        } else {
            mm(
                t.tq,
                t.n,
                hd,
                p.as_mut_ptr(),
                t.n,
                false,
                qp,
                w,
                1,
                kp,
                1,
                w,
                false,
            );
            for row in p.chunks_mut(t.n) {
                vecmath::softmax_row(row, scale);
            }
        }
        mm(
            t.tq,
            hd,
            t.n,
            cp.0.add(t.q0 * w + h * hd),
            w,
            false,
            p.as_ptr(),
            t.n,
            1,
            vp,
            w,
            1,
            false,
        );
    }
}

/// `(dq, dk, dv)` from the context gradient (rows that are no key get
/// zero `dk`, `dv`).
pub fn backward(
    dctx: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = d.width();
    let (tasks, plen) = d.tasks();
    assert_eq!(probs.len(), plen);
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    let (dqp, dkp, dvp) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    let (scale, hd) = (d.scale(), d.head_dim);
    for_each_task(&d, &tasks, plen * hd, |t, h| {
        let (dqp, dkp, dvp) = (dqp, dkp, dvp);
        let p = &probs[t.p0 + h * t.tq * t.n..][..t.tq * t.n];
        let mut ds = vec![0f32; t.tq * t.n];
        let (oq, okv) = (t.q0 * w + h * hd, t.k0 * w + h * hd);
        // SAFETY: task (sequence, h) writes only the head-h columns of its
        // own rows of dq, dk, dv; reads stay in bounds.
        unsafe {
            let go = dctx.as_ptr().add(oq);
            // dP = dO · Vᵀ
            mm(
                t.tq,
                t.n,
                hd,
                ds.as_mut_ptr(),
                t.n,
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
                t.n,
                hd,
                t.tq,
                dvp.0.add(okv),
                w,
                false,
                p.as_ptr(),
                1,
                t.n,
                go,
                w,
                1,
                false,
            );
            // dS = scale · P ⊙ (dP − Σ_j dP·P)
            for (dsr, pr) in ds.chunks_mut(t.n).zip(p.chunks(t.n)) {
                let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                for (x, pv) in dsr.iter_mut().zip(pr) {
                    *x = scale * pv * (*x - dot);
                }
            }
            // dQ = dS · K, dK = dSᵀ · Q
            mm(
                t.tq,
                hd,
                t.n,
                dqp.0.add(oq),
                w,
                false,
                ds.as_ptr(),
                t.n,
                1,
                k.as_ptr().add(okv),
                w,
                1,
                false,
            );
            mm(
                t.n,
                hd,
                t.tq,
                dkp.0.add(okv),
                w,
                false,
                ds.as_ptr(),
                1,
                t.n,
                q.as_ptr().add(oq),
                w,
                1,
                false,
            );
        }
    });
    (dq, dk, dv)
}
