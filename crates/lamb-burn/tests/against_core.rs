//! The adapter against `lamb-optim` itself on random tensors and gradients: every LAMB and
//! LARS preset (including those without golden files: nvlamb, deepspeed), 20 steps, weights
//! within the golden tolerance `2e-6*|expected| + 1e-7`, trust ratios alike; the plain Burn
//! `ModuleOptimizer` path; exact resume from saved state; non-finite handling; names from
//! module paths.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use common::*;
use lamb_burn::*;
use lamb_optim::{Optimizer, ParamMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Names and shapes of a small BERT-like set (exclusion patterns hit the biases and norms).
const TENSORS: &[(&str, &[usize])] = &[
    ("encoder/dense/kernel", &[16, 8]),
    ("encoder/dense/bias", &[8]),
    ("encoder/LayerNorm/gamma", &[8]),
    ("head/kernel", &[8, 3]),
    ("head/bias", &[3]),
];

const STEPS: usize = 20;

fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // Sum of uniforms: a cheap bell shape, enough for varied magnitudes.
            let s: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum();
            s * scale
        })
        .collect()
}

struct Run {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    init: Vec<Vec<f32>>,
    grads: Vec<Vec<Vec<f32>>>,
}

fn problem(seed: u64) -> Run {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let names = TENSORS.iter().map(|t| t.0.to_string()).collect();
    let shapes: Vec<Vec<usize>> = TENSORS.iter().map(|t| t.1.to_vec()).collect();
    let len = |s: &Vec<usize>| s.iter().product::<usize>();
    let init = shapes
        .iter()
        .map(|s| randn(&mut rng, len(s), 0.5))
        .collect();
    let grads = (0..STEPS)
        .map(|k| {
            shapes
                .iter()
                .map(|s| randn(&mut rng, len(s), if k % 7 == 3 { 3.0 } else { 0.3 }))
                .collect()
        })
        .collect();
    Run {
        names,
        shapes,
        init,
        grads,
    }
}

/// One step of lamb-optim's optimizer on `w` with the gradients of step `k`.
fn core_step(core: &mut dyn Optimizer, run: &Run, w: &mut [Vec<f32>], k: usize) {
    let mut params: Vec<ParamMut> = w
        .iter_mut()
        .zip(&run.grads[k])
        .zip(&run.names)
        .zip(&run.shapes)
        .map(|(((w, g), n), s)| ParamMut::new(n, s, w, g))
        .collect();
    core.step(&mut params).unwrap();
}

/// Runs `STEPS` steps of the adapter (through `step`) and of `core`, comparing every weight
/// and trust ratio after every step.
fn compare(
    label: &str,
    core: &mut dyn Optimizer,
    mut adapter_step: impl FnMut(Vars, GradientsParams) -> (Vars, Vec<TensorTelemetry>),
    mut vars: Vars,
    run: &Run,
) {
    let mut w = run.init.clone();
    for k in 0..STEPS {
        core_step(core, run, &mut w, k);
        let g = grads_of(&vars, &run.grads[k]);
        let (stepped, tel) = adapter_step(vars, g);
        vars = stepped;
        for (ti, (a, b)) in values(&vars).iter().zip(&w).enumerate() {
            for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
                assert!(
                    close(x, y),
                    "{label}: `{}` step {} index {i}: adapter {x:e}, lamb-optim {y:e}",
                    run.names[ti],
                    k + 1
                );
            }
        }
        assert_eq!(tel.len(), run.names.len());
        for (a, b) in tel.iter().zip(core.telemetry()) {
            assert_eq!(a.name, b.name);
            assert!(
                (a.trust_ratio - b.trust_ratio).abs() <= 1e-5 * b.trust_ratio.abs() + 1e-7,
                "{label}: trust ratio of `{}` at step {}: {} vs {}",
                a.name,
                k + 1,
                a.trust_ratio,
                b.trust_ratio
            );
            assert_eq!(a.learning_rate, b.learning_rate, "{label}: learning rate");
        }
    }
}

fn exclusions<C>(spec_kind: OptimizerKind, preset: &str, f: impl Fn(&OptimizerSpec) -> C) -> C {
    let mut spec = OptimizerSpec::new(spec_kind).with_preset(preset);
    spec.learning_rate = Some(0.01);
    spec.set_by_name("exclude_from_weight_decay", "bias, LayerNorm")
        .unwrap();
    spec.set_by_name("weight_decay_rate", "0.01").unwrap();
    f(&spec)
}

