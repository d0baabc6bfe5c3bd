//! After the first step, a step allocates nothing (own test binary: it installs a counting
//! global allocator).

use lamb_optim::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

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
fn steps_after_the_first_do_not_allocate() {
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("a/kernel".into(), vec![3 * CHUNK + 5]),
        ("a/bias".into(), vec![10]),
        ("b/kernel".into(), vec![100, 30]),
    ];
    let specs = [
        OptimizerSpec {
            max_grad_norm: Some(1.0),
            weight_decay_rate: Some(0.01),
            ..OptimizerSpec::new(OptimizerKind::Lamb)
        },
        OptimizerSpec::new(OptimizerKind::Adam),
        OptimizerSpec::new(OptimizerKind::Adamw),
        OptimizerSpec {
            momentum: Some(0.9),
            ..OptimizerSpec::new(OptimizerKind::Lars)
        },
        OptimizerSpec::new(OptimizerKind::Sgd),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for spec in specs {
        let mut w: Vec<Vec<f32>> = shapes
            .iter()
            .map(|(_, s)| vec![0.5; s.iter().product()])
            .collect();
        let g: Vec<Vec<f32>> = shapes
            .iter()
            .map(|(_, s)| vec![0.01; s.iter().product()])
            .collect();
        let mut opt = build(&spec).unwrap();
        let counts = pool.install(|| {
            let mut counts = Vec::new();
            for _ in 0..6 {
                let mut params: Vec<ParamMut> = w
                    .iter_mut()
                    .zip(&g)
                    .zip(&shapes)
                    .map(|((w, g), (n, s))| ParamMut::new(n, s, w, g))
                    .collect();
                let before = ALLOCS.load(Ordering::SeqCst);
                opt.step(&mut params).unwrap();
                counts.push(ALLOCS.load(Ordering::SeqCst) - before);
            }
            counts
        });
        assert!(counts[0] > 0, "the first step allocates the state");
        assert!(
            counts[2..].iter().all(|&c| c == 0),
            "{spec:?}: allocations per step {counts:?}"
        );
    }
}
