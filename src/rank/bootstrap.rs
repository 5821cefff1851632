//! Percentile bootstrap over architectures: resample the architectures
//! with replacement (within each group, so every budget bin keeps its
//! size), recompute a statistic, and take the 2.5th and 97.5th percentiles.
//! A paired comparison of two rankers computes their difference on the
//! same resample.

use rand::{rngs::StdRng, Rng, SeedableRng};

/// Resamples of every interval vitnas reports.
pub const RESAMPLES: usize = 2000;

/// One resample's indices: each group resampled with replacement within
/// itself, groups concatenated in order.
pub fn resample(groups: &[Vec<usize>], rng: &mut StdRng) -> Vec<Vec<usize>> {
    groups
        .iter()
        .map(|g| {
            (0..g.len())
                .map(|_| g[rng.random_range(0..g.len())])
                .collect()
        })
        .collect()
}

/// The `q`-quantile (0..=1) of `v` by linear interpolation between order
/// statistics (numpy's default, `method="linear"`); `v` need not be sorted.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let h = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    Some(s[lo] + (h - lo as f64) * (s[hi] - s[lo]))
}

/// 95 % percentile interval of `stat` over `resamples` stratified
/// resamples of `groups` (seeded). `stat` gets the resampled indices of
/// every group, concatenated; resamples where it is undefined (`None`,
/// e.g. τ of a constant sample) are left out. `None` when fewer than half
/// are defined.
pub fn interval(
    groups: &[Vec<usize>],
    resamples: usize,
    seed: u64,
    mut stat: impl FnMut(&[usize]) -> Option<f64>,
) -> Option<[f64; 2]> {
    intervals(groups, resamples, seed, 1, |g| {
        let flat: Vec<usize> = g.concat();
        vec![stat(&flat)]
    })
    .pop()
    .flatten()
}

/// Several statistics on the same resamples (what paired comparisons need):
/// `stats` gets the resampled groups and returns `width` values.
pub fn intervals(
    groups: &[Vec<usize>],
    resamples: usize,
    seed: u64,
    width: usize,
    mut stats: impl FnMut(&[Vec<usize>]) -> Vec<Option<f64>>,
) -> Vec<Option<[f64; 2]>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); width];
    for _ in 0..resamples {
        let g = resample(groups, &mut rng);
        let v = stats(&g);
        assert_eq!(
            v.len(),
            width,
            "bootstrap: each resample gives `width` values"
        );
        for (d, x) in draws.iter_mut().zip(v) {
            if let Some(x) = x.filter(|x| x.is_finite()) {
                d.push(x);
            }
        }
    }
    draws
        .iter()
        .map(|d| {
            (d.len() * 2 >= resamples.max(1))
                .then(|| Some([quantile(d, 0.025)?, quantile(d, 0.975)?]))
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_numpy() {
        // numpy.quantile([3, 1, 4, 1, 5], [0.025, 0.5, 0.975]) = [1.0, 3.0, 4.9]
        let v = [3.0, 1.0, 4.0, 1.0, 5.0];
        assert!((quantile(&v, 0.025).unwrap() - 1.0).abs() < 1e-12);
        assert!((quantile(&v, 0.5).unwrap() - 3.0).abs() < 1e-12);
        assert!((quantile(&v, 0.975).unwrap() - 4.9).abs() < 1e-12);
    }

    #[test]
    fn resampling_stays_inside_each_group_and_keeps_its_size() {
        let groups = vec![vec![0, 1, 2], vec![10, 11], vec![20]];
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let g = resample(&groups, &mut rng);
            for (a, b) in g.iter().zip(&groups) {
                assert_eq!(a.len(), b.len());
                assert!(a.iter().all(|i| b.contains(i)));
            }
        }
    }

    #[test]
    fn the_interval_of_a_mean_covers_the_mean_and_narrows_with_more_data() {
        let x: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64).collect();
        let mean = |idx: &[usize]| Some(idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64);
        let full = interval(&[(0..200).collect()], 2000, 1, mean).unwrap();
        let small = interval(&[(0..20).collect()], 2000, 1, mean).unwrap();
        let m = mean(&(0..200).collect::<Vec<_>>()).unwrap();
        assert!(full[0] < m && m < full[1], "{full:?} vs {m}");
        assert!(full[1] - full[0] < small[1] - small[0]);
        // Standard error of the mean ≈ sd / √n ≈ 29 / 14 ≈ 2.1: width ≈ 8.
        assert!((5.0..12.0).contains(&(full[1] - full[0])), "{full:?}");
        // Seeded: the same interval again.
        assert_eq!(
            interval(&[(0..200).collect()], 2000, 1, mean).unwrap(),
            full
        );
    }
}