fn lamb_over(run: &Run, cfg: LambConfig) -> (Vars, Lamb) {
    let vars = make_vars(&run.init, &device());
    let opt = Lamb::from_named(named(&vars, &run.names), cfg).unwrap();
    (vars, opt)
}

fn lars_over(run: &Run, cfg: LarsConfig) -> (Vars, Lars) {
    let vars = make_vars(&run.init, &device());
    let opt = Lars::from_named(named(&vars, &run.names), cfg).unwrap();
    (vars, opt)
}

#[test]
fn every_lamb_preset_matches_lamb_optim() {
    let d = OptimizerKind::Lamb.description();
    assert_eq!(d.presets.len(), 7);
    for (pi, p) in d.presets.iter().enumerate() {
        let cfg = exclusions(OptimizerKind::Lamb, p.name, |s| lamb_config(s).unwrap());
        // A warmup-then-decay schedule on every other preset.
        let cfg = if pi % 2 == 1 {
            cfg.with_schedule(Schedule::PolynomialDecay {
                warmup_steps: 3,
                total_steps: 30,
                end_learning_rate: 0.0,
                power: 1.0,
            })
        } else {
            cfg
        };
        let run = problem(pi as u64 + 1);
        let mut core = lamb_optim::Lamb::new(cfg.clone()).unwrap();
        let (vars, mut opt) = lamb_over(&run, cfg);
        compare(
            p.name,
            &mut core,
            |v, g| {
                let (v, r) = opt.step(v, g);
                assert_eq!(r.unwrap(), StepOutcome::Applied);
                (v, opt.telemetry())
            },
            vars,
            &run,
        );
    }
}

#[test]
fn every_lars_preset_matches_lamb_optim() {
    let d = OptimizerKind::Lars.description();
    for (pi, p) in d.presets.iter().enumerate() {
        for clip in [false, true] {
            let mut cfg = exclusions(OptimizerKind::Lars, p.name, |s| lars_config(s).unwrap());
            cfg.trust_clip = clip;
            cfg.nesterov = pi == 1;
            if cfg.momentum == 0.0 {
                cfg.momentum = 0.9;
                cfg.dampening = 0.1;
            }
            let cfg = cfg.with_learning_rate(0.5);
            let run = problem(10 + pi as u64);
            let mut core = lamb_optim::Lars::new(cfg.clone()).unwrap();
            let (vars, mut opt) = lars_over(&run, cfg);
            compare(
                &format!("lars {} trust_clip {clip}", p.name),
                &mut core,
                |v, g| {
                    let (v, r) = opt.step(v, g);
                    r.unwrap();
                    (v, opt.telemetry())
                },
                vars,
                &run,
            );
        }
    }
}

/// The trust-ratio clamp of DeepSpeed and the ‖w‖ clamp of pytorch-lamb must bind for the
/// comparison above to mean anything: with these weights they do.
#[test]
fn clamps_bind_and_match() {
    for (preset, scale) in [("deepspeed", 1e-4f32), ("pytorch-lamb", 50.0)] {
        let mut run = problem(99);
        for x in run.init.iter_mut().flatten() {
            *x *= scale;
        }
        let cfg = lamb_config(&OptimizerSpec::new(OptimizerKind::Lamb).with_preset(preset))
            .unwrap()
            .with_learning_rate(0.01);
        let mut core = lamb_optim::Lamb::new(cfg.clone()).unwrap();
        let (vars, mut opt) = lamb_over(&run, cfg.clone());
        let mut bound = false;
        compare(
            preset,
            &mut core,
            |v, g| {
                let (v, r) = opt.step(v, g);
                r.unwrap();
                let t = opt.telemetry();
                bound |= t.iter().any(|t| {
                    (cfg.trust_ratio_clamp.is_some() && t.trust_ratio == 0.01)
                        || (cfg.weight_norm_clamp.is_some() && t.weight_norm == 10.0)
                });
                (v, t)
            },
            vars,
            &run,
        );
        assert!(bound, "{preset}: the clamp never bound");
    }
}

