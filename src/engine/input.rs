//! What the engine reads ([`Input`]: images or token sequences) and how a
//! batch's token rows are laid out in the activations ([`Layout`]).
//!
//! Padding is never computed. A padded token is masked as a key (the
//! additive `(1 − mask) · f32::MIN` of Hugging Face's BERT gives it exactly
//! zero probability), so no other token's state depends on it; no head
//! reads its state (mean pooling skips it; the pooler reads the first
//! token). So the rows of a text batch are its unmasked tokens only, each
//! sequence its own length, with its original position kept for the
//! position embedding. Two cases keep more, to stay exactly what the
//! masked dense computation gives:
//! - the pooler reads the first token's state even when that token is
//!   masked: it is then kept as a query but not as a key (`key_from = 1`);
//! - a sequence whose every token is masked sees `f32::MIN` on every
//!   score, which softmax turns into uniform attention over all its tokens:
//!   with a first-token head it keeps all of them, attending uniformly
//!   (`uniform`); under mean pooling it contributes zero and keeps none.

use super::weights::{Config, Stem};
use crate::error::{Error, Result};
use std::ops::Range;

/// A batch as the engine reads it.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// `[batch, C, H, W]` images, flat.
    Images(&'a [f32]),
    /// Token ids and attention mask (1: token, 0: padding), `[batch, t]`
    /// each, flat; `t` is the batch's sequence length.
    Tokens {
        ids: &'a [u32],
        mask: &'a [u32],
        t: usize,
    },
}

impl<'a> Input<'a> {
    /// Sequences in the batch.
    pub fn batch(&self, cfg: &Config) -> usize {
        match *self {
            Input::Images(x) => x.len() / cfg.image_len().max(1),
            Input::Tokens { ids, t, .. } => ids.len() / t.max(1),
        }
    }

    /// The sequences `r` of the batch.
    pub fn slice(&self, cfg: &Config, r: Range<usize>) -> Input<'a> {
        match *self {
            Input::Images(x) => {
                let per = cfg.image_len();
                Input::Images(&x[r.start * per..r.end * per])
            }
            Input::Tokens { ids, mask, t } => Input::Tokens {
                ids: &ids[r.start * t..r.end * t],
                mask: &mask[r.start * t..r.end * t],
                t,
            },
        }
    }

    /// Tokens per sequence (before padding is dropped).
    pub(super) fn seq_len(&self, cfg: &Config) -> usize {
        match *self {
            Input::Images(_) => cfg.image_seq_len().unwrap_or(0),
            Input::Tokens { t, .. } => t,
        }
    }
}

/// The batch size of `input` if it fits `cfg`'s stem: whole images of the
/// configured shape, or `ids` and `mask` of `batch · t` entries with ids
/// in the vocabulary and `t` within the position table. Otherwise an
/// error naming the input, the expected and the found.
pub fn check_input(cfg: &Config, input: &Input) -> Result<usize> {
    let bad = |name: &str, message: String| Error::Tensor {
        name: name.into(),
        message,
    };
    match (cfg.stem, *input) {
        (Stem::Patches { .. }, Input::Images(x)) => {
            let per = cfg.image_len();
            if per == 0 || !x.len().is_multiple_of(per) {
                return Err(bad(
                    "input images",
                    format!("{} values are not whole images of {per}", x.len()),
                ));
            }
            Ok(x.len() / per)
        }
        (
            Stem::Tokens {
                vocab_size,
                max_positions,
            },
            Input::Tokens { ids, mask, t },
        ) => {
            if t == 0 || t > max_positions {
                return Err(bad(
                    "input_ids",
                    format!("{t} tokens per sequence: expected 1 to max_position_embeddings {max_positions}"),
                ));
            }
            if !ids.len().is_multiple_of(t) || mask.len() != ids.len() {
                return Err(bad(
                    "attention_mask",
                    format!(
                        "{} ids and {} mask values are not both [batch, {t}]",
                        ids.len(),
                        mask.len()
                    ),
                ));
            }
            if let Some((i, id)) = ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= vocab_size)
            {
                return Err(bad(
                    "input_ids",
                    format!(
                        "id {id} at [{}, {}] is outside the vocabulary of {vocab_size}",
                        i / t,
                        i % t
                    ),
                ));
            }
            Ok(ids.len() / t)
        }
        (Stem::Patches { .. }, Input::Tokens { .. }) => {
            Err(bad("input_ids", "token ids given to an image model".into()))
        }
        (Stem::Tokens { .. }, Input::Images(_)) => {
            Err(bad("input images", "images given to a text model".into()))
        }
    }
}

