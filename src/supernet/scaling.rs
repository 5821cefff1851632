//! Switchable scaling layers (NASViT, Gong et al., ICLR 2022): per block,
//! two tables of per-channel scales, one for the attention branch and one
//! for the MLP branch, that multiply the branch output before the residual
//! add:
//!
//! ```text
//! x = x + attn(ln_before(x)) ⊙ scaling.attention[row, :C]
//! x = x + mlp(ln_after(x))   ⊙ scaling.mlp[row, :C]
//! ```
//!
//! `C` is the subnet's embed dim and `row` is chosen by the subnet through
//! the [`Switch`]: its depth (NASViT's choice), nothing (one shared row:
//! LayerScale), or this layer's heads × MLP ratio. Subnets that share a row
//! share its leading `C` entries (weight entanglement, as everywhere).
//!
//! NASViT multiplies by a further `8 / C`. vitnas leaves that factor out,
//! so a table holds the scale itself. Under Adam a constant factor on a
//! parameter only changes its starting value and its step size, which the
//! recipe's `init` and learning rate state directly; and a factor that
//! depends on `C` is not a constant across subnets: the same stored entry
//! would mean a larger scale in a narrower subnet, a coupling of widths
//! that NASViT does not motivate and that folding would have to repeat.
//!
//! [`fold`] multiplies the selected rows into the attention output
//! projection and fc2 (weight rows and bias), so an extracted subnet is a
//! plain ViT with no scaling code and the same outputs.

use crate::error::{Error, Result};
use crate::models::layers::Linear;
use crate::space::{Arch, Space};
use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// Which row of a block's tables a subnet uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Switch {
    /// Row `depth − 1`: subnets of different depths scale their residual
    /// branches in their own way (NASViT). Tables have one row per depth
    /// up to the supernet's.
    #[default]
    #[serde(rename = "depth")]
    Depth,
    /// One row shared by every subnet (LayerScale).
    #[serde(rename = "none")]
    Shared,
    /// One row per (heads, MLP ratio) choice of this layer, row
    /// `heads index × number of ratios + ratio index` in the space's
    /// per-layer choice lists; an off-grid layer has no row.
    #[serde(rename = "layer_config")]
    LayerConfig,
}

impl Switch {
    /// The name a recipe uses.
    pub fn name(self) -> &'static str {
        match self {
            Switch::Depth => "depth",
            Switch::Shared => "none",
            Switch::LayerConfig => "layer_config",
        }
    }
}

/// The recipe's `[scaling]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingConfig {
    /// Whether the supernet has scaling layers (a present section must say).
    pub enabled: bool,
    /// How a subnet picks its row ([`Switch`]); `depth` when left out.
    #[serde(default)]
    pub switch: Switch,
    /// Initial value of every scale (NASViT: 1e-4); not negative.
    #[serde(default = "default_init")]
    pub init: f64,
}

fn default_init() -> f64 {
    1e-4
}

impl Default for ScalingConfig {
    /// No scaling layers.
    fn default() -> Self {
        ScalingConfig {
            enabled: false,
            switch: Switch::default(),
            init: default_init(),
        }
    }
}

impl ScalingConfig {
    /// Whether this is the default (no scaling, default switch and init):
    /// a recipe without a `[scaling]` section.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The row mapping of a supernet of `space` when enabled.
    pub fn rows(&self, space: &Space) -> Option<Scaling> {
        self.enabled.then(|| Scaling::new(self.switch, space))
    }
}

/// How the subnets of one space pick their rows of each block's tables.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    switch: Switch,
    /// Table height per layer.
    heights: Vec<usize>,
    /// Per layer, the heads and MLP ratio choices (`layer_config` only).
    choices: Vec<(Vec<usize>, Vec<f64>)>,
}

