//! Text input for the BERT encoder: Hugging Face `tokenizer.json` through
//! the tokenizers crate, batches padded to the longest sequence.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use tokenizers::{
    pad_encodings, Encoding, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer,
    TruncationParams,
};

pub struct TextTokenizer {
    /// Truncates to `max_len`; pads nothing (padding is `padding`, applied
    /// per batch by [`TextTokenizer::encode`]).
    inner: Tokenizer,
    padding: PaddingParams,
    max_len: usize,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; batches pad to the longest sequence and
    /// truncate to `max_len` tokens (special tokens included). The padding
    /// token is the one `tokenizer.json` names, else `[PAD]` or `<pad>` from
    /// its vocabulary, else id 0; padding is always on the right.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let err = |message: String| Error::Data {
            source_name: path.display().to_string(),
            message,
        };
        if !path.is_file() {
            return Err(err("no tokenizer.json here".into()));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        let padding = match inner.get_padding() {
            Some(p) => PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                direction: PaddingDirection::Right,
                pad_to_multiple_of: None,
                ..p.clone()
            },
            None => {
                let found = ["[PAD]", "<pad>"]
                    .into_iter()
                    .find_map(|t| inner.token_to_id(t).map(|id| (t, id)));
                let (pad_token, pad_id) = found.unwrap_or(("[PAD]", 0));
                PaddingParams {
                    strategy: PaddingStrategy::BatchLongest,
                    pad_id,
                    pad_token: pad_token.to_string(),
                    ..Default::default()
                }
            }
        };
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            padding,
            max_len,
            path: path.to_path_buf(),
        })
    }

    /// The most tokens of one sequence, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id that fills padded positions (0 for BERT's `[PAD]`).
    pub fn pad_id(&self) -> u32 {
        self.padding.pad_id
    }

    /// The `tokenizer.json` this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of `token` in the vocabulary, if it has one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        self.inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Data {
                source_name: self.path.display().to_string(),
                message: format!("tokenizing: {e}"),
            })
    }

    /// Token ids of each text, special tokens included (`[CLS] ... [SEP]`
    /// for BERT), truncated to `max_len`, not padded. The texts are encoded
    /// in parallel.
    pub fn encode_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        Ok(self
            .encode_batch(texts)?
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// Token ids and attention mask, `[N, T]` u32 each.
    pub fn encode(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let mut enc = self.encode_batch(texts)?;
        pad_encodings(&mut enc, &self.padding).map_err(|e| Error::Data {
            source_name: self.path.display().to_string(),
            message: format!("padding: {e}"),
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
