//! Bad input, state save/load, skip policy and telemetry, for every optimizer of the family.

use lamb_optim::*;

/// A small deterministic tensor set: (name, shape).
const TENSORS: &[(&str, &[usize])] = &[
    ("conv2d/kernel", &[3, 3, 3, 4]),
    ("conv2d/bias", &[4]),
    ("dense/kernel", &[36, 10]),
    ("dense/bias", &[10]),
];

fn pseudo(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

struct Model {
    weights: Vec<Vec<f32>>,
}

impl Model {
    fn new() -> Self {
        Model {
            weights: TENSORS
                .iter()
                .enumerate()
                .map(|(i, (_, s))| pseudo(i as u64, s.iter().product(), 0.5))
                .collect(),
        }
    }

    fn grads(step: u64) -> Vec<Vec<f32>> {
        TENSORS
            .iter()
            .enumerate()
            .map(|(i, (_, s))| pseudo(1000 * step + i as u64, s.iter().product(), 0.1))
            .collect()
    }

    fn step(
        &mut self,
        opt: &mut dyn Optimizer,
        grads: &[Vec<f32>],
    ) -> Result<StepOutcome, OptimError> {
        let mut params: Vec<ParamMut> = self
            .weights
            .iter_mut()
            .zip(grads)
            .zip(TENSORS)
            .map(|((w, g), (n, s))| ParamMut::new(n, s, w, g))
            .collect();
        opt.step(&mut params)
    }

    fn bits(&self) -> Vec<u32> {
        self.weights.iter().flatten().map(|x| x.to_bits()).collect()
    }
}

fn all_specs() -> Vec<OptimizerSpec> {
    let mut v = Vec::new();
    for p in [
        "tfa",
        "nvlamb",
        "pytorch-lamb",
        "torch-optimizer",
        "timm",
        "optax",
        "deepspeed",
    ] {
        v.push(OptimizerSpec {
            weight_decay_rate: Some(0.01),
            exclude_from_weight_decay: Some(vec!["bias".into()]),
            ..OptimizerSpec::new(OptimizerKind::Lamb).with_preset(p)
        });
    }
    v.push(OptimizerSpec::new(OptimizerKind::Adam));
    v.push(OptimizerSpec::new(OptimizerKind::Adam).with_preset("pytorch"));
    v.push(OptimizerSpec::new(OptimizerKind::Adamw));
    for p in ["timm", "optax"] {
        v.push(OptimizerSpec {
            momentum: Some(0.9),
            weight_decay_rate: Some(1e-4),
            learning_rate: Some(0.1),
            ..OptimizerSpec::new(OptimizerKind::Lars).with_preset(p)
        });
    }
    v.push(OptimizerSpec {
        momentum: Some(0.9),
        nesterov: Some(true),
        ..OptimizerSpec::new(OptimizerKind::Sgd)
    });
    v
}

fn invalid_name(e: OptimError) -> &'static str {
    match e {
        OptimError::InvalidHyperparameter { name, .. } => name,
        e => panic!("expected InvalidHyperparameter, got {e:?}"),
    }
}

#[test]
fn invalid_learning_rates_are_rejected_with_name_value_range() {
    for kind in ["lamb", "adam", "adamw", "lars", "sgd"] {
        for lr in [-1e-3f32, f32::NAN, f32::INFINITY] {
            let spec = OptimizerSpec::new(kind.parse().unwrap()).with_learning_rate(lr);
            let e = build(&spec).err().expect("must fail");
            let msg = e.to_string();
            assert_eq!(invalid_name(e), "learning_rate", "{kind}");
            assert!(
                msg.contains(&format!("{lr:?}")) && msg.contains(">= 0"),
                "{msg}"
            );
        }
    }
}

#[test]
fn betas_outside_unit_interval_are_rejected() {
    for kind in ["lamb", "adam", "adamw"] {
        for (b1, b2, name) in [
            (1.0f32, 0.999f32, "beta_1"),
            (-0.1, 0.999, "beta_1"),
            (0.9, 1.0, "beta_2"),
            (0.9, 1.5, "beta_2"),
        ] {
            let spec = OptimizerSpec {
                beta_1: Some(b1),
                beta_2: Some(b2),
                ..OptimizerSpec::new(kind.parse().unwrap())
            };
            let e = build(&spec).err().expect("must fail");
            assert!(e.to_string().contains("[0, 1)"), "{e}");
            assert_eq!(invalid_name(e), name);
        }
    }
    let e = Lars::new(LarsConfig {
        momentum: 1.0,
        ..LarsConfig::default()
    })
    .unwrap_err();
    assert_eq!(invalid_name(e), "momentum");
}

