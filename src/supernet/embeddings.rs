//! Elastic cls token and absolute position embeddings (first `embed`
//! channels), added to the patch tokens.

use super::linear::detached_copy;
use super::patch_embed::{elastic_patch_embed, ElasticPatchEmbed};
use crate::engine::names::StemNames;
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticEmbeddings {
    pub cls_token: Tensor,
    pub position_embeddings: Tensor,
    pub patch_embeddings: ElasticPatchEmbed,
}

/// Named by `names`; `vb` at the root.
pub fn elastic_embeddings(
    channels: usize,
    patch_size: usize,
    seq_len: usize,
    max_embed: usize,
    init: InitScheme,
    names: &StemNames,
    vb: VarBuilder,
) -> Result<ElasticEmbeddings> {
    Ok(ElasticEmbeddings {
        cls_token: vb.get_with_hints((1, 1, max_embed), &names.cls_token, init.cls_token())?,
        position_embeddings: vb.get_with_hints(
            (1, seq_len, max_embed),
            &names.position_embeddings,
            init.position_embeddings(),
        )?,
        patch_embeddings: elastic_patch_embed(
            channels,
            patch_size,
            max_embed,
            init,
            vb.pp(&names.patch_projection),
        )?,
    })
}

impl ElasticEmbeddings {
    fn slice(&self, embed: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cls_token.narrow(2, 0, embed)?,
            self.position_embeddings.narrow(2, 0, embed)?,
        ))
    }

    /// Images `[B, C, H, W]` to tokens `[B, 1 + N, embed]`.
    pub fn forward(&self, images: &Tensor, embed: usize) -> Result<Tensor> {
        let x = self.patch_embeddings.forward(images, embed)?;
        let (cls, pos) = self.slice(embed)?;
        let cls = cls.broadcast_as((x.dim(0)?, 1, embed))?;
        crate::engine::ops::bias_add(&Tensor::cat(&[&cls, &x], 1)?, &pos.squeeze(0)?)
    }

    /// `(cls_token, position_embeddings)`, detached copies.
    pub fn extract(&self, embed: usize) -> Result<(Tensor, Tensor)> {
        let (cls, pos) = self.slice(embed)?;
        Ok((detached_copy(&cls)?, detached_copy(&pos)?))
    }
}
