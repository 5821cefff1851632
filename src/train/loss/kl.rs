//! KL(teacher ‖ student), batch mean (PyTorch's `kl_div(log_softmax(s), t,
//! reduction="batchmean")`).

use super::Distill;
use candle_core::{Result, Tensor, D};
use candle_nn::ops::{log_softmax, softmax};

pub struct Kl;

impl Distill for Kl {
    fn loss(&self, student: &Tensor, teacher: &Tensor) -> Result<(Tensor, f32)> {
        let teacher = teacher.detach();
        let logt = log_softmax(&teacher, D::Minus1)?;
        let t = softmax(&teacher, D::Minus1)?;
        let logs = log_softmax(student, D::Minus1)?;
        let b = student.dim(0)? as f64;
        let loss = ((t * (logt - logs)?)?.sum_all()? / b)?;
        let v = loss.to_scalar::<f32>()?;
        Ok((loss, v))
    }
}
