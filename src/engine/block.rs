//! One pre-norm transformer block (Hugging Face ViT layout): forward
//! keeping its activations, backward adding parameter gradients in place.
//!
//! With `cls_only` (the last block of a classifier) only the class-token
//! rows leave the block: keys and values are computed for every token, but
//! queries, the attention output, the MLP and the residuals for the class
//! token alone, which gives the same logits for a fraction of the work.

use super::attention;
use super::blas::{self, W};

use super::norm::{self, Normed};
use super::{gelu, gelu_backward, serial, LayerIdx, Weights};

#[derive(Clone, Copy)]
pub struct Dims {
    pub batch: usize,
    /// Tokens per sequence.
    pub t: usize,
    pub embed: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp: usize,
    pub eps: f32,
    pub cls_only: bool,
}

impl Dims {
    fn attention(&self) -> attention::Dims {
        attention::Dims {
            batch: self.batch,
            heads: self.heads,
            head_dim: self.head_dim,
            t: self.t,
            tq: if self.cls_only { 1 } else { self.t },
        }
    }
    fn qd(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// What the backward needs of a block's forward.
pub struct Tape {
    ln1: Normed,
    /// The normalised class-token rows (queries' input) when `cls_only`.
    hq: Option<Vec<f32>>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    ln2: Normed,
    u: Vec<f32>,
    a: Vec<f32>,
}

/// The linear layer `(weight, bias)` at `i`, sliced to `out × inp`.
fn lin(w: &Weights, (wi, bi): (usize, usize), out: usize, inp: usize) -> (W<'_>, &[f32]) {
    (w.mat(wi, out, inp), &w.data[bi][..out])
}

/// Rows `0, t, 2t, …` of a `width`-wide row-major matrix.
pub fn gather_cls(x: &[f32], width: usize, t: usize) -> Vec<f32> {
    x.chunks(width * t)
        .flat_map(|s| &s[..width])
        .copied()
        .collect()
}

/// Adds row `b` of `src` to row `b · t` of `dst`.
pub fn scatter_cls_add(src: &[f32], width: usize, t: usize, dst: &mut [f32]) {
    for (s, d) in src.chunks(width).zip(dst.chunks_mut(width * t)) {
        for (d, s) in d[..width].iter_mut().zip(s) {
            *d += s;
        }
    }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// The block on `x` (`[batch · t, embed]`); returns its output
/// (`[batch · t, embed]`, or `[batch, embed]` with `cls_only`).
pub fn forward(x: &[f32], w: &Weights, li: &LayerIdx, d: &Dims) -> (Vec<f32>, Tape) {
    let (e, qd) = (d.embed, d.qd());
    let ln1 = norm::forward(x, e, &w.data[li.ln1.0], &w.data[li.ln1.1], d.eps);
    let (wk, bk) = lin(w, li.key, qd, e);
    let (wv, bv) = lin(w, li.value, qd, e);
    let (wq, bq) = lin(w, li.query, qd, e);
    let k = blas::forward(&ln1.y, wk, bk);
    let v = blas::forward(&ln1.y, wv, bv);
    let hq = d.cls_only.then(|| gather_cls(&ln1.y, e, d.t));
    let q = blas::forward(hq.as_deref().unwrap_or(&ln1.y), wq, bq);
    let (ctx, probs) = attention::forward(&q, &k, &v, d.attention());
    let (wo, bo) = lin(w, li.output, e, qd);
    let mut xr = blas::forward(&ctx, wo, bo);
    if d.cls_only {
        add_into(&mut xr, &gather_cls(x, e, d.t));
    } else {
        add_into(&mut xr, x);
    }
    let ln2 = norm::forward(&xr, e, &w.data[li.ln2.0], &w.data[li.ln2.1], d.eps);
    let (w1, b1) = lin(w, li.fc1, d.mlp, e);
    let (w2, b2) = lin(w, li.fc2, e, d.mlp);
    let u = blas::forward(&ln2.y, w1, b1);
    let mut a = vec![0f32; u.len()];
    gelu(&u, &mut a);
    let mut out = blas::forward(&a, w2, b2);
    add_into(&mut out, &xr);
    let tape = Tape {
        ln1,
        hq,
        q,
        k,
        v,
        probs,
        ctx,
        ln2,
        u,
        a,
    };
    (out, tape)
}

/// Inference of one sequence (`batch = 1`, not `cls_only`) with its token
/// rows split in two halves, one per thread: norms and projections of each
/// half, then attention of each half's queries over all keys, attention
/// output and MLP. Two fork-joins per block instead of one per op; call it
/// inside the thread pool so the joins stay on its workers.
pub fn forward_split(x: &[f32], w: &Weights, li: &LayerIdx, d: &Dims) -> Vec<f32> {
    assert!(d.batch == 1 && !d.cls_only);
    let (e, qd, t) = (d.embed, d.qd(), d.t);
    let half = t / 2;
    let (wk, bk) = lin(w, li.key, qd, e);
    let (wv, bv) = lin(w, li.value, qd, e);
    let (wq, bq) = lin(w, li.query, qd, e);
    let (mut q, mut k, mut v) = (vec![0f32; t * qd], vec![0f32; t * qd], vec![0f32; t * qd]);
    {
        let project = |x: &[f32], q: &mut [f32], k: &mut [f32], v: &mut [f32]| {
            serial(|| {
                let h = norm::forward(x, e, &w.data[li.ln1.0], &w.data[li.ln1.1], d.eps).y;
                blas::forward_into(&h, wq, bq, q);
                blas::forward_into(&h, wk, bk, k);
                blas::forward_into(&h, wv, bv, v);
            })
        };
        let (x0, x1) = x.split_at(half * e);
        let (q0, q1) = q.split_at_mut(half * qd);
        let (k0, k1) = k.split_at_mut(half * qd);
        let (v0, v1) = v.split_at_mut(half * qd);
        rayon::join(|| project(x0, q0, k0, v0), || project(x1, q1, k1, v1));
    }
    let (wo, bo) = lin(w, li.output, e, qd);
    let (w1, b1) = lin(w, li.fc1, d.mlp, e);
    let (w2, b2) = lin(w, li.fc2, e, d.mlp);
    let rest = |x: &[f32], q: &[f32], out: &mut [f32]| {
        serial(|| {
            let ad = attention::Dims {
                batch: 1,
                heads: d.heads,
                head_dim: d.head_dim,
                t,
                tq: x.len() / e,
            };
            let (ctx, _) = attention::forward(q, &k, &v, ad);
            let mut xr = blas::forward(&ctx, wo, bo);
            add_into(&mut xr, x);
            let h = norm::forward(&xr, e, &w.data[li.ln2.0], &w.data[li.ln2.1], d.eps).y;
            let u = blas::forward(&h, w1, b1);
            let mut a = vec![0f32; u.len()];
            gelu(&u, &mut a);
            blas::forward_into(&a, w2, b2, out);
            add_into(out, &xr);
        })
    };
    let mut out = vec![0f32; t * e];
    let (x0, x1) = x.split_at(half * e);
    let (q0, q1) = q.split_at(half * qd);
    let (o0, o1) = out.split_at_mut(half * e);
    rayon::join(|| rest(x0, q0, o0), || rest(x1, q1, o1));
    out
}

/// Two distinct gradient buffers at once.
pub(crate) fn pair(g: &mut [Vec<f32>], (i, j): (usize, usize)) -> (&mut [f32], &mut [f32]) {
    assert_ne!(i, j);
    if i < j {
        let (a, b) = g.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = g.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

/// Backward of [`forward`] from `dout` (the gradient of its output): adds
/// the parameter gradients into `grads` and returns `∂L/∂x`.
pub fn backward(
    dout: &[f32],
    w: &Weights,
    li: &LayerIdx,
    d: &Dims,
    tape: &Tape,
    grads: &mut [Vec<f32>],
) -> Vec<f32> {
    let (e, qd, n) = (d.embed, d.qd(), d.batch * d.t);
    let m_rows = dout.len() / e;
    // MLP
    let (w2, _) = lin(w, li.fc2, e, d.mlp);
    let (dw, db) = pair(grads, li.fc2);
    blas::backward_params(dout, &tape.a, w2, dw, db);
    let mut du = vec![0f32; m_rows * d.mlp];
    blas::backward_input(dout, w2, &mut du, false);
    gelu_backward(&tape.u, &mut du);
    let (w1, _) = lin(w, li.fc1, d.mlp, e);
    let (dw, db) = pair(grads, li.fc1);
    blas::backward_params(&du, &tape.ln2.y, w1, dw, db);
    let mut dh = vec![0f32; m_rows * e];
    blas::backward_input(&du, w1, &mut dh, false);
    drop(du);
    let mut dxr = dout.to_vec();
    let (dg, db) = pair(grads, li.ln2);
    norm::backward(&dh, &tape.ln2, e, &w.data[li.ln2.0], &mut dxr, dg, db);
    // attention
    let (wo, _) = lin(w, li.output, e, qd);
    let (dw, db) = pair(grads, li.output);
    blas::backward_params(&dxr, &tape.ctx, wo, dw, db);
    let mut dctx = vec![0f32; m_rows * qd];
    blas::backward_input(&dxr, wo, &mut dctx, false);
    let (dq, dk, dv) =
        attention::backward(&dctx, &tape.q, &tape.k, &tape.v, &tape.probs, d.attention());
    drop(dctx);
    let hq = tape.hq.as_deref().unwrap_or(&tape.ln1.y);
    let (wq, _) = lin(w, li.query, qd, e);
    let (wk, _) = lin(w, li.key, qd, e);
    let (wv, _) = lin(w, li.value, qd, e);
    let (dw, db) = pair(grads, li.query);
    blas::backward_params(&dq, hq, wq, dw, db);
    let (dw, db) = pair(grads, li.key);
    blas::backward_params(&dk, &tape.ln1.y, wk, dw, db);
    let (dw, db) = pair(grads, li.value);
    blas::backward_params(&dv, &tape.ln1.y, wv, dw, db);
    let mut dh1 = vec![0f32; n * e];
    blas::backward_input(&dk, wk, &mut dh1, false);
    blas::backward_input(&dv, wv, &mut dh1, true);
    let mut dx = if d.cls_only {
        let mut dhq = vec![0f32; m_rows * e];
        blas::backward_input(&dq, wq, &mut dhq, false);
        scatter_cls_add(&dhq, e, d.t, &mut dh1);
        let mut dx = vec![0f32; n * e];
        scatter_cls_add(&dxr, e, d.t, &mut dx);
        dx
    } else {
        blas::backward_input(&dq, wq, &mut dh1, true);
        dxr
    };
    let (dg, db) = pair(grads, li.ln1);
    norm::backward(&dh1, &tape.ln1, e, &w.data[li.ln1.0], &mut dx, dg, db);
    dx
}
