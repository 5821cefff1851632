//! AlphaNet's adaptive alpha-divergence (Wang et al., ICML 2021): per
//! example, the larger of D_{alpha_min} and D_{alpha_max} between teacher p
//! and student q, with importance weights (p/q)^alpha clipped at `iw_clip`.
//! The gradient comes from AlphaNet's surrogate
//! `−Σ q · ρ_f(p/q) · log q` (q and the weights detached), as in its code
//! (`loss_ops.py`), or, with [`AlphaSurrogate::Normalized`], from the same
//! surrogate divided per example by `E_q[w]`, `w` the clipped importance
//! weights: the gradient of the Rényi form of the divergence, bounded like
//! a KL gradient (see evaluate/studies/2026-12-06-alpha-divergence.md for
//! why the unnormalised one destabilises the sandwich).

use super::AlphaSurrogate;
use super::Distill;
use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::ops::{log_softmax, softmax};

pub struct AlphaDivergence {
    pub alpha_min: f64,
    pub alpha_max: f64,
    pub iw_clip: f64,
    pub surrogate: AlphaSurrogate,
}

/// Per-example `(divergence value, surrogate loss)` for one alpha.
fn f_divergence(
    logq: &Tensor,
    q: &Tensor,
    p: &Tensor,
    alpha: f64,
    iw_clip: f64,
    surrogate: AlphaSurrogate,
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
        let rho = match surrogate {
            AlphaSurrogate::Alphanet => rho,
            // The constant `base` does not change the gradient (Σ ∂log q
            // weighted by q is 0), so dividing ρ by E_q[w] divides the
            // gradient by it.
            AlphaSurrogate::Normalized => {
                let mean_w = (q * &iw)?.sum_keepdim(D::Minus1)?;
                rho.broadcast_div(&mean_w)?
            }
        };
        (f, base, rho)
    };
    let value = (q * (f - f_base)?)?.sum(D::Minus1)?;
    let surrogate = (q * rho)?.detach().mul(logq)?.sum(D::Minus1)?.neg()?;
    Ok((value, surrogate))
}

/// Both branches of one batch: per example, the divergence value and the
/// surrogate loss of `alpha_min` and of `alpha_max`, and the teacher and
/// student probabilities.
struct Branches {
    v_lo: Tensor,
    g_lo: Tensor,
    v_hi: Tensor,
    g_hi: Tensor,
    p: Tensor,
    q: Tensor,
}

impl AlphaDivergence {
    fn branches(&self, student: &Tensor, teacher: &Tensor) -> Result<Branches> {
        let p = softmax(&teacher.detach(), D::Minus1)?;
        let logq = log_softmax(student, D::Minus1)?;
        let q = logq.detach().exp()?;
        let (v_lo, g_lo) =
            f_divergence(&logq, &q, &p, self.alpha_min, self.iw_clip, self.surrogate)?;
        let (v_hi, g_hi) =
            f_divergence(&logq, &q, &p, self.alpha_max, self.iw_clip, self.surrogate)?;
        Ok(Branches {
            v_lo,
            g_lo,
            v_hi,
            g_hi,
            p,
            q,
        })
    }
}

/// `‖∂loss/∂z‖`, or 0 where the loss does not reach `z`.
fn grad_norm(loss: &Tensor, z: &Var) -> Result<f64> {
    Ok(match loss.backward()?.get(z.as_tensor()) {
        Some(g) => (g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64).sqrt(),
        None => 0.0,
    })
}

impl Distill for AlphaDivergence {
    fn loss(&self, student: &Tensor, teacher: &Tensor) -> Result<(Tensor, f32)> {
        let b = self.branches(student, teacher)?;
        let pick_lo = b.v_lo.gt(&b.v_hi)?;
        let surrogate = pick_lo.where_cond(&b.g_lo, &b.g_hi)?.mean_all()?;
        let value = b.v_lo.maximum(&b.v_hi)?.mean_all()?.to_scalar::<f32>()?;
        Ok((surrogate, value))
    }

    /// Which branch the examples took, each branch's share of the logit
    /// gradient, and the `alpha_min` branch's importance weights
    /// `(p/q)^alpha_min` before clipping (over the examples that took it).
    fn diagnose(&self, student: &Tensor, teacher: &Tensor) -> Result<Option<serde_json::Value>> {
        let z = Var::from_tensor(&student.detach())?;
        let b = self.branches(z.as_tensor(), teacher)?;
        let n = student.dim(0)? as f64;
        let lo = b.v_lo.gt(&b.v_hi)?.to_dtype(DType::F32)?;
        let hi = lo.affine(-1.0, 1.0)?;
        let norm_lo = grad_norm(&((&b.g_lo * &lo)?.sum_all()? / n)?, &z)?;
        let norm_hi = grad_norm(&((&b.g_hi * &hi)?.sum_all()? / n)?, &z)?;
        let picked: Vec<f32> = lo.to_vec1()?;
        let iw: Vec<Vec<f32>> = (&b.p / &b.q)?.powf(self.alpha_min)?.to_vec2()?;
        let (mut entries, mut clipped, mut iw_max) = (0usize, 0usize, 0f64);
        for (w, _) in iw.iter().zip(&picked).filter(|(_, &l)| l > 0.5) {
            entries += w.len();
            clipped += w.iter().filter(|&&x| x as f64 > self.iw_clip).count();
            iw_max = w.iter().fold(iw_max, |m, &x| m.max(x as f64));
        }
        let mean = |t: &Tensor| -> Result<f64> { Ok(t.mean_all()?.to_scalar::<f32>()? as f64) };
        Ok(Some(serde_json::json!({
            "alpha_min_fraction": picked.iter().sum::<f32>() as f64 / n,
            "value_alpha_min": mean(&b.v_lo)?,
            "value_alpha_max": mean(&b.v_hi)?,
            "logit_grad_norm_alpha_min": norm_lo,
            "logit_grad_norm_alpha_max": norm_hi,
            "iw_clipped_fraction": if entries == 0 { 0.0 } else { clipped as f64 / entries as f64 },
            // JSON has no infinity: an unbounded weight (p/q → ∞) reads 1e30.
            "iw_max": iw_max.min(1e30),
        })))
    }
}
