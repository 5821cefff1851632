//! What a latency predictor sees of an architecture.
//!
//! * [`hat`]: HAT's architecture features (its predictor takes the
//!   embedding dims, layer counts, mean FFN size and mean heads of encoder
//!   and decoder, 10 in all; an encoder-only ViT has four of them).
//! * [`cost`]: the engine's work split by kind and summed over layers, for
//!   a model linear in each kind: projection, attention and MLP
//!   multiply-adds, element-wise work, per-head and per-layer counts (fixed
//!   costs of small products and thread hand-offs), the stem and the head.
//!   The engine computes only the class token in the last block, so its
//!   queries, output projection and MLP count one token there.

use crate::space::cost::{embedding_macs, head_macs};
use crate::space::{Arch, Modality, Pooling, Space, TextInput};

/// Names of [`hat`]'s features.
pub const HAT: [&str; 4] = ["embed_dim", "depth", "mean_heads", "mean_mlp_width"];

/// HAT's features of `arch`.
pub fn hat(_space: &Space, arch: &Arch) -> Vec<f64> {
    let d = arch.depth.max(1) as f64;
    let heads = arch.num_heads.iter().sum::<usize>() as f64 / d;
    let mlp = (0..arch.depth).map(|l| arch.mlp_width(l)).sum::<usize>() as f64 / d;
    vec![arch.embed_dim as f64, arch.depth as f64, heads, mlp]
}

/// Names of [`cost`]'s features.
pub const COST: [&str; 9] = [
    "projection_macs",
    "attention_macs",
    "mlp_macs",
    "gelu_elements",
    "token_rows_x_embed",
    "heads",
    "layers",
    "stem_and_head_macs",
    "constant",
];

/// The engine's work for one image of `arch`, by kind (see the module docs).
/// Text spaces: one sequence of the stated length, every token through
/// every layer but the last under a pooler head (first token only, as the
/// engine computes it), no stem work (a table lookup), the pooler and
/// classifier.
pub fn cost(space: &Space, arch: &Arch) -> Vec<f64> {
    if let Modality::Text(t) = space.modality() {
        return text_cost(space, t, arch);
    }
    let i = &space.image();
    let e = arch.embed_dim as f64;
    let t = space.seq_len() as f64;
    let mut f = [0f64; 9];
    for l in 0..arch.depth {
        let tq = if l + 1 == arch.depth { 1.0 } else { t };
        let q = (arch.num_heads[l] * space.supernet.head_dim) as f64;
        let m = arch.mlp_width(l) as f64;
        f[0] += (tq + 2.0 * t) * e * q + tq * q * e;
        f[1] += 2.0 * tq * t * q;
        f[2] += 2.0 * tq * e * m;
        f[3] += tq * m;
        f[4] += t * e;
        f[5] += arch.num_heads[l] as f64;
        f[6] += 1.0;
    }
    f[7] = (embedding_macs(
        space.num_patches() as u64,
        (i.channels * i.patch_size * i.patch_size) as u64,
        arch.embed_dim as u64,
    ) + head_macs(arch.embed_dim as u64, i.num_classes as u64)) as f64;
    f[8] = 1.0;
    f.to_vec()
}

fn text_cost(space: &Space, t: &TextInput, arch: &Arch) -> Vec<f64> {
    let e = arch.embed_dim as f64;
    let n = t.seq_len as f64;
    let pooler = t.pooling == Pooling::Pooler;
    let mut f = [0f64; 9];
    for l in 0..arch.depth {
        // The pooler reads the first token only: the last block computes
        // that token's query, output projection and FFN alone.
        let tq = if pooler && l + 1 == arch.depth {
            1.0
        } else {
            n
        };
        let q = (arch.num_heads[l] * space.supernet.head_dim) as f64;
        let m = arch.mlp_width(l) as f64;
        f[0] += (tq + 2.0 * n) * e * q + tq * q * e;
        f[1] += 2.0 * tq * n * q;
        f[2] += 2.0 * tq * e * m;
        f[3] += tq * m;
        f[4] += n * e;
        f[5] += arch.num_heads[l] as f64;
        f[6] += 1.0;
    }
    let pooler = if pooler { e * e } else { 0.0 };
    f[7] = pooler + head_macs(arch.embed_dim as u64, t.num_classes as u64) as f64 + n * e;
    f[8] = 1.0;
    f.to_vec()
}
