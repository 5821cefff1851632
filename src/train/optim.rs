//! AdamW (decoupled weight decay) updating every parameter in one pass over
//! plain slices, with global-norm gradient clipping, no decay on biases,
//! norms, cls token, position embeddings and scaling tables; and the warmup + cosine
//! learning-rate schedule.

use super::recipe::OptimizerConfig;
use crate::kernels::vecmath::{self, AdamWStep};
use candle_core::{Result, Tensor, Var};

/// Whether a parameter is exempt from weight decay.
pub fn no_weight_decay(name: &str) -> bool {
    name.ends_with(".bias")
        || name.contains("layernorm")
        || name.ends_with("cls_token")
        || name.ends_with("position_embeddings")
        || name.contains(".scaling.")
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub cfg: OptimizerConfig,
    /// First and second moments, one flat vector per parameter.
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Updates applied so far (Adam's bias-correction count).
    pub t: u64,
    decay: Vec<bool>,
}

impl AdamW {
    pub fn new(names: &[String], sizes: &[usize], cfg: OptimizerConfig) -> Self {
        Self {
            cfg,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            t: 0,
            decay: names.iter().map(|n| !no_weight_decay(n)).collect(),
        }
    }

    /// Applies one update to candle variables from the accumulated
    /// gradients; returns the global gradient norm before clipping.
    pub fn step(&mut self, params: &[Var], grads: &[Vec<f32>], lr: f64) -> Result<f64> {
        let mut weights = params
            .iter()
            .map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect::<Result<Vec<_>>>()?;
        let norm = self.step_flat(&mut weights, grads, lr);
        for (var, w) in params.iter().zip(weights) {
            var.set(&Tensor::from_vec(w, var.shape(), var.device())?)?;
        }
        Ok(norm)
    }

    /// Applies one update to flat weight buffers (the same order as the
    /// gradients) in place; returns the global gradient norm before
    /// clipping. The trainer keeps its weights flat between steps and calls
    /// this directly: no copies into and out of candle per step.
    pub fn step_flat(&mut self, weights: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f64) -> f64 {
        let norm = grads
            .iter()
            .flat_map(|g| g.iter())
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        let clip = match self.cfg.clip_grad_norm {
            Some(c) if norm > c => (c / (norm + 1e-6)) as f32,
            _ => 1.0,
        };
        self.t += 1;
        let [b1, b2] = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        let (b1, b2, eps) = (b1 as f32, b2 as f32, self.cfg.eps as f32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for (k, w) in weights.iter_mut().enumerate() {
            let decay = if self.decay[k] {
                (lr * self.cfg.weight_decay) as f32
            } else {
                0.0
            };
            let c = AdamWStep {
                clip,
                beta1: b1,
                beta2: b2,
                eps,
                decay,
                step_size,
                bc2_sqrt,
            };
            vecmath::adamw(w, &mut self.m[k], &mut self.v[k], &grads[k], c);
        }
        norm
    }
}

/// Learning rate at `step` of `total`: linear warmup from `warmup_lr` to
/// `peak` over `warmup` steps, then cosine decay to `min_lr`.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64, cfg: &OptimizerConfig) -> f64 {
    if step < warmup {
        return cfg.warmup_lr + (peak - cfg.warmup_lr) * step as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}
