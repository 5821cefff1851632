//! Rank and linear correlation between two paired samples (inherited vs
//! standalone accuracy): Kendall τ-b, Spearman ρ, Pearson r, top-k overlap.
//! Ties are handled the way scipy.stats handles them (τ-b; average ranks).
//! A low module: the rank harness ([`crate::rank::stats`] re-exports it)
//! and the accuracy predictor's fit scores both use it.

/// Pearson's r; `None` when either sample is constant or shorter than 2.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "paired samples");
    let n = x.len();
    if n < 2 {
        return None;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Ranks 1..n, ties getting the average of the ranks they span.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's ρ: Pearson's r of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's τ-b (pairs tied in one sample count against the denominator).
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "paired samples");
    let n = x.len();
    let (mut conc, mut disc, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = (x[i] - x[j])
                .partial_cmp(&0.0)
                .unwrap_or(std::cmp::Ordering::Equal);
            let dy = (y[i] - y[j])
                .partial_cmp(&0.0)
                .unwrap_or(std::cmp::Ordering::Equal);
            use std::cmp::Ordering::Equal;
            match (dx, dy) {
                (Equal, Equal) => {}
                (Equal, _) => tx += 1,
                (_, Equal) => ty += 1,
                (a, b) if a == b => conc += 1,
                _ => disc += 1,
            }
        }
    }
    let denom = (((conc + disc + tx) * (conc + disc + ty)) as f64).sqrt();
    (denom > 0.0).then(|| (conc - disc) as f64 / denom)
}

/// Indices of the `k` largest values (ties broken by index).
pub fn top_k(x: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Fraction of the top `k` by `x` that are also in the top `k` by `y`.
pub fn top_k_overlap(x: &[f64], y: &[f64], k: usize) -> f64 {
    let k = k.min(x.len());
    if k == 0 {
        return 0.0;
    }
    let a = top_k(x, k);
    let b = top_k(y, k);
    a.iter().filter(|i| b.contains(i)).count() as f64 / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from scipy.stats (1.11) on the same inputs.
    #[test]
    fn kendall_matches_scipy_with_ties() {
        // scipy.stats.kendalltau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]).statistic
        let t = kendall_tau_b(&[12., 2., 1., 12., 2.], &[1., 4., 7., 1., 0.]).unwrap();
        assert!((t - -0.47140452079103173).abs() < 1e-12, "{t}");
        assert_eq!(kendall_tau_b(&[1., 2., 3.], &[10., 20., 30.]), Some(1.0));
        assert_eq!(kendall_tau_b(&[1., 2., 3.], &[3., 2., 1.]), Some(-1.0));
        assert_eq!(kendall_tau_b(&[1., 1., 1.], &[3., 2., 1.]), None);
    }

    #[test]
    fn spearman_matches_scipy_with_ties() {
        // scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]).statistic
        let r = spearman(&[1., 2., 3., 4., 5.], &[5., 6., 7., 8., 7.]).unwrap();
        assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
        assert_eq!(average_ranks(&[3., 1., 3., 2.]), vec![3.5, 1., 3.5, 2.]);
    }

    #[test]
    fn pearson_and_overlap() {
        let r = pearson(&[1., 2., 3., 4.], &[2., 4., 6., 8.5]).unwrap();
        assert!(r > 0.99 && r < 1.0, "{r}");
        assert_eq!(pearson(&[1., 1.], &[1., 2.]), None);
        let x = [0.9, 0.8, 0.7, 0.6];
        let y = [0.5, 0.9, 0.8, 0.1];
        assert_eq!(top_k(&x, 2), vec![0, 1]);
        assert_eq!(top_k_overlap(&x, &y, 2), 0.5);
        assert_eq!(top_k_overlap(&x, &x, 3), 1.0);
    }
}
