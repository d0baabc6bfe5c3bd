//! The collective operations data-parallel training needs, behind one trait, with a
//! single-process implementation that needs no system library.

use std::time::Instant;

use crate::DistError;

/// Counters of the all-reduces a communicator performed (for benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommStats {
    /// All-reduce calls.
    pub all_reduce_calls: u64,
    /// Payload bytes handed to all-reduce (the buffer sizes, summed over calls).
    pub all_reduce_bytes: u64,
    /// Wall-clock seconds spent inside all-reduce (including waiting for slower ranks).
    pub all_reduce_seconds: f64,
    /// Broadcast calls.
    pub broadcast_calls: u64,
}

/// The collective operations of data-parallel training. Every rank must make the same calls in
/// the same order with buffers of the same length (as in MPI).
pub trait Communicator {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum of all ranks' `buf`.
    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<(), DistError>;
    /// Replaces `buf` on every rank by the element-wise sum of all ranks' `buf`.
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<(), DistError>;
    /// Copies `root`'s `buf` to every rank (same length everywhere).
    fn broadcast_f32(&mut self, buf: &mut [f32], root: usize) -> Result<(), DistError>;
    /// Copies `root`'s bytes to every rank; other ranks' `buf` is resized to match.
    fn broadcast_bytes(&mut self, buf: &mut Vec<u8>, root: usize) -> Result<(), DistError>;
    /// Waits until every rank has called it.
    fn barrier(&mut self) -> Result<(), DistError>;
    /// Counters since creation or the last [`Communicator::reset_stats`].
    fn stats(&self) -> CommStats;
    /// Zeroes the counters.
    fn reset_stats(&mut self);
    /// Short description (`single process`, `MPI (Open MPI 4.1.4), 2 ranks`).
    fn describe(&self) -> String;
    /// Ends every rank at once with exit status `code` after an error that only this rank
    /// saw (the others would otherwise wait in their next collective forever). MPI: never
    /// returns (`MPI_Abort`). The default, for communicators whose ranks cannot wait on a
    /// failed peer (one process), does nothing and returns.
    fn abort(&mut self, code: i32) {
        let _ = code;
    }
}

/// Checks that `root` names a rank.
pub(crate) fn check_root(
    op: &'static str,
    rank: usize,
    root: usize,
    size: usize,
) -> Result<(), DistError> {
    if root >= size {
        return Err(DistError::Collective {
            op,
            rank,
            message: format!("root rank {root} is not below the {size} ranks"),
        });
    }
    Ok(())
}

/// The communicator of a run in one process: rank 0 of 1; every collective is the identity.
#[derive(Debug, Default, Clone)]
pub struct SingleProcess {
    stats: CommStats,
}

impl SingleProcess {
    /// Rank 0 of 1.
    pub fn new() -> Self {
        SingleProcess::default()
    }
}

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        let t = Instant::now();
        self.stats.all_reduce_calls += 1;
        self.stats.all_reduce_bytes += std::mem::size_of_val(buf) as u64;
        self.stats.all_reduce_seconds += t.elapsed().as_secs_f64();
        Ok(())
    }
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<(), DistError> {
        self.stats.all_reduce_calls += 1;
        self.stats.all_reduce_bytes += std::mem::size_of_val(buf) as u64;
        Ok(())
    }
    fn broadcast_f32(&mut self, _buf: &mut [f32], root: usize) -> Result<(), DistError> {
        check_root("broadcast", 0, root, 1)?;
        self.stats.broadcast_calls += 1;
        Ok(())
    }
    fn broadcast_bytes(&mut self, _buf: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        check_root("broadcast", 0, root, 1)?;
        self.stats.broadcast_calls += 1;
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), DistError> {
        Ok(())
    }
    fn stats(&self) -> CommStats {
        self.stats
    }
    fn reset_stats(&mut self) {
        self.stats = CommStats::default();
    }
    fn describe(&self) -> String {
        "single process".to_string()
    }
}

/// Bytes each rank sends in one ring all-reduce of `bytes` over `ranks` processes:
/// `2 (p - 1) / p` of the buffer (reduce-scatter then all-gather), 0 for one rank. Open MPI
/// picks its algorithm by message size and rank count; for large buffers it is a ring or a
/// comparable bandwidth-optimal scheme, so this is the figure that limits scaling.
pub fn ring_all_reduce_bytes_sent(bytes: u64, ranks: usize) -> u64 {
    if ranks <= 1 {
        return 0;
    }
    let p = ranks as u64;
    (2 * (p - 1) * bytes).div_ceil(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_is_identity_and_counts() {
        let mut c = SingleProcess::new();
        assert_eq!((c.rank(), c.size()), (0, 1));
        let mut a = vec![1.5f32, -2.0];
        c.all_reduce_sum_f32(&mut a).unwrap();
        assert_eq!(a, vec![1.5, -2.0]);
        let mut b = vec![3.0f64];
        c.all_reduce_sum_f64(&mut b).unwrap();
        assert_eq!(b, vec![3.0]);
        assert_eq!(c.stats().all_reduce_calls, 2);
        assert_eq!(c.stats().all_reduce_bytes, 16);
        assert!(c.broadcast_f32(&mut a, 1).is_err());
        let mut bytes = b"abc".to_vec();
        c.broadcast_bytes(&mut bytes, 0).unwrap();
        assert_eq!(bytes, b"abc");
        c.reset_stats();
        assert_eq!(c.stats(), CommStats::default());
    }

    #[test]
    fn ring_bytes() {
        assert_eq!(ring_all_reduce_bytes_sent(1000, 1), 0);
        assert_eq!(ring_all_reduce_bytes_sent(1000, 2), 1000);
        assert_eq!(ring_all_reduce_bytes_sent(1000, 4), 1500);
        assert_eq!(ring_all_reduce_bytes_sent(169_768, 8), 297_094);
    }
}
