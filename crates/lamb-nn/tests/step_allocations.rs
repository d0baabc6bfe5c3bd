//! Training steps and evaluation batches of the seed CNN allocate nothing once the first steps
//! have sized the work buffers (own test binary: it installs a counting global allocator).

use lamb_data::Dataset;
use lamb_nn::{classic_cnn, Activation};
use lamb_optim::{Lamb, LambConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Held by each test: the counters are global, so the tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Counts the allocations and bytes that `f` makes.
fn counted<R>(f: impl FnOnce() -> R) -> (usize, usize, R) {
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let r = f();
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    (a1 - a0, b1 - b0, r)
}

/// Runs `f` on a fresh 2-thread rayon pool. (Called from outside any pool, each parallel
/// region is injected into the global pool, and rayon's injector queue allocates a 1,520-byte
/// block every 63 injections: 11 allocations per 100 steps here, none of them ours.)
fn two_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
        .install(f)
}

/// (allocations, bytes) of 10 training steps of the seed CNN with `act` on a batch of 100,
/// after 20 warm-up steps, on a 2-thread pool. The kernels keep small per-thread caches
/// (band buffer, Winograd tiles) made on a thread's first chunk; with few
/// chunks a worker sometimes gets none in a step, so the warm-up is long enough that each has
/// run chunks of every kind (with 3 steps, 2 runs in 100 failed). The shared scratch is sized
/// before each pass, so it never depends on that.
fn steady_state(act: Activation) -> (usize, usize) {
    two_threads(|| {
        let mut model = classic_cnn(act, 1).unwrap();
        let mut opt = Lamb::new(LambConfig::default()).unwrap();
        let batch = 100;
        let x: Vec<f32> = (0..batch * 32 * 32 * 3)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        let y: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
        for _ in 0..20 {
            model.train_step(&x, &y, &mut opt).unwrap();
        }
        let (allocs, bytes, ()) = counted(|| {
            for _ in 0..10 {
                model.train_step(&x, &y, &mut opt).unwrap();
            }
        });
        (allocs, bytes)
    })
}

#[test]
fn training_steps_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap();
    for act in [Activation::Relu, Activation::Selu] {
        let (allocs, bytes) = steady_state(act);
        assert_eq!(
            (allocs, bytes),
            (0, 0),
            "{act:?}: allocations and bytes in 10 steps"
        );
    }
}

/// `n` synthetic 32 x 32 RGB images.
fn images(n: usize) -> Dataset {
    Dataset {
        images: (0..n * 32 * 32 * 3)
            .map(|i| (i * 7919 % 256) as u8)
            .collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        height: 32,
        width: 32,
        channels: 3,
        class_names: (0..10).map(|c| c.to_string()).collect(),
    }
}

#[test]
fn evaluation_batches_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap();
    let (three, six) = two_threads(|| {
        let mut model = classic_cnn(Activation::Selu, 1).unwrap();
        let (small, large) = (images(300), images(600));
        model.evaluate(&large, 100).unwrap();
        let three = counted(|| model.evaluate(&small, 100).unwrap()).0;
        let six = counted(|| model.evaluate(&large, 100).unwrap()).0;
        (three, six)
    });
    // Only the per-call buffers of `evaluate` (batch indices, probabilities) allocate.
    assert_eq!(six, three, "allocations of 6 batches vs 3");
}

#[test]
fn resnet20_training_steps_allocate_nothing() {
    // The general engine (graph of layers): after warm-up steps have sized every buffer, a
    // ResNet-20 training step on a batch of 16 allocates nothing. The direct kernels' window
    // offsets are shared by the threads (built once per geometry and chunk size, whichever
    // thread runs it); the per-thread scratch (band buffer, Winograd tiles) is met by each
    // worker many times in 12 warm-up steps (dozens of convolutions of 4 chunks each).
    let _serial = SERIAL.lock().unwrap();
    let (allocs, bytes) = two_threads(|| {
        let mut model = lamb_nn::ModelSpec::resnet20().build(1).unwrap();
        let mut opt = Lamb::new(LambConfig::default()).unwrap();
        let batch = 16;
        let x: Vec<f32> = (0..batch * 32 * 32 * 3)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        let y: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
        for _ in 0..12 {
            model.train_step(&x, &y, &mut opt).unwrap();
        }
        let (allocs, bytes, ()) = counted(|| {
            for _ in 0..3 {
                model.train_step(&x, &y, &mut opt).unwrap();
            }
        });
        (allocs, bytes)
    });
    assert_eq!((allocs, bytes), (0, 0), "allocations and bytes in 3 steps");
}
