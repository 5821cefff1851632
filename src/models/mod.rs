//! Static models: plain transformers with fixed shapes, loaded from exported
//! subnet directories or built by supernet extraction. No supernet code runs
//! in their forward.

pub mod bert;
pub mod export;
pub mod export_bert;
pub mod layers;
pub mod onnx;
pub(crate) mod used;
pub mod vit;

/// The Hugging Face tensor names (kept in the engine, the lowest layer that
/// reads them).
pub use crate::engine::names;

/// The BERT tokenizer (kept with the text data, which reads it first).
pub use crate::data::tokenizer as text;

use crate::error::Result;
use candle_core::Tensor;

/// Sentence embeddings of a BERT encoder: mean-pooled over the tokens,
/// L2-normalised (`[N, hidden]`), as sentence-transformers computes them.
pub fn sentence_embeddings(
    model: &bert::Bert,
    tokenizer: &text::TextTokenizer,
    sentences: &[&str],
) -> Result<Tensor> {
    let (ids, mask) = tokenizer.encode(sentences)?;
    let out = model.forward(&ids, &mask)?;
    let last = out
        .hidden_states
        .last()
        .expect("embeddings are a hidden state");
    bert::l2_normalize(&bert::mean_pool(last, &mask)?)
}
