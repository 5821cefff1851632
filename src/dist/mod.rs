//! Collective communication between the processes (ranks) of one job:
//! what data-parallel training and sharded search need, and nothing more.
//!
//! [`Collective`] is the interface: sums over ranks in place, broadcast from
//! a root, barriers. Two implementations: [`Single`], the one process of an
//! ordinary run (every operation is the identity), and, with the cargo
//! feature `mpi`, `Mpi` on an MPI library (OpenMPI, MPICH) through rsmpi,
//! for runs started by `mpirun -np N vitnas …`.
//!
//! Callers receive the collective as a value (`RunOptions::collective`,
//! `search::Evaluator::collective`); nothing here is global. With one rank
//! every helper returns its input unchanged, so an ordinary run computes
//! exactly what it computed before any of this existed.
//!
//! What happens when a rank fails: every command that runs under `mpirun`
//! ends the whole job when a rank returns an error (the binary calls
//! `Mpi::abort`), and OpenMPI's `mpirun` ends the job when a rank exits
//! abnormally (killed, non-zero status, no `MPI_Finalize`). A rank that
//! neither dies nor answers is caught by the watchdog of the per-step
//! collectives (`Mpi::init`'s timeout). Measured in
//! `evaluate/studies/2026-11-29-mpi.md`.

#[cfg(feature = "mpi")]
mod mpi;
mod single;

#[cfg(feature = "mpi")]
pub use self::mpi::{Mpi, WATCHDOG_EXIT};
pub use single::Single;

use crate::error::{Error, Result};

/// Collective operations over the ranks of a job. Every rank must call the
/// same operations in the same order (as MPI requires): the callers keep
/// every decision that chooses a collective identical on all ranks.
pub trait Collective {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum over the ranks.
    /// Bounded by the watchdog of `Mpi` (see `Mpi::init`).
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] in f64.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank by rank `root`'s bytes (any length).
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Returns once every rank has called it; bounded by the watchdog.
    fn barrier(&self) -> Result<()>;
    /// A barrier without the watchdog: for waits of unknown length, where
    /// ranks finish independent work (standalone trainings, rank 0 writing
    /// a checkpoint or validating) at different times. A rank that dies
    /// still ends the job (through the launcher); one that hangs is not
    /// detected here.
    fn wait_for_all(&self) -> Result<()>;
}

/// Environment variables an MPI launcher sets to the number of ranks:
/// OpenMPI's, then the PMI ones of MPICH / Slurm / PMIx launchers.
pub const WORLD_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];

