//! Which row of a block's switchable scaling tables a subnet uses (see
//! [`crate::supernet::scaling`] for the layers themselves). The engine
//! reads the tables through this mapping, so it lives here, below the
//! supernet that re-exports it.

use crate::error::{Error, Result};
use crate::space::{Arch, Space};
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
