//! DynaBERT's network rewiring (Hou et al., NeurIPS 2020, §3.1): before a
//! BERT supernet trains, every layer's attention heads and FFN neurons are
//! reordered by importance, so that the leading slices that subnets use
//! hold the most important ones. The largest subnet computes the same
//! function before and after; only the order of its heads and neurons
//! changes.
//!
//! Importance is measured on a labelled sample with the largest subnet of
//! the space, `L` the cross-entropy of its logits (batch mean), head masks
//! all ones:
//!
//! - head `h` of layer `l`: `I_h = Σ_batches |∂L/∂mask_h|` (the mask
//!   multiplies the head's context, [`BertSupernet::forward_masked`]);
//! - FFN neuron `i` of layer `l`, with `W1 = intermediate.dense.weight`
//!   `[M, E]`, `b1` its bias and `W2 = output.dense.weight` `[E, M]`:
//!   `I_i = Σ_batches ( |Σ_j W1_ij ∂L/∂W1_ij + b1_i ∂L/∂b1_i|
//!   + |Σ_k W2_ki ∂L/∂W2_ki| )`, the first-order estimate of the loss
//!   change when the neuron is removed, through its input row and its
//!   output column (DynaBERT's `compute_neuron_head_importance`).
//!
//! [`rewire`] sorts each layer by decreasing importance (stable on ties)
//! and permutes, in place, q/k/v rows (in blocks of `head_dim`) and biases
//! and the attention output's columns (same blocks), the intermediate's
//! rows and bias and the output's columns. Call it before the optimizer
//! exists: optimizer moments are not permuted.

use super::bert::{BertSupernet, Tokens};
use super::params::Params;
use crate::data::text::TextBatch;
use crate::engine::names::Family;
use crate::error::{Error, Result};
use crate::space::{mlp_width, Arch};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file [`RewireReport::write`] writes into a run directory.
pub const REPORT_FILE: &str = "rewire-report.json";

/// Neuron positions listed in [`LayerRewire::neuron_order_head`].
const NEURON_ORDER_SHOWN: usize = 16;

/// Importance of every head and FFN neuron of every supernet layer, in the
/// supernet's current order. Entries the largest subnet does not use (past
/// its depth, heads or FFN width) are 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    /// `[depth][num_heads]` of the supernet.
    pub heads: Vec<Vec<f32>>,
    /// `[depth][mlp width]` of the supernet.
    pub neurons: Vec<Vec<f32>>,
    /// Examples of the sample the sums run over.
    pub examples: usize,
}

/// Head and neuron importance (module doc) of `net`'s largest subnet on
/// the labelled `batches`.
pub fn importance(net: &BertSupernet, batches: &[TextBatch]) -> Result<Importance> {
    if batches.is_empty() {
        return Err(Error::Data {
            source_name: "importance sample".into(),
            message: "needs at least one batch".into(),
        });
    }
    let s = &net.space.supernet;
    let (max_heads, max_mlp) = (s.num_heads, net.space.supernet_mlp_width());
    let arch = net.space.largest();
    let mut imp = Importance {
        heads: vec![vec![0.0; max_heads]; s.depth],
        neurons: vec![vec![0.0; max_mlp]; s.depth],
        examples: 0,
    };
    let names: Vec<_> = (0..arch.depth).map(|l| Family::Bert.layer(l)).collect();
    for batch in batches {
        let masks = (0..arch.depth)
            .map(|l| Var::ones(arch.num_heads[l], DType::F32, batch.ids.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mask_tensors: Vec<Tensor> = masks.iter().map(|m| m.as_tensor().clone()).collect();
        let tokens = Tokens {
            ids: &batch.ids,
            mask: &batch.attention_mask,
        };
        let logits = net.forward_masked(tokens, &arch, Some(&mask_tensors))?;
        let labels = batch.labels.to_dtype(DType::U32)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        let grads = loss.backward()?;
        let grad = |t: &Tensor, name: String| {
            grads.get(t).cloned().ok_or_else(|| Error::Tensor {
                name,
                message: "no gradient reached it from the largest subnet's loss".into(),
            })
        };
        for (l, n) in names.iter().enumerate() {
            let g = grad(masks[l].as_tensor(), format!("{} (head mask)", n.query))?;
            add_abs(&mut imp.heads[l], &g)?;
            let layer = &net.layers[l];
            let (w1, b1, w2) = (
                &layer.intermediate.weight,
                &layer.intermediate.bias,
                &layer.output.weight,
            );
            let g_w1 = grad(w1, format!("{}.weight", n.intermediate))?;
            let g_b1 = grad(b1, format!("{}.bias", n.intermediate))?;
            let g_w2 = grad(w2, format!("{}.weight", n.output))?;
            let through_in = ((w1 * g_w1)?.sum(D::Minus1)? + (b1 * g_b1)?)?;
            let through_out = (w2 * g_w2)?.sum(0)?;
            add_abs(&mut imp.neurons[l], &through_in)?;
            add_abs(&mut imp.neurons[l], &through_out)?;
        }
        imp.examples += batch.labels.dim(0)?;
    }
    Ok(imp)
}

/// `acc[i] += |t[i]|` over the entries of `t` (a prefix of `acc`).
fn add_abs(acc: &mut [f32], t: &Tensor) -> Result<()> {
    let v = t.abs()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    for (a, x) in acc.iter_mut().zip(v) {
        *a += x;
    }
    Ok(())
}

/// Share of a layer's total importance held by the first `width` heads or
/// neurons, before and after rewiring (0 when the layer's total is 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub width: usize,
    pub before: f64,
    pub after: f64,
}

/// What [`rewire`] did to one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRewire {
    pub layer: usize,
    /// Position `i` now holds the head that was at `head_order[i]`.
    pub head_order: Vec<usize>,
    /// Head importance in the new order (non-increasing over the heads the
    /// largest subnet uses).
    pub head_importance: Vec<f32>,
    /// The first positions of the neuron order (as `head_order`).
    pub neuron_order_head: Vec<usize>,
    /// Neurons whose position changed.
    pub neurons_moved: usize,
    /// For each head choice of the layer in the space.
    pub heads_kept: Vec<Kept>,
    /// For each FFN width choice of the layer in the space.
    pub neurons_kept: Vec<Kept>,
}