/// Where each sequence's token rows are in the activations
/// (`[rows, width]`, sequences one after the other), and how each one
/// attends (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Sequence `b` is rows `starts[b]..starts[b + 1]`.
    starts: Vec<usize>,
    /// Sequence `b`'s keys are its rows from `key_from[b]` (0 or 1) on.
    key_from: Vec<usize>,
    /// Sequences that attend uniformly over all their rows.
    uniform: Vec<bool>,
}

/// One sequence of a [`Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq {
    /// Its first row.
    pub start: usize,
    /// Its rows.
    pub len: usize,
    /// Its first key row, relative to `start`.
    pub key_from: usize,
    pub uniform: bool,
}

impl Layout {
    /// `batch` sequences of `t` rows each, every row a key.
    pub fn regular(batch: usize, t: usize) -> Self {
        Self {
            starts: (0..=batch).map(|b| b * t).collect(),
            key_from: vec![0; batch],
            uniform: vec![false; batch],
        }
    }

    /// The rows of a token batch that anything depends on (see the module
    /// documentation), as `(sequence position, row in the input)` pairs,
    /// and their layout. `first_token`: the head reads each sequence's
    /// first token.
    pub fn of_tokens(mask: &[u32], t: usize, first_token: bool) -> (Self, Vec<usize>) {
        let batch = mask.len() / t.max(1);
        let mut l = Self {
            starts: Vec::with_capacity(batch + 1),
            key_from: Vec::with_capacity(batch),
            uniform: Vec::with_capacity(batch),
        };
        let mut rows = Vec::with_capacity(mask.len());
        l.starts.push(0);
        for (b, m) in mask.chunks(t).enumerate() {
            let at = b * t;
            let any = m.iter().any(|&v| v != 0);
            let (key_from, uniform) = match (any, first_token) {
                (false, true) => (0, true),
                (false, false) => (0, false),
                (true, _) => (usize::from(first_token && m[0] == 0), false),
            };
            if uniform {
                rows.extend(at..at + t);
            } else if any {
                if key_from == 1 {
                    rows.push(at);
                }
                rows.extend((0..t).filter(|&j| m[j] != 0).map(|j| at + j));
            }
            l.starts.push(rows.len());
            l.key_from.push(key_from);
            l.uniform.push(uniform);
        }
        (l, rows)
    }

    pub fn batch(&self) -> usize {
        self.key_from.len()
    }

    /// Rows of all sequences together.
    pub fn rows(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn seq(&self, b: usize) -> Seq {
        Seq {
            start: self.starts[b],
            len: self.starts[b + 1] - self.starts[b],
            key_from: self.key_from[b],
            uniform: self.uniform[b],
        }
    }

    /// Every sequence has the same rows, all keys, none uniform (images
    /// and unpadded text): the fast paths that split rows apply.
    pub fn is_dense(&self) -> bool {
        self.key_from.iter().all(|&k| k == 0) && !self.uniform.iter().any(|&u| u)
    }

    /// The first row of every sequence (`[batch, width]`; zeros for an
    /// empty sequence).
    pub fn gather_first(&self, x: &[f32], width: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.batch() * width];
        for (b, o) in out.chunks_mut(width).enumerate() {
            let s = self.seq(b);
            if s.len > 0 {
                o.copy_from_slice(&x[s.start * width..][..width]);
            }
        }
        out
    }

    /// Adds row `b` of `src` (`[batch, width]`) to sequence `b`'s first row
    /// of `dst`.
    pub fn scatter_first_add(&self, src: &[f32], width: usize, dst: &mut [f32]) {
        for (b, s) in src.chunks(width).enumerate() {
            let q = self.seq(b);
            if q.len > 0 {
                for (d, s) in dst[q.start * width..][..width].iter_mut().zip(s) {
                    *d += s;
                }
            }
        }
    }
}
