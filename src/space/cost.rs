//! Analytical cost of an architecture.
//!
//! * `params`: trainable parameters of the extracted subnet (weights and
//!   biases of every linear, layer-norm gammas/betas, cls token, absolute
//!   position embeddings, classifier).
//! * `flops`: **multiply-accumulates** (MACs) of one forward pass for one
//!   image, the convention of the NAS literature (AutoFormer's "1.3G FLOPs"
//!   are MACs). Counted: patch embedding, q/k/v/output projections, the two
//!   attention matmuls (q·kᵀ and attention·v, per head), both MLP linears and
//!   the classifier (cls token only). Not counted: biases, layer norms,
//!   softmax, GELU, residual adds (together well under 1%).

use super::{Arch, Space};

pub fn params(space: &Space, arch: &Arch) -> u64 {
    let i = &space.input;
    let e = arch.embed_dim as u64;
    let patch_dim = (i.channels * i.patch_size * i.patch_size) as u64;
    let seq = space.seq_len() as u64;
    let mut n = patch_dim * e + e // patch projection
        + e // cls token
        + seq * e; // position embeddings
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * space.supernet.head_dim) as u64;
        let m = arch.mlp_width(l) as u64;
        n += 2 * e // layernorm_before
            + 3 * (e * q + q) // query, key, value
            + (q * e + e) // attention output
            + 2 * e // layernorm_after
            + (e * m + m) // intermediate
            + (m * e + e); // output
    }
    n += 2 * e; // final layernorm
    n += e * i.num_classes as u64 + i.num_classes as u64; // classifier
    n
}

pub fn flops(space: &Space, arch: &Arch) -> u64 {
    let i = &space.input;
    let e = arch.embed_dim as u64;
    let patch_dim = (i.channels * i.patch_size * i.patch_size) as u64;
    let np = space.num_patches() as u64;
    let t = space.seq_len() as u64;
    let mut f = np * patch_dim * e;
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * space.supernet.head_dim) as u64;
        let m = arch.mlp_width(l) as u64;
        f += 3 * t * e * q // q, k, v projections
            + t * t * q // scores q·kᵀ over all heads
            + t * t * q // attention · v
            + t * q * e // attention output
            + 2 * t * e * m; // MLP
    }
    f += e * i.num_classes as u64;
    f
}