#[test]
fn non_positive_epsilon_is_rejected_not_replaced() {
    for kind in ["lamb", "adam", "adamw"] {
        for eps in [0.0f32, -1e-8] {
            let spec = OptimizerSpec {
                epsilon: Some(eps),
                ..OptimizerSpec::new(kind.parse().unwrap())
            };
            let e = build(&spec).err().expect("must fail");
            let msg = e.to_string();
            assert!(msg.contains("1e-7") && msg.contains("> 0"), "{msg}");
            assert_eq!(invalid_name(e), "epsilon");
        }
    }
}

#[test]
fn invalid_or_unsupported_regex_is_rejected() {
    for (pattern, list) in [
        ("(bias", "decay"),
        ("(?=bias)", "decay"),
        ("(a)\\1", "adaptation"),
    ] {
        let cfg = if list == "decay" {
            LambConfig::default().with_exclusions(&[pattern], &[])
        } else {
            LambConfig::default().with_exclusions(&[], &[pattern])
        };
        match Lamb::new(cfg).unwrap_err() {
            OptimError::InvalidRegex {
                argument,
                pattern: p,
                message,
            } => {
                assert_eq!(p, pattern);
                assert!(argument.contains(list), "{argument}");
                assert!(!message.is_empty());
            }
            e => panic!("{e:?}"),
        }
    }
    let e = Adam::new(AdamConfig {
        exclude_from_weight_decay: vec!["[".into()],
        ..AdamConfig::adamw()
    })
    .unwrap_err();
    assert!(matches!(e, OptimError::InvalidRegex { .. }));
}

#[test]
fn clamp_min_above_max_is_rejected() {
    let e = Lamb::new(LambConfig {
        weight_norm_clamp: Some((5.0, 1.0)),
        ..LambConfig::preset(LambPreset::PytorchLamb)
    })
    .unwrap_err();
    assert_eq!(invalid_name(e.clone()), "weight_norm_clamp");
    assert!(e.to_string().contains("min must be <= max"), "{e}");
    let e = Lamb::new(LambConfig {
        trust_ratio_clamp: Some((2.0, 1.0)),
        ..LambConfig::preset(LambPreset::DeepSpeed)
    })
    .unwrap_err();
    assert_eq!(invalid_name(e), "trust_ratio_clamp");
}

#[test]
fn non_finite_gradient_is_an_error_naming_tensor_and_step_and_changes_nothing() {
    for spec in all_specs() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut opt = build(&spec).unwrap();
            let mut m = Model::new();
            m.step(opt.as_mut(), &Model::grads(1)).unwrap();
            let (before, state) = (m.bits(), opt.state());
            let mut g = Model::grads(2);
            g[2][17] = bad;
            match m.step(opt.as_mut(), &g) {
                Err(OptimError::NonFinite {
                    what,
                    name,
                    step,
                    index,
                    ..
                }) => {
                    assert_eq!(
                        (what, name.as_str(), step, index),
                        ("gradient", "dense/kernel", 2, 17)
                    );
                }
                r => panic!("{spec:?}: {r:?}"),
            }
            assert_eq!(m.bits(), before, "{spec:?} changed weights");
            assert_eq!(opt.state(), state, "{spec:?} changed state");
            assert_eq!(opt.steps(), 1);
            // Still usable afterwards.
            assert_eq!(
                m.step(opt.as_mut(), &Model::grads(2)).unwrap(),
                StepOutcome::Applied
            );
        }
    }
}

#[test]
fn non_finite_first_step_leaves_the_tensor_set_open() {
    let mut opt = Lamb::new(LambConfig::default()).unwrap();
    let mut m = Model::new();
    let mut g = Model::grads(1);
    g[0][0] = f32::NAN;
    assert!(m.step(&mut opt, &g).is_err());
    assert!(opt.state().tensors.is_empty());
    assert!(m.step(&mut opt, &Model::grads(1)).is_ok());
}

