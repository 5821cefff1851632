//! The engine's view of a model: its fixed shapes ([`Config`]) and its
//! tensors as flat f32 buffers found by Hugging Face name ([`Weights`]).

use super::blas::W;
use crate::error::{Error, Result};
use crate::models::vit::VitConfig;
use crate::space::{Arch, Space};
use crate::supernet::scaling::Scaling;
use crate::supernet::Supernet;
use candle_core::Tensor;

/// Fixed shapes of the model family (input, head size, classes), and how
/// subnets pick their rows of the scaling tables when the model has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub channels: usize,
    pub image_size: usize,
    pub patch: usize,
    pub head_dim: usize,
    pub classes: usize,
    pub eps: f32,
    /// The row mapping of the blocks' scaling tables (a supernet with
    /// switchable scaling layers); `None` for models without them.
    pub scaling: Option<Scaling>,
}

impl Config {
    pub fn from_space(space: &Space) -> Self {
        Self {
            channels: space.image().channels,
            image_size: space.image().image_size,
            patch: space.image().patch_size,
            head_dim: space.supernet.head_dim,
            classes: space.image().num_classes,
            eps: space.supernet.layer_norm_eps as f32,
            scaling: None,
        }
    }

    /// The configuration of a supernet: its space's shapes and its scaling
    /// layers' row mapping.
    pub fn from_supernet(net: &Supernet) -> Self {
        Self {
            scaling: net.scaling.clone(),
            ..Self::from_space(&net.space)
        }
    }

    pub fn from_vit(c: &VitConfig) -> Self {
        Self {
            channels: c.num_channels,
            image_size: c.image_size,
            patch: c.patch_size,
            head_dim: c.head_dim,
            classes: c.num_labels,
            eps: c.layer_norm_eps as f32,
            scaling: None,
        }
    }

    pub(super) fn grid(&self) -> usize {
        self.image_size / self.patch
    }
    /// Patches per image.
    pub(super) fn patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Tokens per image (patches + class token).
    pub fn seq_len(&self) -> usize {
        self.patches() + 1
    }
    pub(super) fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
}

/// `(weight, bias)` or `(gamma, beta)` positions in [`Weights`].
pub type Pair = (usize, usize);

/// Positions of one block's tensors in [`Weights`].
#[derive(Debug, Clone)]
pub struct LayerIdx {
    pub ln1: Pair,
    pub query: Pair,
    pub key: Pair,
    pub value: Pair,
    pub output: Pair,
    pub ln2: Pair,
    pub fc1: Pair,
    pub fc2: Pair,
    /// The scaling tables `(attention, mlp)`, when the model has them.
    pub scaling: Option<Pair>,
}

#[derive(Debug, Clone)]
pub(super) struct Index {
    pub cls: usize,
    pub pos: usize,
    pub patch: Pair,
    pub layers: Vec<LayerIdx>,
    pub norm: Pair,
    pub head: Pair,
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
        let find = |name: &str| -> Result<usize> {
            names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| Error::Tensor {
                    name: name.into(),
                    message: "missing from the model's tensors".into(),
                })
        };
        let pair = |p: &str, a: &str, b: &str| -> Result<Pair> {
            Ok((find(&format!("{p}.{a}"))?, find(&format!("{p}.{b}"))?))
        };
        let lin = |p: &str| pair(p, "weight", "bias");
        let mut layers = Vec::new();
        while names
            .iter()
            .any(|n| n.starts_with(&format!("vit.encoder.layer.{}.", layers.len())))
        {
            let p = format!("vit.encoder.layer.{}", layers.len());
            layers.push(LayerIdx {
                ln1: lin(&format!("{p}.layernorm_before"))?,
                query: lin(&format!("{p}.attention.attention.query"))?,
                key: lin(&format!("{p}.attention.attention.key"))?,
                value: lin(&format!("{p}.attention.attention.value"))?,
                output: lin(&format!("{p}.attention.output.dense"))?,
                ln2: lin(&format!("{p}.layernorm_after"))?,
                fc1: lin(&format!("{p}.intermediate.dense"))?,
                fc2: lin(&format!("{p}.output.dense"))?,
                scaling: pair(&format!("{p}.scaling"), "attention", "mlp").ok(),
            });
        }
        let idx = Index {
            cls: find("vit.embeddings.cls_token")?,
            pos: find("vit.embeddings.position_embeddings")?,
            patch: lin("vit.embeddings.patch_embeddings.projection")?,
            layers,
            norm: lin("vit.layernorm")?,
            head: lin("classifier")?,
        };
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

    /// Recomputes the transposed copies of the weight matrices after
    /// `data` changed (an optimizer step updates `data` in place).
    pub fn refresh_transposed(&mut self) {
        let x = &self.idx;
        let mut mats = vec![x.patch.0, x.head.0];
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

    /// Checks that `arch` fits these tensors; the error names the tensor.
    pub fn check(&self, cfg: &Config, arch: &Arch) -> Result<()> {
        let too_small = |i: usize, need: String| Error::Tensor {
            name: self.names[i].clone(),
            message: format!("shape {:?} is too small for {need}", self.dims[i]),
        };
        let e = arch.embed_dim;
        if arch.depth > self.idx.layers.len() {
            return Err(Error::Tensor {
                name: format!("vit.encoder.layer.{}", self.idx.layers.len()),
                message: format!("missing: the architecture has depth {}", arch.depth),
            });
        }
        let x = &self.idx;
        for i in [x.cls, x.pos, x.norm.0, x.norm.1] {
            if self.width(i) < e {
                return Err(too_small(i, format!("embed dim {e}")));
            }
        }
        if self.data[x.pos].len() < cfg.seq_len() * self.width(x.pos) {
            return Err(too_small(x.pos, format!("{} tokens", cfg.seq_len())));
        }
        let mat = |p: Pair, out: usize, inp: usize| -> Result<()> {
            if self.dims[p.0].first().copied().unwrap_or(0) < out
                || self.row_len(p.0) < inp
                || self.data[p.1].len() < out
            {
                return Err(too_small(p.0, format!("a {out} x {inp} slice")));
            }
            Ok(())
        };
        mat(x.patch, e, cfg.patch_len())?;
        if self.row_len(x.patch.0) != cfg.patch_len() {
            return Err(too_small(
                x.patch.0,
                format!("patches of {}", cfg.patch_len()),
            ));
        }
        mat(x.head, cfg.classes, e)?;
        for l in 0..arch.depth {
            let (li, qd, m) = (
                &x.layers[l],
                arch.num_heads[l] * cfg.head_dim,
                arch.mlp_width(l),
            );
            for p in [li.ln1, li.ln2] {
                mat((p.0, p.1), e, 0)?;
                if self.width(p.0) < e {
                    return Err(too_small(p.0, format!("embed dim {e}")));
                }
            }
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
                        if self.dims[t].first().copied().unwrap_or(0) <= row || self.row_len(t) < e
                        {
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
                    return Err(Error::Tensor {
                        name: format!("vit.encoder.layer.{l}.scaling.attention"),
                        message: "missing, but the engine configuration has scaling layers".into(),
                    })
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
