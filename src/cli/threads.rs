//! Thread settings for candle on a CPU.
//!
//! candle 0.11 runs large elementwise ops (among them the gradient
//! accumulation adds of its autograd) on a "barrier pool" of its own, whose
//! worker spins up to 25,000 iterations waiting for work before it parks.
//! On few cores that spinning competes with the rayon workers doing the
//! matmuls and the fused kernels. Keeping candle's elementwise ops on the
//! calling thread (`CANDLE_NUM_THREADS=1`; matmuls stay parallel on candle's
//! rayon pool, sized by `RAYON_NUM_THREADS`) is faster here: see the
//! before/after table in evaluate/README.md.

/// Sets `CANDLE_NUM_THREADS=1` unless the user chose a value. Call first
/// thing in `main`, before any tensor op (candle reads it once).
pub fn keep_candle_elementwise_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
