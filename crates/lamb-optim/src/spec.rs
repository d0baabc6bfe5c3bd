//! Building any optimizer of the family from a serialisable description (command-line flags,
//! config files).

use crate::{
    Adam, AdamConfig, Lamb, LambConfig, LambPreset, Lars, LarsConfig, LarsPreset, NonFinitePolicy,
    OptimError, Optimizer, Schedule, Sgd, SgdConfig,
};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The optimizer kinds [`build`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// [`crate::Lamb`].
    Lamb,
    /// [`crate::Adam`] (Keras semantics unless the preset is `pytorch`).
    Adam,
    /// [`crate::Adam`] with decoupled weight decay (PyTorch AdamW).
    Adamw,
    /// [`crate::Lars`].
    Lars,
    /// [`crate::Sgd`].
    Sgd,
}

impl FromStr for OptimizerKind {
    type Err = OptimError;
    /// `lamb`, `adam`, `adamw`, `lars`, `sgd` (any case).
    fn from_str(s: &str) -> Result<Self, OptimError> {
        match s.to_ascii_lowercase().as_str() {
            "lamb" => Ok(Self::Lamb),
            "adam" => Ok(Self::Adam),
            "adamw" => Ok(Self::Adamw),
            "lars" => Ok(Self::Lars),
            "sgd" => Ok(Self::Sgd),
            _ => Err(OptimError::InvalidHyperparameter {
                name: "optimizer",
                value: s.to_string(),
                valid: "one of lamb, adam, adamw, lars, sgd".into(),
            }),
        }
    }
}

/// A description of an optimizer: its kind, an optional preset and overrides. Fields left
/// `None` keep the preset's value. Fields that do not apply to the kind are an error.
///
/// Presets: LAMB `tfa` (default), `nvlamb`, `pytorch-lamb`, `torch-optimizer`, `timm`,
/// `optax`, `deepspeed`; Adam `keras` (default) or `pytorch`; AdamW `pytorch` (default);
/// LARS `timm` (default) or `optax`; SGD `pytorch` (default).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
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

fn not_applicable(name: &'static str, kind: OptimizerKind) -> OptimError {
    OptimError::InvalidHyperparameter {
        name,
        value: "given".into(),
        valid: format!("does not apply to {kind:?}"),
    }
}

/// Errors if any of the named fields is set.
fn reject(
    spec: &OptimizerSpec,
    kind: OptimizerKind,
    names: &[&'static str],
) -> Result<(), OptimError> {
    for &n in names {
        let set = match n {
            "beta_1" => spec.beta_1.is_some(),
            "beta_2" => spec.beta_2.is_some(),
            "exclude_from_layer_adaptation" => spec.exclude_from_layer_adaptation.is_some(),
            "max_grad_norm" => spec.max_grad_norm.is_some(),
            "momentum" => spec.momentum.is_some(),
            "nesterov" => spec.nesterov.is_some(),
            "dampening" => spec.dampening.is_some(),
            "trust_coefficient" => spec.trust_coefficient.is_some(),
            "trust_clip" => spec.trust_clip.is_some(),
            "step_memory" => spec.step_memory.is_some(),
            _ => false,
        };
        if set {
            return Err(not_applicable(n, kind));
        }
    }
    Ok(())
}

/// The LARS configuration a spec describes.
pub fn lars_config(spec: &OptimizerSpec) -> Result<LarsConfig, OptimError> {
    let preset = match &spec.preset {
        Some(p) => LarsPreset::from_str(p)?,
        None => LarsPreset::Timm,
    };
    reject(
        spec,
        OptimizerKind::Lars,
        &["beta_1", "beta_2", "max_grad_norm", "step_memory"],
    )?;
    let mut c = LarsConfig::preset(preset);
    if let Some(x) = spec.learning_rate {
        c.learning_rate = x;
    }
    if let Some(x) = spec.momentum {
        c.momentum = x;
    }
    if let Some(x) = spec.nesterov {
        c.nesterov = x;
    }
    if let Some(x) = spec.dampening {
        c.dampening = x;
    }
    if let Some(x) = spec.epsilon {
        c.epsilon = x;
    }
    if let Some(x) = spec.trust_coefficient {
        c.trust_coefficient = x;
    }
    if let Some(x) = spec.trust_clip {
        c.trust_clip = x;
    }
    if let Some(x) = spec.weight_decay_rate {
        c.weight_decay_rate = x;
    }
    if let Some(x) = &spec.exclude_from_weight_decay {
        c.exclude_from_weight_decay = x.clone();
    }
    if let Some(x) = &spec.exclude_from_layer_adaptation {
        c.exclude_from_layer_adaptation = x.clone();
    }
    if let Some(x) = spec.schedule {
        c.schedule = x;
    }
    if let Some(x) = spec.non_finite {
        c.non_finite = x;
    }
    Ok(c)
}

/// The SGD configuration a spec describes.
pub fn sgd_config(spec: &OptimizerSpec) -> Result<SgdConfig, OptimError> {
    match spec
        .preset
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("pytorch") | Some("torch") => {}
        Some(p) => {
            return Err(OptimError::InvalidHyperparameter {
                name: "preset",
                value: p.to_string(),
                valid: "sgd: pytorch".into(),
            })
        }
    }
    reject(
        spec,
        OptimizerKind::Sgd,
        &[
            "beta_1",
            "beta_2",
            "exclude_from_layer_adaptation",
            "max_grad_norm",
            "trust_coefficient",
            "trust_clip",
            "step_memory",
        ],
    )?;
    if spec.epsilon.is_some() {
        return Err(not_applicable("epsilon", OptimizerKind::Sgd));
    }
    let mut c = SgdConfig::default();
    if let Some(x) = spec.learning_rate {
        c.learning_rate = x;
    }
    if let Some(x) = spec.momentum {
        c.momentum = x;
    }
    if let Some(x) = spec.nesterov {
        c.nesterov = x;
    }
    if let Some(x) = spec.dampening {
        c.dampening = x;
    }
    if let Some(x) = spec.weight_decay_rate {
        c.weight_decay_rate = x;
    }
    if let Some(x) = &spec.exclude_from_weight_decay {
        c.exclude_from_weight_decay = x.clone();
    }
    if let Some(x) = spec.schedule {
        c.schedule = x;
    }
    if let Some(x) = spec.non_finite {
        c.non_finite = x;
    }
    Ok(c)
}

