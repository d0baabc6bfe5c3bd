//! Step time of this crate's LAMB (and LARS) against candle-nn's AdamW on the BERT-base-shaped
//! tensor set of `lamb bench` (199 tensors, 109,482,240 parameters) on candle's CPU device.
//!
//! `cargo run --release -p lamb-candle --example step_time [-- STEPS]` (default 5 timed steps
//! after one warm-up step each). Prints the median step time of each optimizer and the ratio
//! to AdamW. Timings depend on the machine and its load: report them with both.

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use lamb_candle::{Lamb, LambConfig, LambPreset, Lars, LarsConfig, NonFinitePolicy};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let steps: usize = match std::env::args().nth(1) {
        None => 5,
        Some(s) => match s.parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("step_time: STEPS must be a positive integer, got {s:?}");
                std::process::exit(2);
            }
        },
    };
    let dev = Device::Cpu;
    let shapes = lamb_optim::bench::bert_base_tensors();
    let mut named = Vec::with_capacity(shapes.len());
    for (name, shape) in &shapes {
        let w = Tensor::randn(0f32, 0.02, shape.as_slice(), &dev)?;
        named.push((name.clone(), Var::from_tensor(&w)?));
    }
    let n: usize = shapes.iter().map(|s| s.1.iter().product::<usize>()).sum();
    // One backward pass gives a gradient store with a random gradient for every variable;
    // every optimizer steps from that same store.
    let mut loss: Option<Tensor> = None;
    for (_, v) in &named {
        let g = Tensor::randn(0f32, 1e-3, v.shape(), &dev)?;
        let term = (v.as_tensor() * g)?.sum_all()?;
        loss = Some(match loss {
            None => term,
            Some(l) => (l + term)?,
        });
    }
    let grads = loss.expect("BERT set is not empty").backward()?;
    println!(
        "{} tensors, {n} parameters, candle CPU device, {} cores available, {steps} timed steps",
        named.len(),
        available_cores()
    );
    let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let adamw = {
        let mut o = AdamW::new(vars.clone(), ParamsAdamW::default())?;
        time(steps, || o.step(&grads))?
    };
    report("candle-nn AdamW", adamw, adamw);
    let lamb_cfg =
        LambConfig::preset(LambPreset::Timm).with_exclusions(&["bias", "LayerNorm"], &[]);
    for (label, policy) in [
        ("lamb-candle LAMB (timm, checked)", NonFinitePolicy::Error),
        (
            "lamb-candle LAMB (timm, unchecked)",
            NonFinitePolicy::Unchecked,
        ),
    ] {
        let mut o = Lamb::from_named(named.clone(), lamb_cfg.clone().with_non_finite(policy))?;
        let t = time(steps, || o.step(&grads))?;
        report(label, t, adamw);
    }
    let mut o = Lars::from_named(named.clone(), LarsConfig::default())?;
    let t = time(steps, || o.step(&grads))?;
    report("lamb-candle LARS (timm)", t, adamw);
    Ok(())
}

/// Median seconds of `steps` calls after one warm-up call.
fn time(steps: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(steps);
    for _ in 0..steps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn report(label: &str, secs: f64, adamw: f64) {
    println!(
        "{label:<38} {:>9.1} ms/step  {:>5.2}x AdamW",
        secs * 1e3,
        secs / adamw
    );
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
