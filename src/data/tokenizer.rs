//! Text input for the BERT encoder: Hugging Face `tokenizer.json` through
//! the tokenizers crate, batches padded to the longest sequence. The
//! models re-export it as [`crate::models::text`].

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

    /// Encodes `texts`, each cut to a prefix before tokenizing (a 50 MB
    /// line would otherwise be tokenized whole, gigabytes of tokens, before
    /// truncation to `max_len`). The prefix ends at a whitespace, so the
    /// words before it tokenize as in the whole text; a text whose prefix
    /// gives fewer than `max_len` tokens (all of it, or fewer than the
    /// text has) is encoded again with a prefix 8× longer, until it fills
    /// `max_len` or is whole: the result is the whole text's encoding.
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        let mut budget = self.max_len.saturating_mul(16).saturating_add(1024);
        let mut out: Vec<Option<Encoding>> = vec![None; texts.len()];
        let mut todo: Vec<usize> = (0..texts.len()).collect();
        while !todo.is_empty() {
            let cut: Vec<&str> = todo.iter().map(|&i| prefix(texts[i], budget)).collect();
            let enc = self
                .inner
                .encode_batch(cut.clone(), true)
                .map_err(|e| Error::Data {
                    source_name: self.path.display().to_string(),
                    message: format!("tokenizing: {e}"),
                })?;
            let mut again = Vec::new();
            for ((i, c), e) in todo.iter().zip(&cut).zip(enc) {
                if c.len() < texts[*i].len() && e.get_ids().len() < self.max_len {
                    again.push(*i);
                } else {
                    out[*i] = Some(e);
                }
            }
            todo = again;
            budget = budget.saturating_mul(8);
        }
        Ok(out
            .into_iter()
            .map(|e| e.expect("every text encoded"))
            .collect())
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

/// The longest prefix of `text` of at most `bytes` bytes that ends just
/// before a whitespace (or at a character boundary when the first `bytes`
/// hold none); `text` itself when it is that short.
fn prefix(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    match head.rfind(char::is_whitespace) {
        Some(ws) if ws > 0 => &text[..ws],
        _ => head,
    }
}
