//! [`Communicator`] over MPI (feature `mpi`, Open MPI from Debian's packages).

use std::time::Instant;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _, Root as _};

use crate::comm::{check_root, CommStats, Communicator};
use crate::DistError;

/// The MPI world of this process. Initialises MPI on creation and finalises it when dropped;
/// only one may exist per process, and MPI cannot be initialised again after it is dropped.
pub struct MpiCommunicator {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    scratch_f32: Vec<f32>,
    scratch_f64: Vec<f64>,
    stats: CommStats,
    library: String,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl std::fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCommunicator")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

impl MpiCommunicator {
    /// Initialises MPI (funneled threading: only the calling thread talks to MPI; rayon's
    /// threads only compute) and joins the world. Run under `mpirun` for more than one rank;
    /// started directly, the process is a world of one.
    pub fn init() -> Result<Self, DistError> {
        let (universe, _threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| {
                DistError::MpiUnavailable(
                    "MPI is already initialised in this process (one MpiCommunicator per process)"
                        .into(),
                )
            })?;
        let world = universe.world();
        let library = mpi::environment::library_version()
            .map(|v| {
                v.split([',', '\n', '\0'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|_| "unknown MPI".into());
        Ok(MpiCommunicator {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world,
            scratch_f32: Vec::new(),
            scratch_f64: Vec::new(),
            stats: CommStats::default(),
            library,
            _universe: universe,
        })
    }

    fn root_process(&self, root: usize) -> Result<mpi::topology::Process<'_>, DistError> {
        check_root("broadcast", self.rank, root, self.size)?;
        Ok(self.world.process_at_rank(root as i32))
    }
}

fn count(op: &'static str, rank: usize, len: usize) -> Result<(), DistError> {
    if len > i32::MAX as usize {
        return Err(DistError::Collective {
            op,
            rank,
            message: format!("{len} elements exceed MPI's count limit of {}", i32::MAX),
        });
    }
    Ok(())
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        count("all-reduce", self.rank, buf.len())?;
        let t = Instant::now();
        self.scratch_f32.clear();
        self.scratch_f32.extend_from_slice(buf);
        self.world
            .all_reduce_into(&self.scratch_f32[..], buf, SystemOperation::sum());
        self.stats.all_reduce_calls += 1;
        self.stats.all_reduce_bytes += std::mem::size_of_val(buf) as u64;
        self.stats.all_reduce_seconds += t.elapsed().as_secs_f64();
        Ok(())
    }
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<(), DistError> {
        count("all-reduce", self.rank, buf.len())?;
        let t = Instant::now();
        self.scratch_f64.clear();
        self.scratch_f64.extend_from_slice(buf);
        self.world
            .all_reduce_into(&self.scratch_f64[..], buf, SystemOperation::sum());
        self.stats.all_reduce_calls += 1;
        self.stats.all_reduce_bytes += std::mem::size_of_val(buf) as u64;
        self.stats.all_reduce_seconds += t.elapsed().as_secs_f64();
        Ok(())
    }
    fn broadcast_f32(&mut self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        count("broadcast", self.rank, buf.len())?;
        // Lengths must agree: check against the root's first.
        let mut len = [buf.len() as u64];
        self.root_process(root)?.broadcast_into(&mut len[..]);
        if len[0] != buf.len() as u64 {
            return Err(DistError::OutOfSync(format!(
                "broadcast of {} values from rank {root}, rank {} has a buffer of {}",
                len[0],
                self.rank,
                buf.len()
            )));
        }
        self.root_process(root)?.broadcast_into(buf);
        self.stats.broadcast_calls += 1;
        Ok(())
    }
    fn broadcast_bytes(&mut self, buf: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        let mut len = [buf.len() as u64];
        self.root_process(root)?.broadcast_into(&mut len[..]);
        let n = len[0] as usize;
        count("broadcast", self.rank, n)?;
        buf.resize(n, 0);
        self.root_process(root)?.broadcast_into(&mut buf[..]);
        self.stats.broadcast_calls += 1;
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), DistError> {
        self.world.barrier();
        Ok(())
    }
    fn stats(&self) -> CommStats {
        self.stats
    }
    fn reset_stats(&mut self) {
        self.stats = CommStats::default();
    }
    fn describe(&self) -> String {
        format!(
            "MPI ({}), {} rank{}",
            self.library,
            self.size,
            if self.size == 1 { "" } else { "s" }
        )
    }
    fn abort(&mut self, code: i32) {
        self.world.abort(code)
    }
}