/// timm's global clipping must bind too: with gradients this large it does, and the adapter
/// still matches lamb-optim (clipping applied by `Lamb::step` before Burn's per-parameter
/// step).
#[test]
fn global_clipping_binds_and_matches() {
    let mut run = problem(31);
    for g in run.grads.iter_mut().flatten().flatten() {
        *g *= 10.0;
    }
    let cfg = lamb_config(&OptimizerSpec::new(OptimizerKind::Lamb).with_preset("timm")).unwrap();
    let max = cfg.max_grad_norm.expect("timm clips");
    let norm: f32 = run.grads[0]
        .iter()
        .flatten()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt();
    assert!(norm > 2.0 * max, "global norm {norm} does not exceed {max}");
    let mut core = lamb_optim::Lamb::new(cfg.clone()).unwrap();
    let (vars, mut opt) = lamb_over(&run, cfg);
    compare(
        "timm clipped",
        &mut core,
        |v, g| {
            let (v, r) = opt.step(v, g);
            r.unwrap();
            (v, opt.telemetry())
        },
        vars,
        &run,
    );
}

/// The plain Burn path: `lamb_module_optimizer` (a `ModuleOptimizer` with one group per
/// class) stepped with Burn's own `ModuleOptimizer::step`, gradients clipped first with
/// `clip_grad_norm`, gives bit-identical values to `Lamb`.
#[test]
fn plain_module_optimizer_matches() {
    let mut run = problem(41);
    for g in run.grads.iter_mut().flatten().flatten() {
        *g *= 10.0;
    }
    let cfg = exclusions(OptimizerKind::Lamb, "timm", |s| lamb_config(s).unwrap());
    let max = cfg.max_grad_norm.unwrap();
    let (mut a, mut opt) = lamb_over(&run, cfg.clone());
    let mut b = make_vars(&run.init, &device());
    // Names come from module paths here: `p.0` ... `p.4`; exclude the biases and the norm.
    let paths: Vec<String> = module_params(&b).into_iter().map(|p| p.name).collect();
    assert_eq!(paths, ["p.0", "p.1", "p.2", "p.3", "p.4"]);
    let mut plain_cfg = cfg.clone();
    plain_cfg.exclude_from_weight_decay = vec![r"^p\.(1|2|4)$".into()];
    let mut plain = lamb_module_optimizer(&b, plain_cfg).unwrap();
    for k in 0..STEPS {
        let ga = grads_of(&a, &run.grads[k]);
        let (stepped, r) = opt.step(a, ga);
        r.unwrap();
        a = stepped;
        let gb = clip_grad_norm(&b, grads_of(&b, &run.grads[k]), max);
        b = plain.step(cfg.learning_rate as f64, b, gb);
    }
    assert_eq!(values(&a), values(&b));
}

/// A module with the same parameter ids and values as `vars` (what loading Burn's module
/// record gives: records keep parameter ids).
fn reloaded(vars: &Vars) -> Vars {
    let dev = device();
    Vars {
        p: vars
            .p
            .iter()
            .zip(values(vars))
            .map(|(p, x)| burn::module::Param::initialized(p.id, tensor(&x, &dev).require_grad()))
            .collect(),
    }
}

