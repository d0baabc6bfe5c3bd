//! In-process ranks: a [`Communicator`] whose ranks are threads of one process. It runs the
//! data-parallel code paths (sharding, reductions, sync) without MPI, for tests and for
//! checking equivalence in the default build. Reductions add the ranks' buffers in rank order
//! in the buffer's own precision, so every rank gets bit-identical results.

use std::sync::{Arc, Barrier, Mutex, MutexGuard};

use crate::comm::{check_root, CommStats, Communicator};
use crate::DistError;

#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    f32s: Mutex<Vec<Vec<f32>>>,
    f64s: Mutex<Vec<Vec<f64>>>,
    bytes: Mutex<Vec<u8>>,
}

/// One rank of a group of threads; create the group with [`ThreadCommunicator::group`] and move
/// one member into each thread. Every member must make the same calls in the same order.
#[derive(Debug)]
pub struct ThreadCommunicator {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
    stats: CommStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking rank poisons the lock; the data is still consistent for reading.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ThreadCommunicator {
    /// `size` ranks (at least 1), in rank order.
    pub fn group(size: usize) -> Vec<ThreadCommunicator> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            barrier: Barrier::new(size),
            f32s: Mutex::new(vec![Vec::new(); size]),
            f64s: Mutex::new(vec![Vec::new(); size]),
            bytes: Mutex::new(Vec::new()),
        });
        (0..size)
            .map(|rank| ThreadCommunicator {
                rank,
                size,
                shared: shared.clone(),
                stats: CommStats::default(),
            })
            .collect()
    }

    fn check_lengths(
        &self,
        lens: impl Iterator<Item = usize>,
        mine: usize,
    ) -> Result<(), DistError> {
        let lens: Vec<usize> = lens.collect();
        if lens.iter().any(|&l| l != mine) {
            return Err(DistError::Collective {
                op: "all-reduce",
                rank: self.rank,
                message: format!("ranks passed buffers of different lengths {lens:?}"),
            });
        }
        Ok(())
    }
}

macro_rules! reduce {
    ($self:ident, $buf:ident, $field:ident) => {{
        let t = std::time::Instant::now();
        lock(&$self.shared.$field)[$self.rank] = $buf.to_vec();
        $self.shared.barrier.wait();
        let result = {
            let slots = lock(&$self.shared.$field);
            $self
                .check_lengths(slots.iter().map(|s| s.len()), $buf.len())
                .map(|()| {
                    $buf.copy_from_slice(&slots[0]);
                    for s in &slots[1..] {
                        for (b, v) in $buf.iter_mut().zip(s) {
                            *b += *v;
                        }
                    }
                })
        };
        $self.shared.barrier.wait();
        $self.stats.all_reduce_calls += 1;
        $self.stats.all_reduce_bytes += std::mem::size_of_val($buf) as u64;
        $self.stats.all_reduce_seconds += t.elapsed().as_secs_f64();
        result
    }};
}

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        reduce!(self, buf, f32s)
    }
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<(), DistError> {
        reduce!(self, buf, f64s)
    }
    fn broadcast_f32(&mut self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        check_root("broadcast", self.rank, root, self.size)?;
        if self.rank == root {
            lock(&self.shared.f32s)[root] = buf.to_vec();
        }
        self.shared.barrier.wait();
        let result = {
            let slots = lock(&self.shared.f32s);
            if slots[root].len() == buf.len() {
                buf.copy_from_slice(&slots[root]);
                Ok(())
            } else {
                Err(DistError::OutOfSync(format!(
                    "broadcast of {} values from rank {root}, rank {} has a buffer of {}",
                    slots[root].len(),
                    self.rank,
                    buf.len()
                )))
            }
        };
        self.shared.barrier.wait();
        self.stats.broadcast_calls += 1;
        result
    }
    fn broadcast_bytes(&mut self, buf: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        check_root("broadcast", self.rank, root, self.size)?;
        if self.rank == root {
            *lock(&self.shared.bytes) = buf.clone();
        }
        self.shared.barrier.wait();
        if self.rank != root {
            *buf = lock(&self.shared.bytes).clone();
        }
        self.shared.barrier.wait();
        self.stats.broadcast_calls += 1;
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), DistError> {
        self.shared.barrier.wait();
        Ok(())
    }
    fn stats(&self) -> CommStats {
        self.stats
    }
    fn reset_stats(&mut self) {
        self.stats = CommStats::default();
    }
    fn describe(&self) -> String {
        format!("{} in-process thread ranks", self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_and_broadcast_across_threads() {
        let group = ThreadCommunicator::group(3);
        type Seen = (Vec<f32>, Vec<f64>, Vec<u8>, Vec<f32>);
        let out: Vec<Seen> = std::thread::scope(|s| {
            let hs: Vec<_> = group
                .into_iter()
                .map(|mut c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let mut a = vec![r, 10.0 * r];
                        c.all_reduce_sum_f32(&mut a).unwrap();
                        let mut b = vec![r as f64 + 0.5];
                        c.all_reduce_sum_f64(&mut b).unwrap();
                        let mut bytes = if c.rank() == 1 {
                            b"hi".to_vec()
                        } else {
                            Vec::new()
                        };
                        c.broadcast_bytes(&mut bytes, 1).unwrap();
                        let mut w = vec![r; 2];
                        c.broadcast_f32(&mut w, 2).unwrap();
                        c.barrier().unwrap();
                        assert_eq!(c.stats().all_reduce_calls, 2);
                        (a, b, bytes, w)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (a, b, bytes, w) in out {
            assert_eq!(a, vec![3.0, 30.0]);
            assert_eq!(b, vec![4.5]);
            assert_eq!(bytes, b"hi");
            assert_eq!(w, vec![2.0, 2.0]);
        }
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let group = ThreadCommunicator::group(2);
        let errs: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = group
                .into_iter()
                .map(|mut c| {
                    s.spawn(move || {
                        let mut a = vec![1.0f32; 2 + c.rank()];
                        c.all_reduce_sum_f32(&mut a).is_err()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(errs, vec![true, true]);
    }
}
