//! One transformer-encoder block, pre-norm (ViT) or post-norm (BERT), on
//! token rows laid out by a [`Layout`]: forward keeping its activations,
//! backward adding parameter gradients in place.
//!
//! ```text
//! pre-norm:  r = x + A(N1(x));  out = r + M(N2(r))
//! post-norm: r = N1(x + A(x));  out = N2(r + M(r))
//! ```
//! (`A` attention, `M` the MLP, each branch optionally scaled by a row of
//! the layer's scaling tables.) With `first_only` (the last block under a
//! head that reads the first token alone) only the first row of each
//! sequence leaves the block: keys and values are computed for every row,
//! but queries, the attention output, the MLP and the residuals for the
//! first rows alone, which gives the same logits for a fraction of the
//! work.

use super::attention;
use super::blas::{self, W};
use super::input::Layout;
use super::norm::{self, Normed};
use super::{gelu, gelu_backward, serial, LayerIdx, Pair, Weights};

#[derive(Clone, Copy)]
pub struct Dims<'a> {
    pub layout: &'a Layout,
    pub embed: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp: usize,
    pub eps: f32,
    pub post_norm: bool,
    pub first_only: bool,
    /// The row of the layer's scaling tables (models with scaling layers).
    pub scale_row: Option<usize>,
}

