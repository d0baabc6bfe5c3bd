//! [`OptimizerSpec`]: a serialisable request for any optimizer of the family (command-line
//! flags, config files), and [`build`]. What each kind accepts is in its
//! [`Description`](crate::Description); the per-kind config functions live in the
//! optimizers' modules.

use crate::{NonFinitePolicy, OptimError, Optimizer, OptimizerKind, Schedule};
use serde::{Deserialize, Serialize};

/// What to build: an optimizer kind, an optional preset and overrides. Fields left `None`
/// keep the preset's value. Fields that do not apply to the kind, and (in JSON or TOML)
/// unknown fields, are errors. Which fields apply, their ranges and the presets are in the
/// kind's [`Description`](crate::Description) (`kind.description()`).
///
/// Presets: LAMB `tfa` (default), `nvlamb`, `pytorch-lamb`, `torch-optimizer`, `timm`,
/// `optax`, `deepspeed`; Adam `keras` (default) or `pytorch`; AdamW `pytorch` (default);
/// LARS `timm` (default) or `optax`; SGD `pytorch` (default).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Which optimizer (required).
    pub kind: Option<OptimizerKind>,
    /// Reference implementation whose defaults and formula switches to start from.
    pub preset: Option<String>,
    /// Base learning rate.
    pub learning_rate: Option<f32>,
    /// First-moment decay.
    pub beta_1: Option<f32>,
    /// Second-moment decay.
    pub beta_2: Option<f32>,
    /// Epsilon.
    pub epsilon: Option<f32>,
    /// Weight decay rate.
    pub weight_decay_rate: Option<f32>,
    /// Regexes of tensors not decayed.
    pub exclude_from_weight_decay: Option<Vec<String>>,
    /// Regexes of tensors not layer-adapted (LAMB).
    pub exclude_from_layer_adaptation: Option<Vec<String>>,
    /// Global gradient-norm clipping (LAMB).
    pub max_grad_norm: Option<f32>,
    /// Momentum (LARS, SGD).
    pub momentum: Option<f32>,
    /// Nesterov momentum (LARS, SGD).
    pub nesterov: Option<bool>,
    /// Dampening (LARS, SGD).
    pub dampening: Option<f32>,
    /// LARS trust coefficient.
    pub trust_coefficient: Option<f32>,
    /// LARS: LARC clipping; LAMB: cap the trust ratio at 1.
    pub trust_clip: Option<bool>,
    /// Learning-rate schedule.
    pub schedule: Option<Schedule>,
    /// Non-finite policy.
    pub non_finite: Option<NonFinitePolicy>,
    /// LAMB: scratch memory traded for step speed (`fast`, the default, or `lean`).
    pub step_memory: Option<crate::StepMemory>,
}

impl OptimizerSpec {
    /// A spec of this kind with the default preset.
    pub fn new(kind: OptimizerKind) -> Self {
        Self {
            kind: Some(kind),
            ..Self::default()
        }
    }

    /// Sets the learning rate.
    pub fn with_learning_rate(mut self, lr: f32) -> Self {
        self.learning_rate = Some(lr);
        self
    }

    /// Sets the preset.
    pub fn with_preset(mut self, preset: &str) -> Self {
        self.preset = Some(preset.to_string());
        self
    }
}

/// Builds the optimizer a spec describes, validating every value.
pub fn build(spec: &OptimizerSpec) -> Result<Box<dyn Optimizer>, OptimError> {
    (spec.description()?.build)(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{adam_config, lamb_config, ParamMut};

    fn one_step(spec: &OptimizerSpec) -> Vec<f32> {
        let mut opt = build(spec).unwrap();
        let mut w = vec![1.0f32, -2.0, 0.5];
        let g = vec![0.1f32, 0.2, -0.3];
        opt.step(&mut [ParamMut::new("dense/kernel", &[3], &mut w, &g)])
            .unwrap();
        w
    }

    #[test]
    fn every_kind_builds_and_steps() {
        for k in ["lamb", "adam", "adamw", "lars", "sgd"] {
            let kind: OptimizerKind = k.parse().unwrap();
            let spec = OptimizerSpec::new(kind).with_learning_rate(0.1);
            let w = one_step(&spec);
            assert_ne!(w, vec![1.0, -2.0, 0.5], "{k} did not move");
            assert_eq!(build(&spec).unwrap().name(), k);
        }
    }

    #[test]
    fn classic_experiment_defaults() {
        let l = lamb_config(&OptimizerSpec::new(OptimizerKind::Lamb)).unwrap();
        assert_eq!(
            (l.learning_rate, l.beta_1, l.beta_2, l.epsilon),
            (1e-3, 0.9, 0.999, 1e-6)
        );
        assert_eq!(l.weight_decay_rate, 0.0);
        let a = adam_config(&OptimizerSpec::new(OptimizerKind::Adam)).unwrap();
        assert_eq!(
            (a.learning_rate, a.beta_1, a.beta_2, a.epsilon),
            (1e-3, 0.9, 0.999, 1e-7)
        );
        assert_eq!(a.epsilon_mode, crate::EpsilonMode::Keras);
    }

    #[test]
    fn presets_and_overrides() {
        let spec = OptimizerSpec {
            weight_decay_rate: Some(0.05),
            ..OptimizerSpec::new(OptimizerKind::Lamb).with_preset("timm")
        };
        let c = lamb_config(&spec).unwrap();
        assert_eq!(c.weight_decay_rate, 0.05);
        assert_eq!(c.max_grad_norm, Some(1.0));
        assert!(build(&OptimizerSpec::new(OptimizerKind::Lamb).with_preset("nope")).is_err());
    }

    #[test]
    fn inapplicable_fields_are_errors() {
        let spec = OptimizerSpec {
            momentum: Some(0.9),
            ..OptimizerSpec::new(OptimizerKind::Adam)
        };
        let e = build(&spec).err().unwrap().to_string();
        assert!(
            e.contains("momentum") && e.contains("does not apply to adam"),
            "{e}"
        );
        assert!(build(&OptimizerSpec::default()).is_err());
        // Misspelt keys in a file are refused, naming the key.
        let e = serde_json::from_str::<OptimizerSpec>(r#"{"kind":"lamb","betta_1":0.8}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("betta_1"), "{e}");
    }

    #[test]
    fn spec_from_json() {
        let spec: OptimizerSpec = serde_json::from_str(
            r#"{"kind":"lamb","preset":"optax","learning_rate":0.002,
                "schedule":{"kind":"polynomial_decay","warmup_steps":2,"total_steps":20}}"#,
        )
        .unwrap();
        let opt = build(&spec).unwrap();
        assert!((opt.current_learning_rate() - 0.001).abs() < 1e-9);
    }
}
