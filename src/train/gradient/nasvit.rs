//! NASViT's gradient projection (Gong et al., ICLR 2022;
//! `misc/constrain_opt.py` of facebookresearch/NASViT), per tensor:
//!
//! - `g_L`: the largest subnet's gradient (group 0, the plan's teacher);
//! - `g_S`: the summed gradient of the smaller subnets (group 1), clipped
//!   to global norm `clip_small` over all tensors (NASViT clips the
//!   gradient buffer while it holds `g_S` only);
//! - from epoch `start_epoch` on, `c = clamp(−⟨g_S, g_L⟩ / (‖g_S‖² + 1e-6), 0, 2)`
//!   and the update is `(1 + c)·g_S + g_L`, so that it does not conflict
//!   with the smaller subnets' direction; before, `g_S + g_L`.
//!
//! A tensor only the largest subnet uses has `g_S = 0`, so `c = 0` and it
//! gets `g_L` once (NASViT's buffers alias there and give `2·g_L`).

use super::{dot3, Agreement, GradientStrategy};
use crate::train::sampler::Plan;

pub struct Nasvit {
    /// First epoch (counted from 0) that projects.
    pub start_epoch: usize,
    /// Global norm `g_S` is clipped to.
    pub clip_small: f64,
}

/// `c` of one tensor from `⟨g_S, g_L⟩` and `‖g_S‖²`.
pub fn coefficient(dot: f64, ss: f64) -> f64 {
    (-dot / (ss + 1e-6)).clamp(0.0, 2.0)
}

/// `out = (1 + c)·g_S + g_L`, element-wise, into `g_l`.
pub fn project(g_l: &mut [f32], g_s: &[f32], c: f64) {
    let k = (1.0 + c) as f32;
    g_l.iter_mut().zip(g_s).for_each(|(l, s)| *l += k * s);
}

impl GradientStrategy for Nasvit {
    /// The plan's teacher (the largest subnet) apart from the rest; one
    /// group when the plan has no teacher.
    fn groups(&self, plan: &Plan) -> Vec<usize> {
        let n = plan.archs.len();
        match plan.teacher_first {
            true => (0..n).map(|k| usize::from(k > 0)).collect(),
            false => vec![0; n],
        }
    }

