//! The three products of a linear layer `y = x · wᵀ + b` on row-major
//! buffers, with the weight read as the leading `[out, in]` block of a
//! larger `[out_max, ld]` matrix (a supernet slice, no copy), and weight
//! gradients added into the same block of a full-size gradient buffer.
//! One `gemm` call each; threaded only when the product is large enough to
//! pay for the dispatch.

use gemm::{gemm, Parallelism};

/// Products of at least this many multiply-adds use the thread pool.
const PAR_MIN_MACS: usize = 1 << 21;

/// A weight block: rows `[0, out)`, columns `[0, inp)` of a row-major
/// matrix with row stride `ld`; optionally also its transpose (`t`, row
/// stride `ld_t`), which the forward product reads instead: gemm wants that
/// operand column-major and would otherwise repack (transpose) the weight
/// element by element on every call.
#[derive(Clone, Copy)]
pub struct W<'a> {
    pub data: &'a [f32],
    pub out: usize,
    pub inp: usize,
    pub ld: usize,
    pub t: Option<&'a [f32]>,
    pub ld_t: usize,
}

impl<'a> W<'a> {
    /// Rows `r` (output features) of the block.
    pub fn rows(self, r: std::ops::Range<usize>) -> W<'a> {
        W {
            data: &self.data[r.start * self.ld..],
            out: r.len(),
            t: self.t.map(|t| &t[r.start..]),
            ..self
        }
    }

    /// Columns `c` (input features) of the block.
    pub fn cols(self, c: std::ops::Range<usize>) -> W<'a> {
        W {
            data: &self.data[c.start..],
            inp: c.len(),
            t: self.t.map(|t| &t[c.start * self.ld_t..]),
            ..self
        }
    }
}

/// gemm packs the left operand (in the engine's products, the weight, as
/// gemm sees a row-major product transposed) into contiguous panels when
/// the other side has more than 8 (one thread) or 16 (several) times its
/// kernel's 6 columns: every call repacks the whole weight. At batch 1 that
/// copy took 28 % of a 64-token BERT forward. With AVX-512 kernels a panel
/// is 64 floats, four whole cache lines of a weight (or of its transpose,
/// [`W::t`]) that the kernel can read in place, so the engine raises both
/// thresholds to gemm's maximum, 256 (1,536 columns). Measured on AVX-512
/// (2 threads, batch 1, medians of 3 alternating runs): ViT 50 tokens
/// 3.84 → 3.05 ms, 197 tokens 11.9 → 11.1, BERT 64 4.88 → 3.77, 128 8.32 →
/// 7.68, 256 16.5 → 15.4; 577 and 512 tokens unchanged; training at batch
/// 32 unchanged to 3 % faster. AVX2's panels are 24 floats, which straddle
/// cache lines: unpacked, training at 50 ViT tokens was about 5 % slower
/// and batch 1 no faster (ViT 50 tokens 6.2–7.4 against 5.8–6.3 ms), so
/// without AVX-512 kernels gemm keeps its defaults. Packing only
/// copies: the kernel does the same multiply-adds in the same order, so
/// results are unchanged. gemm's thresholds are process-wide; this sets
/// them once, on the first product.
fn tune_gemm() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if crate::kernels::simd::gemm_avx512_kernels() {
            gemm::set_lhs_packing_threshold_single_thread(256);
            gemm::set_lhs_packing_threshold_multi_thread(256);
        }
    });
}

fn par(macs: usize) -> Parallelism {
    if super::par_ok(macs, PAR_MIN_MACS) {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    }
}

/// `dst (m×n, row stride dst_rs) (+)= lhs (m×k) · rhs (k×n)`, all strides in
/// elements (`*_rs` between rows, `*_cs` between columns).
///
/// # Safety
/// Every pointer must address the elements its shape and strides reach.
#[allow(clippy::too_many_arguments)]
pub unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    threaded: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    tune_gemm();
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        if threaded {
            par(m * n * k)
        } else {
            Parallelism::None
        },
    )
}

/// `y = x · wᵀ + b`: `x` is `[rows, w.inp]`, the result `[rows, w.out]`.
pub fn forward(x: &[f32], w: W, b: &[f32]) -> Vec<f32> {
    let rows = x.len() / w.inp.max(1);
    let mut y = Vec::with_capacity(rows * w.out);
    for _ in 0..rows {
        y.extend_from_slice(&b[..w.out]);
    }
    product(x, w, &mut y);
    y
}

/// `y += x · wᵀ`: `x` is `[rows, w.inp]`, `y` `[rows, w.out]`.
pub fn product(x: &[f32], w: W, y: &mut [f32]) {
    let rows = x.len() / w.inp.max(1);
    assert_eq!(y.len(), rows * w.out);
    assert!(w.data.len() >= (w.out.max(1) - 1) * w.ld + w.inp);
    let (rhs, rhs_rs, rhs_cs) = match w.t {
        Some(t) => {
            assert!(t.len() >= (w.inp.max(1) - 1) * w.ld_t + w.out);
            (t, w.ld_t, 1)
        }
        None => (w.data, 1, w.ld),
    };
    // SAFETY: x is rows × inp, y rows × out, the weight (or its transpose)
    // covers the block by the strides checked above.
    unsafe {
        mm(
            rows,
            w.out,
            w.inp,
            y.as_mut_ptr(),
            w.out,
            true,
            x.as_ptr(),
            w.inp,
            1,
            rhs.as_ptr(),
            rhs_rs,
            rhs_cs,
            true,
        )
    };
}

/// `dx (+)= g · w`: `g` is `[rows, w.out]`, `dx` `[rows, w.inp]`.
pub fn backward_input(g: &[f32], w: W, dx: &mut [f32], accumulate: bool) {
    let rows = g.len() / w.out.max(1);
    assert!(dx.len() >= rows * w.inp);
    // SAFETY: shapes as documented; w covers out rows of stride ld.
    unsafe {
        mm(
            rows,
            w.inp,
            w.out,
            dx.as_mut_ptr(),
            w.inp,
            accumulate,
            g.as_ptr(),
            w.out,
            1,
            w.data.as_ptr(),
            w.ld,
            1,
            true,
        )
    };
}

/// `dw[:out, :inp] += gᵀ · x` into a full-size gradient buffer of row
/// stride `ld`, and `db[:out] += Σ_rows g`.
pub fn backward_params(g: &[f32], x: &[f32], shape: W, dw: &mut [f32], db: &mut [f32]) {
    let rows = g.len() / shape.out.max(1);
    assert!(
        x.len() >= rows * shape.inp && dw.len() >= (shape.out.max(1) - 1) * shape.ld + shape.inp
    );
    // SAFETY: gᵀ is out × rows (row stride 1, column stride out), x rows × inp.
    unsafe {
        mm(
            shape.out,
            shape.inp,
            rows,
            dw.as_mut_ptr(),
            shape.ld,
            true,
            g.as_ptr(),
            1,
            shape.out,
            x.as_ptr(),
            shape.inp,
            1,
            true,
        )
    };
    column_sum_into(g, shape.out, db);
}

/// `acc[..width] += Σ_rows m` for a row-major matrix of `width` columns.
pub fn column_sum_into(m: &[f32], width: usize, acc: &mut [f32]) {
    if width == 0 {
        return;
    }
    for row in m.chunks_exact(width) {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}
