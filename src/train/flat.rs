//! The weights between training steps: the engine's flat buffers, updated
//! in place by the optimizer, when the engine runs the model; candle's
//! variables, refreshed from them only when candle reads them (validation,
//! checkpoints, the end).

use super::optim::AdamW;
use super::step::{Forward, Params};
use crate::engine::{Config as EngineConfig, Weights};
use crate::error::Result;

/// The engine's flat copy of the weights, when the engine runs the model,
/// and whether candle's variables lag behind it.
pub(super) struct FlatWeights {
    pub(super) engine: Option<(Weights, EngineConfig)>,
    vars_stale: bool,
}

impl FlatWeights {
    pub(super) fn new(params: &Params, net: &dyn Forward) -> Result<Self> {
        Ok(FlatWeights {
            engine: params.engine_weights(net)?,
            vars_stale: false,
        })
    }

    /// One AdamW update: in place on the flat weights (then their
    /// transposed copies), or on candle's variables.
    pub(super) fn optimizer_step(
        &mut self,
        opt: &mut AdamW,
        params: &Params,
        grads: &[Vec<f32>],
        lr: f64,
    ) -> Result<f64> {
        match &mut self.engine {
            Some((w, _)) => {
                let norm = opt.step_flat(&mut w.data, grads, lr);
                w.refresh_transposed();
                self.vars_stale = true;
                Ok(norm)
            }
            None => Ok(opt.step(&params.vars, grads, lr)?),
        }
    }

    /// The current weights, flat, in the order of the parameters.
    pub(super) fn values(&self, params: &Params) -> Result<Vec<Vec<f32>>> {
        match &self.engine {
            Some((w, _)) => Ok(w.data.clone()),
            None => params
                .vars
                .iter()
                .map(|v| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
                .collect(),
        }
    }

    /// Brings candle's variables up to date with the flat weights.
    pub(super) fn sync(&mut self, params: &Params) -> Result<()> {
        if let (true, Some((w, _))) = (self.vars_stale, &self.engine) {
            params.store(&w.data)?;
            self.vars_stale = false;
        }
        Ok(())
    }
}
