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

pub use crate::engine::scaling::{Scaling, Switch};

use crate::models::layers::Linear;
use crate::space::Space;
use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

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