#[test]
fn skip_policy_skips_the_whole_step_and_counts_it() {
    for mut spec in all_specs() {
        spec.non_finite = Some(NonFinitePolicy::SkipStep);
        let mut opt = build(&spec).unwrap();
        let mut m = Model::new();
        m.step(opt.as_mut(), &Model::grads(1)).unwrap();
        let (before, state) = (m.bits(), opt.state());
        let mut g = Model::grads(2);
        g[3][1] = f32::NAN;
        assert_eq!(m.step(opt.as_mut(), &g).unwrap(), StepOutcome::Skipped);
        assert_eq!(m.bits(), before);
        assert_eq!(opt.skipped_steps(), 1);
        assert_eq!(opt.steps(), 1);
        let mut s2 = opt.state();
        s2.skipped_steps = 0;
        assert_eq!(s2, state);
        assert_eq!(
            m.step(opt.as_mut(), &Model::grads(2)).unwrap(),
            StepOutcome::Applied
        );
        assert_eq!(opt.steps(), 2);
    }
}

#[test]
fn non_finite_update_is_caught_before_writing() {
    // (optimizer, gradient scale, weight scale): LAMB's step has norm lr*||w||, so large
    // weights make it overflow.
    let cases: Vec<(Box<dyn Optimizer>, f32, f32)> = vec![
        (
            Box::new(Lamb::new(LambConfig::default().with_learning_rate(1e37)).unwrap()),
            1.0,
            1e3,
        ),
        (
            Box::new(Adam::new(AdamConfig::keras().with_learning_rate(3e38)).unwrap()),
            1e3,
            1.0,
        ),
        (
            Box::new(Adam::new(AdamConfig::adamw().with_learning_rate(3e38)).unwrap()),
            1e3,
            1.0,
        ),
        (
            Box::new(
                Sgd::new(SgdConfig {
                    learning_rate: 1e30,
                    ..SgdConfig::default()
                })
                .unwrap(),
            ),
            1e10,
            1.0,
        ),
        (
            Box::new(Lars::new(LarsConfig::default().with_learning_rate(3e38)).unwrap()),
            100.0,
            1.0,
        ),
    ];
    for (mut opt, gscale, wscale) in cases {
        let mut m = Model::new();
        for w in m.weights.iter_mut().flatten() {
            *w *= wscale;
        }
        let before = m.bits();
        let g: Vec<Vec<f32>> = Model::grads(1)
            .into_iter()
            .map(|v| v.into_iter().map(|x| x * gscale).collect())
            .collect();
        match m.step(opt.as_mut(), &g) {
            Err(OptimError::NonFinite {
                what: "update",
                step: 1,
                ..
            }) => {}
            r => panic!("{}: {r:?}", opt.name()),
        }
        assert_eq!(m.bits(), before, "{}", opt.name());
        assert_eq!(opt.steps(), 0);
    }
    // With the skip policy the same step is skipped and counted.
    let mut opt = Lamb::new(
        LambConfig::default()
            .with_learning_rate(1e37)
            .with_non_finite(NonFinitePolicy::SkipStep),
    )
    .unwrap();
    let mut m = Model::new();
    for w in m.weights.iter_mut().flatten() {
        *w *= 1e3;
    }
    assert_eq!(
        m.step(&mut opt, &Model::grads(1)).unwrap(),
        StepOutcome::Skipped
    );
    assert_eq!(opt.skipped_steps(), 1);
}

#[test]
fn mismatched_lengths_are_errors() {
    let mut opt = Lamb::new(LambConfig::default()).unwrap();
    let mut w = vec![1.0f32; 6];
    let g = vec![0.1f32; 5];
    let e = opt
        .step(&mut [ParamMut::new("a", &[6], &mut w, &g)])
        .unwrap_err();
    assert!(
        matches!(&e, OptimError::ShapeMismatch { name, .. } if name == "a"),
        "{e:?}"
    );
    let g = vec![0.1f32; 6];
    let e = opt
        .step(&mut [ParamMut::new("a", &[2, 2], &mut w, &g)])
        .unwrap_err();
    assert!(
        matches!(&e, OptimError::ShapeMismatch { message, .. } if message.contains("[2, 2]")),
        "{e:?}"
    );
    let (mut w2, g2) = (vec![1.0f32; 2], vec![0.0f32; 2]);
    let e = opt
        .step(&mut [
            ParamMut::new("a", &[6], &mut w, &g),
            ParamMut::new("a", &[2], &mut w2, &g2),
        ])
        .unwrap_err();
    assert!(matches!(e, OptimError::ShapeMismatch { .. }), "{e:?}");
}

