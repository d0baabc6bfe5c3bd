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
use std::path::{Path, PathBuf};
use std::result::Result;

const FAMILIES: &[&str] = &[
    "tfa",
    "pytorch_lamb",
    "torch_optimizer",
    "timm",
    "optax",
    "torch_adam",
];

fn golden_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden");
    if root.is_dir() {
        return Some(root);
    }
    if std::env::var_os("CI").is_some() {
        panic!("golden files missing at {} (CI is set)", root.display());
    }
    eprintln!(
        "skipping: golden files expected at {} (set CI to make this a failure)",
        root.display()
    );
    None
}

fn f32v(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn num(h: &Value, key: &str) -> Result<f32, String> {
    h.get(key)
        .and_then(Value::as_f64)
        .map(|x| x as f32)
        .ok_or_else(|| format!("hyper.{key} missing or not a number"))
}

fn opt_num(h: &Value, key: &str) -> Option<f32> {
    h.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

fn flag(h: &Value, key: &str) -> bool {
    h.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn betas(h: &Value) -> Result<(f32, f32), String> {
    let b = h
        .get("betas")
        .and_then(Value::as_array)
        .ok_or("hyper.betas missing")?;
    Ok((b[0].as_f64().unwrap() as f32, b[1].as_f64().unwrap() as f32))
}

fn str_list(h: &Value, key: &str) -> Vec<String> {
    match h.get(key) {
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        _ => Vec::new(),
    }
}

/// Exact-name patterns for the names whose mask entry is `false` (optax masks).
fn mask_exclusions(h: &Value, key: &str) -> Result<Vec<String>, String> {
    match h.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(true)) => Ok(Vec::new()),
        Some(Value::Object(m)) => Ok(m
            .iter()
            .filter(|(_, v)| v.as_bool() == Some(false))
            .map(|(k, _)| format!("^{}$", regex_escape(k)))
            .collect()),
        Some(v) => Err(format!("unsupported {key}: {v}")),
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The adapter configuration a golden file was recorded with.
enum Config {
    Lamb(LambConfig),
    Lars(LarsConfig),
}

fn config_for(doc: &Value) -> Result<Config, String> {
    let name = doc["optimizer"].as_str().ok_or("no optimizer field")?;
    let h = &doc["hyper"];
    Ok(match name {
        "tfa.LAMB" => Config::Lamb(LambConfig {
            learning_rate: num(h, "learning_rate")?,
            beta_1: num(h, "beta_1")?,
            beta_2: num(h, "beta_2")?,
            epsilon: num(h, "epsilon")?,
            weight_decay_rate: num(h, "weight_decay_rate")?,
            exclude_from_weight_decay: str_list(h, "exclude_from_weight_decay"),
            exclude_from_layer_adaptation: str_list(h, "exclude_from_layer_adaptation"),
            ..LambConfig::preset(LambPreset::Tfa)
        }),
        "tf.keras.optimizers.Adam" => {
            if flag(h, "amsgrad") {
                return Err("amsgrad is not implemented".into());
            }
            Config::Lamb(LambConfig {
                learning_rate: num(h, "learning_rate")?,
                beta_1: num(h, "beta_1")?,
                beta_2: num(h, "beta_2")?,
                epsilon: num(h, "epsilon")?,
                bias_correction: BiasCorrection::StepSize,
                layer_adaptation: LayerAdaptation::Never,
                ..LambConfig::preset(LambPreset::Tfa)
            })
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
            Config::Lamb(c)
        }
        "timm.optim.Lamb" => {
            for k in ["caution", "decoupled_decay", "corrected_weight_decay"] {
                if flag(h, k) {
                    return Err(format!("timm option {k}=true is not implemented"));
                }
            }
            let (b1, b2) = betas(h)?;
            let wd = num(h, "weight_decay")?;
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
            Config::Lamb(LambConfig {
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
            })
        }
        "optax.lamb" => Config::Lamb(LambConfig {
            learning_rate: num(h, "learning_rate")?,
            beta_1: num(h, "b1")?,
            beta_2: num(h, "b2")?,
            epsilon: num(h, "eps")?,
            epsilon_root: num(h, "eps_root")?,
            weight_decay_rate: num(h, "weight_decay")?,
            exclude_from_weight_decay: mask_exclusions(h, "mask")?,
            ..LambConfig::preset(LambPreset::Optax)
        }),
        "torch.optim.Adam" | "torch.optim.AdamW" => {
            if flag(h, "amsgrad") {
                return Err("amsgrad is not implemented".into());
            }
            let (b1, b2) = betas(h)?;
            let wd = num(h, "weight_decay")?;
            if name.ends_with("Adam") && wd != 0.0 {
                return Err("Adam's L2 weight decay is not a LAMB configuration".into());
            }
            Config::Lamb(LambConfig {
                learning_rate: num(h, "lr")?,
                beta_1: b1,
                beta_2: b2,
                epsilon: num(h, "eps")?,
                weight_decay_rate: wd,
                layer_adaptation: LayerAdaptation::Never,
                ..LambConfig::preset(LambPreset::Optax)
            })
        }
        "timm.optim.Lars" => Config::Lars(LarsConfig {
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
        }),
        "optax.lars" => Config::Lars(LarsConfig {
            learning_rate: num(h, "learning_rate")?,
            momentum: num(h, "momentum")?,
            weight_decay_rate: num(h, "weight_decay")?,
            nesterov: flag(h, "nesterov"),
            trust_coefficient: num(h, "trust_coefficient")?,
            epsilon: num(h, "eps")?,
            exclude_from_weight_decay: mask_exclusions(h, "weight_decay_mask")?,
            exclude_from_layer_adaptation: mask_exclusions(h, "trust_ratio_mask")?,
            ..LarsConfig::preset(LarsPreset::Optax)
        }),
        "torch.optim.SGD" => Config::Lars(LarsConfig {
            learning_rate: num(h, "lr")?,
            momentum: num(h, "momentum")?,
            dampening: num(h, "dampening")?,
            nesterov: flag(h, "nesterov"),
            weight_decay_rate: num(h, "weight_decay")?,
            layer_adaptation: LayerAdaptation::Never,
            form: LarsForm::Timm,
            ..LarsConfig::default()
        }),
        other => return Err(format!("no optimizer of lamb-burn reproduces `{other}`")),
    })
}

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

fn load(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
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
