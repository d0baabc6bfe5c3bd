//! Every trajectory under `../shared/golden/<family>/` replayed through this crate's
//! optimizers: every value of every step of every variable must match.
//!
//! Tolerance: the README's `2e-6*|expected| + 1e-7` for every family. (VARIANTS.md says an
//! absolute ~2e-6 is appropriate for the non-tfa families; every file passes the stricter
//! relative bound, so [`ABSOLUTE_FLOOR`] is off.)

mod golden_support;

use golden_support::*;
use lamb_optim::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Whether non-tfa families may use VARIANTS.md's absolute 2e-6 (not needed: every file
/// currently passes the README's relative bound, so all families use it).
const ABSOLUTE_FLOOR: bool = false;

/// The optimizer (and its tolerance mode) a golden file was recorded with.
fn build_for(doc: &Value) -> Result<Box<dyn Optimizer>, String> {
    let name = doc["optimizer"].as_str().ok_or("no optimizer field")?;
    let h = &doc["hyper"];
    let e = |e: OptimError| e.to_string();
    match name {
        "tfa.LAMB" => {
            let c = LambConfig {
                learning_rate: num(h, "learning_rate")?,
                beta_1: num(h, "beta_1")?,
                beta_2: num(h, "beta_2")?,
                epsilon: num(h, "epsilon")?,
                weight_decay_rate: num(h, "weight_decay_rate")?,
                exclude_from_weight_decay: str_list(h, "exclude_from_weight_decay"),
                exclude_from_layer_adaptation: str_list(h, "exclude_from_layer_adaptation"),
                ..LambConfig::preset(LambPreset::Tfa)
            };
            Ok(Box::new(Lamb::new(c).map_err(e)?))
        }
        "tf.keras.optimizers.Adam" => {
            if flag(h, "amsgrad") {
                return Err("amsgrad is not implemented".into());
            }
            let c = AdamConfig {
                learning_rate: num(h, "learning_rate")?,
                beta_1: num(h, "beta_1")?,
                beta_2: num(h, "beta_2")?,
                epsilon: num(h, "epsilon")?,
                ..AdamConfig::keras()
            };
            Ok(Box::new(Adam::new(c).map_err(e)?))
        }
        "cybertronai pytorch_lamb.Lamb" | "torch_optimizer.Lamb" => {
            let preset = if name.starts_with("torch_optimizer") {
                LambPreset::TorchOptimizer
            } else {
                LambPreset::PytorchLamb
            };
            let (b1, b2) = betas(h)?;
            let mut c = LambConfig {
                learning_rate: num(h, "lr")?,
                beta_1: b1,
                beta_2: b2,
                epsilon: num(h, "eps")?,
                weight_decay_rate: num(h, "weight_decay")?,
                ..LambConfig::preset(preset)
            };
            if let Some(cv) = opt_num(h, "clamp_value") {
                c.weight_norm_clamp = Some((0.0, cv));
            }
            if flag(h, "debias") {
                c.bias_correction = BiasCorrection::StepSize;
            }
            if flag(h, "adam") {
                c.layer_adaptation = LayerAdaptation::Never;
            }
            Ok(Box::new(Lamb::new(c).map_err(e)?))
        }
        "timm.optim.Lamb" => {
            for k in ["caution", "decoupled_decay", "corrected_weight_decay"] {
                if flag(h, k) {
                    return Err(format!("timm option {k}=true is not implemented"));
                }
            }
            let (b1, b2) = betas(h)?;
            let wd = num(h, "weight_decay")?;
            // Param groups: a group may only override weight_decay, to 0 (exclusion by name)
            // or to the constructor's value.
            let mut no_decay = Vec::new();
            if let Some(groups) = h.get("param_groups").and_then(Value::as_array) {
                for g in groups {
                    for (k, _) in g.as_object().ok_or("group not an object")? {
                        if k != "params" && k != "weight_decay" {
                            return Err(format!("param group overrides {k}: not supported"));
                        }
                    }
                    match opt_num(g, "weight_decay") {
                        None => {}
                        Some(x) if x == wd => {}
                        Some(0.0) => {
                            for p in g["params"].as_array().unwrap() {
                                no_decay.push(format!("^{}$", regex_escape(p.as_str().unwrap())));
                            }
                        }
                        Some(x) => return Err(format!("group weight_decay {x} not expressible")),
                    }
                }
            }
            let c = LambConfig {
                learning_rate: num(h, "lr")?,
                beta_1: b1,
                beta_2: b2,
                epsilon: num(h, "eps")?,
                weight_decay_rate: wd,
                exclude_from_weight_decay: no_decay,
                bias_correction: if flag(h, "bias_correction") {
                    BiasCorrection::Moments
                } else {
                    BiasCorrection::None
                },
                grad_averaging: flag(h, "grad_averaging"),
                max_grad_norm: opt_num(h, "max_grad_norm"),
                trust_clip: flag(h, "trust_clip"),
                layer_adaptation: if flag(h, "always_adapt") {
                    LayerAdaptation::All
                } else {
                    LayerAdaptation::DecayedOnly
                },
                ..LambConfig::preset(LambPreset::Timm)
            };
            Ok(Box::new(Lamb::new(c).map_err(e)?))
        }
        "optax.lamb" => {
            let c = LambConfig {
                learning_rate: num(h, "learning_rate")?,
                beta_1: num(h, "b1")?,
                beta_2: num(h, "b2")?,
                epsilon: num(h, "eps")?,
                epsilon_root: num(h, "eps_root")?,
                weight_decay_rate: num(h, "weight_decay")?,
                exclude_from_weight_decay: mask_exclusions(h, "mask")?,
                ..LambConfig::preset(LambPreset::Optax)
            };
            Ok(Box::new(Lamb::new(c).map_err(e)?))
        }
        "torch.optim.Adam" | "torch.optim.AdamW" => {
            if flag(h, "amsgrad") {
                return Err("amsgrad is not implemented".into());
            }
            let (b1, b2) = betas(h)?;
            let base = if name.ends_with("AdamW") {
                AdamConfig::adamw()
            } else {
                AdamConfig::pytorch()
            };
            let c = AdamConfig {
                learning_rate: num(h, "lr")?,
                beta_1: b1,
                beta_2: b2,
                epsilon: num(h, "eps")?,
                weight_decay_rate: num(h, "weight_decay")?,
                ..base
            };
            Ok(Box::new(Adam::new(c).map_err(e)?))
        }
        other => build_more(other, h),
    }
}