#[test]
fn changed_tensor_set_is_an_error() {
    for spec in all_specs() {
        let mut opt = build(&spec).unwrap();
        let (mut a, mut b) = (vec![1.0f32; 4], vec![2.0f32; 3]);
        let (ga, gb) = (vec![0.1f32; 4], vec![0.2f32; 3]);
        opt.step(&mut [
            ParamMut::new("a", &[4], &mut a, &ga),
            ParamMut::new("b", &[3], &mut b, &gb),
        ])
        .unwrap();
        let state = opt.state();
        // Missing tensor.
        let e = opt
            .step(&mut [ParamMut::new("a", &[4], &mut a, &ga)])
            .unwrap_err();
        assert!(
            matches!(e, OptimError::TensorSetChanged { step: 2, .. }),
            "{e:?}"
        );
        // Renamed.
        let e = opt
            .step(&mut [
                ParamMut::new("a", &[4], &mut a, &ga),
                ParamMut::new("c", &[3], &mut b, &gb),
            ])
            .unwrap_err();
        assert!(
            matches!(&e, OptimError::TensorSetChanged { message, .. } if message.contains("`c`")),
            "{e:?}"
        );
        // Reordered.
        let e = opt
            .step(&mut [
                ParamMut::new("b", &[3], &mut b, &gb),
                ParamMut::new("a", &[4], &mut a, &ga),
            ])
            .unwrap_err();
        assert!(matches!(e, OptimError::TensorSetChanged { .. }));
        // Resized.
        let (mut c, gc) = (vec![1.0f32; 5], vec![0.0f32; 5]);
        let e = opt
            .step(&mut [
                ParamMut::new("a", &[4], &mut a, &ga),
                ParamMut::new("b", &[5], &mut c, &gc),
            ])
            .unwrap_err();
        assert!(matches!(e, OptimError::TensorSetChanged { .. }));
        assert_eq!(opt.state(), state);
    }
}

#[test]
fn state_round_trip_resumes_bit_identically() {
    for spec in all_specs() {
        let mut a = build(&spec).unwrap();
        let mut ma = Model::new();
        for t in 1..=3 {
            ma.step(a.as_mut(), &Model::grads(t)).unwrap();
        }
        let saved = a.state();
        let json = serde_json::to_string(&saved).unwrap();
        let weights = ma.weights.clone();
        for t in 4..=6 {
            ma.step(a.as_mut(), &Model::grads(t)).unwrap();
        }
        let mut b = build(&spec).unwrap();
        let restored: OptimizerState = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, saved, "JSON round trip changed the state");
        b.load_state(&restored).unwrap();
        assert_eq!(b.steps(), 3);
        let mut mb = Model { weights };
        for t in 4..=6 {
            mb.step(b.as_mut(), &Model::grads(t)).unwrap();
        }
        assert_eq!(ma.bits(), mb.bits(), "{spec:?}");
        assert_eq!(a.state(), b.state());
    }
}

#[test]
fn schedule_position_is_restored() {
    let spec = OptimizerSpec {
        schedule: Some(Schedule::polynomial(2, 10)),
        ..OptimizerSpec::new(OptimizerKind::Lamb)
    };
    let mut a = build(&spec).unwrap();
    let mut m = Model::new();
    for t in 1..=4 {
        m.step(a.as_mut(), &Model::grads(t)).unwrap();
    }
    let mut b = build(&spec).unwrap();
    b.load_state(&a.state()).unwrap();
    assert_eq!(a.current_learning_rate(), b.current_learning_rate());
    assert!((b.current_learning_rate() - 1e-3 * 0.5).abs() < 1e-9);
}

#[test]
fn load_state_rejects_mismatches() {
    let mut lamb = Lamb::new(LambConfig::default()).unwrap();
    let mut m = Model::new();
    m.step(&mut lamb, &Model::grads(1)).unwrap();
    let st = lamb.state();
    let mut adam = Adam::new(AdamConfig::keras()).unwrap();
    assert!(matches!(
        adam.load_state(&st),
        Err(OptimError::StateMismatch(_))
    ));
    let mut bad = st.clone();
    bad.tensors[0].slots[0].1.pop();
    let mut fresh = Lamb::new(LambConfig::default()).unwrap();
    assert!(matches!(
        fresh.load_state(&bad),
        Err(OptimError::StateMismatch(_))
    ));
    // A loaded state fixes the tensor set.
    fresh.load_state(&st).unwrap();
    let (mut a, g) = (vec![1.0f32; 4], vec![0.1f32; 4]);
    assert!(matches!(
        fresh.step(&mut [ParamMut::new("a", &[4], &mut a, &g)]),
        Err(OptimError::TensorSetChanged { .. })
    ));
}

