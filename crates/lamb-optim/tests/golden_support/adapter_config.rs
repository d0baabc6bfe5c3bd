//! The LAMB/LARS configuration each golden file was recorded with, for the replays of the
//! framework adapters (lamb-candle, lamb-burn), which have LAMB and LARS only.
#![allow(dead_code)]

use super::golden_support::*;
use lamb_optim::*;
use serde_json::Value;

/// The adapter configuration a golden file was recorded with.
pub enum Config {
    /// LAMB (and Adam, AdamW as its special cases).
    Lamb(LambConfig),
    /// LARS (and SGD).
    Lars(LarsConfig),
}

pub fn config_for(doc: &Value) -> Result<Config, String> {
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
        other => {
            return Err(format!(
                "no optimizer of {} reproduces `{other}`",
                env!("CARGO_PKG_NAME")
            ))
        }
    })
}
