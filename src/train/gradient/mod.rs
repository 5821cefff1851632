//! Gradient strategies: how the gradients of one step's subnets become the
//! update. Each is a small strategy in its own file; the trainer only sees
//! [`GradientStrategy`]. The step ([`super::step::accumulate_groups`])
//! accumulates each group of subnets into its own buffers, the strategy
//! combines the groups.

mod nasvit;
mod pcgrad;
mod sum;

pub use nasvit::Nasvit;
pub use pcgrad::PcGrad;
pub use sum::Sum;

use super::recipe::GradientConfig;
use super::sampler::Plan;
use serde::{Deserialize, Serialize};

pub trait GradientStrategy: Send + Sync {
    /// The group of each subnet of `plan`: groups are numbered from 0, and
    /// the gradients of a group's subnets are summed by the step.
    fn groups(&self, plan: &Plan) -> Vec<usize>;

    /// Combines the groups' gradients (each in the order of the
    /// parameters) into `groups[0]`, the update; `epoch` counts from 0.
    /// Returns how the groups agreed, when the strategy compares them.
    fn combine(&self, groups: &mut [Vec<Vec<f32>>], epoch: usize) -> Option<Agreement>;
}

pub fn from_config(c: &GradientConfig) -> Box<dyn GradientStrategy> {
    match *c {
        GradientConfig::Sum => Box::new(Sum),
        GradientConfig::Nasvit {
            start_epoch,
            clip_small,
        } => Box::new(Nasvit {
            start_epoch,
            clip_small,
        }),
        GradientConfig::Pcgrad => Box::new(PcGrad),
    }
}

/// How the gradients of a step's groups agreed, as totals over the tensor
/// comparisons made (only tensors that both compared gradients touch);
/// summed over steps, and reported per epoch by [`Agreement::report`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Tensor comparisons made.
    pub compared: u64,
    /// Comparisons with a negative inner product (conflicts).
    pub conflicting: u64,
    /// Sum of the cosines between the compared gradients.
    pub cosine_sum: f64,
    /// Projection coefficients computed (one per comparison made while
    /// the strategy projects; 0 where the gradients do not conflict).
    pub coefs: u64,
    /// Sum of those coefficients.
    pub coef_sum: f64,
}

impl Agreement {
    /// Adds a comparison of two gradients of one tensor with inner product
    /// `dot` and squared norms `aa`, `bb`; tensors one side does not touch
    /// are not compared.
    pub fn compare(&mut self, dot: f64, aa: f64, bb: f64) {
        if aa > 0.0 && bb > 0.0 {
            self.compared += 1;
            self.conflicting += u64::from(dot < 0.0);
            self.cosine_sum += dot / (aa * bb).sqrt();
        }
    }

    pub fn add(&mut self, o: &Agreement) {
        self.compared += o.compared;
        self.conflicting += o.conflicting;
        self.cosine_sum += o.cosine_sum;
        self.coefs += o.coefs;
        self.coef_sum += o.coef_sum;
    }

    /// The fraction of comparisons in conflict, the mean cosine and the
    /// mean projection coefficient (0 while a strategy does not project),
    /// for metrics.jsonl.
    pub fn report(&self) -> serde_json::Value {
        let mean = |s: f64, n: u64| if n == 0 { 0.0 } else { s / n as f64 };
        serde_json::json!({
            "conflict_fraction": mean(self.conflicting as f64, self.compared),
            "cosine_mean": mean(self.cosine_sum, self.compared),
            "coef_mean": mean(self.coef_sum, self.coefs),
            "tensors_compared": self.compared,
        })
    }
}

/// `⟨a, b⟩`, `‖a‖²`, `‖b‖²` in f64.
pub(crate) fn dot3(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    a.iter()
        .zip(b)
        .fold((0.0, 0.0, 0.0), |(ab, aa, bb), (&x, &y)| {
            let (x, y) = (x as f64, y as f64);
            (ab + x * y, aa + x * x, bb + y * y)
        })
}