impl Scaling {
    pub fn new(switch: Switch, space: &Space) -> Self {
        let depth = space.supernet.depth;
        let choices: Vec<(Vec<usize>, Vec<f64>)> = match switch {
            Switch::LayerConfig => (0..depth)
                .map(|l| {
                    (
                        space.heads_choices(l).to_vec(),
                        space.mlp_choices(l).to_vec(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        let heights = (0..depth)
            .map(|l| match switch {
                Switch::Depth => depth,
                Switch::Shared => 1,
                Switch::LayerConfig => choices[l].0.len() * choices[l].1.len(),
            })
            .collect();
        Scaling {
            switch,
            heights,
            choices,
        }
    }

    pub fn switch(&self) -> Switch {
        self.switch
    }

    /// Rows of layer `l`'s tables.
    pub fn height(&self, l: usize) -> usize {
        self.heights[l]
    }

    /// The row layer `l` of `arch` uses, `None` when the switch has no row
    /// for it (`layer_config` and an off-grid layer, or a layer past the
    /// supernet's depth).
    pub fn row(&self, arch: &Arch, l: usize) -> Option<usize> {
        if l >= self.heights.len() || l >= arch.depth {
            return None;
        }
        match self.switch {
            Switch::Depth => Some(arch.depth - 1).filter(|&r| r < self.heights[l]),
            Switch::Shared => Some(0),
            Switch::LayerConfig => {
                let (hs, rs) = &self.choices[l];
                let (heads, ratio) = (*arch.num_heads.get(l)?, *arch.mlp_ratio.get(l)?);
                let h = hs.iter().position(|&h| h == heads)?;
                let r = rs.iter().position(|&r| r == ratio)?;
                Some(h * rs.len() + r)
            }
        }
    }

    /// The row of every layer of `arch`; the error names the layer and the
    /// values that have no row.
    pub fn rows(&self, space: &Space, arch: &Arch) -> Result<Vec<usize>> {
        (0..arch.depth)
            .map(|l| {
                self.row(arch, l).ok_or_else(|| Error::InvalidArch {
                    space: space.name.clone(),
                    field: format!("num_heads[{l}] / mlp_ratio[{l}]"),
                    message: format!(
                        "the scaling switch `{}` has no table row for layer {l} with {} heads and \
                         MLP ratio {}: not among the layer's choices (off-grid architectures need \
                         the switch `depth` or `none`)",
                        self.switch.name(),
                        arch.num_heads.get(l).copied().unwrap_or(0),
                        arch.mlp_ratio.get(l).copied().unwrap_or(0.0),
                    ),
                })
            })
            .collect()
    }
}

/// One block's scaling tables, `[height, max_embed]` each.
#[derive(Debug, Clone)]
pub struct ElasticScaling {
    pub attention: Tensor,
    pub mlp: Tensor,
}

/// The tables of one block (`vb`: the block's `scaling` prefix), every
/// entry starting at `init`.
pub fn elastic_scaling(
    height: usize,
    max_embed: usize,
    init: f64,
    vb: VarBuilder,
) -> candle_core::Result<ElasticScaling> {
    let hint = Init::Const(init);
    Ok(ElasticScaling {
        attention: vb.get_with_hints((height, max_embed), "attention", hint)?,
        mlp: vb.get_with_hints((height, max_embed), "mlp", hint)?,
    })
}

impl ElasticScaling {
    /// Row `row`, first `embed` entries, as `[1, embed]` (broadcast over
    /// token rows); differentiable.
    fn select(table: &Tensor, row: usize, embed: usize) -> candle_core::Result<Tensor> {
        table.narrow(0, row, 1)?.narrow(1, 0, embed)
    }

    /// `branch ⊙ attention[row, :embed]` for a `[n, embed]` branch output.
    pub fn scale_attention(
        &self,
        branch: &Tensor,
        row: usize,
        embed: usize,
    ) -> candle_core::Result<Tensor> {
        branch.broadcast_mul(&Self::select(&self.attention, row, embed)?)
    }

    /// `branch ⊙ mlp[row, :embed]` for a `[n, embed]` branch output.
    pub fn scale_mlp(
        &self,
        branch: &Tensor,
        row: usize,
        embed: usize,
    ) -> candle_core::Result<Tensor> {
        branch.broadcast_mul(&Self::select(&self.mlp, row, embed)?)
    }

    /// Detached `[embed]` copies of the attention and MLP scales of `row`.
    pub fn extract(&self, row: usize, embed: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let copy = |t: &Tensor| -> candle_core::Result<Tensor> {
            super::linear::detached_copy(&Self::select(t, row, embed)?.squeeze(0)?)
        };
        Ok((copy(&self.attention)?, copy(&self.mlp)?))
    }
}

/// `lin` followed by `⊙ scale` as one linear layer: row `i` of the weight
/// and entry `i` of the bias multiplied by `scale[i]`.
pub fn fold(lin: Linear, scale: &Tensor) -> candle_core::Result<Linear> {
    Ok(Linear {
        weight: lin.weight.broadcast_mul(&scale.unsqueeze(1)?)?,
        bias: (lin.bias * scale)?,
    })
}