/// The LAMB configuration a spec describes (preset, then overrides).
pub fn lamb_config(spec: &OptimizerSpec) -> Result<LambConfig, OptimError> {
    let preset = match &spec.preset {
        Some(p) => LambPreset::from_str(p)?,
        None => LambPreset::Tfa,
    };
    let mut c = LambConfig::preset(preset);
    reject(
        spec,
        OptimizerKind::Lamb,
        &["momentum", "nesterov", "dampening", "trust_coefficient"],
    )?;
    if let Some(x) = spec.trust_clip {
        c.trust_clip = x;
    }
    if let Some(x) = spec.learning_rate {
        c.learning_rate = x;
    }
    if let Some(x) = spec.beta_1 {
        c.beta_1 = x;
    }
    if let Some(x) = spec.beta_2 {
        c.beta_2 = x;
    }
    if let Some(x) = spec.epsilon {
        c.epsilon = x;
    }
    if let Some(x) = spec.weight_decay_rate {
        c.weight_decay_rate = x;
    }
    if let Some(x) = &spec.exclude_from_weight_decay {
        c.exclude_from_weight_decay = x.clone();
    }
    if let Some(x) = &spec.exclude_from_layer_adaptation {
        c.exclude_from_layer_adaptation = x.clone();
    }
    if let Some(x) = spec.max_grad_norm {
        c.max_grad_norm = Some(x);
    }
    if let Some(x) = spec.schedule {
        c.schedule = x;
    }
    if let Some(x) = spec.step_memory {
        c.step_memory = x;
    }
    if let Some(x) = spec.non_finite {
        c.non_finite = x;
    }
    Ok(c)
}

/// The Adam configuration a spec describes (`kind` adam or adamw).
pub fn adam_config(spec: &OptimizerSpec) -> Result<AdamConfig, OptimError> {
    let kind = spec.kind.unwrap_or(OptimizerKind::Adam);
    let mut c = match (
        kind,
        spec.preset
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
    ) {
        (OptimizerKind::Adamw, None | Some("pytorch") | Some("torch")) => AdamConfig::adamw(),
        (_, None | Some("keras") | Some("tf") | Some("tensorflow")) => AdamConfig::keras(),
        (_, Some("pytorch") | Some("torch")) => AdamConfig::pytorch(),
        (_, Some(p)) => {
            return Err(OptimError::InvalidHyperparameter {
                name: "preset",
                value: p.to_string(),
                valid: "adam: keras or pytorch; adamw: pytorch".into(),
            })
        }
    };
    reject(
        spec,
        kind,
        &[
            "exclude_from_layer_adaptation",
            "max_grad_norm",
            "momentum",
            "nesterov",
            "dampening",
            "trust_coefficient",
            "trust_clip",
            "step_memory",
        ],
    )?;
    if let Some(x) = spec.learning_rate {
        c.learning_rate = x;
    }
    if let Some(x) = spec.beta_1 {
        c.beta_1 = x;
    }
    if let Some(x) = spec.beta_2 {
        c.beta_2 = x;
    }
    if let Some(x) = spec.epsilon {
        c.epsilon = x;
    }
    if let Some(x) = spec.weight_decay_rate {
        c.weight_decay_rate = x;
    }
    if let Some(x) = &spec.exclude_from_weight_decay {
        c.exclude_from_weight_decay = x.clone();
    }
    if let Some(x) = spec.schedule {
        c.schedule = x;
    }
    if let Some(x) = spec.non_finite {
        c.non_finite = x;
    }
    Ok(c)
}

/// Builds the optimizer a spec describes, validating every value.
pub fn build(spec: &OptimizerSpec) -> Result<Box<dyn Optimizer>, OptimError> {
    let kind = spec.kind.ok_or_else(|| OptimError::InvalidHyperparameter {
        name: "kind",
        value: "missing".into(),
        valid: "one of lamb, adam, adamw, lars, sgd".into(),
    })?;
    Ok(match kind {
        OptimizerKind::Lamb => Box::new(Lamb::new(lamb_config(spec)?)?),
        OptimizerKind::Adam | OptimizerKind::Adamw => Box::new(Adam::new(adam_config(spec)?)?),
        OptimizerKind::Lars => Box::new(Lars::new(lars_config(spec)?)?),
        OptimizerKind::Sgd => Box::new(Sgd::new(sgd_config(spec)?)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamMut;

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
        assert!(e.contains("momentum"), "{e}");
        assert!(build(&OptimizerSpec::default()).is_err());
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
