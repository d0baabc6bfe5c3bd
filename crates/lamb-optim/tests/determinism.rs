//! Results must not depend on the number of threads or on the SIMD level: chunk boundaries
//! and reduction order are fixed. (Its own test binary, because it switches the process-wide
//! SIMD level.)

use lamb_optim::*;

fn tensors() -> Vec<(String, Vec<usize>)> {
    vec![
        // Several chunks plus a ragged tail.
        ("embed/kernel".into(), vec![4 * CHUNK + 1234]),
        ("dense/kernel".into(), vec![300, 77]),
        ("dense/bias".into(), vec![77]),
        ("big/kernel".into(), vec![2 * CHUNK + 15]),
        ("empty/bias".into(), vec![0]),
    ]
}

fn fill(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

/// Runs 4 steps and returns every weight bit, every state bit and the telemetry.
fn run(spec: &OptimizerSpec) -> (Vec<u32>, OptimizerState, Vec<TensorTelemetry>) {
    let set = tensors();
    let mut weights: Vec<Vec<f32>> = set
        .iter()
        .enumerate()
        .map(|(i, (_, s))| fill(i as u64, s.iter().product(), 0.2))
        .collect();
    let mut opt = build(spec).unwrap();
    for t in 0..4u64 {
        let grads: Vec<Vec<f32>> = set
            .iter()
            .enumerate()
            .map(|(i, (_, s))| fill(100 * t + i as u64 + 7, s.iter().product(), 0.01))
            .collect();
        let mut params: Vec<ParamMut> = weights
            .iter_mut()
            .zip(&grads)
            .zip(&set)
            .map(|((w, g), (n, s))| ParamMut::new(n, s, w, g))
            .collect();
        opt.step(&mut params).unwrap();
    }
    (
        weights.iter().flatten().map(|x| x.to_bits()).collect(),
        opt.state(),
        opt.telemetry().to_vec(),
    )
}

fn specs() -> Vec<OptimizerSpec> {
    let mut v: Vec<OptimizerSpec> = ["tfa", "timm", "pytorch-lamb", "optax"]
        .iter()
        .map(|p| OptimizerSpec {
            weight_decay_rate: Some(0.01),
            exclude_from_weight_decay: Some(vec!["bias".into()]),
            ..OptimizerSpec::new(OptimizerKind::Lamb).with_preset(p)
        })
        .collect();
    v.push(OptimizerSpec {
        weight_decay_rate: Some(0.01),
        non_finite: Some(NonFinitePolicy::Unchecked),
        ..OptimizerSpec::new(OptimizerKind::Lamb)
    });
    v.push(OptimizerSpec::new(OptimizerKind::Adam));
    v.push(OptimizerSpec::new(OptimizerKind::Adamw));
    v.push(OptimizerSpec {
        momentum: Some(0.9),
        weight_decay_rate: Some(1e-4),
        ..OptimizerSpec::new(OptimizerKind::Lars)
    });
    v.push(OptimizerSpec {
        momentum: Some(0.9),
        nesterov: Some(true),
        ..OptimizerSpec::new(OptimizerKind::Sgd)
    });
    v
}

#[test]
fn identical_bits_for_any_thread_count_and_simd_level() {
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let (p1, p2, p3) = (pool(1), pool(2), pool(3));
    for spec in specs() {
        set_simd_level(best_available());
        let reference = p1.install(|| run(&spec));
        assert_eq!(
            p2.install(|| run(&spec)),
            reference,
            "2 threads differ: {spec:?}"
        );
        assert_eq!(
            p3.install(|| run(&spec)),
            reference,
            "3 threads differ: {spec:?}"
        );
        for level in [SimdLevel::Avx2, SimdLevel::Baseline] {
            set_simd_level(level);
            assert_eq!(
                p2.install(|| run(&spec)),
                reference,
                "{level:?} differs: {spec:?}"
            );
        }
    }
    set_simd_level(best_available());
}

/// Both memory choices, checked and unchecked: one result.
#[test]
fn lamb_step_memory_choices_give_identical_bits() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    set_simd_level(best_available());
    for preset in ["tfa", "timm", "pytorch-lamb", "torch-optimizer"] {
        let spec = |policy, memory| OptimizerSpec {
            weight_decay_rate: Some(0.01),
            exclude_from_weight_decay: Some(vec!["bias".into()]),
            non_finite: Some(policy),
            step_memory: Some(memory),
            ..OptimizerSpec::new(OptimizerKind::Lamb).with_preset(preset)
        };
        let first = pool.install(|| run(&spec(NonFinitePolicy::Error, StepMemory::Fast)));
        for policy in [NonFinitePolicy::Error, NonFinitePolicy::Unchecked] {
            for memory in [StepMemory::Fast, StepMemory::Lean] {
                let other = pool.install(|| run(&spec(policy, memory)));
                assert!(first == other, "{preset} {policy:?} {memory:?}");
            }
        }
    }
}
