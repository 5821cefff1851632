//! PCGrad (Yu et al., NeurIPS 2020) between the step's subnets, per tensor:
//! each subnet's gradient `g_i` is projected onto the normal plane of every
//! other subnet's original gradient `g_j` it conflicts with
//! (`g_i ← g_i − ⟨g_i, g_j⟩ / ‖g_j‖² · g_j` when `⟨g_i, g_j⟩ < 0`), in the
//! fixed order `j = 0, 1, …` (the paper shuffles it; a fixed order keeps
//! runs reproducible), and the projected gradients are summed. Every pair
//! is treated the same way in both directions; the largest subnet has no
//! special role.

use super::{dot3, Agreement, GradientStrategy};
use crate::train::sampler::Plan;

pub struct PcGrad;

/// The PCGrad sum of `gs` (one gradient of the same tensor per subnet)
/// into `out`, recording the comparisons and projections in `agreement`.
pub fn combine_tensor(gs: &[&[f32]], out: &mut [f32], agreement: &mut Agreement) {
    let norms: Vec<f64> = gs.iter().map(|g| dot3(g, g).0).collect();
    for i in 0..gs.len() {
        for j in i + 1..gs.len() {
            let (dot, _, _) = dot3(gs[i], gs[j]);
            agreement.compare(dot, norms[i], norms[j]);
        }
    }
    out.fill(0.0);
    let mut p = vec![0f32; out.len()];
    for (i, g) in gs.iter().enumerate() {
        p.copy_from_slice(g);
        for (j, h) in gs.iter().enumerate() {
            if i == j || norms[j] == 0.0 || norms[i] == 0.0 {
                continue;
            }
            agreement.coefs += 1;
            let (dot, _, _) = dot3(&p, h);
            if dot < 0.0 {
                let c = -dot / norms[j];
                agreement.coef_sum += c;
                let c = c as f32;
                p.iter_mut().zip(h.iter()).for_each(|(p, h)| *p += c * h);
            }
        }
        out.iter_mut().zip(&p).for_each(|(o, p)| *o += p);
    }
}

impl GradientStrategy for PcGrad {
    /// One group per subnet.
    fn groups(&self, plan: &Plan) -> Vec<usize> {
        (0..plan.archs.len()).collect()
    }

    fn combine(&self, groups: &mut [Vec<Vec<f32>>], _epoch: usize) -> Option<Agreement> {
        if groups.len() < 2 {
            return None;
        }
        let mut agreement = Agreement::default();
        let (first, rest) = groups.split_first_mut().expect("two groups");
        let mut out = Vec::new();
        for (k, g0) in first.iter_mut().enumerate() {
            out.resize(g0.len(), 0.0);
            let gs: Vec<&[f32]> = std::iter::once(&g0[..])
                .chain(rest.iter().map(|g| &g[k][..]))
                .collect();
            combine_tensor(&gs, &mut out, &mut agreement);
            g0.copy_from_slice(&out);
        }
        Some(agreement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_identical_gradients_give_their_sum() {
        let g = vec![vec![0.3f32, -1.5, 2.0], vec![0.25f32]];
        let mut groups = vec![g.clone(), g.clone()];
        let a = PcGrad.combine(&mut groups, 0).unwrap();
        let sum: Vec<Vec<f32>> = g
            .iter()
            .map(|t| t.iter().map(|v| v + v).collect())
            .collect();
        assert_eq!(groups[0], sum);
        assert_eq!(
            (a.compared, a.conflicting, a.coefs, a.coef_sum),
            (2, 0, 4, 0.0)
        );
        assert!((a.cosine_sum - 2.0).abs() < 1e-12);
    }

    #[test]
    fn conflicting_pair_is_projected_symmetrically() {
        // g1 = (1, 0), g2 = (−1, 1): ⟨g1, g2⟩ = −1.
        // g1' = g1 + 1/2 · g2 = (0.5, 0.5); g2' = g2 + 1 · g1 = (0, 1).
        let mut groups = vec![vec![vec![1.0f32, 0.0]], vec![vec![-1.0f32, 1.0]]];
        let a = PcGrad.combine(&mut groups, 0).unwrap();
        assert_eq!(groups[0][0], vec![0.5, 1.5]);
        assert_eq!((a.conflicting, a.coefs), (1, 2));
        assert!((a.coef_sum - 1.5).abs() < 1e-12);
    }
}
