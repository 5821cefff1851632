//! Text input for the BERT encoder: Hugging Face `tokenizer.json` through
//! the tokenizers crate, batches padded to the longest sequence.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; batches pad to the longest sequence and
    /// truncate to `max_len` tokens (special tokens included).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let err = |message: String| Error::Data {
            source_name: path.display().to_string(),
            message,
        };
        if !path.is_file() {
            return Err(err("no tokenizer.json here".into()));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Token ids and attention mask, `[N, T]` u32 each.
    pub fn encode(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let enc = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Data {
                source_name: self.path.display().to_string(),
                message: format!("tokenizing: {e}"),
            })?;
        let t = enc.first().map_or(0, |e| e.get_ids().len());
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        let dev = Device::Cpu;
        Ok((
            Tensor::from_vec(ids, (texts.len(), t), &dev)?,
            Tensor::from_vec(mask, (texts.len(), t), &dev)?,
        ))
    }
}