/// What [`rewire`] did, for `rewire-report.json` in a run directory.
/// Layers past the largest subnet's depth are untouched and not listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewireReport {
    /// Examples the importance was measured on.
    pub examples: usize,
    pub layers: Vec<LayerRewire>,
}

impl RewireReport {
    /// Writes the report as `dir/rewire-report.json`; returns the path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(REPORT_FILE);
        let json = serde_json::to_string_pretty(self).expect("a RewireReport always serializes");
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }
}

/// Reorders every layer of `net` by decreasing `imp` (stable on ties),
/// permuting the variables of `params` (which must be `net`'s own) in
/// place. Only the heads and neurons the largest subnet uses are reordered
/// (the rest keep their places), so the largest subnet computes the same
/// function. `imp` must have the supernet's shape, finite entries.
pub fn rewire(net: &BertSupernet, params: &Params, imp: &Importance) -> Result<RewireReport> {
    check_shape(net, imp)?;
    let arch = net.space.largest();
    let head_dim = net.space.supernet.head_dim;
    let mut layers = Vec::with_capacity(arch.depth);
    for l in 0..arch.depth {
        let names = Family::Bert.layer(l);
        let layer = &net.layers[l];
        let heads = order(&imp.heads[l], arch.num_heads[l]);
        let neurons = order(&imp.neurons[l], arch.mlp_width(l));
        let rows: Vec<u32> = heads
            .iter()
            .flat_map(|&h| (h * head_dim..(h + 1) * head_dim).map(|r| r as u32))
            .collect();
        let neuron_idx: Vec<u32> = neurons.iter().map(|&i| i as u32).collect();
        let (heads_idx, neurons_idx) = (
            Tensor::new(rows.as_slice(), layer.query.weight.device())?,
            Tensor::new(neuron_idx.as_slice(), layer.query.weight.device())?,
        );
        let moves = [
            (&names.query, "weight", &layer.query.weight, 0, &heads_idx),
            (&names.query, "bias", &layer.query.bias, 0, &heads_idx),
            (&names.key, "weight", &layer.key.weight, 0, &heads_idx),
            (&names.key, "bias", &layer.key.bias, 0, &heads_idx),
            (&names.value, "weight", &layer.value.weight, 0, &heads_idx),
            (&names.value, "bias", &layer.value.bias, 0, &heads_idx),
            (
                &names.attention_output,
                "weight",
                &layer.attention_output.weight,
                1,
                &heads_idx,
            ),
            (
                &names.intermediate,
                "weight",
                &layer.intermediate.weight,
                0,
                &neurons_idx,
            ),
            (
                &names.intermediate,
                "bias",
                &layer.intermediate.bias,
                0,
                &neurons_idx,
            ),
            (
                &names.output,
                "weight",
                &layer.output.weight,
                1,
                &neurons_idx,
            ),
        ];
        for (prefix, suffix, tensor, dim, idx) in moves {
            permute(params, &format!("{prefix}.{suffix}"), tensor, dim, idx)?;
        }
        layers.push(LayerRewire {
            layer: l,
            head_importance: heads.iter().map(|&h| imp.heads[l][h]).collect(),
            neuron_order_head: neurons.iter().copied().take(NEURON_ORDER_SHOWN).collect(),
            neurons_moved: neurons.iter().enumerate().filter(|(i, &n)| *i != n).count(),
            heads_kept: kept(&imp.heads[l], &heads, net.space.heads_choices(l)),
            neurons_kept: kept(&imp.neurons[l], &neurons, &mlp_choices(net, &arch, l)),
            head_order: heads,
        });
    }
    Ok(RewireReport {
        examples: imp.examples,
        layers,
    })
}

