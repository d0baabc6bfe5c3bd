//! Every trajectory under `../shared/golden/<family>/` replayed through this crate's public
//! candle API ([`Lamb`], [`Lars`] via `candle_nn::Optimizer::step`) on candle's CPU device,
//! with `lamb-optim`'s tolerance: every value of every step within `2e-6*|expected| + 1e-7`.
//!
//! The adapter has LAMB and LARS only; the Adam, AdamW and SGD files are replayed as the
//! LAMB/LARS configurations they are special cases of (no trust ratio:
//! `LayerAdaptation::Never`): PyTorch Adam = LAMB with moment bias correction, AdamW = the
//! same with decay added to the direction, Keras Adam = LAMB with the step-size bias
//! correction (its `epsilon_hat`), SGD = LARS's timm form (as `lamb_optim::Sgd` is built).

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;
use lamb_candle::*;
use serde_json::Value;
use std::result::Result;

#[path = "../../lamb-optim/tests/golden_support/adapter_config.rs"]
mod adapter_config;
#[path = "../../lamb-optim/tests/golden_support/adapter_replay.rs"]
mod adapter_replay;
#[path = "../../lamb-optim/tests/golden_support/mod.rs"]
mod golden_support;

use adapter_config::*;
use golden_support::*;

/// A LAMB or LARS adapter behind candle-nn's trait.
enum Adapter {
    Lamb(Lamb),
    Lars(Lars),
}

impl Adapter {
    fn step(&mut self, g: &GradStore) -> candle_core::Result<()> {
        match self {
            Adapter::Lamb(o) => o.step(g),
            Adapter::Lars(o) => o.step(g),
        }
    }
    fn steps(&self) -> u64 {
        match self {
            Adapter::Lamb(o) => o.steps(),
            Adapter::Lars(o) => o.steps(),
        }
    }
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

/// Replays a parsed golden document through the adapter; returns the largest |diff|.
fn replay_doc(doc: &Value) -> Result<f64, String> {
    let dev = Device::Cpu;
    let e = |e: candle_core::Error| e.to_string();
    let vars_doc = doc["variables"].as_array().ok_or("no variables")?;
    let steps = doc["steps"].as_u64().ok_or("no steps")? as usize;
    let mut named = Vec::new();
    for v in vars_doc {
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let var = Var::from_slice(&f32v(&v["initial"]), shape, &dev).map_err(e)?;
        named.push((v["name"].as_str().unwrap().to_string(), var));
    }
    let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = match config_for(doc)? {
        Config::Lamb(c) => Adapter::Lamb(Lamb::from_named(named.clone(), c).map_err(e)?),
        Config::Lars(c) => Adapter::Lars(Lars::from_named(named.clone(), c).map_err(e)?),
    };
    let mut worst = 0.0f64;
    for k in 0..steps {
        let mut gs = Vec::new();
        for (v, var) in vars_doc.iter().zip(&vars) {
            gs.push(Tensor::from_slice(&f32v(&v["grads"][k]), var.shape(), &dev).map_err(e)?);
        }
        let grads = store_of(&vars.iter().collect::<Vec<_>>(), gs).map_err(e)?;
        opt.step(&grads)
            .map_err(|err| format!("step {}: {err}", k + 1))?;
        if opt.steps() != k as u64 + 1 {
            return Err(format!("step {} was skipped", k + 1));
        }
        for (vi, v) in vars_doc.iter().enumerate() {
            let expected = f32v(&v["values"][k]);
            let got = vars[vi]
                .as_tensor()
                .flatten_all()
                .map_err(e)?
                .to_vec1::<f32>()
                .map_err(e)?;
            adapter_replay::check_values(&named[vi].0, k + 1, &got, &expected, &mut worst)?;
        }
    }
    Ok(worst)
}

adapter_golden_tests!(replay_doc);
