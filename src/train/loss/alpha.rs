//! AlphaNet's adaptive alpha-divergence (Wang et al., ICML 2021): per
//! example, the larger of D_{alpha_min} and D_{alpha_max} between teacher p
//! and student q, with importance weights (p/q)^alpha clipped at `iw_clip`.
//! The gradient comes from AlphaNet's surrogate
//! `−Σ q · ρ_f(p/q) · log q` (q and the weights detached), as in its code.

use super::Distill;
use candle_core::{Result, Tensor, D};
use candle_nn::ops::{log_softmax, softmax};

pub struct AlphaDivergence {
    pub alpha_min: f64,
    pub alpha_max: f64,
    pub iw_clip: f64,
}

/// Per-example `(divergence value, surrogate loss)` for one alpha.
fn f_divergence(
    logq: &Tensor,
    q: &Tensor,
    p: &Tensor,
    alpha: f64,
    iw_clip: f64,
) -> Result<(Tensor, Tensor)> {
    let ratio = (p / q)?;
    let (f, f_base, rho) = if alpha.abs() < 1e-3 {
        let iw = ratio.clamp(0f32, iw_clip as f32)?;
        let log_iw = iw.log()?;
        (log_iw.neg()?, 0.0, (log_iw - 1.0)?)
    } else if (alpha - 1.0).abs() < 1e-3 {
        let f = (&ratio * ratio.log()?)?;
        (f, 0.0, ratio)
    } else {
        let iw = ratio.powf(alpha)?.clamp(0f32, iw_clip as f32)?;
        let base = 1.0 / alpha / (alpha - 1.0);
        let f = (&iw * base)?;
        let rho = ((&iw / alpha)? + base)?;
        (f, base, rho)
    };
    let value = (q * (f - f_base)?)?.sum(D::Minus1)?;
    let surrogate = (q * rho)?.detach().mul(logq)?.sum(D::Minus1)?.neg()?;
    Ok((value, surrogate))
}

impl Distill for AlphaDivergence {
    fn loss(&self, student: &Tensor, teacher: &Tensor) -> Result<(Tensor, f32)> {
        let p = softmax(&teacher.detach(), D::Minus1)?;
        let logq = log_softmax(student, D::Minus1)?;
        let q = logq.detach().exp()?;
        let (v_lo, g_lo) = f_divergence(&logq, &q, &p, self.alpha_min, self.iw_clip)?;
        let (v_hi, g_hi) = f_divergence(&logq, &q, &p, self.alpha_max, self.iw_clip)?;
        let pick_lo = v_lo.gt(&v_hi)?;
        let surrogate = pick_lo.where_cond(&g_lo, &g_hi)?.mean_all()?;
        let value = v_lo.maximum(&v_hi)?.mean_all()?.to_scalar::<f32>()?;
        Ok((surrogate, value))
    }
}
