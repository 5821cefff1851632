//! The engine's view of a model: its fixed shapes and settings
//! ([`Config`]: family, stem, head) and its tensors as flat f32 buffers
//! found by their Hugging Face names ([`Weights`], through
//! [`crate::engine::names`]).

use super::blas::W;
use super::names::Family;
use super::scaling::Scaling;
use crate::error::{Error, Result};
use crate::space::{Arch, DepthLayers, Modality, Pooling, Space};
use candle_core::Tensor;

/// What turns the input into token states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stem {
    /// Images `[C, H, W]` cut into `patch × patch` patches, projected, a
    /// class token in front, position embeddings added (ViT).
    Patches {
        channels: usize,
        image_size: usize,
        patch: usize,
    },
    /// Token ids: word + position + token-type (type 0) embeddings, then a
    /// layer norm (BERT).
    Tokens {
        vocab_size: usize,
        max_positions: usize,
    },
}

/// What turns the token states into the classifier's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// The class token's final state through a last layer norm (ViT).
    ClassToken,
    /// BERT's pooler: the `[CLS]` (first) state through a dense layer and tanh.
    Pooler,
    /// The mean of the states of the unmasked tokens (sentence-transformers).
    Mean,
}

impl Head {
    /// Whether the head reads only the first token's state, so that the
    /// last block needs no other query.
    pub fn first_token_only(self) -> bool {
        self != Head::Mean
    }
}

impl From<Pooling> for Head {
    fn from(p: Pooling) -> Self {
        match p {
            Pooling::Pooler => Head::Pooler,
            Pooling::Mean => Head::Mean,
        }
    }
}

/// Fixed shapes and settings of a model: its family (tensor names, norm
/// placement), stem, head, head size, classes (0: no classifier, the
/// head's output is the result), and how subnets pick their rows of the
/// scaling tables when the model has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub family: Family,
    pub stem: Stem,
    pub head: Head,
    pub head_dim: usize,
    pub classes: usize,
    pub eps: f32,
    /// The row mapping of the blocks' scaling tables (a supernet with
    /// switchable scaling layers); `None` for models without them.
    pub scaling: Option<Scaling>,
    /// Which blocks a subnet shallower than the weights runs (a
    /// supernet's; a static model runs all of its own in order).
    pub depth_layers: DepthLayers,
}

impl Config {
    /// The configuration of a space's supernet, image or text.
    pub fn from_space(space: &Space) -> Self {
        let (family, stem, head) = match space.modality() {
            Modality::Image(i) => (
                Family::Vit,
                Stem::Patches {
                    channels: i.channels,
                    image_size: i.image_size,
                    patch: i.patch_size,
                },
                Head::ClassToken,
            ),
            Modality::Text(t) => (
                Family::Bert,
                Stem::Tokens {
                    vocab_size: t.vocab_size,
                    max_positions: t.max_position_embeddings,
                },
                t.pooling.into(),
            ),
        };
        Self {
            family,
            stem,
            head,
            head_dim: space.supernet.head_dim,
            classes: space.num_classes(),
            eps: space.supernet.layer_norm_eps as f32,
            scaling: None,
            depth_layers: space.supernet.depth_layers,
        }
    }

    /// The block of `w` that layer `l` of `arch` runs.
    pub(super) fn block(&self, w: &Weights, arch: &Arch, l: usize) -> usize {
        self.depth_layers.layer(l, arch.depth, w.idx.layers.len())
    }

    /// Tokens per image (patches + class token); `None` for text, whose
    /// batches are as long as their longest sequence.
    pub fn image_seq_len(&self) -> Option<usize> {
        match self.stem {
            Stem::Patches {
                image_size, patch, ..
            } => Some((image_size / patch).pow(2) + 1),
            Stem::Tokens { .. } => None,
        }
    }

    /// Values per input image (`C · H · W`; 0 for text).
    pub(super) fn image_len(&self) -> usize {
        match self.stem {
            Stem::Patches {
                channels,
                image_size,
                ..
            } => channels * image_size * image_size,
            Stem::Tokens { .. } => 0,
        }
    }

    /// Values per patch (`C · p · p`; 0 for text).
    pub(super) fn patch_len(&self) -> usize {
        match self.stem {
            Stem::Patches {
                channels, patch, ..
            } => channels * patch * patch,
            Stem::Tokens { .. } => 0,
        }
    }

    /// Whether layers normalise after each residual add (BERT) rather than
    /// before each sub-layer (ViT).
    pub fn post_norm(&self) -> bool {
        self.family.post_norm()
    }
}

/// `(weight, bias)` or `(gamma, beta)` positions in [`Weights`].
pub type Pair = (usize, usize);