/// Save after 7 steps, load into a fresh optimizer over a reloaded module, continue:
/// bit-identical to the uninterrupted run; a state that does not fit is refused.
#[test]
fn resume_is_exact() {
    let run = problem(5);
    let cfg = lamb_config(&OptimizerSpec::new(OptimizerKind::Lamb).with_preset("timm"))
        .unwrap()
        .with_schedule(Schedule::LinearWarmup { warmup_steps: 4 });
    let (mut straight, mut a) = lamb_over(&run, cfg.clone());
    for k in 0..STEPS {
        let g = grads_of(&straight, &run.grads[k]);
        let (s, r) = a.step(straight, g);
        r.unwrap();
        straight = s;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.bpk");
    let (mut first, mut b) = lamb_over(&run, cfg.clone());
    for k in 0..7 {
        let g = grads_of(&first, &run.grads[k]);
        let (s, r) = b.step(first, g);
        r.unwrap();
        first = s;
    }
    b.save(&path).unwrap();
    let mut resumed = reloaded(&first);
    let mut c = Lamb::from_named(named(&resumed, &run.names), cfg.clone()).unwrap();
    c.load(&path).unwrap();
    assert_eq!(c.steps(), 7);
    assert_eq!(c.current_learning_rate(), b.current_learning_rate());
    for k in 7..STEPS {
        let g = grads_of(&resumed, &run.grads[k]);
        let (s, r) = c.step(resumed, g);
        r.unwrap();
        resumed = s;
    }
    assert_eq!(values(&resumed), values(&straight));
    // A LARS state is refused by LAMB, naming the problem.
    let lars_path = dir.path().join("lars.bpk");
    let (lv, mut lars) = lars_over(&run, LarsConfig::default());
    let (_, r) = lars.step(reloaded(&lv), grads_of(&lv, &run.grads[0]));
    r.unwrap();
    lars.save(&lars_path).unwrap();
    let e = c.load(&lars_path).unwrap_err().to_string();
    assert!(e.contains("written by optimizer `lars`"), "{e}");
    // Other parameters (other ids) are refused too, and nothing changed.
    let (_, mut d) = lamb_over(&run, cfg);
    let e = d.load(&path).unwrap_err().to_string();
    assert!(
        e.contains("a parameter this optimizer does not have"),
        "{e}"
    );
    assert_eq!(d.steps(), 0);
    // A file that is not a state is refused with its path.
    let junk = dir.path().join("junk.bpk");
    std::fs::write(&junk, b"not a burnpack file").unwrap();
    let e = d.load(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.bpk"), "{e}");
}

#[test]
fn non_finite_gradients_follow_the_policy() {
    let run = problem(3);
    for policy in [NonFinitePolicy::Error, NonFinitePolicy::SkipStep] {
        let cfg = LambConfig::default().with_non_finite(policy);
        let (vars, mut opt) = lamb_over(&run, cfg);
        let g = grads_of(&vars, &run.grads[0]);
        let (vars, r) = opt.step(vars, g);
        r.unwrap();
        let before = values(&vars);
        let mut gs = run.grads[1].clone();
        gs[3][5] = f32::NAN;
        let g = grads_of(&vars, &gs);
        let (vars, r) = opt.step(vars, g);
        match policy {
            NonFinitePolicy::Error => {
                let e = r.unwrap_err().to_string();
                assert!(
                    e.contains("non-finite gradient in tensor `head/kernel` at step 2"),
                    "{e}"
                );
            }
            _ => {
                assert_eq!(r.unwrap(), StepOutcome::Skipped);
                assert_eq!(opt.skipped_steps(), 1);
            }
        }
        assert_eq!(
            values(&vars),
            before,
            "{policy:?}: a refused step changed weights"
        );
        assert_eq!(opt.steps(), 1);
        // The optimizer state was not advanced either: the next good step matches a run
        // that never saw the bad one.
        let (mut ref_vars, mut reference) = lamb_over(&run, LambConfig::default());
        let g = grads_of(&ref_vars, &run.grads[0]);
        let (s, r) = reference.step(ref_vars, g);
        r.unwrap();
        ref_vars = s;
        let g = grads_of(&ref_vars, &run.grads[2]);
        let (ref_vars, r) = reference.step(ref_vars, g);
        r.unwrap();
        let g = grads_of(&vars, &run.grads[2]);
        let (vars, r) = opt.step(vars, g);
        r.unwrap();
        assert_eq!(values(&vars), values(&ref_vars), "{policy:?}");
    }
}

#[test]
fn construction_and_step_errors_name_the_problem() {
    let run = problem(6);
    let vars = make_vars(&run.init, &device());
    let e = Lamb::new(&vars, LambConfig::default().with_learning_rate(-1.0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("learning_rate"), "{e}");
    let mut twice = named(&vars, &run.names);
    twice[1].name = twice[0].name.clone();
    let e = Lars::from_named(twice, LarsConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("`encoder/dense/kernel`") && e.contains("given twice"),
        "{e}"
    );
    let e = Lamb::new(
        &vars,
        LambConfig::default().with_exclusions(&["(unclosed"], &[]),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("(unclosed"), "{e}");
    // Gradients of parameters the optimizer was not built for: refused, module returned.
    let mut opt = Lamb::new(&vars, LambConfig::default()).unwrap();
    let other = make_vars(&run.init, &device());
    let g = grads_of(&other, &run.grads[0]);
    let (back, r) = opt.step(other, g);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("not one this optimizer was built for"), "{e}");
    assert_eq!(values(&back), run.init);
}

/// Names from module paths through a real model and backward pass: Burn's `Linear` in a
/// struct and a `Vec`; exclusions applied by name.
#[derive(Module, Debug)]
struct Net {
    fc: Linear,
    head: Vec<Linear>,
}

#[test]
fn module_paths_reach_the_exclusions() {
    let dev = device();
    let mut net = Net {
        fc: LinearConfig::new(4, 3).init(&dev),
        head: vec![LinearConfig::new(3, 2).init(&dev)],
    };
    let cfg = LambConfig::default()
        .with_exclusions(&["bias"], &[])
        .with_weight_decay(0.01);
    let mut opt = Lamb::new(&net, cfg).unwrap();
    assert_eq!(
        opt.names(),
        vec!["fc.bias", "fc.weight", "head.0.bias", "head.0.weight"]
    );
    let x = Tensor::<2>::ones([5, 4], &dev);
    let before = net.fc.bias.as_ref().unwrap().val().into_data();
    for _ in 0..3 {
        let y = net.head[0].forward(net.fc.forward(x.clone()));
        let grads = GradientsParams::from_grads(y.square().sum().backward(), &net);
        let (stepped, r) = opt.step(net, grads);
        r.unwrap();
        net = stepped;
    }
    assert_ne!(net.fc.bias.as_ref().unwrap().val().into_data(), before);
    let r = opt.trust_ratios();
    assert_eq!(r.len(), 4);
    for (name, ratio) in &r {
        if name.ends_with("bias") {
            assert_eq!(*ratio, 1.0, "{name}");
        } else {
            assert_ne!(*ratio, 1.0, "{name}");
        }
    }
    // The stepped model still trains (its parameters stay tracked by autodiff).
    let y = net.head[0].forward(net.fc.forward(x));
    let grads = GradientsParams::from_grads(y.square().sum().backward(), &net);
    assert_eq!(grads.len(), 4);
}

/// lamb-optim's schedules: `current_learning_rate` is the rate of the next step,
/// `set_learning_rate` sets the base rate the schedule scales.
#[test]
fn schedules_and_learning_rate() {
    let run = problem(21);
    let sched = Schedule::Cosine {
        warmup_steps: 2,
        total_steps: 10,
        min_learning_rate: 0.0,
    };
    let cfg = LambConfig::default()
        .with_learning_rate(0.1)
        .with_schedule(sched);
    let (mut vars, mut opt) = lamb_over(&run, cfg.clone());
    let mut core = lamb_optim::Lamb::new(cfg).unwrap();
    assert!(opt.telemetry().is_empty());
    let mut w = run.init.clone();
    for k in 0..6 {
        assert_eq!(opt.current_learning_rate(), core.current_learning_rate());
        let g = grads_of(&vars, &run.grads[k]);
        let (s, r) = opt.step(vars, g);
        r.unwrap();
        vars = s;
        core_step(&mut core, &run, &mut w, k);
        assert_eq!(
            opt.telemetry()[0].learning_rate,
            core.telemetry()[0].learning_rate
        );
    }
    let before = opt.current_learning_rate();
    opt.set_learning_rate(0.2);
    assert!((opt.current_learning_rate() - 2.0 * before).abs() < 1e-6 * before.abs().max(1e-9));
}

/// A parameter without a gradient is left alone (weights and state), as PyTorch optimizers
/// skip parameters whose `grad` is `None`; LARS state resumes exactly too.
#[test]
fn parameters_without_gradient_are_left_alone_and_lars_resumes() {
    let run = problem(4);
    let cfg = LarsConfig::preset(LarsPreset::Optax).with_learning_rate(0.1);
    let (vars, mut opt) = lars_over(&run, cfg.clone());
    let g = grads_of(&vars, &run.grads[0]);
    let (vars, r) = opt.step(vars, g);
    r.unwrap();
    let before = values(&vars);
    let g = grads_of(&vars, &run.grads[1][..2]);
    let (mut vars, r) = opt.step(vars, g);
    r.unwrap();
    let after = values(&vars);
    assert_ne!(after[0], before[0]);
    assert_eq!(after[2..], before[2..]);
    assert_eq!(opt.telemetry().len(), 2);
    // Resume: save at step 2, continue both for 3 steps.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lars.bpk");
    opt.save(&path).unwrap();
    let mut copy = reloaded(&vars);
    let mut resumed = Lars::from_named(named(&copy, &run.names), cfg).unwrap();
    resumed.load(&path).unwrap();
    for k in 2..5 {
        let g = grads_of(&vars, &run.grads[k]);
        let (s, r) = opt.step(vars, g);
        r.unwrap();
        vars = s;
        let g = grads_of(&copy, &run.grads[k]);
        let (s, r) = resumed.step(copy, g);
        r.unwrap();
        copy = s;
    }
    assert_eq!(values(&vars), values(&copy));
}

/// The finiteness check's fast path sums the new values: finite values whose sum overflows
/// must still be accepted (the exact element-wise test decides), as lamb-optim accepts them.
#[test]
fn overflowing_sums_of_finite_values_are_accepted() {
    let names = vec!["big".to_string()];
    let init = vec![vec![3e38f32, 3e38, 1.0]];
    let grads = vec![vec![0.5f32, -0.5, 0.25]];
    let cfg = LambConfig {
        layer_adaptation: LayerAdaptation::Never,
        ..LambConfig::default()
    };
    let vars = make_vars(&init, &device());
    let mut opt = Lamb::from_named(named(&vars, &names), cfg.clone()).unwrap();
    let g = grads_of(&vars, &grads);
    let (vars, r) = opt.step(vars, g);
    assert_eq!(r.unwrap(), StepOutcome::Applied);
    let got = values(&vars);
    assert!(got[0].iter().all(|x| x.is_finite()), "{got:?}");
    let mut core = lamb_optim::Lamb::new(cfg).unwrap();
    let mut w = init.clone();
    core.step(&mut [ParamMut::new("big", &[3], &mut w[0], &grads[0])])
        .unwrap();
    for (&x, &y) in got[0].iter().zip(&w[0]) {
        assert!(close(x, y), "{x:e} vs lamb-optim {y:e}");
    }
}

/// The other plain Burn paths: `lars_module_optimizer` stepped by Burn's `ModuleOptimizer`
/// matches `Lars` bit for bit, and a bare rule (`ModuleOptimizer::from(LambRule::new(cfg))`,
/// every parameter decayed and adapted) matches `Lamb` without exclusions.
#[test]
fn plain_lars_and_bare_rule_match() {
    let run = problem(51);
    let mut lars_cfg = LarsConfig::preset(LarsPreset::Optax).with_learning_rate(0.3);
    lars_cfg.weight_decay_rate = 0.01;
    lars_cfg.exclude_from_weight_decay = vec![r"^p\.(1|2|4)$".into()];
    let mut a = make_vars(&run.init, &device());
    let mut b = make_vars(&run.init, &device());
    let mut opt = Lars::new(&a, lars_cfg.clone()).unwrap();
    assert_eq!(opt.names(), ["p.0", "p.1", "p.2", "p.3", "p.4"]);
    let mut plain = lars_module_optimizer(&b, lars_cfg.clone()).unwrap();
    let lamb_cfg = LambConfig::default()
        .with_learning_rate(0.01)
        .with_weight_decay(0.01);
    let mut c = make_vars(&run.init, &device());
    let mut d = make_vars(&run.init, &device());
    let mut lamb = Lamb::new(&c, lamb_cfg.clone()).unwrap();
    let mut bare = burn::optim::ModuleOptimizer::from(LambRule::new(lamb_cfg.clone()).unwrap());
    for k in 0..STEPS {
        let g = &run.grads[k];
        let (ga, gb, gc, gd) = (
            grads_of(&a, g),
            grads_of(&b, g),
            grads_of(&c, g),
            grads_of(&d, g),
        );
        let (s, r) = opt.step(a, ga);
        r.unwrap();
        a = s;
        b = plain.step(lars_cfg.learning_rate as f64, b, gb);
        let (s, r) = lamb.step(c, gc);
        r.unwrap();
        c = s;
        d = bare.step(lamb_cfg.learning_rate as f64, d, gd);
    }
    assert_eq!(values(&a), values(&b));
    assert_eq!(values(&c), values(&d));
    assert_ne!(values(&a), run.init);
}

/// The optimizers can move to (and be shared with) other threads, as Burn's training loops
/// require of their optimizers.
#[test]
fn optimizers_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Lamb>();
    check::<Lars>();
    check::<LambRule>();
    check::<LarsRule>();
}
