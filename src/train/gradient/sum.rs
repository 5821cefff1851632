//! The plain sum of every subnet's gradient (the default): one group.

use super::{Agreement, GradientStrategy};
use crate::train::sampler::Plan;

pub struct Sum;

impl GradientStrategy for Sum {
    fn groups(&self, plan: &Plan) -> Vec<usize> {
        vec![0; plan.archs.len()]
    }

    fn combine(&self, _groups: &mut [Vec<Vec<f32>>], _epoch: usize) -> Option<Agreement> {
        None
    }
}
