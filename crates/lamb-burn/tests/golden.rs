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
use std::path::PathBuf;
use std::result::Result;

#[path = "../../lamb-optim/tests/golden_support/adapter_config.rs"]
mod adapter_config;
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
            if got.len() != expected.len() {
                return Err(format!(
                    "variable `{}`: {} values, expected {}",
                    names[vi],
                    got.len(),
                    expected.len()
                ));
            }
            for (i, (&got, &exp)) in got.iter().zip(&expected).enumerate() {
                let d = (got as f64 - exp as f64).abs();
                let tol = 2e-6 * (exp as f64).abs() + 1e-7;
                worst = worst.max(d);
                if d.is_nan() || d > tol {
                    return Err(format!(
                        "variable `{}` step {} index {i}: got {got:e}, expected {exp:e} (|diff| {d:e} > tol {tol:e})",
                        names[vi],
                        k + 1
                    ));
                }
            }
        }
    }
    Ok(worst)
}

fn run_family(family: &str) {
    let Some(root) = golden_root() else { return };
    let dir = root.join(family);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no json files in {}", dir.display());
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        match load(f).and_then(|d| replay_doc(&d)) {
            Ok(worst) => eprintln!("ok   {family}/{name} (max |diff| {worst:.2e})"),
            Err(e) => failures.push(format!("{family}/{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn golden_tfa() {
    run_family("tfa");
}

#[test]
fn golden_pytorch_lamb() {
    run_family("pytorch_lamb");
}

#[test]
fn golden_torch_optimizer() {
    run_family("torch_optimizer");
}

#[test]
fn golden_timm() {
    run_family("timm");
}

#[test]
fn golden_optax() {
    run_family("optax");
}

#[test]
fn golden_torch_adam() {
    run_family("torch_adam");
}

/// A new family directory must get a test here too.
#[test]
fn every_family_is_tested() {
    let Some(root) = golden_root() else { return };
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                FAMILIES.contains(&name.as_str()),
                "golden family `{name}` has no test"
            );
        }
    }
}

/// The comparison can fail: a changed rule must be rejected by the replay.
#[test]
fn changed_rules_are_rejected() {
    let Some(root) = golden_root() else { return };
    let cases: &[(&str, &str, Value)] = &[
        (
            "tfa/b_lamb_lr0.01_wd0.01.json",
            "weight_decay_rate",
            Value::from(0.0),
        ),
        ("timm/a_lamb_defaults.json", "max_grad_norm", Value::Null),
        (
            "timm/a_lamb_defaults.json",
            "bias_correction",
            Value::from(false),
        ),
        (
            "torch_optimizer/b_lamb_lr0.01_wd0.01_clamp10.json",
            "clamp_value",
            Value::from(100.0),
        ),
        (
            "pytorch_lamb/d_lamb_adam_true.json",
            "adam",
            Value::from(false),
        ),
        (
            "timm/g_lars_momentum0.9_wd1e-4_trust_clip.json",
            "trust_clip",
            Value::from(false),
        ),
        (
            "optax/e_lars_lr1_wd0.1_nesterov.json",
            "nesterov",
            Value::from(false),
        ),
    ];
    for (file, key, value) in cases {
        let mut doc = load(&root.join(file)).unwrap();
        if let Err(e) = replay_doc(&doc) {
            panic!("{file} should pass unchanged: {e}");
        }
        doc["hyper"][*key] = value.clone();
        assert!(
            replay_doc(&doc).is_err(),
            "{file} with {key} = {value} still matched: the test cannot see this rule"
        );
    }
}