    fn combine(&self, groups: &mut [Vec<Vec<f32>>], epoch: usize) -> Option<Agreement> {
        let [g_l, g_s, ..] = groups else {
            return None;
        };
        let norm = g_s
            .iter()
            .flatten()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        if norm > self.clip_small {
            let k = (self.clip_small / (norm + 1e-6)) as f32;
            g_s.iter_mut().flatten().for_each(|x| *x *= k);
        }
        let projecting = epoch >= self.start_epoch;
        let mut agreement = Agreement::default();
        for (l, s) in g_l.iter_mut().zip(g_s.iter()) {
            let (dot, ss, ll) = dot3(s, l);
            agreement.compare(dot, ss, ll);
            let c = if projecting && ss > 0.0 && ll > 0.0 {
                agreement.coefs += 1;
                let c = coefficient(dot, ss);
                agreement.coef_sum += c;
                c
            } else {
                0.0
            };
            project(l, s, c);
        }
        Some(agreement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        dot3(a, b).0
    }

    /// `[g_L, g_S]` groups of one step, one tensor per entry of `tensors`.
    fn groups(tensors: &[(&[f32], &[f32])]) -> Vec<Vec<Vec<f32>>> {
        vec![
            tensors.iter().map(|(l, _)| l.to_vec()).collect(),
            tensors.iter().map(|(_, s)| s.to_vec()).collect(),
        ]
    }

    const NO_CLIP: f64 = 1e30;

    #[test]
    fn projected_update_matches_the_formula_and_does_not_oppose_the_small_subnets() {
        // ⟨g_S, g_L⟩ = −0.3 − 0.2 = −0.5, ‖g_S‖² = 0.25 + 0.04 = 0.29:
        // c = 0.5 / (0.29 + 1e-6) (not clamped).
        let (l, s) = ([-0.6f32, -1.0], [0.5f32, 0.2]);
        let mut g = groups(&[(&l, &s)]);
        let a = Nasvit {
            start_epoch: 0,
            clip_small: NO_CLIP,
        }
        .combine(&mut g, 0)
        .unwrap();
        let c = 0.5 / (0.29 + 1e-6);
        assert!(c < 2.0);
        for i in 0..2 {
            let want = (1.0 + c) * s[i] as f64 + l[i] as f64;
            assert!((g[0][0][i] as f64 - want).abs() < 1e-6, "{i}");
        }
        assert!(dot(&g[0][0], &s) >= 0.0, "update opposes g_S");
        assert_eq!((a.compared, a.conflicting, a.coefs), (1, 1, 1));
        assert!((a.coef_sum - c).abs() < 1e-6);
        assert!(a.cosine_sum < 0.0);
    }

    #[test]
    fn coefficient_is_clamped_to_two() {
        // A large g_L straight against g_S: −⟨g_S, g_L⟩ / ‖g_S‖² = 10.
        let (l, s) = ([-10.0f32, 0.0], [1.0f32, 0.0]);
        assert_eq!(coefficient(dot(&s, &l), dot(&s, &s)), 2.0);
        let mut g = groups(&[(&l, &s)]);
        Nasvit {
            start_epoch: 0,
            clip_small: NO_CLIP,
        }
        .combine(&mut g, 0);
        assert_eq!(g[0][0], vec![3.0 * 1.0 - 10.0, 0.0]);
    }

    #[test]
    fn without_conflict_or_before_the_start_epoch_the_update_is_the_plain_sum() {
        let (l, s) = ([0.3f32, -0.2, 0.1], [0.1f32, 0.05, 0.2]);
        assert!(dot(&l, &s) > 0.0);
        let sum: Vec<f32> = l.iter().zip(&s).map(|(a, b)| a + b).collect();
        let mut g = groups(&[(&l, &s)]);
        let a = Nasvit {
            start_epoch: 0,
            clip_small: NO_CLIP,
        }
        .combine(&mut g, 0)
        .unwrap();
        assert_eq!(g[0][0], sum);
        assert_eq!((a.conflicting, a.coef_sum), (0, 0.0));
        // a conflict, but before the start epoch
        let (l, s) = ([-0.6f32, -1.0], [0.5f32, 0.2]);
        let mut g = groups(&[(&l, &s)]);
        let a = Nasvit {
            start_epoch: 3,
            clip_small: NO_CLIP,
        }
        .combine(&mut g, 2)
        .unwrap();
        assert_eq!(g[0][0], vec![-0.6 + 0.5, -1.0 + 0.2]);
        assert_eq!((a.conflicting, a.coefs), (1, 0));
    }

    #[test]
    fn a_tensor_only_the_largest_uses_gets_its_gradient_once() {
        let (l, s) = ([0.4f32, -0.7], [0.0f32, 0.0]);
        let mut g = groups(&[(&l, &s)]);
        let a = Nasvit {
            start_epoch: 0,
            clip_small: NO_CLIP,
        }
        .combine(&mut g, 0)
        .unwrap();
        assert_eq!(g[0][0], l.to_vec());
        assert_eq!(a.compared, 0);
    }

    #[test]
    fn small_subnets_gradient_is_clipped_to_global_norm_first() {
        // g_S over two tensors has norm 5: scaled by 1 / (5 + 1e-6).
        let mut g = groups(&[(&[0.0f32], &[3.0f32]), (&[1.0], &[4.0])]);
        Nasvit {
            start_epoch: 0,
            clip_small: 1.0,
        }
        .combine(&mut g, 0);
        let k = (1.0 / (5.0 + 1e-6)) as f32;
        assert_eq!(g[0][0][0], 3.0 * k);
        assert_eq!(g[0][1][0], 1.0 + 4.0 * k);
    }
}