fn build_more(name: &str, h: &Value) -> Result<Box<dyn Optimizer>, String> {
    let e = |e: OptimError| e.to_string();
    match name {
        "timm.optim.Lars" => {
            let c = LarsConfig {
                learning_rate: num(h, "lr")?,
                momentum: num(h, "momentum")?,
                dampening: num(h, "dampening")?,
                weight_decay_rate: num(h, "weight_decay")?,
                nesterov: flag(h, "nesterov"),
                trust_coefficient: num(h, "trust_coeff")?,
                epsilon: num(h, "eps")?,
                trust_clip: flag(h, "trust_clip"),
                layer_adaptation: if flag(h, "always_adapt") {
                    LayerAdaptation::All
                } else {
                    LayerAdaptation::DecayedOnly
                },
                ..LarsConfig::preset(LarsPreset::Timm)
            };
            Ok(Box::new(Lars::new(c).map_err(e)?))
        }
        "optax.lars" => {
            let c = LarsConfig {
                learning_rate: num(h, "learning_rate")?,
                momentum: num(h, "momentum")?,
                weight_decay_rate: num(h, "weight_decay")?,
                nesterov: flag(h, "nesterov"),
                trust_coefficient: num(h, "trust_coefficient")?,
                epsilon: num(h, "eps")?,
                exclude_from_weight_decay: mask_exclusions(h, "weight_decay_mask")?,
                exclude_from_layer_adaptation: mask_exclusions(h, "trust_ratio_mask")?,
                ..LarsConfig::preset(LarsPreset::Optax)
            };
            Ok(Box::new(Lars::new(c).map_err(e)?))
        }
        "torch.optim.SGD" => {
            let c = SgdConfig {
                learning_rate: num(h, "lr")?,
                momentum: num(h, "momentum")?,
                dampening: num(h, "dampening")?,
                nesterov: flag(h, "nesterov"),
                weight_decay_rate: num(h, "weight_decay")?,
                ..SgdConfig::default()
            };
            Ok(Box::new(Sgd::new(c).map_err(e)?))
        }
        _ => Err(format!("no optimizer of this crate reproduces `{name}`")),
    }
}

/// Replays one file; returns the largest |diff| and the first failure.
fn replay(path: &Path, absolute_floor: bool) -> Result<f64, String> {
    replay_doc(&load(path)?, absolute_floor)
}

/// Replays a parsed golden document.
fn replay_doc(doc: &Value, absolute_floor: bool) -> Result<f64, String> {
    let mut opt = build_for(doc)?;
    let vars = doc["variables"].as_array().ok_or("no variables")?;
    let steps = doc["steps"].as_u64().ok_or("no steps")? as usize;
    let names: Vec<String> = vars
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let shapes: Vec<Vec<usize>> = vars
        .iter()
        .map(|v| {
            v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect()
        })
        .collect();
    let mut values: Vec<Vec<f32>> = vars.iter().map(|v| f32v(&v["initial"])).collect();
    let mut worst = 0.0f64;
    for k in 0..steps {
        let grads: Vec<Vec<f32>> = vars.iter().map(|v| f32v(&v["grads"][k])).collect();
        let mut params: Vec<ParamMut> = values
            .iter_mut()
            .zip(&grads)
            .zip(&names)
            .zip(&shapes)
            .map(|(((w, g), n), s)| ParamMut::new(n, s, w, g))
            .collect();
        let out = opt
            .step(&mut params)
            .map_err(|e| format!("step {}: {e}", k + 1))?;
        if out != StepOutcome::Applied {
            return Err(format!("step {} was skipped", k + 1));
        }
        for (vi, v) in vars.iter().enumerate() {
            let expected = f32v(&v["values"][k]);
            for (i, (&got, &exp)) in values[vi].iter().zip(&expected).enumerate() {
                let d = (got as f64 - exp as f64).abs();
                let mut tol = 2e-6 * (exp as f64).abs() + 1e-7;
                if absolute_floor {
                    tol = tol.max(2e-6);
                }
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
        match replay(f, ABSOLUTE_FLOOR && family != "tfa") {
            Ok(worst) => eprintln!(
                "ok   {family}/{} (max |diff| {worst:.2e})",
                f.file_name().unwrap().to_string_lossy()
            ),
            Err(e) => failures.push(format!(
                "{family}/{}: {e}",
                f.file_name().unwrap().to_string_lossy()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}

golden_family_tests!(run_family);

#[test]
fn changed_rules_are_rejected() {
    golden_support::changed_rules_are_rejected(|doc| replay_doc(doc, true));
}
