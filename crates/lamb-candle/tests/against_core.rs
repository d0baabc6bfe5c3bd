//! The adapter against `lamb-optim` itself on random tensors and gradients: every LAMB and
//! LARS preset (including those without golden files: nvlamb, deepspeed), 20 steps, weights
//! within the golden tolerance `2e-6*|expected| + 1e-7`, trust ratios alike; plus exact resume
//! from saved state, non-finite handling, and a GPU run where one is present.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer as _;
use lamb_candle::*;
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

fn vars(run: &Run, dev: &Device) -> Vec<(String, Var)> {
    run.names
        .iter()
        .zip(&run.shapes)
        .zip(&run.init)
        .map(|((n, s), x)| (n.clone(), Var::from_slice(x, s.as_slice(), dev).unwrap()))
        .collect()
}

fn grads_at(run: &Run, k: usize, vars: &[(String, Var)]) -> GradStore {
    let gs = vars
        .iter()
        .zip(&run.grads[k])
        .map(|((_, v), x)| Tensor::from_slice(x, v.shape(), v.device()).unwrap())
        .collect();
    store_of(&vars.iter().map(|(_, v)| v).collect::<Vec<_>>(), gs).unwrap()
}

/// A gradient store holding exactly `grads` for `vars`, made the way users make one: the
/// backward pass of `sum_i sum(w_i * g_i)` (whose gradient is `1 * g_i`, exact).
fn store_of(vars: &[&Var], grads: Vec<Tensor>) -> candle_core::Result<GradStore> {
    let mut loss: Option<Tensor> = None;
    for (v, g) in vars.iter().zip(grads) {
        let term = (v.as_tensor() * g)?.sum_all()?;
        loss = Some(match loss {
            None => term,
            Some(l) => (l + term)?,
        });
    }
    match loss {
        Some(l) => l.backward(),
        None => Err(candle_core::Error::msg("no variables")),
    }
}