fn check_shape(net: &BertSupernet, imp: &Importance) -> Result<()> {
    let s = &net.space.supernet;
    let want = [
        ("heads", &imp.heads, s.num_heads),
        ("neurons", &imp.neurons, net.space.supernet_mlp_width()),
    ];
    for (field, rows, width) in want {
        let bad = |message: String| Error::Tensor {
            name: format!("importance.{field}"),
            message,
        };
        if rows.len() != s.depth {
            return Err(bad(format!(
                "{} layers, the supernet has {}",
                rows.len(),
                s.depth
            )));
        }
        for (l, r) in rows.iter().enumerate() {
            if r.len() != width {
                return Err(bad(format!(
                    "layer {l}: {} entries, the supernet has {width}",
                    r.len()
                )));
            }
            if let Some(i) = r.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!("layer {l}, entry {i}: {} is not finite", r[i])));
            }
        }
    }
    Ok(())
}

/// The first `used` positions sorted by decreasing `imp` (stable), then
/// the rest in place.
fn order(imp: &[f32], used: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..imp.len()).collect();
    o[..used].sort_by(|&a, &b| imp[b].total_cmp(&imp[a]));
    o
}

/// Sets the variable `name` of `params`, which must be `tensor` (the
/// supernet's own), to its entries along `dim` taken in the order `idx`.
fn permute(params: &Params, name: &str, tensor: &Tensor, dim: usize, idx: &Tensor) -> Result<()> {
    let bad = |message: String| Error::Tensor {
        name: name.into(),
        message,
    };
    let var = params
        .names
        .iter()
        .position(|n| n == name)
        .map(|i| &params.vars[i])
        .ok_or_else(|| bad("not among the parameters passed to rewire".into()))?;
    if var.as_tensor().id() != tensor.id() {
        return Err(bad(
            "the parameter is not the supernet's own variable (params from another VarMap?)".into(),
        ));
    }
    let len = idx.dim(0)?;
    if var.dim(dim)? != len {
        return Err(bad(format!(
            "expected {len} entries along dim {dim}, found shape {:?}",
            var.dims()
        )));
    }
    var.set(&var.as_tensor().index_select(idx, dim)?.contiguous()?)?;
    Ok(())
}

/// The layer's FFN width choices: `mlp_dim`, or each ratio at each hidden
/// size (sorted, distinct).
fn mlp_choices(net: &BertSupernet, arch: &Arch, l: usize) -> Vec<usize> {
    let space = &net.space;
    if space.mlp_is_dim() {
        return space.mlp_dim_choices(l).to_vec();
    }
    let mut w: Vec<usize> = space
        .choices
        .embed_dim
        .iter()
        .flat_map(|&e| space.mlp_choices(l).iter().map(move |&r| mlp_width(e, r)))
        .filter(|&m| m <= arch.mlp_width(l))
        .collect();
    w.sort_unstable();
    w.dedup();
    w
}

fn kept(imp: &[f32], order: &[usize], widths: &[usize]) -> Vec<Kept> {
    let total: f64 = imp.iter().map(|&x| x as f64).sum();
    let share = |idx: &mut dyn Iterator<Item = usize>| match total > 0.0 {
        true => idx.map(|i| imp[i] as f64).sum::<f64>() / total,
        false => 0.0,
    };
    let mut widths = widths.to_vec();
    widths.sort_unstable();
    widths
        .into_iter()
        .map(|w| Kept {
            width: w,
            before: share(&mut (0..w.min(imp.len()))),
            after: share(&mut order.iter().copied().take(w)),
        })
        .collect()
}
