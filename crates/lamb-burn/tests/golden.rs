//! Every trajectory under `../shared/golden/<family>/` replayed through this crate's public
//! Burn API ([`Lamb`], [`Lars`]: Burn's `ModuleOptimizer` with this crate's per-parameter
//! rules underneath) on Burn's CPU backend (flex, with autodiff), gradients from a real
//! backward pass, with `lamb-optim`'s tolerance: every value of every step within
//! `2e-6*|expected| + 1e-7`.
//!
//! The adapter has LAMB and LARS only; the Adam, AdamW and SGD files are replayed as the
//! LAMB/LARS configurations they are special cases of (no trust ratio:
//! `LayerAdaptation::Never`): PyTorch Adam = LAMB with moment bias correction, AdamW = the
//! same with decay added to the direction, Keras Adam = LAMB with the step-size bias
//! correction (its `epsilon_hat`), SGD = LARS's timm form (as `lamb_optim::Sgd` is built).

mod common;

use common::*;
use lamb_burn::*;
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

/// A LAMB or LARS adapter.
enum Adapter {
    Lamb(Lamb),
    Lars(Lars),
}

impl Adapter {
    fn step(
        &mut self,
        vars: Vars,
        g: burn::optim::GradientsParams,
    ) -> (Vars, lamb_burn::Result<StepOutcome>) {
        match self {
            Adapter::Lamb(o) => o.step(vars, g),
            Adapter::Lars(o) => o.step(vars, g),
        }
    }
    fn steps(&self) -> u64 {
        match self {
            Adapter::Lamb(o) => o.steps(),
            Adapter::Lars(o) => o.steps(),
        }
    }
}

/// Replays a parsed golden document through the adapter; returns the largest |diff|.
fn replay_doc(doc: &Value) -> Result<f64, String> {
    let dev = device();
    let e = |e: lamb_burn::Error| e.to_string();
    let vars_doc = doc["variables"].as_array().ok_or("no variables")?;
    let steps = doc["steps"].as_u64().ok_or("no steps")? as usize;
    let init: Vec<Vec<f32>> = vars_doc.iter().map(|v| f32v(&v["initial"])).collect();
    let names: Vec<String> = vars_doc
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let mut vars = make_vars(&init, &dev);
    let params = named(&vars, &names);
    let mut opt = match config_for(doc)? {
        Config::Lamb(c) => Adapter::Lamb(Lamb::from_named(params, c).map_err(e)?),
        Config::Lars(c) => Adapter::Lars(Lars::from_named(params, c).map_err(e)?),
    };
    let mut worst = 0.0f64;
    for k in 0..steps {
        let gs: Vec<Vec<f32>> = vars_doc.iter().map(|v| f32v(&v["grads"][k])).collect();
        let grads = grads_of(&vars, &gs);
        let (stepped, outcome) = opt.step(vars, grads);
        vars = stepped;
        outcome.map_err(|err| format!("step {}: {err}", k + 1))?;
        if opt.steps() != k as u64 + 1 {
            return Err(format!("step {} was skipped", k + 1));
        }
        for (vi, (v, got)) in vars_doc.iter().zip(values(&vars)).enumerate() {
            let expected = f32v(&v["values"][k]);
            adapter_replay::check_values(&names[vi], k + 1, &got, &expected, &mut worst)?;
        }
    }
    Ok(worst)
}

adapter_golden_tests!(replay_doc);
