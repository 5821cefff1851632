//! Allocator settings for binaries that use mimalloc as the global allocator
//! (`vitnas` and the benchmarks).
//!
//! Every tensor op allocates fresh buffers. By default mimalloc returns freed
//! pages to the OS after 10 ms, and the kernel must zero-fill them again on
//! the next touch (`clear_page_erms` was ~14% of a training step's profile).
//! Keeping them mapped removes that cost.

/// `mi_option_purge_delay` (index 15 in both mimalloc v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to purge freed memory back to the OS, unless the
/// user set `MIMALLOC_PURGE_DELAY` themselves. Call first thing in `main`.
pub fn tune_mimalloc() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide integer option; no pointers involved.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
