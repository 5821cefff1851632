//! Elapsed time and the estimated time left, for the progress lines of
//! long commands (training, search, latency measurement, rank
//! evaluation) when stderr is not a terminal (a terminal gets indicatif
//! bars with their own ETA).

use std::time::{Duration, Instant};

/// `1h02m`, `3m05s`, `42s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// `elapsed 3m05s, ETA 12m40s`: the time since `started`, and the rest at
/// the rate so far, `done_now` of the `left_now` units that were left when
/// `started` was taken (so a resumed run's earlier work does not skew it).
/// No ETA before the first unit is done.
pub fn elapsed_eta(started: Instant, done_now: usize, left_now: usize) -> String {
    let e = started.elapsed();
    match done_now {
        0 => format!("elapsed {}", duration(e)),
        d => {
            let rest = left_now.saturating_sub(d) as f64 * e.as_secs_f64() / d as f64;
            format!(
                "elapsed {}, ETA {}",
                duration(e),
                duration(Duration::from_secs_f64(rest))
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_hours_minutes_or_seconds() {
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn the_eta_is_the_rest_at_the_rate_so_far() {
        let started = Instant::now() - Duration::from_secs(60);
        // 2 of 6 in 60 s: 4 left at 30 s each.
        let s = elapsed_eta(started, 2, 6);
        assert!(s.starts_with("elapsed 1m00s, ETA 2m00s"), "{s}");
        assert!(!elapsed_eta(started, 0, 6).contains("ETA"));
    }
}
