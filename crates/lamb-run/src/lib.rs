//! Run directories of `lamb`, for the command and for library users alike: one process per
//! directory ([`lock::RunLock`]), writes that a crash cannot leave half-done
//! ([`atomic::write_atomic`]), checkpoints that resume exactly ([`checkpoint::Checkpoint`]),
//! and what a directory holds ([`rundir::inspect`]).

pub mod atomic;
pub mod checkpoint;
pub mod lock;
pub mod rundir;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use lock::{LockError, RunLock};
pub use rundir::{DirState, RunMarker};