/// The number of ranks an MPI launcher started this process among, read
/// from its environment ([`WORLD_SIZE_VARS`]); `None` outside a launcher.
pub fn launched_world_size() -> Option<usize> {
    WORLD_SIZE_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Whether `c` is rank 0, the rank that writes files and reports.
pub fn is_root(c: &dyn Collective) -> bool {
    c.rank() == 0
}

/// Sums `buffers` (e.g. one gradient per parameter) over the ranks and
/// divides by the number of ranks: the mean, in place, by
/// [`all_reduce_buffers`]. With one rank nothing is touched.
pub fn all_reduce_mean(
    c: &dyn Collective,
    buffers: &mut [Vec<f32>],
    bucket_elems: usize,
) -> Result<()> {
    let n = c.size();
    if n == 1 {
        return Ok(());
    }
    all_reduce_buffers(c, buffers, bucket_elems)?;
    let scale = 1.0 / n as f32;
    for b in buffers.iter_mut() {
        b.iter_mut().for_each(|x| *x *= scale);
    }
    Ok(())
}

/// The sum over ranks of every buffer of `buffers`, in place: see
/// [`all_reduce_slices`].
pub fn all_reduce_buffers(
    c: &dyn Collective,
    buffers: &mut [Vec<f32>],
    bucket_elems: usize,
) -> Result<()> {
    let mut views: Vec<&mut [f32]> = buffers.iter_mut().map(|b| &mut b[..]).collect();
    all_reduce_slices(c, &mut views, bucket_elems)
}

/// The sum over ranks of every slice of `slices`, in place. The slices are
/// packed, in order, into contiguous buckets of at most `bucket_elems`
/// values (0: all in one bucket), one all-reduce per bucket; a slice may
/// span two buckets.
pub fn all_reduce_slices(
    c: &dyn Collective,
    slices: &mut [&mut [f32]],
    bucket_elems: usize,
) -> Result<()> {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let cap = match bucket_elems {
        0 => total,
        b => b,
    };
    let mut packed = Vec::with_capacity(cap.min(total));
    // The bucket in `packed` starts at slice `first`, value `offset`.
    let (mut first, mut offset) = (0, 0);
    for i in 0..slices.len() {
        let mut start = 0;
        while start < slices[i].len() {
            if packed.is_empty() {
                (first, offset) = (i, start);
            }
            let k = (cap - packed.len()).min(slices[i].len() - start);
            packed.extend_from_slice(&slices[i][start..start + k]);
            start += k;
            if packed.len() == cap {
                reduce_bucket(c, &mut packed, &mut slices[first..], offset)?;
            }
        }
    }
    reduce_bucket(c, &mut packed, &mut slices[first..], offset)
}

/// Sums `packed` over the ranks and copies it back into `slices`, from
/// value `offset` of the first on; empties `packed`.
fn reduce_bucket(
    c: &dyn Collective,
    packed: &mut Vec<f32>,
    slices: &mut [&mut [f32]],
    mut offset: usize,
) -> Result<()> {
    if packed.is_empty() {
        return Ok(());
    }
    c.all_reduce_sum(packed)?;
    let mut src = &packed[..];
    for s in slices.iter_mut() {
        if src.is_empty() {
            break;
        }
        let k = (s.len() - offset).min(src.len());
        s[offset..offset + k].copy_from_slice(&src[..k]);
        src = &src[k..];
        offset = 0;
    }
    packed.clear();
    Ok(())
}

/// FNV-1a, 64 bits: a stable hash (the same on every machine and build)
/// for comparing what ranks hold.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The FNV-1a offset basis: the starting value of [`fnv1a`].
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A checksum of f32 buffers (their bytes, in order).
pub fn checksum_f32(buffers: &[Vec<f32>]) -> u64 {
    buffers.iter().fold(FNV_START, |h, b| {
        b.iter().fold(h, |h, x| fnv1a(&x.to_le_bytes(), h))
    })
}

/// What this build is, for [`check_same`]: the crate version, the SIMD
/// level of the vector math (ranks on different levels would round the
/// optimizer's update differently) and a hash of the executable's bytes
/// (two builds of one version differ).
pub fn build_identity() -> String {
    let exe = std::env::current_exe()
        .and_then(std::fs::read)
        .map(|b| format!("{:016x}", fnv1a(&b, FNV_START)))
        .unwrap_or_else(|e| format!("unreadable executable ({e})"));
    format!(
        "vitnas {} simd {} executable {exe}",
        env!("CARGO_PKG_VERSION"),
        crate::kernels::simd::level().name()
    )
}

/// Refuses to go on unless every rank holds the same `what` (compared by a
/// hash of `bytes`): rank 0's hash is broadcast, each rank compares, and the
/// number of ranks that differ is summed, so every rank returns the same
/// answer. The error names the first differing rank and `hint`.
pub fn check_same(c: &dyn Collective, what: &str, bytes: &[u8], hint: &str) -> Result<()> {
    if c.size() == 1 {
        return Ok(());
    }
    let mine = fnv1a(bytes, FNV_START);
    let mut root = mine.to_le_bytes().to_vec();
    c.broadcast(&mut root, 0)?;
    let root = u64::from_le_bytes(root[..8].try_into().expect("8 bytes"));
    // Slot r: whether rank r differs from rank 0.
    let mut differs = vec![0f64; c.size()];
    differs[c.rank()] = f64::from(u8::from(mine != root));
    c.all_reduce_sum_f64(&mut differs)?;
    match differs.iter().position(|&d| d > 0.0) {
        None => Ok(()),
        Some(r) => Err(Error::Distributed {
            message: format!(
                "rank {r} of {} holds a different {what} than rank 0 (hash {}); {hint}",
                c.size(),
                if r == c.rank() {
                    format!("{mine:016x} against rank 0's {root:016x}")
                } else {
                    format!("of rank 0: {root:016x}")
                }
            ),
        }),
    }
}

/// Rank 0's `value` (`Some` on rank 0; the other ranks' is ignored), on
/// every rank, serialized as JSON.
pub fn broadcast_json<T>(c: &dyn Collective, value: Option<&T>) -> Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone,
{
    let given = || value.expect("broadcast_json: rank 0 gives the value");
    if c.size() == 1 {
        return Ok(given().clone());
    }
    let mut bytes = match c.rank() {
        0 => serde_json::to_vec(given()).expect("a value that serializes"),
        _ => Vec::new(),
    };
    c.broadcast(&mut bytes, 0)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Distributed {
        message: format!("rank 0 sent a value this rank cannot read: {e}"),
    })
}

/// Work shared out over the ranks: item `i` of `0..items` is computed by
/// rank `i % size` (`work(i)` returns `width` values, or `None` when it was
/// not done, e.g. interrupted). After every rank has finished its items
/// ([`Collective::wait_for_all`]), every rank returns every item's values.
pub fn share<F>(
    c: &dyn Collective,
    items: usize,
    width: usize,
    mut work: F,
) -> Result<Vec<Option<Vec<f64>>>>
where
    F: FnMut(usize) -> Result<Option<Vec<f64>>>,
{
    let (rank, size) = (c.rank(), c.size());
    // Per item: a "done" flag, then its values; zeros elsewhere, so the sum
    // over ranks is each item's values exactly (x + 0 = x).
    let stride = width + 1;
    let mut slots = vec![0f64; items * stride];
    for i in (rank..items).step_by(size) {
        if let Some(v) = work(i)? {
            assert_eq!(v.len(), width, "share: each item gives `width` values");
            slots[i * stride] = 1.0;
            slots[i * stride + 1..(i + 1) * stride].copy_from_slice(&v);
        }
    }
    if size > 1 {
        c.wait_for_all()?;
        c.all_reduce_sum_f64(&mut slots)?;
    }
    Ok(slots
        .chunks(stride)
        .map(|s| (s[0] > 0.0).then(|| s[1..].to_vec()))
        .collect())
}