fn values(vars: &[(String, Var)]) -> Vec<Vec<f32>> {
    vars.iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn close(got: f32, exp: f32) -> bool {
    ((got as f64) - (exp as f64)).abs() <= 2e-6 * (exp as f64).abs() + 1e-7
}

/// Runs `STEPS` steps of the adapter (through `step`) and of `core`, comparing every weight
/// and trust ratio after every step.
fn compare(
    label: &str,
    core: &mut dyn Optimizer,
    mut adapter_step: impl FnMut(&GradStore) -> Vec<TensorTelemetry>,
    vars: &[(String, Var)],
    run: &Run,
) {
    let mut w = run.init.clone();
    for k in 0..STEPS {
        let mut params: Vec<ParamMut> = w
            .iter_mut()
            .zip(&run.grads[k])
            .zip(&run.names)
            .zip(&run.shapes)
            .map(|(((w, g), n), s)| ParamMut::new(n, s, w, g))
            .collect();
        core.step(&mut params).unwrap();
        let tel = adapter_step(&grads_at(run, k, vars));
        let got = values(vars);
        for (ti, (a, b)) in got.iter().zip(&w).enumerate() {
            for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
                assert!(
                    close(x, y),
                    "{label}: `{}` step {} index {i}: adapter {x:e}, lamb-optim {y:e}",
                    run.names[ti],
                    k + 1
                );
            }
        }
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
        }
        assert_eq!(tel.len(), run.names.len());
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
        let vars = vars(&run, &Device::Cpu);
        let mut core = lamb_optim::Lamb::new(cfg.clone()).unwrap();
        let mut opt = Lamb::from_named(vars.clone(), cfg).unwrap();
        compare(
            p.name,
            &mut core,
            |g| {
                assert_eq!(opt.step_grads(g).unwrap(), StepOutcome::Applied);
                opt.telemetry().unwrap()
            },
            &vars,
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
            let vars = vars(&run, &Device::Cpu);
            let mut core = lamb_optim::Lars::new(cfg.clone()).unwrap();
            let mut opt = Lars::from_named(vars.clone(), cfg).unwrap();
            compare(
                &format!("lars {} trust_clip {clip}", p.name),
                &mut core,
                |g| {
                    opt.step_grads(g).unwrap();
                    opt.telemetry().unwrap()
                },
                &vars,
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
        let vars = vars(&run, &Device::Cpu);
        let mut core = lamb_optim::Lamb::new(cfg.clone()).unwrap();
        let mut opt = Lamb::from_named(vars.clone(), cfg.clone()).unwrap();
        let mut bound = false;
        compare(
            preset,
            &mut core,
            |g| {
                opt.step_grads(g).unwrap();
                let t = opt.telemetry().unwrap();
                bound |= t.iter().any(|t| {
                    (cfg.trust_ratio_clamp.is_some() && t.trust_ratio == 0.01)
                        || (cfg.weight_norm_clamp.is_some() && t.weight_norm == 10.0)
                });
                t
            },
            &vars,
            &run,
        );
        assert!(bound, "{preset}: the clamp never bound");
    }
}

/// Save after 7 steps, load into a fresh optimizer over fresh variables holding the saved
/// weights, continue: bit-identical to the uninterrupted run.
#[test]
fn resume_is_exact() {
    let run = problem(5);
    let cfg = lamb_config(&OptimizerSpec::new(OptimizerKind::Lamb).with_preset("timm"))
        .unwrap()
        .with_schedule(Schedule::LinearWarmup { warmup_steps: 4 });
    let straight = vars(&run, &Device::Cpu);
    let mut a = Lamb::from_named(straight.clone(), cfg.clone()).unwrap();
    for k in 0..STEPS {
        a.step_grads(&grads_at(&run, k, &straight)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let first = vars(&run, &Device::Cpu);
    let mut b = Lamb::from_named(first.clone(), cfg.clone()).unwrap();
    for k in 0..7 {
        b.step_grads(&grads_at(&run, k, &first)).unwrap();
    }
    b.save(&path).unwrap();
    let resumed: Vec<(String, Var)> = first
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut c = Lamb::from_named(resumed.clone(), cfg.clone()).unwrap();
    c.load(&path).unwrap();
    assert_eq!(c.steps(), 7);
    assert_eq!(c.current_learning_rate(), b.current_learning_rate());
    for k in 7..STEPS {
        c.step_grads(&grads_at(&run, k, &resumed)).unwrap();
    }
    assert_eq!(values(&resumed), values(&straight));
    // A LARS state is refused by LAMB, naming the problem.
    let lars_path = dir.path().join("lars.safetensors");
    Lars::from_named(vars(&run, &Device::Cpu), LarsConfig::default())
        .unwrap()
        .save(&lars_path)
        .unwrap();
    let e = c.load(&lars_path).unwrap_err().to_string();
    assert!(e.contains("written by optimizer `lars`"), "{e}");
    // Other names are refused too, and nothing changed.
    let other: Vec<(String, Var)> = resumed
        .iter()
        .map(|(n, v)| (format!("x/{n}"), v.clone()))
        .collect();
    let mut d = Lamb::from_named(other, cfg).unwrap();
    let e = d.load(&path).unwrap_err().to_string();
    assert!(
        e.contains("m/x/encoder/dense/kernel") && e.contains("missing"),
        "{e}"
    );
    assert_eq!(d.steps(), 0);
}

#[test]
fn non_finite_gradients_follow_the_policy() {
    let run = problem(3);
    let dev = Device::Cpu;
    for policy in [NonFinitePolicy::Error, NonFinitePolicy::SkipStep] {
        let vs = vars(&run, &dev);
        let cfg = LambConfig::default().with_non_finite(policy);
        let mut opt = Lamb::from_named(vs.clone(), cfg).unwrap();
        opt.step_grads(&grads_at(&run, 0, &vs)).unwrap();
        let before = values(&vs);
        let mut g = grads_at(&run, 1, &vs);
        let mut bad = run.grads[1][3].clone();
        bad[5] = f32::NAN;
        g.insert(
            vs[3].1.as_tensor(),
            Tensor::from_slice(&bad, vs[3].1.shape(), &dev).unwrap(),
        );
        match policy {
            NonFinitePolicy::Error => {
                let e = opt.step_grads(&g).unwrap_err().to_string();
                assert!(
                    e.contains("non-finite gradient in tensor `head/kernel` at step 2")
                        && e.contains("element 5"),
                    "{e}"
                );
            }
            _ => {
                assert_eq!(opt.step_grads(&g).unwrap(), StepOutcome::Skipped);
                assert_eq!(opt.skipped_steps(), 1);
            }
        }
        assert_eq!(
            values(&vs),
            before,
            "{policy:?}: a refused step changed weights"
        );
        assert_eq!(opt.steps(), 1);
    }
}

#[test]
fn construction_errors_name_the_problem() {
    let dev = Device::Cpu;
    let v = Var::zeros(3, candle_core::DType::F64, &dev).unwrap();
    let e = Lamb::new(vec![v], LambConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`param.0`") && e.contains("F64"), "{e}");
    let v = Var::zeros(3, candle_core::DType::F32, &dev).unwrap();
    let e = Lamb::new(
        vec![v.clone()],
        LambConfig::default().with_learning_rate(-1.0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("learning_rate"), "{e}");
    let e = Lars::from_named(
        vec![("a".into(), v.clone()), ("a".into(), v)],
        LarsConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`a` given twice"), "{e}");
}

/// Through candle-nn's `Optimizer` trait and a `VarMap`: names from the map, exclusions
/// applied by name, a real backward pass.
#[test]
fn varmap_names_reach_the_exclusions() {
    use candle_nn::{linear, Module, VarBuilder, VarMap};
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev);
    let model = linear(4, 2, vb.pp("fc")).unwrap();
    let cfg = LambConfig::default().with_exclusions(&["bias"], &[]);
    let mut opt = Lamb::from_varmap(&varmap, cfg.with_weight_decay(0.01)).unwrap();
    assert_eq!(opt.names(), vec!["fc.bias", "fc.weight"]);
    let x = Tensor::ones((3, 4), candle_core::DType::F32, &dev).unwrap();
    let loss = model.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
    opt.backward_step(&loss).unwrap();
    let r = opt.trust_ratios().unwrap();
    assert_eq!(r[0], ("fc.bias".to_string(), 1.0));
    assert_ne!(r[1].1, 1.0);
}

/// The same 20 steps on a CUDA device, against the CPU adapter. Skipped with a message where
/// candle has no CUDA device (this crate builds without the `cuda` feature by default:
/// `cargo test -p lamb-candle --features cuda` on a GPU machine).
#[test]
fn gpu_steps_match_cpu() {
    let dev = match Device::cuda_if_available(0) {
        Ok(d) if d.is_cuda() => d,
        _ => {
            eprintln!("skipping: no CUDA device (build with --features cuda on a GPU machine)");
            return;
        }
    };
    let run = problem(8);
    let cfg = lamb_config(&OptimizerSpec::new(OptimizerKind::Lamb).with_preset("nvlamb")).unwrap();
    let (cv, gv) = (vars(&run, &Device::Cpu), vars(&run, &dev));
    let mut c = Lamb::from_named(cv.clone(), cfg.clone()).unwrap();
    let mut g = Lamb::from_named(gv.clone(), cfg).unwrap();
    for k in 0..STEPS {
        c.step_grads(&grads_at(&run, k, &cv)).unwrap();
        g.step_grads(&grads_at(&run, k, &gv)).unwrap();
    }
    for (a, b) in values(&gv).iter().zip(values(&cv)) {
        for (&x, &y) in a.iter().zip(&b) {
            assert!(close(x, y), "cuda {x:e} vs cpu {y:e}");
        }
    }
}

/// candle-nn's learning-rate interface and lamb-optim's schedules: `learning_rate()` is the
/// rate of the next step, `set_learning_rate` sets the base rate the schedule scales.
#[test]
fn schedules_and_learning_rate_interface() {
    let run = problem(21);
    let sched = Schedule::Cosine {
        warmup_steps: 2,
        total_steps: 10,
        min_learning_rate: 0.0,
    };
    let cfg = LambConfig::default()
        .with_learning_rate(0.1)
        .with_schedule(sched);
    let vs = vars(&run, &Device::Cpu);
    let mut opt = Lamb::from_named(vs.clone(), cfg.clone()).unwrap();
    let mut core = lamb_optim::Lamb::new(cfg).unwrap();
    assert!(opt.telemetry().unwrap().is_empty());
    for k in 0..6 {
        assert_eq!(opt.learning_rate() as f32, core.current_learning_rate());
        opt.step(&grads_at(&run, k, &vs)).unwrap();
        let mut w = run.init.clone();
        let mut params: Vec<ParamMut> = w
            .iter_mut()
            .zip(&run.grads[k])
            .zip(&run.names)
            .zip(&run.shapes)
            .map(|(((w, g), n), s)| ParamMut::new(n, s, w, g))
            .collect();
        core.step(&mut params).unwrap();
        assert_eq!(
            opt.telemetry().unwrap()[0].learning_rate,
            core.telemetry()[0].learning_rate
        );
    }
    let before = opt.learning_rate();
    opt.set_learning_rate(0.2);
    assert!((opt.learning_rate() - 2.0 * before).abs() < 1e-6 * before.abs().max(1e-9));
}

/// A variable without a gradient in the store is left alone (weights and slots), as PyTorch
/// optimizers skip parameters whose `grad` is `None`; LARS state resumes exactly too.
#[test]
fn variables_without_gradient_are_left_alone_and_lars_resumes() {
    let run = problem(4);
    let dev = Device::Cpu;
    let vs = vars(&run, &dev);
    let cfg = LarsConfig::preset(LarsPreset::Optax).with_learning_rate(0.1);
    let mut opt = Lars::from_named(vs.clone(), cfg.clone()).unwrap();
    opt.step(&grads_at(&run, 0, &vs)).unwrap();
    let before = values(&vs);
    let partial: Vec<&Var> = vs[..2].iter().map(|(_, v)| v).collect();
    let gs = run.grads[1][..2]
        .iter()
        .zip(&partial)
        .map(|(x, v)| Tensor::from_slice(x, v.shape(), &dev).unwrap())
        .collect();
    opt.step(&store_of(&partial, gs).unwrap()).unwrap();
    let after = values(&vs);
    assert_ne!(after[0], before[0]);
    assert_eq!(after[2..], before[2..]);
    assert_eq!(opt.telemetry().unwrap().len(), 2);
    // Resume: save at step 2, continue both for 3 steps.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lars.safetensors");
    opt.save(&path).unwrap();
    let copy: Vec<(String, Var)> = vs
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut resumed = Lars::from_named(copy.clone(), cfg).unwrap();
    resumed.load(&path).unwrap();
    for k in 2..5 {
        opt.step(&grads_at(&run, k, &vs)).unwrap();
        resumed.step(&grads_at(&run, k, &copy)).unwrap();
    }
    assert_eq!(values(&vs), values(&copy));
}
