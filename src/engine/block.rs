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
use super::{gelu, gelu_backward, serial, LayerIdx, Pair, Weights};

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
    /// The row of the layer's scaling tables (models with scaling layers).
    pub scale_row: Option<usize>,
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
    /// The attention and MLP branch outputs before scaling (scaling layers).
    branches: Option<(Vec<f32>, Vec<f32>)>,
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

/// The layer's `(attention, mlp)` scales, when it has scaling layers.
fn scales<'a>(w: &'a Weights, li: &LayerIdx, d: &Dims) -> Option<(&'a [f32], &'a [f32])> {
    d.scale_row.map(|row| w.scales(li, row, d.embed))
}

/// Multiplies every `s.len()`-wide row of `y` by `s` element-wise.
fn scale_rows(y: &mut [f32], s: &[f32]) {
    y.chunks_mut(s.len())
        .for_each(|r| r.iter_mut().zip(s).for_each(|(v, s)| *v *= s));
}

/// Backward of `y ⊙ s` for the branch output `branch`: adds
/// `Σ_rows dy ⊙ branch` into `ds` and returns `dy ⊙ s`.
fn scale_backward(dy: &[f32], branch: &[f32], s: &[f32], ds: &mut [f32]) -> Vec<f32> {
    for (g, b) in dy.chunks(s.len()).zip(branch.chunks(s.len())) {
        ds.iter_mut()
            .zip(g.iter().zip(b))
            .for_each(|(d, (g, b))| *d += g * b);
    }
    let mut dx = dy.to_vec();
    scale_rows(&mut dx, s);
    dx
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
    let scales = scales(w, li, d);
    let attn_branch = scales.map(|(sa, _)| {
        let b = xr.clone();
        scale_rows(&mut xr, sa);
        b
    });
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
    let branches = scales.zip(attn_branch).map(|((_, sm), ab)| {
        let b = out.clone();
        scale_rows(&mut out, sm);
        (ab, b)
    });
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
        branches,
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
    let scales = scales(w, li, d);
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
            if let Some((sa, _)) = scales {
                scale_rows(&mut xr, sa);
            }
            add_into(&mut xr, x);
            let h = norm::forward(&xr, e, &w.data[li.ln2.0], &w.data[li.ln2.1], d.eps).y;
            let u = blas::forward(&h, w1, b1);
            let mut a = vec![0f32; u.len()];
            gelu(&u, &mut a);
            blas::forward_into(&a, w2, b2, out);
            if let Some((_, sm)) = scales {
                scale_rows(out, sm);
            }
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
    // Scaling layers: the gradients of the scales, and those of the
    // branch outputs before scaling.
    let scales = scales(w, li, d).zip(tape.branches.as_ref());
    let row = d.scale_row.unwrap_or(0);
    let table = |t: Option<Pair>, mlp: bool| {
        let t = t.expect("a scaled layer has tables");
        let t = if mlp { t.1 } else { t.0 };
        (t, row * w.row_len(t))
    };
    // MLP
    let dm = scales.map(|((_, sm), (_, bm))| {
        let (t, at) = table(li.scaling, true);
        scale_backward(dout, bm, sm, &mut grads[t][at..][..e])
    });
    let dm = dm.as_deref().unwrap_or(dout);
    let (w2, _) = lin(w, li.fc2, e, d.mlp);
    let (dw, db) = pair(grads, li.fc2);
    blas::backward_params(dm, &tape.a, w2, dw, db);
    let mut du = vec![0f32; m_rows * d.mlp];
    blas::backward_input(dm, w2, &mut du, false);
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
    let da = scales.map(|((sa, _), (ba, _))| {
        let (t, at) = table(li.scaling, false);
        scale_backward(&dxr, ba, sa, &mut grads[t][at..][..e])
    });
    let da = da.as_deref().unwrap_or(&dxr);
    let (wo, _) = lin(w, li.output, e, qd);
    let (dw, db) = pair(grads, li.output);
    blas::backward_params(da, &tape.ctx, wo, dw, db);
    let mut dctx = vec![0f32; m_rows * qd];
    blas::backward_input(da, wo, &mut dctx, false);
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
