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
    macs(space, arch, false)
}

/// Multiply-adds of one image's forward pass (see [`flops`]); with
/// `cls_only_last`, the last block computes only the class token's queries
/// (all the logits need), as the CPU engine does.
pub fn macs(space: &Space, arch: &Arch, cls_only_last: bool) -> u64 {
    let i = &space.input;
    let e = arch.embed_dim as u64;
    let t = space.seq_len() as u64;
    let mut f = embedding_macs(
        space.num_patches() as u64,
        (i.channels * i.patch_size * i.patch_size) as u64,
        e,
    );
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * space.supernet.head_dim) as u64;
        let m = arch.mlp_width(l) as u64;
        let tq = if cls_only_last && l + 1 == arch.depth {
            1
        } else {
            t
        };
        f += block_macs(t, tq, e, q, m);
    }
    f + head_macs(e, i.num_classes as u64)
}

/// Patch projection: `patches` patches of `patch_len` values to `e`.
pub fn embedding_macs(patches: u64, patch_len: u64, e: u64) -> u64 {
    patches * patch_len * e
}

/// One pre-norm block with `t` tokens of width `e`, attention width `q`
/// (heads × head dim) and MLP width `m`, of which `tq` tokens (queries) go
/// on through the block: keys and values for all `t` tokens, then per
/// query its projection, the scores q·kᵀ and attention·v over all heads,
/// the output projection and the MLP.
pub fn block_macs(t: u64, tq: u64, e: u64, q: u64, m: u64) -> u64 {
    2 * t * e * q + tq * (e * q + 2 * t * q + q * e + 2 * e * m)
}

/// The classifier on the class token.
pub fn head_macs(e: u64, classes: u64) -> u64 {
    e * classes
}
