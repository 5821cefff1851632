//! The ranks this process runs among: itself alone (an ordinary run), or
//! the ranks of an `mpirun` job (in a build with the `mpi` feature).

use std::process::ExitCode;
use vitnas::dist::{self, Collective, Single};

/// The processes of this invocation.
pub enum World {
    Single(Single),
    #[cfg(feature = "mpi")]
    Mpi(vitnas::dist::Mpi),
}

/// The environment variable that bounds a rank's wait in a per-step
/// collective, in seconds (0: no bound).
#[cfg(feature = "mpi")]
pub const TIMEOUT_VAR: &str = "VITNAS_MPI_TIMEOUT";
/// Its default: far above any step's imbalance between ranks.
#[cfg(feature = "mpi")]
const DEFAULT_TIMEOUT_S: f64 = 300.0;

impl World {
    /// One process, unless an MPI launcher started this one among several
    /// (its environment says so): then MPI, or, in a build without MPI, an
    /// error saying how to get one.
    pub fn from_env() -> anyhow::Result<World> {
        match dist::launched_world_size() {
            Some(n) if n > 1 => Self::launched(n),
            _ => Ok(World::Single(Single)),
        }
    }

    #[cfg(feature = "mpi")]
    fn launched(_n: usize) -> anyhow::Result<World> {
        let timeout = match std::env::var(TIMEOUT_VAR) {
            Err(_) => Some(DEFAULT_TIMEOUT_S),
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => (s > 0.0).then_some(s),
                _ => anyhow::bail!(
                    "{TIMEOUT_VAR}={v:?}: expected seconds (a number ≥ 0; 0 waits forever)"
                ),
            },
        };
        let timeout = timeout.map(std::time::Duration::from_secs_f64);
        let mpi = vitnas::dist::Mpi::init(timeout)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialized in this process"))?;
        Ok(World::Mpi(mpi))
    }

    #[cfg(not(feature = "mpi"))]
    fn launched(n: usize) -> anyhow::Result<World> {
        let var = dist::WORLD_SIZE_VARS
            .iter()
            .find(|v| std::env::var_os(v).is_some())
            .copied()
            .unwrap_or("OMPI_COMM_WORLD_SIZE");
        anyhow::bail!(
            "started by an MPI launcher as one of {n} processes ({var}={n}), but this vitnas \
             was built without MPI support: each process would run alone and they would write \
             the same files. Build it with the `mpi` feature: `cargo build --release --features \
             mpi` (needs an MPI library and libclang, e.g. `apt-get install libopenmpi-dev \
             openmpi-bin libclang-dev`), or run it without mpirun"
        )
    }

    pub fn collective(&self) -> &dyn Collective {
        match self {
            World::Single(s) => s,
            #[cfg(feature = "mpi")]
            World::Mpi(m) => m,
        }
    }

    /// Ends the process after a command: a clean exit finalizes MPI (every
    /// rank gets here); an [`super::Exit`] exits with its code after that;
    /// an error is printed, and with several ranks ends the whole job
    /// (`MPI_Abort`), so that no rank waits for this one.
    pub fn finish(self, result: anyhow::Result<()>) -> ExitCode {
        let err = match result {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => e,
        };
        if let Some(super::Exit(code)) = err.downcast_ref::<super::Exit>() {
            // `self` (MPI) is finalized on returning.
            return ExitCode::from(*code);
        }
        let c = self.collective();
        if c.size() == 1 {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
        eprintln!("error (rank {} of {}): {err:#}", c.rank(), c.size());
        match self {
            World::Single(_) => ExitCode::FAILURE,
            #[cfg(feature = "mpi")]
            World::Mpi(m) => m.abort(1),
        }
    }
}
