//! Elastic patch embedding: a stride-`patch` convolution stored in Hugging
//! Face's `[embed_max, C, p, p]` layout, computed as one matmul over the
//! flattened patches; a subnet uses the first `embed` output channels.

use super::linear::detached_copy;
use crate::engine::ops;
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticPatchEmbed {
    pub weight: Tensor,
    pub bias: Tensor,
    pub patch_size: usize,
}

/// `vb` is `vit.embeddings.patch_embeddings.projection`.
pub fn elastic_patch_embed(
    channels: usize,
    patch_size: usize,
    max_embed: usize,
    init: InitScheme,
    vb: VarBuilder,
) -> Result<ElasticPatchEmbed> {
    let (w_init, b_init) = init.patch_projection(channels * patch_size * patch_size);
    Ok(ElasticPatchEmbed {
        weight: vb.get_with_hints(
            (max_embed, channels, patch_size, patch_size),
            "weight",
            w_init,
        )?,
        bias: vb.get_with_hints(max_embed, "bias", b_init)?,
        patch_size,
    })
}

impl ElasticPatchEmbed {
    fn slice(&self, embed: usize) -> Result<(Tensor, Tensor)> {
        let w = self.weight.narrow(0, 0, embed)?;
        Ok((w, self.bias.narrow(0, 0, embed)?))
    }

    /// Images `[B, C, H, W]` to patch tokens `[B, N, embed]`.
    pub fn forward(&self, images: &Tensor, embed: usize) -> Result<Tensor> {
        let (w, b) = self.slice(embed)?;
        let patches = ops::patchify(images, self.patch_size)?;
        ops::linear(&patches, &w.reshape((embed, ()))?, Some(&b))
    }

    /// `(weight [embed, C, p, p], bias [embed])`, detached copies.
    pub fn extract(&self, embed: usize) -> Result<(Tensor, Tensor)> {
        let (w, b) = self.slice(embed)?;
        Ok((detached_copy(&w)?, detached_copy(&b)?))
    }
}
