//! SGD with momentum and Nesterov, PyTorch semantics (verified against
//! `torch_adam/c_sgd_*`):
//!
//! ```text
//! d = g + wd*w ;  buf = d at the first step, else momentum*buf + (1-dampening)*d
//! d = d + momentum*buf if nesterov else buf ;  w -= lr*d
//! ```
//! It runs on the LARS engine with no tensor adapted.

use crate::common::{Core, Family};
use crate::describe::{configure, settings_of, Field, Hyperparameter, Key, Preset};
use crate::lars::{Lars, LarsConfig, LarsForm};
use crate::patterns::LayerAdaptation;
use crate::validate::Range;
use crate::{
    Description, MemoryPass, NonFinitePolicy, OptimError, OptimizerKind, OptimizerSpec, ParamMut,
    Schedule,
};
use serde::{Deserialize, Serialize};

/// SGD hyperparameters (`torch.optim.SGD` names in tensorflow-addons spelling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SgdConfig {
    /// Base learning rate. Default 1e-2.
    pub learning_rate: f32,
    /// Learning-rate schedule. Default constant.
    pub schedule: Schedule,
    /// Momentum in [0, 1). Default 0.
    pub momentum: f32,
    /// Dampening in [0, 1]. Default 0.
    pub dampening: f32,
    /// Nesterov momentum (needs momentum > 0). Default false.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient. Default 0.
    pub weight_decay_rate: f32,
    /// Regexes of tensors not decayed.
    pub exclude_from_weight_decay: Vec<String>,
    /// What a non-finite gradient or update does. Default: error.
    pub non_finite: NonFinitePolicy,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            learning_rate: 1e-2,
            schedule: Schedule::Constant,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay_rate: 0.0,
            exclude_from_weight_decay: Vec::new(),
            non_finite: NonFinitePolicy::Error,
        }
    }
}

/// Stochastic gradient descent with optional momentum.
#[derive(Debug, Clone)]
pub struct Sgd {
    inner: Lars,
    cfg: SgdConfig,
}

impl Sgd {
    /// Validates every hyperparameter.
    pub fn new(cfg: SgdConfig) -> Result<Self, OptimError> {
        let lars = LarsConfig {
            learning_rate: cfg.learning_rate,
            schedule: cfg.schedule,
            momentum: cfg.momentum,
            dampening: cfg.dampening,
            nesterov: cfg.nesterov,
            weight_decay_rate: cfg.weight_decay_rate,
            exclude_from_weight_decay: cfg.exclude_from_weight_decay.clone(),
            layer_adaptation: LayerAdaptation::Never,
            form: LarsForm::Timm,
            non_finite: cfg.non_finite,
            ..LarsConfig::default()
        };
        Ok(Self {
            inner: Lars::new(lars)?,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl Family for Sgd {
    type Plan = <Lars as Family>::Plan;

    fn label(&self) -> &'static str {
        "sgd"
    }

    fn core(&self) -> &Core<Self::Plan> {
        self.inner.core()
    }

    fn core_mut(&mut self) -> &mut Core<Self::Plan> {
        self.inner.core_mut()
    }

    fn schedule(&self) -> (f32, &Schedule) {
        self.inner.schedule()
    }

    fn non_finite(&self) -> NonFinitePolicy {
        self.inner.non_finite()
    }

    fn try_step(&mut self, params: &mut [ParamMut<'_>], t: u64) -> Result<(), OptimError> {
        self.inner.attempt(params, t)
    }

    fn memory_passes(&self) -> Vec<MemoryPass> {
        Family::memory_passes(&self.inner)
    }
}

/// SGD's description: hyperparameters, presets and how a spec becomes an [`SgdConfig`].
pub(crate) static DESCRIPTION: Description = Description {
    kind: OptimizerKind::Sgd,
    name: "sgd",
    summary: "SGD with optional (Nesterov) momentum and L2 weight decay, PyTorch semantics",
    trust_ratio: false,
    hyperparameters: &[
        Hyperparameter {
            key: Key::LearningRate,
            range: Some(Range::NonNegative),
            doc: "Learning rate.",
        },
        Hyperparameter {
            key: Key::Momentum,
            range: Some(Range::Fraction),
            doc: "Momentum.",
        },
        Hyperparameter {
            key: Key::Dampening,
            range: Some(Range::UnitInterval),
            doc: "Dampening of the momentum buffer.",
        },
        Hyperparameter {
            key: Key::Nesterov,
            range: None,
            doc: "Nesterov momentum (needs momentum > 0).",
        },
        Hyperparameter {
            key: Key::WeightDecayRate,
            range: Some(Range::NonNegative),
            doc: "L2 weight decay added to the gradient (d = g + wd*w).",
        },
        Hyperparameter {
            key: Key::ExcludeFromWeightDecay,
            range: None,
            doc: "Regexes searched in tensor names; matching tensors are not decayed.",
        },
        Hyperparameter {
            key: Key::Schedule,
            range: None,
            doc: "Learning-rate schedule.",
        },
        Hyperparameter {
            key: Key::NonFinite,
            range: None,
            doc: "What a non-finite gradient or update does: error or skip_step (unchecked \
                  checks as error).",
        },
    ],
    presets: &[Preset {
        name: "pytorch",
        aliases: &["torch"],
        reference: "torch.optim.SGD",
        verified: "golden files torch_adam/c_sgd_*",
    }],
    build: |spec| Ok(Box::new(Sgd::new(sgd_config(spec)?)?)),
    effective: |spec| Ok(settings_of(&DESCRIPTION, &mut sgd_config(spec)?, fields)),
    config: |spec| Ok(serde_json::to_value(sgd_config(spec)?).unwrap_or_default()),
};

/// Which [`SgdConfig`] field each of SGD's hyperparameters is.
fn fields(c: &mut SgdConfig) -> Vec<(Key, Field<'_>)> {
    vec![
        (Key::LearningRate, Field::Number(&mut c.learning_rate)),
        (Key::Momentum, Field::Number(&mut c.momentum)),
        (Key::Dampening, Field::Number(&mut c.dampening)),
        (Key::Nesterov, Field::Switch(&mut c.nesterov)),
        (
            Key::WeightDecayRate,
            Field::Number(&mut c.weight_decay_rate),
        ),
        (
            Key::ExcludeFromWeightDecay,
            Field::Patterns(&mut c.exclude_from_weight_decay),
        ),
        (Key::Schedule, Field::Schedule(&mut c.schedule)),
        (Key::NonFinite, Field::NonFinite(&mut c.non_finite)),
    ]
}

/// The SGD configuration a spec describes.
pub fn sgd_config(spec: &OptimizerSpec) -> Result<SgdConfig, OptimError> {
    configure(spec, &DESCRIPTION, |_| SgdConfig::default(), fields)
}