/// Positions of one block's tensors in [`Weights`]. `norm1` belongs to the
/// attention sub-layer, `norm2` to the MLP (see
/// [`crate::engine::names::LayerNames`]).
#[derive(Debug, Clone)]
pub struct LayerIdx {
    pub norm1: Pair,
    pub query: Pair,
    pub key: Pair,
    pub value: Pair,
    pub output: Pair,
    pub norm2: Pair,
    pub fc1: Pair,
    pub fc2: Pair,
    /// The scaling tables `(attention, mlp)`, when the model has them.
    pub scaling: Option<Pair>,
}

/// Positions of the stem's tensors.
#[derive(Debug, Clone)]
pub(super) enum StemIdx {
    Patches {
        cls: usize,
        pos: usize,
        patch: Pair,
    },
    Tokens {
        word: usize,
        pos: usize,
        token_type: usize,
        norm: Pair,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Index {
    pub family: Family,
    pub stem: StemIdx,
    pub layers: Vec<LayerIdx>,
    /// ViT's final layer norm.
    pub final_norm: Option<Pair>,
    /// BERT's pooler dense layer.
    pub pooler: Option<Pair>,
    pub classifier: Option<Pair>,
}

/// Copies of a model's tensors as flat f32 buffers, in the caller's order
/// (gradients are returned in the same order), found by Hugging Face name.
#[derive(Debug, Clone)]
pub struct Weights {
    pub names: Vec<String>,
    pub data: Vec<Vec<f32>>,
    pub dims: Vec<Vec<usize>>,
    /// Transposed copies of the weight matrices (see [`blas::W`]).
    transposed: Vec<Option<Vec<f32>>>,
    pub(super) idx: Index,
}

impl Weights {
    /// The weights of a safetensors file (a run's supernet), checked as
    /// [`crate::io::read_weights`] checks them; errors name the file.
    pub fn read(file: &std::path::Path) -> Result<Self> {
        let (tensors, _) = crate::io::read_weights(file, &candle_core::Device::Cpu)?;
        let mut named: Vec<(String, Tensor)> = tensors.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::from_tensors(&named).map_err(|e| Error::Checkpoint {
            path: file.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Copies `named` tensors; the family (ViT or BERT) is the one whose
    /// embeddings are among them, and every tensor the engine reads is
    /// found by its name in [`crate::engine::names`].
    pub fn from_tensors(named: &[(String, Tensor)]) -> Result<Self> {
        let mut names = Vec::with_capacity(named.len());
        let mut data = Vec::with_capacity(named.len());
        let mut dims = Vec::with_capacity(named.len());
        for (n, t) in named {
            names.push(n.clone());
            dims.push(t.dims().to_vec());
            data.push(
                t.flatten_all()
                    .and_then(|t| t.to_dtype(candle_core::DType::F32))
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| Error::Tensor {
                        name: n.clone(),
                        message: e.to_string(),
                    })?,
            );
        }
        let idx = Index::find(&names)?;
        let mut w = Self {
            transposed: vec![None; names.len()],
            names,
            data,
            dims,
            idx,
        };
        w.refresh_transposed();
        Ok(w)
    }

    /// The model family these tensors are named for.
    pub fn family(&self) -> Family {
        self.idx.family
    }

    /// Recomputes the transposed copies of the weight matrices after
    /// `data` changed (an optimizer step updates `data` in place).
    pub fn refresh_transposed(&mut self) {
        let x = &self.idx;
        let mut mats: Vec<usize> = [x.classifier, x.pooler]
            .into_iter()
            .flatten()
            .map(|p| p.0)
            .collect();
        if let StemIdx::Patches { patch, .. } = x.stem {
            mats.push(patch.0);
        }
        for l in &x.layers {
            mats.extend([l.query.0, l.key.0, l.value.0, l.output.0, l.fc1.0, l.fc2.0]);
        }
        for i in mats {
            let (rows, cols) = (self.dims[i].first().copied().unwrap_or(0), self.row_len(i));
            if rows * cols != self.data[i].len() {
                continue;
            }
            let t = self.transposed[i].get_or_insert_with(|| vec![0f32; rows * cols]);
            for (r, row) in self.data[i].chunks_exact(cols.max(1)).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    t[c * rows + r] = *v;
                }
            }
        }
    }

    /// The leading `out × inp` block of matrix `i` (with its transpose).
    pub(super) fn mat(&self, i: usize, out: usize, inp: usize) -> W<'_> {
        W {
            data: &self.data[i],
            out,
            inp,
            ld: self.row_len(i),
            t: self.transposed[i].as_deref(),
            ld_t: self.dims[i].first().copied().unwrap_or(0),
        }
    }

    /// Elements per row of tensor `i` read as a matrix (its last dims).
    pub(super) fn row_len(&self, i: usize) -> usize {
        self.dims[i].iter().skip(1).product()
    }

    /// Rows of tensor `i` (its first dim), or its last dim for vectors and
    /// `[1, …, d]` embeddings.
    pub(super) fn width(&self, i: usize) -> usize {
        *self.dims[i].last().unwrap_or(&0)
    }

    fn rows(&self, i: usize) -> usize {
        self.dims[i].first().copied().unwrap_or(0)
    }

    /// Checks that `arch` fits these tensors and `cfg` (the family, the
    /// stem's and head's tensors, every sliced shape); the error names the
    /// tensor.
    pub fn check(&self, cfg: &Config, arch: &Arch) -> Result<()> {
        let too_small = |i: usize, need: String| Error::Tensor {
            name: self.names[i].clone(),
            message: format!("shape {:?} is too small for {need}", self.dims[i]),
        };
        let missing = |name: String, why: &str| Error::Tensor {
            name,
            message: format!("missing: {why}"),
        };
        let (e, x, family) = (arch.embed_dim, &self.idx, cfg.family);
        if x.family != family {
            return Err(Error::Tensor {
                name: self.names.first().cloned().unwrap_or_default(),
                message: format!(
                    "the tensors are named for {:?}, the engine configuration is for {family:?}",
                    x.family
                ),
            });
        }
        if arch.depth > x.layers.len() {
            return Err(missing(
                family.layer_prefix(x.layers.len()),
                &format!("the architecture has depth {}", arch.depth),
            ));
        }
        let wide = |i: usize| -> Result<()> {
            match self.width(i) < e {
                true => Err(too_small(i, format!("embed dim {e}"))),
                false => Ok(()),
            }
        };
        let mat = |p: Pair, out: usize, inp: usize| -> Result<()> {
            if self.rows(p.0) < out || self.row_len(p.0) < inp || self.data[p.1].len() < out {
                return Err(too_small(p.0, format!("a {out} x {inp} slice")));
            }
            Ok(())
        };
        let norm = |p: Pair| -> Result<()> {
            mat(p, e, 0)?;
            wide(p.0)
        };
        match (&x.stem, cfg.stem) {
            (StemIdx::Patches { cls, pos, patch }, Stem::Patches { .. }) => {
                for i in [*cls, *pos] {
                    wide(i)?;
                }
                let t = cfg.image_seq_len().unwrap_or(0);
                if self.data[*pos].len() < t * self.width(*pos) {
                    return Err(too_small(*pos, format!("{t} tokens")));
                }
                mat(*patch, e, cfg.patch_len())?;
                if self.row_len(patch.0) != cfg.patch_len() {
                    return Err(too_small(
                        patch.0,
                        format!("patches of {}", cfg.patch_len()),
                    ));
                }
            }
            (
                StemIdx::Tokens {
                    word,
                    pos,
                    token_type,
                    norm: n,
                },
                Stem::Tokens {
                    vocab_size,
                    max_positions,
                },
            ) => {
                for (i, rows) in [(*word, vocab_size), (*pos, max_positions), (*token_type, 1)] {
                    wide(i)?;
                    if self.rows(i) < rows || self.dims[i].len() != 2 {
                        return Err(too_small(i, format!("a table of {rows} rows")));
                    }
                }
                norm(*n)?;
            }
            _ => unreachable!("the families match, and a family has one stem"),
        }
        let stem = family.stem();
        match (cfg.head, x.final_norm, x.pooler) {
            (Head::ClassToken, None, _) => {
                return Err(missing(stem.final_norm, "the class-token head needs it"))
            }
            (Head::ClassToken, Some(n), _) => norm(n)?,
            (Head::Pooler, _, None) => {
                return Err(missing(stem.pooler, "the pooler head needs it"))
            }
            (Head::Pooler, _, Some(p)) => mat(p, e, e)?,
            (Head::Mean, ..) => {}
        }
        match (cfg.classes, x.classifier) {
            (0, _) => {}
            (_, None) => {
                return Err(missing(
                    stem.classifier,
                    &format!("the configuration has {} classes", cfg.classes),
                ))
            }
            (c, Some(p)) => mat(p, c, e)?,
        }
        for l in 0..arch.depth {
            let (li, qd, m) = (
                &x.layers[cfg.block(self, arch, l)],
                arch.num_heads[l] * cfg.head_dim,
                arch.mlp_width(l),
            );
            norm(li.norm1)?;
            norm(li.norm2)?;
            mat(li.query, qd, e)?;
            mat(li.key, qd, e)?;
            mat(li.value, qd, e)?;
            mat(li.output, e, qd)?;
            mat(li.fc1, m, e)?;
            mat(li.fc2, e, m)?;
            match (&cfg.scaling, li.scaling) {
                (None, None) => {}
                (Some(s), Some(tables)) => {
                    let row = s.row(arch, l).ok_or_else(|| Error::Tensor {
                        name: self.names[tables.0].clone(),
                        message: format!(
                            "the scaling switch `{}` has no row for layer {l} of {}",
                            s.switch().name(),
                            arch.to_json()
                        ),
                    })?;
                    for t in [tables.0, tables.1] {
                        if self.rows(t) <= row || self.row_len(t) < e {
                            return Err(too_small(t, format!("row {row} of width {e}")));
                        }
                    }
                }
                (None, Some(tables)) => {
                    return Err(Error::Tensor {
                        name: self.names[tables.0].clone(),
                        message: "a scaling table, but the engine configuration has no scaling \
                                  (build it with Config::from_supernet)"
                            .into(),
                    })
                }
                (Some(_), None) => {
                    return Err(missing(
                        format!("{}.attention", family.layer(l).scaling),
                        "the engine configuration has scaling layers",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Row `row` of layer `li`'s scaling tables, first `e` entries:
    /// `(attention scales, mlp scales)`.
    pub(super) fn scales(&self, li: &LayerIdx, row: usize, e: usize) -> (&[f32], &[f32]) {
        let (a, m) = li.scaling.expect("checked: the layer has scaling tables");
        (
            &self.data[a][row * self.row_len(a)..][..e],
            &self.data[m][row * self.row_len(m)..][..e],
        )
    }

    /// Zeroed gradient buffers, one per tensor.
    pub fn zero_grads(&self) -> Vec<Vec<f32>> {
        self.data.iter().map(|d| vec![0.0; d.len()]).collect()
    }
}

impl Index {
    /// Finds every tensor by its name: the family is the one whose
    /// embeddings are present.
    fn find(names: &[String]) -> Result<Self> {
        let find = |name: &str| -> Result<usize> {
            names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| Error::Tensor {
                    name: name.into(),
                    message: "missing from the model's tensors".into(),
                })
        };
        let has = |name: &str| names.iter().any(|n| n == name);
        let pair = |p: &str, a: &str, b: &str| -> Result<Pair> {
            Ok((find(&format!("{p}.{a}"))?, find(&format!("{p}.{b}"))?))
        };
        let lin = |p: &str| pair(p, "weight", "bias");
        let family = [Family::Vit, Family::Bert]
            .into_iter()
            .find(|f| {
                let s = f.stem();
                has(&format!("{}.weight", s.patch_projection))
                    || has(&format!("{}.weight", s.word_embeddings))
            })
            .ok_or_else(|| Error::Tensor {
                name: "vit.embeddings.patch_embeddings.projection.weight or \
                       bert.embeddings.word_embeddings.weight"
                    .into(),
                message: "missing: the tensors are neither a ViT's nor a BERT's".into(),
            })?;
        let s = family.stem();
        let stem = match family {
            Family::Vit => StemIdx::Patches {
                cls: find(&s.cls_token)?,
                pos: find(&s.position_embeddings)?,
                patch: lin(&s.patch_projection)?,
            },
            Family::Bert => StemIdx::Tokens {
                word: find(&format!("{}.weight", s.word_embeddings))?,
                pos: find(&format!("{}.weight", s.position_embeddings))?,
                token_type: find(&format!("{}.weight", s.token_type_embeddings))?,
                norm: lin(&s.embeddings_norm)?,
            },
        };
        let mut layers = Vec::new();
        loop {
            let prefix = format!("{}.", family.layer_prefix(layers.len()));
            if !names.iter().any(|n| n.starts_with(&prefix)) {
                break;
            }
            let n = family.layer(layers.len());
            layers.push(LayerIdx {
                norm1: lin(&n.norm1)?,
                query: lin(&n.query)?,
                key: lin(&n.key)?,
                value: lin(&n.value)?,
                output: lin(&n.attention_output)?,
                norm2: lin(&n.norm2)?,
                fc1: lin(&n.intermediate)?,
                fc2: lin(&n.output)?,
                scaling: pair(&n.scaling, "attention", "mlp").ok(),
            });
        }
        Ok(Index {
            family,
            stem,
            layers,
            final_norm: lin(&s.final_norm).ok(),
            pooler: lin(&s.pooler).ok(),
            classifier: lin(&s.classifier).ok(),
        })
    }
}
