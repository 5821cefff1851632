//! Thread settings for candle on a CPU.
//!
//! candle 0.11 runs large elementwise ops (among them the gradient
//! accumulation adds of its autograd) on a "barrier pool" of its own, whose
//! worker spins up to 25,000 iterations waiting for work before it parks.
//! On few cores that spinning competes with the rayon workers doing the
//! matmuls and the fused kernels. Keeping candle's elementwise ops on the
//! calling thread (`CANDLE_NUM_THREADS=1`; matmuls stay parallel on candle's
//! rayon pool, sized by `RAYON_NUM_THREADS`) is faster here: see the
//! before/after table in `evaluate/studies/2026-11-28-engine-benchmarks.md`.

/// Sets `CANDLE_NUM_THREADS=1` unless the user chose a value. Call first
/// thing in `main`, before any tensor op (candle reads it once).
pub fn keep_candle_elementwise_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// The most threads a pool may have: 4 per logical CPU. Far more only
/// adds stacks and scheduling (100,000 threads hang the machine).
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Refuses a thread count of 0 or above [`max_threads`], naming where it
/// came from (`--threads`, `RAYON_NUM_THREADS`).
pub fn check(n: usize, source: &str) -> anyhow::Result<usize> {
    let max = max_threads();
    if n == 0 || n > max {
        anyhow::bail!(
            "{source} {n}: must be between 1 and {max} (4 per logical CPU on this machine)"
        );
    }
    Ok(n)
}

/// Builds rayon's global pool with `n` threads, the calling thread being
/// one of them (`use_current_thread`): work the main thread starts (a
/// batch-1 inference splitting its rows, a data-parallel step) then runs in
/// place, without handing the job to a pool thread and waiting to be woken
/// when it is done. Also sets `RAYON_NUM_THREADS` (candle's pool). Call
/// before anything uses rayon; later calls change nothing. With one
/// thread the pool is an ordinary one (a pool made of the main thread alone
/// could not run work handed to it from another thread). `n` (from
/// `--threads`) must pass [`check`].
///
/// Measured (`evaluate/studies/2026-11-29-latency-predictors.md`): per-architecture
/// batch-1 latency on 2 threads about 15 % lower (it was no lower than on
/// 1 thread before).
pub fn init_pool(n: usize) -> anyhow::Result<()> {
    let n = check(n, "--threads")?;
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let b = rayon::ThreadPoolBuilder::new().num_threads(n);
    let _ = if n > 1 { b.use_current_thread() } else { b }.build_global();
    Ok(())
}

/// `RAYON_NUM_THREADS` when set to a positive number, refused when it is not
/// a number or above [`max_threads`] (0, rayon's "automatic", is `None`).
pub fn env_threads() -> anyhow::Result<Option<usize>> {
    match std::env::var("RAYON_NUM_THREADS") {
        Ok(v) if !v.trim().is_empty() => {
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("RAYON_NUM_THREADS {v:?}: not a number of threads"))?;
            match n {
                0 => Ok(None),
                n => Ok(Some(check(n, "RAYON_NUM_THREADS")?)),
            }
        }
        _ => Ok(None),
    }
}

/// [`init_pool`] with `RAYON_NUM_THREADS` if set ([`env_threads`]), else
/// one thread per CPU.
pub fn init_default_pool() -> anyhow::Result<()> {
    let n = env_threads()?
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    init_pool(n)
}
