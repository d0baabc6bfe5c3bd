//! Filling augmented, standardized training batches allocates nothing (its own test binary,
//! because it installs a counting global allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lamb_data::{Augment, Dataset, InputPipeline, Standardize};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn filling_training_batches_allocates_nothing() {
    let n = 64;
    let ds = Dataset {
        images: (0..n * 32 * 32 * 3).map(|v| (v % 251) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        height: 32,
        width: 32,
        channels: 3,
        class_names: (0..10).map(|i| i.to_string()).collect(),
    };
    let p = InputPipeline {
        standardize: Some(Standardize::from_dataset(&ds)),
        augment: "crop=4,flip".parse::<Augment>().unwrap(),
        seed: 1,
    };
    let idx: Vec<usize> = (0..16).collect();
    let mut x = vec![0.0f32; 16 * 32 * 32 * 3];
    let mut y = vec![0u8; 16];
    p.fill_train_batch(&ds, &idx, 0, &mut x, &mut y); // warm-up
    let before = ALLOCS.load(Ordering::SeqCst);
    for step in 0..20u64 {
        p.fill_train_batch(&ds, &idx, step, &mut x, &mut y);
    }
    let after = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(after - before, 0, "allocations while filling 20 batches");
}