#[test]
fn telemetry_reports_norms_and_ratios() {
    let mut opt = Lamb::new(
        LambConfig::default()
            .with_weight_decay(0.01)
            .with_exclusions(&["bias"], &[]),
    )
    .unwrap();
    assert!(opt.telemetry().is_empty());
    let mut m = Model::new();
    m.step(&mut opt, &Model::grads(1)).unwrap();
    let tel = opt.telemetry();
    assert_eq!(tel.len(), TENSORS.len());
    for (t, (name, _)) in tel.iter().zip(TENSORS) {
        assert_eq!(&t.name, name);
        assert_eq!(t.learning_rate, 1e-3);
        assert!(t.weight_norm > 0.0 && t.update_norm > 0.0);
        if name.contains("bias") {
            assert_eq!(t.trust_ratio, 1.0);
        } else {
            let r = t.weight_norm / t.update_norm;
            assert!((t.trust_ratio - r).abs() <= 1e-6 * r, "{t:?}");
        }
    }
    // The kernel's weight norm is the norm before the step.
    let w0 = Model::new().weights[0]
        .iter()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((tel[0].weight_norm as f64 - w0).abs() < 1e-5 * w0);
}

#[test]
fn zero_learning_rate_changes_nothing() {
    for mut spec in all_specs() {
        spec.learning_rate = Some(0.0);
        if spec.kind == Some(OptimizerKind::Adamw) {
            spec.weight_decay_rate = Some(0.0);
        }
        let mut opt = build(&spec).unwrap();
        let mut m = Model::new();
        let before = m.bits();
        m.step(opt.as_mut(), &Model::grads(1)).unwrap();
        assert_eq!(m.bits(), before, "{spec:?}");
    }
}

#[test]
fn unchecked_policy_gives_bit_identical_steps_and_propagates_non_finite_values() {
    for spec in all_specs().into_iter().filter(|s| {
        matches!(
            s.kind,
            Some(OptimizerKind::Lamb | OptimizerKind::Adam | OptimizerKind::Adamw)
        )
    }) {
        let mut checked = build(&spec).unwrap();
        let mut fast = build(&OptimizerSpec {
            non_finite: Some(NonFinitePolicy::Unchecked),
            ..spec.clone()
        })
        .unwrap();
        let (mut a, mut b) = (Model::new(), Model::new());
        for t in 1..=4 {
            let g = Model::grads(t);
            a.step(checked.as_mut(), &g).unwrap();
            b.step(fast.as_mut(), &g).unwrap();
            assert_eq!(a.bits(), b.bits(), "{spec:?} step {t}");
            assert_eq!(checked.telemetry(), fast.telemetry(), "{spec:?} step {t}");
        }
        assert_eq!(checked.state(), fast.state(), "{spec:?}");
        // A NaN gradient is not caught: it reaches the weights (PyTorch's behaviour).
        let mut g = Model::grads(5);
        g[0][0] = f32::NAN;
        assert_eq!(b.step(fast.as_mut(), &g).unwrap(), StepOutcome::Applied);
        assert!(b.weights[0][0].is_nan(), "{spec:?}");
    }
}

#[test]
fn finite_gradient_whose_square_overflows_is_refused_and_changes_nothing() {
    // g = 1e20 is finite but g*g is not: the second moment would become infinite while the
    // update (m / sqrt(inf) = 0) stays finite. Both memory choices must refuse the step.
    for memory in [StepMemory::Fast, StepMemory::Lean] {
        let cfg = LambConfig {
            step_memory: memory,
            ..LambConfig::default()
        };
        let mut opt = Lamb::new(cfg).unwrap();
        let mut m = Model::new();
        m.step(&mut opt, &Model::grads(1)).unwrap();
        let (before, state) = (m.bits(), opt.state());
        let mut g = Model::grads(2);
        g[2][5] = 1e20;
        match m.step(&mut opt, &g) {
            Err(OptimError::NonFinite {
                what: "update",
                name,
                step: 2,
                index: 5,
                ..
            }) => assert_eq!(name, "dense/kernel"),
            r => panic!("{memory:?}: {r:?}"),
        }
        assert_eq!(m.bits(), before, "{memory:?} changed weights");
        assert_eq!(opt.state(), state, "{memory:?} changed state");
        // Still usable afterwards.
        m.step(&mut opt, &Model::grads(3)).unwrap();
    }
}

