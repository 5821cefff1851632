//! Elastic BERT embeddings: word, position and token-type tables and the
//! embedding layer norm. A subnet of hidden size `e` reads the first `e`
//! columns of every table and of the norm; all tokens share token type 0.

use super::layer_norm::{elastic_layer_norm, ElasticLayerNorm};
use super::linear::detached_copy;
use crate::engine::names::StemNames;
use crate::supernet::init::InitScheme;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ElasticTextEmbeddings {
    /// `[vocab, max_hidden]`.
    pub word: Tensor,
    /// `[max_positions, max_hidden]`.
    pub position: Tensor,
    /// `[type_vocab, max_hidden]`.
    pub token_type: Tensor,
    pub layer_norm: ElasticLayerNorm,
}

/// The tables at their largest shapes, named by `names` (`vb` at the root).
pub fn elastic_text_embeddings(
    (vocab, max_positions, type_vocab): (usize, usize, usize),
    max_hidden: usize,
    eps: f64,
    init: InitScheme,
    names: &StemNames,
    vb: VarBuilder,
) -> Result<ElasticTextEmbeddings> {
    let table = |rows: usize, name: &str| {
        vb.pp(name)
            .get_with_hints((rows, max_hidden), "weight", init.position_embeddings())
    };
    Ok(ElasticTextEmbeddings {
        word: table(vocab, &names.word_embeddings)?,
        position: table(max_positions, &names.position_embeddings)?,
        token_type: table(type_vocab, &names.token_type_embeddings)?,
        layer_norm: elastic_layer_norm(max_hidden, eps, vb.pp(&names.embeddings_norm))?,
    })
}

impl ElasticTextEmbeddings {
    /// Token ids `[B, T]` (u32) to normalised states `[B · T, hidden]`.
    /// Rows are gathered before the columns are sliced, so only the rows a
    /// batch uses are touched (the gradient is a scatter-add into them).
    pub fn forward(&self, ids: &Tensor, hidden: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .narrow(1, 0, hidden)?;
        let pos = self.position.narrow(0, 0, t)?.narrow(1, 0, hidden)?;
        let typ = self.token_type.narrow(0, 0, 1)?.narrow(1, 0, hidden)?;
        let x = words
            .reshape((b, t, hidden))?
            .broadcast_add(&pos)?
            .broadcast_add(&typ)?
            .reshape((b * t, hidden))?;
        self.layer_norm.forward(&x, hidden)
    }

    /// Standalone copies of the `hidden`-wide tables: word, position,
    /// token type, and the norm.
    pub fn extract(
        &self,
        hidden: usize,
    ) -> Result<(Tensor, Tensor, Tensor, crate::models::layers::LayerNorm)> {
        let cols = |t: &Tensor| detached_copy(&t.narrow(1, 0, hidden)?);
        Ok((
            cols(&self.word)?,
            cols(&self.position)?,
            cols(&self.token_type)?,
            self.layer_norm.extract(hidden)?,
        ))
    }
}
