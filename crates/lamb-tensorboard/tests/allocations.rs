//! Buffering scalars and histograms and flushing them allocates nothing once the writer's
//! buffer and the histogram's vectors have room (own test binary: a counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lamb_tensorboard::{read_events, EventWriter, Histogram};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn records_and_flushes_allocate_nothing_within_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = EventWriter::open(dir.path(), 64 * 1024).unwrap();
    let values: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut h = Histogram::from_values(&values, 30);
    let before = ALLOCS.load(Ordering::Relaxed);
    for epoch in 0..20i64 {
        for step in 0..100i64 {
            w.scalar("batch_loss", epoch * 100 + step, step as f32 * 0.01);
        }
        h.fill(&values[epoch as usize..], 30);
        w.histogram("dense/kernel/histogram", epoch, &h);
        w.flush().unwrap();
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(allocs, 0, "allocations while writing 2,020 records");
    let f = read_events(w.path()).unwrap();
    assert_eq!(f.events.len(), 1 + 20 * 101);
}