#[test]
fn step_memory_applies_to_lamb_only() {
    for kind in [
        OptimizerKind::Adam,
        OptimizerKind::Adamw,
        OptimizerKind::Lars,
        OptimizerKind::Sgd,
    ] {
        let spec = OptimizerSpec {
            step_memory: Some(StepMemory::Lean),
            ..OptimizerSpec::new(kind)
        };
        match build(&spec) {
            Err(OptimError::InvalidHyperparameter { name, .. }) => {
                assert_eq!(name, "step_memory")
            }
            r => panic!("{kind:?}: {:?}", r.map(|o| o.name())),
        }
    }
    let lean = OptimizerSpec {
        step_memory: Some(StepMemory::Lean),
        ..OptimizerSpec::new(OptimizerKind::Lamb)
    };
    assert!(build(&lean).is_ok());
}

#[test]
fn a_non_finite_gradient_anywhere_in_a_large_tensor_is_found() {
    // The check passes walk several chunks side by side; every position must be covered.
    let n = 9 * CHUNK + 21;
    let shape = [n];
    for spec in all_specs() {
        for at in [0, 1, CHUNK - 1, n / 8 + 3, 4 * CHUNK + 17, n - 22, n - 1] {
            let mut opt = build(&spec).unwrap();
            let mut w = vec![0.5f32; n];
            let mut g = vec![0.01f32; n];
            g[at] = f32::NAN;
            let mut params = vec![ParamMut::new("big/kernel", &shape, &mut w, &g)];
            match opt.step(&mut params) {
                Err(OptimError::NonFinite {
                    what: "gradient",
                    index,
                    ..
                }) => assert_eq!(index, at, "{spec:?}"),
                r => panic!("{spec:?} NaN at {at}: {r:?}"),
            }
        }
    }
}

#[test]
fn declared_gradient_maxima_give_identical_steps_and_still_refuse_non_finite_ones() {
    let step_declared = |m: &mut Model, opt: &mut dyn Optimizer, g: &[Vec<f32>]| {
        let mut params: Vec<ParamMut> = m
            .weights
            .iter_mut()
            .zip(g)
            .zip(TENSORS)
            .map(|((w, g), (n, s))| ParamMut::new(n, s, w, g).with_grad_max_abs(max_abs(g)))
            .collect();
        opt.step(&mut params)
    };
    for spec in all_specs() {
        let (mut plain, mut declared) = (build(&spec).unwrap(), build(&spec).unwrap());
        let (mut a, mut b) = (Model::new(), Model::new());
        for t in 1..=3 {
            let g = Model::grads(t);
            a.step(plain.as_mut(), &g).unwrap();
            step_declared(&mut b, declared.as_mut(), &g).unwrap();
            assert_eq!(a.bits(), b.bits(), "{spec:?} step {t}");
        }
        assert_eq!(plain.state(), declared.state(), "{spec:?}");
        // A non-finite element is still refused before anything is written, and named.
        for bad in [f32::NAN, f32::INFINITY] {
            let (before, state) = (b.bits(), declared.state());
            let mut g = Model::grads(4);
            g[2][17] = bad;
            match step_declared(&mut b, declared.as_mut(), &g) {
                Err(OptimError::NonFinite { name, index, .. }) => {
                    assert_eq!((name.as_str(), index), ("dense/kernel", 17), "{spec:?}")
                }
                r => panic!("{spec:?}: {r:?}"),
            }
            assert_eq!(b.bits(), before, "{spec:?} changed weights");
            assert_eq!(declared.state(), state, "{spec:?} changed state");
        }
    }
    assert_eq!(max_abs(&[1.0, -3.0, 2.0]), 3.0);
    assert!(max_abs(&[1.0, f32::NAN]).is_nan());
    assert_eq!(max_abs(&[1.0, f32::NEG_INFINITY]), f32::INFINITY);
    assert_eq!(max_abs(&[]), 0.0);
}
