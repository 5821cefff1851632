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
//!
//! Text spaces (BERT): `params` counts the word, position and token-type
//! embeddings, the embedding layer norm, every layer and the head (BERT's
//! pooler and the classifier, or the classifier alone after mean pooling).
//! `flops` are the MACs of one sequence of the space's stated length
//! (`text.seq_len`): they grow with the length (attention quadratically);
//! the embedding lookups cost none.

use super::{Arch, Modality, Pooling, Space, TextInput};

/// One post-norm (BERT) or pre-norm (ViT) layer's parameters: four
/// projections, the MLP and two layer norms.
fn layer_params(e: u64, q: u64, m: u64) -> u64 {
    2 * e // first layer norm
        + 3 * (e * q + q) // query, key, value
        + (q * e + e) // attention output
        + 2 * e // second layer norm
        + (e * m + m) // intermediate
        + (m * e + e) // output
}

fn text_params(space: &Space, t: &TextInput, arch: &Arch) -> u64 {
    let e = arch.embed_dim as u64;
    let mut n = (t.vocab_size + t.max_position_embeddings + t.type_vocab_size) as u64 * e + 2 * e;
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * space.supernet.head_dim) as u64;
        n += layer_params(e, q, arch.mlp_width(l) as u64);
    }
    if t.pooling == Pooling::Pooler {
        n += e * e + e;
    }
    n + e * t.num_classes as u64 + t.num_classes as u64
}

fn text_macs(space: &Space, t: &TextInput, arch: &Arch) -> u64 {
    let e = arch.embed_dim as u64;
    let len = t.seq_len as u64;
    let mut f = 0;
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * space.supernet.head_dim) as u64;
        f += block_macs(len, len, e, q, arch.mlp_width(l) as u64);
    }
    if t.pooling == Pooling::Pooler {
        f += e * e;
    }
    f + head_macs(e, t.num_classes as u64)
}

pub fn params(space: &Space, arch: &Arch) -> u64 {
    if let Modality::Text(t) = space.modality() {
        return text_params(space, t, arch);
    }
    let i = &space.image();
    let e = arch.embed_dim as u64;
    let patch_dim = (i.channels * i.patch_size * i.patch_size) as u64;
    let seq = space.seq_len() as u64;
    let mut n = patch_dim * e + e // patch projection
        + e // cls token
        + seq * e; // position embeddings
    for l in 0..arch.depth {
        let q = (arch.num_heads[l] * space.supernet.head_dim) as u64;
        n += layer_params(e, q, arch.mlp_width(l) as u64);
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
    if let Modality::Text(t) = space.modality() {
        return text_macs(space, t, arch);
    }
    let i = &space.image();
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