impl<'a> Dims<'a> {
    fn attention(&self) -> attention::Dims<'a> {
        attention::Dims {
            layout: self.layout,
            heads: self.heads,
            head_dim: self.head_dim,
            tq: self.first_only.then_some(1),
        }
    }
    fn qd(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// What the backward needs of a block's forward.
pub struct Tape {
    /// The attention's input: the block's input (post-norm) or its first
    /// norm's output (pre-norm, in `norm1`).
    input: Option<Vec<f32>>,
    /// The first rows of the attention's input (queries' input) when
    /// `first_only`.
    hq: Option<Vec<f32>>,
    norm1: Normed,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    /// The MLP's input: `norm2`'s output (pre-norm) or `norm1`'s (post).
    norm2: Normed,
    u: Vec<f32>,
    a: Vec<f32>,
    /// The attention and MLP branch outputs before scaling (scaling layers).
    branches: Option<(Vec<f32>, Vec<f32>)>,
}

impl Tape {
    /// The attention's input, all rows.
    fn attn_input(&self) -> &[f32] {
        self.input.as_deref().unwrap_or(&self.norm1.y)
    }
    /// The MLP's input.
    fn mlp_input(&self, post_norm: bool) -> &[f32] {
        if post_norm {
            &self.norm1.y
        } else {
            &self.norm2.y
        }
    }
}

/// The linear layer `(weight, bias)` at `i`, sliced to `out × inp`.
fn lin(w: &Weights, (wi, bi): (usize, usize), out: usize, inp: usize) -> (W<'_>, &[f32]) {
    (w.mat(wi, out, inp), &w.data[bi][..out])
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

fn layer_norm(x: &[f32], w: &Weights, p: Pair, d: &Dims) -> Normed {
    norm::forward(x, d.embed, &w.data[p.0], &w.data[p.1], d.eps)
}

/// `W2 · gelu(W1 · h)`: its pre-activation and activation, and the output.
fn mlp(h: &[f32], w: &Weights, li: &LayerIdx, d: &Dims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (w1, b1) = lin(w, li.fc1, d.mlp, d.embed);
    let (w2, b2) = lin(w, li.fc2, d.embed, d.mlp);
    let u = blas::forward(h, w1, b1);
    let mut a = vec![0f32; u.len()];
    gelu(&u, &mut a);
    let out = blas::forward(&a, w2, b2);
    (u, a, out)
}

/// The attention branch's activations and output.
struct Attn {
    hq: Option<Vec<f32>>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    /// The output projection (scaled), `[query rows, embed]`.
    out: Vec<f32>,
    /// The output before scaling (scaling layers).
    branch: Option<Vec<f32>>,
}

/// Attention of the rows `h` (`[layout rows, embed]`), output projected
/// and scaled by `sa`. Without `keep` (inference) only `out` is filled:
/// the probabilities are never held for the whole batch, and queries, keys,
/// values and context are freed as soon as they are read.
fn attend(h: &[f32], w: &Weights, li: &LayerIdx, d: &Dims, sa: Option<&[f32]>, keep: bool) -> Attn {
    let (e, qd) = (d.embed, d.qd());
    let (wk, bk) = lin(w, li.key, qd, e);
    let (wv, bv) = lin(w, li.value, qd, e);
    let (wq, bq) = lin(w, li.query, qd, e);
    let k = blas::forward(h, wk, bk);
    let v = blas::forward(h, wv, bv);
    let hq = d.first_only.then(|| d.layout.gather_first(h, e));
    let q = blas::forward(hq.as_deref().unwrap_or(h), wq, bq);
    let (ctx, probs) = attention::forward(&q, &k, &v, d.attention(), keep);
    let (wo, bo) = lin(w, li.output, e, qd);
    if !keep {
        // inference: the projection's output alone leaves
        drop((hq, q, k, v));
        let mut out = blas::forward(&ctx, wo, bo);
        drop(ctx);
        if let Some(sa) = sa {
            scale_rows(&mut out, sa);
        }
        return Attn {
            hq: None,
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            probs,
            ctx: Vec::new(),
            out,
            branch: None,
        };
    }
    let mut out = blas::forward(&ctx, wo, bo);
    let branch = sa.map(|sa| {
        let b = out.clone();
        scale_rows(&mut out, sa);
        b
    });
    Attn {
        hq,
        q,
        k,
        v,
        probs,
        ctx,
        out,
        branch,
    }
}

/// [`mlp`] for inference: its output alone, the pre-activation freed as
/// soon as it is read (the same numbers).
fn mlp_infer(h: &[f32], w: &Weights, li: &LayerIdx, d: &Dims) -> Vec<f32> {
    let (w1, b1) = lin(w, li.fc1, d.mlp, d.embed);
    let (w2, b2) = lin(w, li.fc2, d.embed, d.mlp);
    let u = blas::forward(h, w1, b1);
    let mut a = vec![0f32; u.len()];
    gelu(&u, &mut a);
    drop(u);
    blas::forward(&a, w2, b2)
}

/// [`forward`] for inference: the output alone, each activation freed as
/// soon as the block has read it for the last time (the same numbers as
/// [`forward`], bit for bit).
pub fn forward_infer(x: Vec<f32>, w: &Weights, li: &LayerIdx, d: &Dims) -> Vec<f32> {
    let scales = scales(w, li, d);
    let (sa, sm) = (scales.map(|s| s.0), scales.map(|s| s.1));
    let scale_mlp = |m: &mut Vec<f32>| {
        if let Some(sm) = sm {
            scale_rows(m, sm);
        }
    };
    if d.post_norm {
        let mut r = attend(&x, w, li, d, sa, false).out;
        add_residual(&mut r, &x, d);
        drop(x);
        let n1 = layer_norm(&r, w, li.norm1, d).y;
        drop(r);
        let mut m = mlp_infer(&n1, w, li, d);
        scale_mlp(&mut m);
        add_into(&mut m, &n1);
        drop(n1);
        layer_norm(&m, w, li.norm2, d).y
    } else {
        let n1 = layer_norm(&x, w, li.norm1, d).y;
        let mut r = attend(&n1, w, li, d, sa, false).out;
        drop(n1);
        add_residual(&mut r, &x, d);
        drop(x);
        let n2 = layer_norm(&r, w, li.norm2, d).y;
        let mut m = mlp_infer(&n2, w, li, d);
        drop(n2);
        scale_mlp(&mut m);
        add_into(&mut m, &r);
        m
    }
}

/// Adds the rows of `x` that go on through the block (all, or the first
/// of each sequence) to `r`.
fn add_residual(r: &mut [f32], x: &[f32], d: &Dims) {
    match d.first_only {
        true => add_into(r, &d.layout.gather_first(x, d.embed)),
        false => add_into(r, x),
    }
}

/// The block on `x` (`[layout rows, embed]`, taken by value: post-norm
/// keeps it for the backward); returns its output (`[layout rows,
/// embed]`, or `[batch, embed]` with `first_only`).
pub fn forward(x: Vec<f32>, w: &Weights, li: &LayerIdx, d: &Dims) -> (Vec<f32>, Tape) {
    let scales = scales(w, li, d);
    let (sa, sm) = (scales.map(|s| s.0), scales.map(|s| s.1));
    let scale_mlp = |out: &mut Vec<f32>| {
        sm.map(|sm| {
            let b = out.clone();
            scale_rows(out, sm);
            b
        })
    };
    let (input, norm1, attn, norm2, u, a, out, mlp_branch);
    if d.post_norm {
        attn = attend(&x, w, li, d, sa, true);
        let mut r = attn.out;
        add_residual(&mut r, &x, d);
        norm1 = layer_norm(&r, w, li.norm1, d);
        drop(r);
        let mut m;
        (u, a, m) = mlp(&norm1.y, w, li, d);
        mlp_branch = scale_mlp(&mut m);
        add_into(&mut m, &norm1.y);
        let mut n2 = layer_norm(&m, w, li.norm2, d);
        out = std::mem::take(&mut n2.y);
        norm2 = n2;
        input = Some(x);
    } else {
        norm1 = layer_norm(&x, w, li.norm1, d);
        attn = attend(&norm1.y, w, li, d, sa, true);
        let mut r = attn.out;
        add_residual(&mut r, &x, d);
        drop(x);
        norm2 = layer_norm(&r, w, li.norm2, d);
        let mut m;
        (u, a, m) = mlp(&norm2.y, w, li, d);
        mlp_branch = scale_mlp(&mut m);
        add_into(&mut m, &r);
        out = m;
        input = None;
    }
    let tape = Tape {
        input,
        hq: attn.hq,
        norm1,
        q: attn.q,
        k: attn.k,
        v: attn.v,
        probs: attn.probs,
        ctx: attn.ctx,
        norm2,
        u,
        a,
        branches: attn.branch.zip(mlp_branch),
    };
    (out, tape)
}

/// Inference of one sequence (`batch = 1`, a dense layout) split over two
/// threads by heads and MLP columns (Megatron's tensor parallelism): each
/// thread projects queries, keys and values for its half of the heads,
/// attends with them, and multiplies its columns of the attention output
/// into a partial sum; then each computes its half of the MLP's hidden
/// units and their partial output. The two partial sums are added with the
/// biases, residuals and norms on the calling thread. Each thread reads
/// half of every weight and all token rows: one sequence is few rows, and
/// this way gemm packs each weight once, not once per thread. Two
/// fork-joins per block; call it inside the thread pool so the joins stay
/// on its workers.
pub fn forward_split(x: &[f32], w: &Weights, li: &LayerIdx, d: &Dims) -> Vec<f32> {
    assert!(d.layout.batch() == 1 && d.layout.is_dense());
    let (e, hd, qd) = (d.embed, d.head_dim, d.qd());
    let tq = if d.first_only { 1 } else { d.layout.rows() };
    let scales = scales(w, li, d);
    let n1 = (!d.post_norm).then(|| layer_norm(x, w, li.norm1, d).y);
    let h = n1.as_deref().unwrap_or(x);
    let hq = &h[..tq * e];
    // attention: heads [h0, h1) on one thread, their share of the output
    // projection summed into a [tq, e] partial
    let attend_heads = |h0: usize, h1: usize| {
        serial(|| {
            let mut y = vec![0f32; tq * e];
            if h1 == h0 {
                return y;
            }
            let c = h0 * hd..h1 * hd;
            let proj = |p: Pair, x: &[f32]| {
                let wm = w.mat(p.0, qd, e).rows(c.clone());
                blas::forward(x, wm, &w.data[p.1][c.clone()])
            };
            let (q, k, v) = (proj(li.query, hq), proj(li.key, h), proj(li.value, h));
            let ad = attention::Dims {
                layout: d.layout,
                heads: h1 - h0,
                head_dim: hd,
                tq: Some(tq),
            };
            let (ctx, _) = attention::forward(&q, &k, &v, ad, false);
            blas::product(&ctx, w.mat(li.output.0, e, qd).cols(c), &mut y);
            y
        })
    };
    let half = d.heads / 2;
    let (mut r, r1) = rayon::join(|| attend_heads(0, half), || attend_heads(half, d.heads));
    add_into(&mut r, &r1);
    for row in r.chunks_mut(e) {
        add_into(row, &w.data[li.output.1][..e]);
    }
    if let Some((sa, _)) = scales {
        scale_rows(&mut r, sa);
    }
    add_into(&mut r, &x[..tq * e]);
    // MLP: hidden units [m0, m1) on one thread, their share of the output
    let m_in = match d.post_norm {
        true => layer_norm(&r, w, li.norm1, d).y,
        false => layer_norm(&r, w, li.norm2, d).y,
    };
    let mlp_cols = |m0: usize, m1: usize| {
        serial(|| {
            let mut y = vec![0f32; tq * e];
            if m1 == m0 {
                return y;
            }
            let w1 = w.mat(li.fc1.0, d.mlp, e).rows(m0..m1);
            let u = blas::forward(&m_in, w1, &w.data[li.fc1.1][m0..m1]);
            let mut a = vec![0f32; u.len()];
            gelu(&u, &mut a);
            blas::product(&a, w.mat(li.fc2.0, e, d.mlp).cols(m0..m1), &mut y);
            y
        })
    };
    let half = d.mlp / 2;
    let (mut out, o1) = rayon::join(|| mlp_cols(0, half), || mlp_cols(half, d.mlp));
    add_into(&mut out, &o1);
    for row in out.chunks_mut(e) {
        add_into(row, &w.data[li.fc2.1][..e]);
    }
    if let Some((_, sm)) = scales {
        scale_rows(&mut out, sm);
    }
    match d.post_norm {
        true => {
            add_into(&mut out, &m_in);
            layer_norm(&out, w, li.norm2, d).y
        }
        false => {
            add_into(&mut out, &r);
            out
        }
    }
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

/// The scaling table of layer `li` for its attention (`mlp` false) or MLP
/// branch, and the offset of row `d.scale_row` in it.
fn table(w: &Weights, li: &LayerIdx, d: &Dims, mlp: bool) -> (usize, usize) {
    let t = li.scaling.expect("a scaled layer has tables");
    let t = if mlp { t.1 } else { t.0 };
    (t, d.scale_row.unwrap_or(0) * w.row_len(t))
}

/// Backward of the MLP from `dm` (gradient of its output, scaling undone):
/// adds its parameter gradients, returns the gradient of its input `h`.
fn mlp_backward(
    dm: &[f32],
    h: &[f32],
    tape: &Tape,
    w: &Weights,
    li: &LayerIdx,
    d: &Dims,
    grads: &mut [Vec<f32>],
) -> Vec<f32> {
    let (e, rows) = (d.embed, dm.len() / d.embed);
    let (w2, _) = lin(w, li.fc2, e, d.mlp);
    let (dw, db) = pair(grads, li.fc2);
    blas::backward_params(dm, &tape.a, w2, dw, db);
    let mut du = vec![0f32; rows * d.mlp];
    blas::backward_input(dm, w2, &mut du, false);
    gelu_backward(&tape.u, &mut du);
    let (w1, _) = lin(w, li.fc1, d.mlp, e);
    let (dw, db) = pair(grads, li.fc1);
    blas::backward_params(&du, h, w1, dw, db);
    let mut dh = vec![0f32; rows * e];
    blas::backward_input(&du, w1, &mut dh, false);
    dh
}

/// Backward of the attention branch from `da` (gradient of its output
/// projection, scaling undone): adds its parameter gradients, returns the
/// gradient of its input (all rows; the queries' part scattered back to
/// the first rows with `first_only`).
fn attention_backward(
    da: &[f32],
    tape: &Tape,
    w: &Weights,
    li: &LayerIdx,
    d: &Dims,
    grads: &mut [Vec<f32>],
) -> Vec<f32> {
    let (e, qd, n) = (d.embed, d.qd(), d.layout.rows());
    let (wo, _) = lin(w, li.output, e, qd);
    let (dw, db) = pair(grads, li.output);
    blas::backward_params(da, &tape.ctx, wo, dw, db);
    let mut dctx = vec![0f32; (da.len() / e) * qd];
    blas::backward_input(da, wo, &mut dctx, false);
    let (dq, dk, dv) =
        attention::backward(&dctx, &tape.q, &tape.k, &tape.v, &tape.probs, d.attention());
    drop(dctx);
    let h = tape.attn_input();
    let hq = tape.hq.as_deref().unwrap_or(h);
    let (wq, _) = lin(w, li.query, qd, e);
    let (wk, _) = lin(w, li.key, qd, e);
    let (wv, _) = lin(w, li.value, qd, e);
    let (dw, db) = pair(grads, li.query);
    blas::backward_params(&dq, hq, wq, dw, db);
    let (dw, db) = pair(grads, li.key);
    blas::backward_params(&dk, h, wk, dw, db);
    let (dw, db) = pair(grads, li.value);
    blas::backward_params(&dv, h, wv, dw, db);
    let mut dh = vec![0f32; n * e];
    blas::backward_input(&dk, wk, &mut dh, false);
    blas::backward_input(&dv, wv, &mut dh, true);
    if d.first_only {
        let mut dhq = vec![0f32; dq.len() / qd * e];
        blas::backward_input(&dq, wq, &mut dhq, false);
        d.layout.scatter_first_add(&dhq, e, &mut dh);
    } else {
        blas::backward_input(&dq, wq, &mut dh, true);
    }
    dh
}

/// The residual's gradient on the block's input rows: `dr` itself, or
/// scattered to the first rows with `first_only`.
fn residual_grad(dr: Vec<f32>, d: &Dims) -> Vec<f32> {
    if !d.first_only {
        return dr;
    }
    let mut dx = vec![0f32; d.layout.rows() * d.embed];
    d.layout.scatter_first_add(&dr, d.embed, &mut dx);
    dx
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
    let e = d.embed;
    // Scaling layers: the gradients of the scales, and those of the
    // branch outputs before scaling.
    let scales = scales(w, li, d).zip(tape.branches.as_ref());
    let unscale_mlp = |dy: &[f32], grads: &mut [Vec<f32>]| {
        scales.map(|((_, sm), (_, bm))| {
            let (t, at) = table(w, li, d, true);
            scale_backward(dy, bm, sm, &mut grads[t][at..][..e])
        })
    };
    let unscale_attn = |dy: &[f32], grads: &mut [Vec<f32>]| {
        scales.map(|((sa, _), (ba, _))| {
            let (t, at) = table(w, li, d, false);
            scale_backward(dy, ba, sa, &mut grads[t][at..][..e])
        })
    };
    if d.post_norm {
        // out = N2(s2), s2 = r + M(r); r = N1(s1), s1 = x + A(x)
        let mut ds2 = vec![0f32; dout.len()];
        let (dg, db) = pair(grads, li.norm2);
        norm::backward(dout, &tape.norm2, e, &w.data[li.norm2.0], &mut ds2, dg, db);
        let dm = unscale_mlp(&ds2, grads);
        let mut dr = mlp_backward(
            dm.as_deref().unwrap_or(&ds2),
            tape.mlp_input(true),
            tape,
            w,
            li,
            d,
            grads,
        );
        add_into(&mut dr, &ds2);
        drop(ds2);
        let mut ds1 = vec![0f32; dr.len()];
        let (dg, db) = pair(grads, li.norm1);
        norm::backward(&dr, &tape.norm1, e, &w.data[li.norm1.0], &mut ds1, dg, db);
        drop(dr);
        let da = unscale_attn(&ds1, grads);
        let mut dx = attention_backward(da.as_deref().unwrap_or(&ds1), tape, w, li, d, grads);
        match d.first_only {
            true => d.layout.scatter_first_add(&ds1, e, &mut dx),
            false => add_into(&mut dx, &ds1),
        }
        dx
    } else {
        // out = r + M(N2(r)), r = x + A(N1(x))
        let dm = unscale_mlp(dout, grads);
        let dh2 = mlp_backward(
            dm.as_deref().unwrap_or(dout),
            tape.mlp_input(false),
            tape,
            w,
            li,
            d,
            grads,
        );
        let mut dr = dout.to_vec();
        let (dg, db) = pair(grads, li.norm2);
        norm::backward(&dh2, &tape.norm2, e, &w.data[li.norm2.0], &mut dr, dg, db);
        drop(dh2);
        let da = unscale_attn(&dr, grads);
        let dh1 = attention_backward(da.as_deref().unwrap_or(&dr), tape, w, li, d, grads);
        let mut dx = residual_grad(dr, d);
        let (dg, db) = pair(grads, li.norm1);
        norm::backward(&dh1, &tape.norm1, e, &w.data[li.norm1.0], &mut dx, dg, db);
        dx
    }
}
