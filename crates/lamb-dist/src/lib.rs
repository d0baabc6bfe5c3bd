//! Data-parallel training for `lamb`: every rank computes gradients on its shard of the global
//! batch (optionally in several micro-batches: gradient accumulation), the flat gradient is
//! summed across ranks by all-reduce, and every rank applies the same optimizer step, so the
//! weights stay identical and LAMB's per-tensor norms are global by construction.
//!
//! - [`Communicator`]: the collectives, with [`SingleProcess`] (always available) and
//!   `MpiCommunicator` (feature `mpi`, Open MPI via the `mpi` crate), and
//!   [`ThreadCommunicator`] (ranks as threads of one process, for tests).
//! - [`fit`]: `Model::fit` with the same events, history and resume semantics, over a
//!   communicator, with accumulation.
//! - [`Launch`], [`launched_by_mpirun`]: start ranks under `mpirun` (`lamb train --workers N`).
//! - [`communicator_from_env`]: the right communicator for how the process was started.

mod comm;
mod error;
mod fit;
mod launch;
#[cfg(feature = "mpi")]
mod mpi_comm;
pub mod synthetic;
mod threads;

pub use comm::{ring_all_reduce_bytes_sent, CommStats, Communicator, SingleProcess};
pub use error::DistError;
pub use fit::{check_in_sync, evaluate, fit, local_gradients, shard, sync_from_root, Parallel};
pub use launch::{
    launched_by_mpirun, launcher_world_size, running_as_root, strip_option, Launch, MPI_ENABLED,
};
#[cfg(feature = "mpi")]
pub use mpi_comm::MpiCommunicator;
pub use threads::ThreadCommunicator;

/// The communicator for how this process was started: MPI when launched by `mpirun` (or
/// `force_mpi`) in a build with the `mpi` feature, else [`SingleProcess`]. Errors when started
/// by a launcher with more than one rank in a build without MPI (the ranks could not talk).
pub fn communicator_from_env(force_mpi: bool) -> Result<Box<dyn Communicator>, DistError> {
    let launched = launched_by_mpirun();
    #[cfg(feature = "mpi")]
    {
        if launched || force_mpi {
            return Ok(Box::new(MpiCommunicator::init()?));
        }
    }
    #[cfg(not(feature = "mpi"))]
    {
        if force_mpi || (launched && launcher_world_size().unwrap_or(2) > 1) {
            return Err(DistError::MpiUnavailable(
                "started as one of several MPI ranks, but this build has no MPI support; rebuild with `--features mpi`".into(),
            ));
        }
    }
    let _ = launched;
    Ok(Box::new(SingleProcess::new()))
}
