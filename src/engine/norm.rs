//! Layer norm over rows, keeping what its backward needs.

use super::{par_ok, PAR_MIN_ELEMS};
use crate::kernels::vecmath::{norm_param_grads, norm_row, norm_row_backward};
use rayon::prelude::*;

/// Output `y = x̂ · γ + β` with the normalised rows `x̂` and `1/σ` per row.
pub struct Normed {
    pub y: Vec<f32>,
    pub xhat: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// Layer norm of the `d`-wide rows of `x` with `γ = g[..d]`, `β = b[..d]`.
pub fn forward(x: &[f32], d: usize, g: &[f32], b: &[f32], eps: f32) -> Normed {
    let rows = x.len() / d;
    let (g, b) = (&g[..d], &b[..d]);
    let mut out = Normed {
        y: vec![0.0; x.len()],
        xhat: vec![0.0; x.len()],
        rstd: vec![0.0; rows],
    };
    type Row<'a> = (((&'a mut [f32], &'a mut [f32]), &'a mut f32), &'a [f32]);
    let body = |(((y, xh), r), x): Row| *r = norm_row(x, g, b, eps, y, xh);
    if par_ok(rows * d, PAR_MIN_ELEMS) {
        (out.y.par_chunks_mut(d))
            .zip(out.xhat.par_chunks_mut(d))
            .zip(out.rstd.par_iter_mut())
            .zip(x.par_chunks(d))
            .for_each(body);
    } else {
        (out.y.chunks_mut(d))
            .zip(out.xhat.chunks_mut(d))
            .zip(out.rstd.iter_mut())
            .zip(x.chunks(d))
            .for_each(body);
    }
    out
}

/// Adds `∂L/∂x` to `dx` and `∂L/∂γ`, `∂L/∂β` to `dg[..d]`, `db[..d]`, given
/// `dy = ∂L/∂y`.
pub fn backward(
    dy: &[f32],
    n: &Normed,
    d: usize,
    g: &[f32],
    dx: &mut [f32],
    dg: &mut [f32],
    db: &mut [f32],
) {
    let g = &g[..d];
    let rows = dy.len() / d;
    type Row<'a> = (((&'a mut [f32], &'a [f32]), &'a [f32]), &'a f32);
    let body = |(((dx, dy), xh), &r): Row| norm_row_backward(dy, xh, g, r, dx);
    if par_ok(rows * d, PAR_MIN_ELEMS) {
        (dx[..rows * d].par_chunks_mut(d))
            .zip(dy.par_chunks(d))
            .zip(n.xhat.par_chunks(d))
            .zip(n.rstd.par_iter())
            .for_each(body);
    } else {
        (dx[..rows * d].chunks_mut(d))
            .zip(dy.chunks(d))
            .zip(n.xhat.chunks(d))
            .zip(n.rstd.iter())
            .for_each(body);
    }
    let (dg, db) = (&mut dg[..d], &mut db[..d]);
    for (dy, xh) in dy.chunks_exact(d).zip(n.xhat.chunks_exact(d)) {
        norm_param_grads(dy, xh, dg, db);
    }
}
