//! Step time of this crate's LAMB (and LARS) against Burn's own Lamb, Adam and AdamW on the
//! BERT-base-shaped tensor set of `lamb bench` (199 tensors, 109,482,240 parameters) on Burn's
//! default CPU device (flex), with autodiff as in training.
//!
//! `cargo run --release -p lamb-burn --example burn_step_time [-- STEPS]` (default
//! 5 timed steps after one warm-up step each; the device is synchronized after every step).
//! Prints the median step time of each optimizer and the ratio to Burn's Adam. Timings depend
//! on the machine and its load: report them with both.

use burn::module::{Module, Param, ParamId};
use burn::optim::{
    AdamConfig, AdamWConfig, GradientsParams, LambConfig as BurnLambConfig, ModuleOptimizer,
};
use burn::tensor::{Device, Distribution, Tensor};
use lamb_burn::{Lamb, LambConfig, LambPreset, Lars, LarsConfig, NamedParam, NonFinitePolicy};
use std::time::Instant;

/// The tensor set as a module: vectors and matrices.
#[derive(Module, Debug)]
struct Set {
    vectors: Vec<Param<Tensor<1>>>,
    matrices: Vec<Param<Tensor<2>>>,
}

/// The gradients of one backward pass, re-registered for every step (a step consumes them).
struct Grads {
    vectors: Vec<(ParamId, Tensor<1>)>,
    matrices: Vec<(ParamId, Tensor<2>)>,
}

impl Grads {
    fn params(&self) -> GradientsParams {
        let mut g = GradientsParams::new();
        for (id, t) in &self.vectors {
            g.register(*id, t.clone());
        }
        for (id, t) in &self.matrices {
            g.register(*id, t.clone());
        }
        g
    }
}

fn main() {
    let steps: usize = match std::env::args().nth(1) {
        None => 5,
        Some(s) => match s.parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("burn_step_time: STEPS must be a positive integer, got {s:?}");
                std::process::exit(2);
            }
        },
    };
    let device = Device::default().autodiff();
    let shapes = lamb_optim::bench::bert_base_tensors();
    let init = Distribution::Normal(0.0, 0.02);
    let mut set = Set {
        vectors: Vec::new(),
        matrices: Vec::new(),
    };
    let mut names = Vec::new();
    for (name, shape) in &shapes {
        match shape.as_slice() {
            [n] => {
                let p = Param::from_tensor(Tensor::<1>::random([*n], init, &device).require_grad());
                names.push((p.id, name.clone(), shape.clone()));
                set.vectors.push(p);
            }
            [r, c] => {
                let p =
                    Param::from_tensor(Tensor::<2>::random([*r, *c], init, &device).require_grad());
                names.push((p.id, name.clone(), shape.clone()));
                set.matrices.push(p);
            }
            other => panic!("unexpected shape {other:?}"),
        }
    }
    let n: usize = shapes.iter().map(|s| s.1.iter().product::<usize>()).sum();
    // One backward pass of sum_i sum(w_i * g_i) gives a random gradient for every parameter;
    // every optimizer steps from those same gradients.
    let gdist = Distribution::Normal(0.0, 1e-3);
    let mut loss: Option<Tensor<1>> = None;
    for p in &set.vectors {
        let w = p.val();
        let term = (w.clone() * Tensor::random(w.dims(), gdist, &device)).sum();
        loss = Some(loss.map_or(term.clone(), |l| l + term));
    }
    for p in &set.matrices {
        let w = p.val();
        let term = (w.clone() * Tensor::random(w.dims(), gdist, &device)).sum();
        loss = Some(loss.map_or(term.clone(), |l| l + term));
    }
    let grads = GradientsParams::from_grads(loss.expect("set is not empty").backward(), &set);
    let grads = Grads {
        vectors: set
            .vectors
            .iter()
            .map(|p| (p.id, grads.get::<1>(p.id).expect("gradient")))
            .collect(),
        matrices: set
            .matrices
            .iter()
            .map(|p| (p.id, grads.get::<2>(p.id).expect("gradient")))
            .collect(),
    };
    println!(
        "{} tensors, {n} parameters, Burn flex CPU device, {} cores available, {steps} timed steps",
        shapes.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let lr = 1e-3;
    let mut burn_own = |label: &str, mut opt: ModuleOptimizer, base: Option<f64>| {
        let t = time(steps, &device, &mut set, |s| {
            opt.step(lr, s, grads.params())
        });
        report(label, t, base.unwrap_or(t));
        t
    };
    let adam = burn_own("burn Adam", AdamConfig::new().init(), None);
    burn_own("burn AdamW", AdamWConfig::new().init(), Some(adam));
    burn_own("burn Lamb", BurnLambConfig::new().init(), Some(adam));
    let named: Vec<NamedParam> = names
        .iter()
        .map(|(id, name, shape)| NamedParam {
            id: *id,
            name: name.clone(),
            shape: shape.clone(),
        })
        .collect();
    let lamb_cfg =
        LambConfig::preset(LambPreset::Timm).with_exclusions(&["bias", "LayerNorm"], &[]);
    for (label, policy) in [
        ("lamb-burn LAMB (timm, checked)", NonFinitePolicy::Error),
        (
            "lamb-burn LAMB (timm, unchecked)",
            NonFinitePolicy::Unchecked,
        ),
    ] {
        let mut o = Lamb::from_named(named.clone(), lamb_cfg.clone().with_non_finite(policy))
            .expect("valid configuration");
        let t = time(steps, &device, &mut set, |s| {
            let (s, r) = o.step(s, grads.params());
            r.expect("step");
            s
        });
        report(label, t, adam);
    }
    let mut o = Lars::from_named(named, LarsConfig::default()).expect("valid configuration");
    let t = time(steps, &device, &mut set, |s| {
        let (s, r) = o.step(s, grads.params());
        r.expect("step");
        s
    });
    report("lamb-burn LARS (timm)", t, adam);
}

/// Median seconds of `steps` steps after one warm-up step, the device synchronized after each.
fn time(steps: usize, device: &Device, set: &mut Set, mut step: impl FnMut(Set) -> Set) -> f64 {
    let mut run = |set: &mut Set| {
        let s = std::mem::replace(
            set,
            Set {
                vectors: Vec::new(),
                matrices: Vec::new(),
            },
        );
        *set = step(s);
        device.sync().expect("device sync");
    };
    run(set);
    let mut t = Vec::with_capacity(steps);
    for _ in 0..steps {
        let s = Instant::now();
        run(set);
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn report(label: &str, secs: f64, adam: f64) {
    println!(
        "{label:<36} {:>9.1} ms/step  {:>5.2}x Burn Adam",
        secs * 1e3,
        secs / adam
    );
}
