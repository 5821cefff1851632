//! The collective on an MPI library (cargo feature `mpi`; rsmpi).

use super::Collective;
use crate::error::Result;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use mpi::Threading;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The exit status of a rank stopped by the watchdog.
pub const WATCHDOG_EXIT: i32 = 70;

/// `MPI_COMM_WORLD` of a job started by `mpirun`. Dropping it finalizes MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    /// f32 receive buffer of the all-reduce (MPI's in-place form is not
    /// exposed by rsmpi): kept between calls.
    scratch: RefCell<Vec<f32>>,
    watchdog: Option<Watchdog>,
    // Last: finalizes MPI when dropped, after everything above.
    _universe: Universe,
}

impl Mpi {
    /// Initializes MPI (threading level "funneled": only the main thread
    /// calls MPI; rayon's threads compute). `timeout`: the longest a rank
    /// may wait inside a bounded collective ([`Collective::all_reduce_sum`],
    /// [`Collective::broadcast`], [`Collective::barrier`]) before it decides
    /// that another rank died or hangs, prints so and exits with status
    /// [`WATCHDOG_EXIT`] (which makes `mpirun` end the job); `None`: wait
    /// forever. `None` also when MPI was initialized before.
    pub fn init(timeout: Option<Duration>) -> Option<Mpi> {
        let (universe, _level) = mpi::initialize_with_threading(Threading::Funneled)?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Some(Mpi {
            world,
            scratch: RefCell::new(Vec::new()),
            watchdog: timeout.map(|t| Watchdog::start(t, rank, size)),
            _universe: universe,
        })
    }

    /// Ends every rank of the job (`MPI_Abort`) with exit status `code`:
    /// what a rank does when it fails, so that no other rank waits for it.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn watch(&self, op: Op) -> Option<Armed<'_>> {
        self.watchdog.as_ref().map(|w| w.arm(op))
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let _w = self.watch(Op::AllReduce);
        let mut out = self.scratch.borrow_mut();
        out.resize(buf.len(), 0.0);
        self.world
            .all_reduce_into(&buf[..], &mut out[..], SystemOperation::sum());
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let _w = self.watch(Op::AllReduce);
        let mut out = vec![0f64; buf.len()];
        self.world
            .all_reduce_into(&buf[..], &mut out[..], SystemOperation::sum());
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        let _w = self.watch(Op::Broadcast);
        let p = self.world.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        p.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        p.broadcast_into(&mut buf[..]);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let _w = self.watch(Op::Barrier);
        self.world.barrier();
        Ok(())
    }

    fn wait_for_all(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}

/// The collective a rank is waiting in, for the watchdog's message.
#[derive(Clone, Copy)]
enum Op {
    AllReduce = 1,
    Broadcast = 2,
    Barrier = 3,
}

impl Op {
    fn name(code: usize) -> &'static str {
        match code {
            1 => "all-reduce",
            2 => "broadcast",
            _ => "barrier",
        }
    }
}

/// A thread that ends this rank when one collective has waited longer than
/// the timeout. The main thread arms it on entering a collective and
/// disarms it on leaving ([`Armed`]); the watchdog only reads the clock.
struct Watchdog {
    start: Instant,
    /// Milliseconds since `start` when the current collective began, plus
    /// one; 0 while none is running.
    armed: Arc<AtomicU64>,
    op: Arc<AtomicUsize>,
}

impl Watchdog {
    fn start(timeout: Duration, rank: usize, size: usize) -> Self {
        let start = Instant::now();
        let armed = Arc::new(AtomicU64::new(0));
        let op = Arc::new(AtomicUsize::new(0));
        let (a, o) = (armed.clone(), op.clone());
        let poll = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("vitnas-mpi-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(poll);
                let since = a.load(Ordering::SeqCst);
                if since == 0 {
                    continue;
                }
                let waited = start.elapsed().saturating_sub(Duration::from_millis(since - 1));
                if waited > timeout {
                    eprintln!(
                        "error (rank {rank} of {size}): waited {:.0} s in an MPI {} for the other \
                         ranks (limit VITNAS_MPI_TIMEOUT={} s): a rank died or hangs. Stopping \
                         this rank, which ends the job; a training run's last checkpoint stays \
                         loadable: continue it with `mpirun -np {size} vitnas train --resume <run dir>`",
                        waited.as_secs_f64(),
                        Op::name(o.load(Ordering::SeqCst)),
                        timeout.as_secs_f64(),
                    );
                    // SAFETY: `_exit` ends the process at once, without
                    // running exit handlers that could wait on MPI; the
                    // launcher sees a non-zero status and ends the job.
                    unsafe { libc::_exit(WATCHDOG_EXIT) };
                }
            })
            .expect("the watchdog thread starts");
        Watchdog { start, armed, op }
    }

    fn arm(&self, op: Op) -> Armed<'_> {
        self.op.store(op as usize, Ordering::SeqCst);
        let now = self.start.elapsed().as_millis() as u64;
        self.armed.store(now + 1, Ordering::SeqCst);
        Armed(self)
    }
}

/// Disarms the watchdog when the collective returns.
struct Armed<'a>(&'a Watchdog);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.armed.store(0, Ordering::SeqCst);
    }
}
