//! One description of each optimizer: its name, its hyperparameters (defaults, valid ranges,
//! docs), the reference implementations it follows as presets and the rules each preset
//! changes. [`build`](crate::build), [`effective`], the `lamb` command's flags and config files,
//! its sweep and benchmark, and the framework adapters all read it.
//!
//! Plain data and functions, no dependency on any engine or command:
//!
//! ```
//! use lamb_optim::{OptimizerKind, Key};
//! let lars = OptimizerKind::Lars.description();
//! assert!(lars.applies(Key::TrustCoefficient) && !lars.applies(Key::Beta1));
//! assert_eq!(lars.preset("OPTAX").unwrap().name, "optax");
//! for kind in OptimizerKind::ALL {
//!     let d = kind.description();
//!     println!("{}: {} presets, {} hyperparameters", d.name, d.presets.len(), d.hyperparameters.len());
//! }
//! ```
//!
//! Adding a preset is one [`Preset`] entry in the optimizer's module plus the configuration it
//! stands for (for LAMB: its [`LambPreset`](crate::LambPreset) variant and arm of
//! [`LambConfig::preset`](crate::LambConfig::preset)). Adding an optimizer is one module (its
//! configuration, arithmetic, `Family` implementation, [`Description`] and field binding) plus
//! the [`OptimizerKind`] variant with its entry in [`OptimizerKind::ALL`] and its arm in
//! [`OptimizerKind::description`]. Flags, config keys, reports, the sweep's checks and the
//! benchmark list of the `lamb` command follow from the description.

use crate::validate::Range;
use crate::{NonFinitePolicy, OptimError, Optimizer, OptimizerSpec, Schedule, StepMemory};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The optimizer kinds of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl OptimizerKind {
    /// Every kind, in the order tables list them.
    pub const ALL: &'static [OptimizerKind] = &[
        OptimizerKind::Lamb,
        OptimizerKind::Adam,
        OptimizerKind::Adamw,
        OptimizerKind::Lars,
        OptimizerKind::Sgd,
    ];

    /// The description of this optimizer.
    pub fn description(self) -> &'static Description {
        match self {
            OptimizerKind::Lamb => &crate::lamb::DESCRIPTION,
            OptimizerKind::Adam => &crate::adam::DESCRIPTION,
            OptimizerKind::Adamw => &crate::adam::DESCRIPTION_ADAMW,
            OptimizerKind::Lars => &crate::lars::DESCRIPTION,
            OptimizerKind::Sgd => &crate::sgd::DESCRIPTION,
        }
    }

    /// The name used in files, flags and messages (`lamb`, `adamw`, ...).
    pub fn as_str(self) -> &'static str {
        self.description().name
    }

    /// Whether the optimizer scales updates by a per-tensor trust ratio (worth plotting).
    pub fn has_trust_ratio(self) -> bool {
        self.description().trust_ratio
    }

    /// The names of every kind, in [`OptimizerKind::ALL`] order.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|k| k.as_str()).collect()
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OptimizerKind {
    type Err = OptimError;
    /// `lamb`, `adam`, `adamw`, `lars`, `sgd` (any case).
    fn from_str(s: &str) -> Result<Self, OptimError> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| OptimError::InvalidHyperparameter {
                name: "optimizer",
                value: s.to_string(),
                valid: format!("one of {}", Self::names().join(", ")),
            })
    }
}

/// A hyperparameter an [`OptimizerSpec`] may set, by its tensorflow-addons spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// `learning_rate`.
    LearningRate,
    /// `beta_1`.
    Beta1,
    /// `beta_2`.
    Beta2,
    /// `epsilon`.
    Epsilon,
    /// `weight_decay_rate`.
    WeightDecayRate,
    /// `exclude_from_weight_decay`.
    ExcludeFromWeightDecay,
    /// `exclude_from_layer_adaptation`.
    ExcludeFromLayerAdaptation,
    /// `max_grad_norm`.
    MaxGradNorm,
    /// `momentum`.
    Momentum,
    /// `nesterov`.
    Nesterov,
    /// `dampening`.
    Dampening,
    /// `trust_coefficient`.
    TrustCoefficient,
    /// `trust_clip`.
    TrustClip,
    /// `schedule`.
    Schedule,
    /// `non_finite`.
    NonFinite,
    /// `step_memory`.
    StepMemory,
}

/// What kind of value a [`Key`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A number (f32).
    Number,
    /// `true` or `false`.
    Switch,
    /// A list of regular expressions.
    Patterns,
    /// A learning-rate [`Schedule`].
    Schedule,
    /// A [`NonFinitePolicy`].
    NonFinite,
    /// A [`StepMemory`].
    StepMemory,
}

impl Key {
    /// Every key, in [`OptimizerSpec`] field order.
    pub const ALL: [Key; 16] = [
        Key::LearningRate,
        Key::Beta1,
        Key::Beta2,
        Key::Epsilon,
        Key::WeightDecayRate,
        Key::ExcludeFromWeightDecay,
        Key::ExcludeFromLayerAdaptation,
        Key::MaxGradNorm,
        Key::Momentum,
        Key::Nesterov,
        Key::Dampening,
        Key::TrustCoefficient,
        Key::TrustClip,
        Key::Schedule,
        Key::NonFinite,
        Key::StepMemory,
    ];

    /// The tensorflow-addons spelling (`learning_rate`), also the [`OptimizerSpec`] field.
    pub fn name(self) -> &'static str {
        match self {
            Key::LearningRate => "learning_rate",
            Key::Beta1 => "beta_1",
            Key::Beta2 => "beta_2",
            Key::Epsilon => "epsilon",
            Key::WeightDecayRate => "weight_decay_rate",
            Key::ExcludeFromWeightDecay => "exclude_from_weight_decay",
            Key::ExcludeFromLayerAdaptation => "exclude_from_layer_adaptation",
            Key::MaxGradNorm => "max_grad_norm",
            Key::Momentum => "momentum",
            Key::Nesterov => "nesterov",
            Key::Dampening => "dampening",
            Key::TrustCoefficient => "trust_coefficient",
            Key::TrustClip => "trust_clip",
            Key::Schedule => "schedule",
            Key::NonFinite => "non_finite",
            Key::StepMemory => "step_memory",
        }
    }

    /// The key named `name` (`-` may stand for `_`, any case).
    pub fn from_name(name: &str) -> Option<Key> {
        let n = name.to_ascii_lowercase().replace('-', "_");
        Self::ALL.into_iter().find(|k| k.name() == n)
    }

    /// What kind of value the key takes.
    pub fn value_kind(self) -> ValueKind {
        match self {
            Key::Nesterov | Key::TrustClip => ValueKind::Switch,
            Key::ExcludeFromWeightDecay | Key::ExcludeFromLayerAdaptation => ValueKind::Patterns,
            Key::Schedule => ValueKind::Schedule,
            Key::NonFinite => ValueKind::NonFinite,
            Key::StepMemory => ValueKind::StepMemory,
            Key::LearningRate
            | Key::Beta1
            | Key::Beta2
            | Key::Epsilon
            | Key::WeightDecayRate
            | Key::MaxGradNorm
            | Key::Momentum
            | Key::Dampening
            | Key::TrustCoefficient => ValueKind::Number,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The value of one hyperparameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// A number (`None`: off, e.g. no gradient clipping).
    Number(Option<f32>),
    /// A switch.
    Switch(bool),
    /// Regular expressions.
    Patterns(Vec<String>),
    /// A schedule.
    Schedule(Schedule),
    /// A non-finite policy.
    NonFinite(NonFinitePolicy),
    /// A step-memory choice.
    StepMemory(StepMemory),
}

impl Value {
    /// The number, if this is a number that is set.
    pub fn number(&self) -> Option<f32> {
        match self {
            Value::Number(x) => *x,
            _ => None,
        }
    }

    /// Parses the text form of a value of `key` (`0.9`, `true`, `bias,LayerNorm`, `none`,
    /// `skip_step`, `lean`); schedules are given in JSON.
    pub fn parse(key: Key, text: &str) -> Result<Value, OptimError> {
        let t = text.trim();
        let bad = |valid: &str| OptimError::InvalidHyperparameter {
            name: key.name(),
            value: text.to_string(),
            valid: valid.to_string(),
        };
        let word = t.to_ascii_lowercase().replace('-', "_");
        Ok(match key.value_kind() {
            ValueKind::Number => Value::Number(Some(t.parse().map_err(|_| bad("a number"))?)),
            ValueKind::Switch => Value::Switch(t.parse().map_err(|_| bad("true or false"))?),
            ValueKind::Patterns => Value::Patterns(
                t.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            ValueKind::Schedule => Value::Schedule(
                serde_json::from_str(t).map_err(|e| bad(&format!("a schedule in JSON: {e}")))?,
            ),
            ValueKind::NonFinite => Value::NonFinite(match word.as_str() {
                "error" => NonFinitePolicy::Error,
                "skip_step" | "skip" => NonFinitePolicy::SkipStep,
                "unchecked" => NonFinitePolicy::Unchecked,
                _ => return Err(bad("error, skip_step or unchecked")),
            }),
            ValueKind::StepMemory => Value::StepMemory(match word.as_str() {
                "fast" => StepMemory::Fast,
                "lean" => StepMemory::Lean,
                _ => return Err(bad("fast or lean")),
            }),
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(Some(x)) => write!(f, "{x}"),
            Value::Number(None) => f.write_str("none"),
            Value::Switch(b) => write!(f, "{b}"),
            Value::Patterns(p) if p.is_empty() => f.write_str("[]"),
            Value::Patterns(p) => write!(f, "[{}]", p.join(", ")),
            Value::Schedule(s) => write!(f, "{}", serde_json::to_string(s).unwrap_or_default()),
            Value::NonFinite(p) => write!(f, "{p:?}"),
            Value::StepMemory(m) => write!(f, "{m:?}"),
        }
    }
}

/// One hyperparameter of one optimizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyperparameter {
    /// Which one.
    pub key: Key,
    /// Valid range of a number (`None`: any value of its kind).
    pub range: Option<Range>,
    /// What it does in this optimizer (the default comes from the preset: [`defaults`]).
    pub doc: &'static str,
}

/// A reference implementation an optimizer follows: its defaults and formula switches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// Name as flags and config files give it (`pytorch-lamb`).
    pub name: &'static str,
    /// Other accepted spellings (`cybertronai`).
    pub aliases: &'static [&'static str],
    /// The implementation and version followed.
    pub reference: &'static str,
    /// How it is verified (golden files, or the documented formula only).
    pub verified: &'static str,
}

/// Everything about one optimizer that is not its arithmetic.
#[derive(Debug)]
pub struct Description {
    /// Which optimizer.
    pub kind: OptimizerKind,
    /// Its name (`lamb`).
    pub name: &'static str,
    /// One line: what it is.
    pub summary: &'static str,
    /// Whether it scales each tensor's update by a trust ratio (telemetry worth plotting).
    pub trust_ratio: bool,
    /// The hyperparameters a spec may set, in the order tables list them.
    pub hyperparameters: &'static [Hyperparameter],
    /// The reference implementations; the first is the default.
    pub presets: &'static [Preset],
    /// Builds the optimizer of a spec of this kind.
    pub(crate) build: fn(&OptimizerSpec) -> Result<Box<dyn Optimizer>, OptimError>,
    /// The effective value of every hyperparameter of a spec of this kind.
    pub(crate) effective: fn(&OptimizerSpec) -> Result<Vec<Setting>, OptimError>,
    /// The full configuration (every formula switch) of a spec of this kind, as JSON.
    pub(crate) config: fn(&OptimizerSpec) -> Result<serde_json::Value, OptimError>,
}

impl Description {
    /// Whether a spec may set `key` for this optimizer.
    pub fn applies(&self, key: Key) -> bool {
        self.hyperparameter(key).is_some()
    }

    /// The hyperparameter `key`, if it applies.
    pub fn hyperparameter(&self, key: Key) -> Option<&'static Hyperparameter> {
        self.hyperparameters.iter().find(|h| h.key == key)
    }

    /// The keys a spec may set, comma-separated (for messages).
    pub fn key_list(&self) -> String {
        let names: Vec<&str> = self.hyperparameters.iter().map(|h| h.key.name()).collect();
        names.join(", ")
    }

    /// The preset named `name` (or one of its aliases; any case, `_` for `-`), or an error
    /// listing this optimizer's presets.
    pub fn preset(&self, name: &str) -> Result<&'static Preset, OptimError> {
        let n = name.to_ascii_lowercase().replace('_', "-");
        self.presets
            .iter()
            .find(|p| p.name == n || p.aliases.contains(&n.as_str()))
            .ok_or_else(|| OptimError::InvalidHyperparameter {
                name: "preset",
                value: name.to_string(),
                valid: format!("{}: one of {}", self.name, self.preset_list()),
            })
    }

    /// The preset a spec without one gets.
    pub fn default_preset(&self) -> &'static Preset {
        &self.presets[0]
    }

    /// The preset names, comma-separated (for messages and help).
    pub fn preset_list(&self) -> String {
        let names: Vec<&str> = self.presets.iter().map(|p| p.name).collect();
        names.join(", ")
    }

    /// The preset a spec names (its default when it names none).
    pub(crate) fn preset_of(&self, spec: &OptimizerSpec) -> Result<&'static Preset, OptimError> {
        match &spec.preset {
            Some(p) => self.preset(p),
            None => Ok(self.default_preset()),
        }
    }

    /// An error for the first key `spec` sets that does not apply to this optimizer.
    pub fn check_applicable(&self, spec: &OptimizerSpec) -> Result<(), OptimError> {
        match spec.given().find(|&k| !self.applies(k)) {
            Some(key) => Err(OptimError::InvalidHyperparameter {
                name: key.name(),
                value: spec.value(key).map(|v| v.to_string()).unwrap_or_default(),
                valid: format!(
                    "does not apply to {} (it takes {})",
                    self.name,
                    self.key_list()
                ),
            }),
            None => Ok(()),
        }
    }
}

/// The effective value of one hyperparameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    /// Which one.
    pub key: Key,
    /// Its value after the preset's defaults and the spec's overrides.
    pub value: Value,
}

/// The effective value of every hyperparameter of the optimizer a spec describes (the preset's
/// defaults where the spec sets none), in the description's order. Validates the spec as
/// [`crate::build`] does, so a spec that gives a list here builds.
pub fn effective(spec: &OptimizerSpec) -> Result<Vec<Setting>, OptimError> {
    let d = spec.description()?;
    (d.build)(spec)?;
    (d.effective)(spec)
}

/// The defaults of one preset of `kind` (`None`: the default preset).
pub fn defaults(kind: OptimizerKind, preset: Option<&str>) -> Result<Vec<Setting>, OptimError> {
    let spec = OptimizerSpec {
        preset: preset.map(str::to_string),
        ..OptimizerSpec::new(kind)
    };
    (kind.description().effective)(&spec)
}

/// What a preset of `kind` changes from the optimizer's default preset: every configuration
/// field (formula switches included) whose value differs, as `(field, default, preset's)`,
/// computed from the configurations themselves, in field-name order.
pub fn preset_changes(
    kind: OptimizerKind,
    preset: &str,
) -> Result<Vec<(String, String, String)>, OptimError> {
    let d = kind.description();
    let name = d.preset(preset)?.name;
    let of = |p: &str| {
        (d.config)(&OptimizerSpec {
            preset: Some(p.to_string()),
            ..OptimizerSpec::new(kind)
        })
    };
    let (base, this) = (of(d.default_preset().name)?, of(name)?);
    let mut out = Vec::new();
    if let (serde_json::Value::Object(b), serde_json::Value::Object(t)) = (base, this) {
        for (k, v) in t {
            let was = b.get(&k).cloned().unwrap_or(serde_json::Value::Null);
            if was != v {
                out.push((k, was.to_string(), v.to_string()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One line naming the optimizer, its preset and every effective number and switch, e.g.
/// `lamb (tfa): learning_rate 0.001, beta_1 0.9, ...` (pattern lists, the schedule and the
/// policies are left out unless set).
pub fn settings_line(kind: OptimizerKind, preset: Option<&str>, settings: &[Setting]) -> String {
    let shown: Vec<String> = settings
        .iter()
        .filter(|s| match &s.value {
            Value::Number(_) | Value::Switch(_) => true,
            Value::Patterns(p) => !p.is_empty(),
            _ => false,
        })
        .map(|s| format!("{} {}", s.key, s.value))
        .collect();
    let preset = preset.map(|p| format!(" ({p})")).unwrap_or_default();
    format!("{kind}{preset}: {}", shown.join(", "))
}

/// A mutable view of one configuration field bound to a [`Key`]: how an optimizer module
/// says which config field each of its hyperparameters is.
pub(crate) enum Field<'a> {
    Number(&'a mut f32),
    OptionalNumber(&'a mut Option<f32>),
    Switch(&'a mut bool),
    Patterns(&'a mut Vec<String>),
    Schedule(&'a mut Schedule),
    NonFinite(&'a mut NonFinitePolicy),
    StepMemory(&'a mut StepMemory),
}

impl Field<'_> {
    fn get(&self) -> Value {
        match self {
            Field::Number(x) => Value::Number(Some(**x)),
            Field::OptionalNumber(x) => Value::Number(**x),
            Field::Switch(x) => Value::Switch(**x),
            Field::Patterns(x) => Value::Patterns(x.to_vec()),
            Field::Schedule(x) => Value::Schedule(**x),
            Field::NonFinite(x) => Value::NonFinite(**x),
            Field::StepMemory(x) => Value::StepMemory(**x),
        }
    }

    fn set(&mut self, key: Key, v: Value) -> Result<(), OptimError> {
        match (self, v) {
            (Field::Number(x), Value::Number(Some(y))) => **x = y,
            (Field::OptionalNumber(x), Value::Number(y)) => **x = y,
            (Field::Switch(x), Value::Switch(y)) => **x = y,
            (Field::Patterns(x), Value::Patterns(y)) => **x = y,
            (Field::Schedule(x), Value::Schedule(y)) => **x = y,
            (Field::NonFinite(x), Value::NonFinite(y)) => **x = y,
            (Field::StepMemory(x), Value::StepMemory(y)) => **x = y,
            (_, v) => {
                return Err(OptimError::InvalidHyperparameter {
                    name: key.name(),
                    value: v.to_string(),
                    valid: format!("a value of kind {:?}", key.value_kind()),
                })
            }
        }
        Ok(())
    }
}

/// The configuration `spec` describes: `preset` (the config of the spec's preset, from the
/// optimizer module) with every key the spec sets written to the field `fields` binds it to.
/// A key that does not apply to the optimizer is an error naming it.
pub(crate) fn configure<C>(
    spec: &OptimizerSpec,
    d: &Description,
    preset: impl FnOnce(&Preset) -> C,
    fields: impl Fn(&mut C) -> Vec<(Key, Field<'_>)>,
) -> Result<C, OptimError> {
    let p = d.preset_of(spec)?;
    d.check_applicable(spec)?;
    let mut c = preset(p);
    for (key, mut field) in fields(&mut c) {
        if let Some(v) = spec.value(key) {
            field.set(key, v)?;
        }
    }
    Ok(c)
}

/// Checks every number of a configuration that has a range in the description (in binding
/// order): the one place the optimizers' constructors take their ranges from.
pub(crate) fn check_ranges<C>(
    d: &Description,
    c: &mut C,
    fields: impl Fn(&mut C) -> Vec<(Key, Field<'_>)>,
) -> Result<(), OptimError> {
    for (key, f) in fields(c) {
        let Some(range) = d.hyperparameter(key).and_then(|h| h.range) else {
            continue;
        };
        match f {
            Field::Number(x) | Field::OptionalNumber(Some(x)) => range.check(key.name(), *x)?,
            _ => {}
        }
    }
    Ok(())
}

/// The effective settings of a configuration, in the description's order.
pub(crate) fn settings_of<C>(
    d: &Description,
    c: &mut C,
    fields: impl Fn(&mut C) -> Vec<(Key, Field<'_>)>,
) -> Vec<Setting> {
    let bound = fields(c);
    d.hyperparameters
        .iter()
        .filter_map(|h| {
            bound
                .iter()
                .find(|(k, _)| *k == h.key)
                .map(|(k, f)| Setting {
                    key: *k,
                    value: f.get(),
                })
        })
        .collect()
}

impl OptimizerSpec {
    /// The value this spec gives `key` (`None`: the preset's).
    pub fn value(&self, key: Key) -> Option<Value> {
        let n = |x: Option<f32>| x.map(|x| Value::Number(Some(x)));
        match key {
            Key::LearningRate => n(self.learning_rate),
            Key::Beta1 => n(self.beta_1),
            Key::Beta2 => n(self.beta_2),
            Key::Epsilon => n(self.epsilon),
            Key::WeightDecayRate => n(self.weight_decay_rate),
            Key::ExcludeFromWeightDecay => {
                self.exclude_from_weight_decay.clone().map(Value::Patterns)
            }
            Key::ExcludeFromLayerAdaptation => self
                .exclude_from_layer_adaptation
                .clone()
                .map(Value::Patterns),
            Key::MaxGradNorm => n(self.max_grad_norm),
            Key::Momentum => n(self.momentum),
            Key::Nesterov => self.nesterov.map(Value::Switch),
            Key::Dampening => n(self.dampening),
            Key::TrustCoefficient => n(self.trust_coefficient),
            Key::TrustClip => self.trust_clip.map(Value::Switch),
            Key::Schedule => self.schedule.map(Value::Schedule),
            Key::NonFinite => self.non_finite.map(Value::NonFinite),
            Key::StepMemory => self.step_memory.map(Value::StepMemory),
        }
    }

    /// The keys this spec sets, in [`Key::ALL`] order.
    pub fn given(&self) -> impl Iterator<Item = Key> + '_ {
        Key::ALL.into_iter().filter(|&k| self.value(k).is_some())
    }

    /// Sets `key` (an error if the value is of another kind).
    pub fn set(&mut self, key: Key, value: Value) -> Result<(), OptimError> {
        let wrong = |v: &Value| OptimError::InvalidHyperparameter {
            name: key.name(),
            value: v.to_string(),
            valid: format!("a value of kind {:?}", key.value_kind()),
        };
        match (key, value) {
            (Key::MaxGradNorm, Value::Number(x)) => self.max_grad_norm = x,
            (Key::LearningRate, Value::Number(Some(x))) => self.learning_rate = Some(x),
            (Key::Beta1, Value::Number(Some(x))) => self.beta_1 = Some(x),
            (Key::Beta2, Value::Number(Some(x))) => self.beta_2 = Some(x),
            (Key::Epsilon, Value::Number(Some(x))) => self.epsilon = Some(x),
            (Key::WeightDecayRate, Value::Number(Some(x))) => self.weight_decay_rate = Some(x),
            (Key::Momentum, Value::Number(Some(x))) => self.momentum = Some(x),
            (Key::Dampening, Value::Number(Some(x))) => self.dampening = Some(x),
            (Key::TrustCoefficient, Value::Number(Some(x))) => self.trust_coefficient = Some(x),
            (Key::Nesterov, Value::Switch(b)) => self.nesterov = Some(b),
            (Key::TrustClip, Value::Switch(b)) => self.trust_clip = Some(b),
            (Key::ExcludeFromWeightDecay, Value::Patterns(p)) => {
                self.exclude_from_weight_decay = Some(p)
            }
            (Key::ExcludeFromLayerAdaptation, Value::Patterns(p)) => {
                self.exclude_from_layer_adaptation = Some(p)
            }
            (Key::Schedule, Value::Schedule(s)) => self.schedule = Some(s),
            (Key::NonFinite, Value::NonFinite(p)) => self.non_finite = Some(p),
            (Key::StepMemory, Value::StepMemory(m)) => self.step_memory = Some(m),
            (_, v) => return Err(wrong(&v)),
        }
        Ok(())
    }

    /// Sets the hyperparameter named `name` (tensorflow-addons spelling, `-` for `_` allowed)
    /// from its text form (see [`Value::parse`]). A name no optimizer knows, or one that does
    /// not apply to this spec's kind, is an error listing what is valid.
    pub fn set_by_name(&mut self, name: &str, text: &str) -> Result<(), OptimError> {
        let d = self.description()?;
        let key = Key::from_name(name).ok_or_else(|| OptimError::InvalidHyperparameter {
            name: "hyperparameter",
            value: name.to_string(),
            valid: format!("{} takes {}", d.name, d.key_list()),
        })?;
        if !d.applies(key) {
            return Err(OptimError::InvalidHyperparameter {
                name: key.name(),
                value: text.to_string(),
                valid: format!("does not apply to {} (it takes {})", d.name, d.key_list()),
            });
        }
        self.set(key, Value::parse(key, text)?)
    }

    /// The description of this spec's kind (an error if the kind is missing).
    pub fn description(&self) -> Result<&'static Description, OptimError> {
        self.kind
            .map(OptimizerKind::description)
            .ok_or_else(|| OptimError::InvalidHyperparameter {
                name: "kind",
                value: "missing".into(),
                valid: format!("one of {}", OptimizerKind::names().join(", ")),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;

    #[test]
    fn every_key_round_trips_its_name_and_spec_field() {
        for k in Key::ALL {
            assert_eq!(Key::from_name(k.name()), Some(k));
            assert_eq!(
                Key::from_name(&k.name().replace('_', "-").to_uppercase()),
                Some(k)
            );
            let v = match k.value_kind() {
                ValueKind::Number => Value::Number(Some(0.5)),
                ValueKind::Switch => Value::Switch(true),
                ValueKind::Patterns => Value::Patterns(vec!["bias".into()]),
                ValueKind::Schedule => Value::Schedule(Schedule::LinearWarmup { warmup_steps: 3 }),
                ValueKind::NonFinite => Value::NonFinite(NonFinitePolicy::SkipStep),
                ValueKind::StepMemory => Value::StepMemory(StepMemory::Lean),
            };
            let mut s = OptimizerSpec::default();
            s.set(k, v.clone()).unwrap();
            assert_eq!(s.value(k), Some(v), "{k}");
            assert!(
                s.clone().set(k, Value::Switch(false)).is_err()
                    || k.value_kind() == ValueKind::Switch
            );
            assert_eq!(s.given().collect::<Vec<_>>(), vec![k]);
        }
        assert_eq!(Key::from_name("learnin_rate"), None);
    }

    #[test]
    fn each_description_binds_exactly_its_hyperparameters() {
        for &kind in OptimizerKind::ALL {
            let d = kind.description();
            assert_eq!(d.kind, kind);
            assert_eq!(kind.as_str().parse::<OptimizerKind>().unwrap(), kind);
            for p in d.presets {
                let got = defaults(kind, Some(p.name)).unwrap();
                let keys: Vec<Key> = got.iter().map(|s| s.key).collect();
                let want: Vec<Key> = d.hyperparameters.iter().map(|h| h.key).collect();
                assert_eq!(keys, want, "{kind} {}", p.name);
                for a in p.aliases {
                    assert_eq!(d.preset(a).unwrap().name, p.name);
                }
                assert!(!p.reference.is_empty() && !p.verified.is_empty());
                let changes = preset_changes(kind, p.name).unwrap();
                assert_eq!(
                    changes.is_empty(),
                    p == d.default_preset(),
                    "{kind} {}",
                    p.name
                );
            }
            for h in d.hyperparameters {
                assert!(!h.doc.is_empty(), "{kind} {}", h.key);
                assert_eq!(
                    h.range.is_some(),
                    h.key.value_kind() == ValueKind::Number,
                    "{kind} {}: numbers have a range, other kinds none",
                    h.key
                );
            }
        }
    }

    /// The ranges the descriptions show are the ones the optimizers enforce: a value just
    /// outside is refused naming the key, one at the edge inside is accepted.
    #[test]
    fn described_ranges_are_enforced() {
        for &kind in OptimizerKind::ALL {
            let d = kind.description();
            for h in d.hyperparameters {
                let Some(range) = h.range else { continue };
                let (inside, outside): (&[f32], &[f32]) = match range {
                    Range::NonNegative => (&[0.0, 0.5], &[-1e-3, f32::NAN, f32::INFINITY]),
                    Range::Positive => (&[1e-7, 0.5], &[0.0, -1e-8, f32::NAN]),
                    Range::Fraction => (&[0.0, 0.5], &[1.0, -0.1]),
                    Range::UnitInterval => (&[0.0, 1.0], &[1.5, -0.1]),
                };
                let spec = |x: f32| {
                    let mut s = OptimizerSpec::new(kind);
                    s.set(h.key, Value::Number(Some(x))).unwrap();
                    if h.key == Key::Dampening || h.key == Key::Momentum {
                        s.momentum = Some(s.momentum.unwrap_or(0.5));
                    }
                    s
                };
                for &x in inside {
                    assert!(build(&spec(x)).is_ok(), "{kind} {} = {x}", h.key);
                }
                for &x in outside {
                    match build(&spec(x)) {
                        Err(OptimError::InvalidHyperparameter { name, valid, .. }) => {
                            assert_eq!(name, h.key.name(), "{kind} {x}");
                            assert_eq!(valid, range.text());
                        }
                        r => panic!("{kind} {} = {x}: {:?}", h.key, r.map(|o| o.name())),
                    }
                }
            }
        }
    }

    #[test]
    fn inapplicable_and_misspelt_keys_are_errors_naming_what_is_valid() {
        let mut s = OptimizerSpec::new(OptimizerKind::Adam);
        let e = s.set_by_name("momentum", "0.9").unwrap_err().to_string();
        assert!(
            e.contains("momentum") && e.contains("does not apply to adam"),
            "{e}"
        );
        let e = s.set_by_name("betta_1", "0.9").unwrap_err().to_string();
        assert!(e.contains("betta_1") && e.contains("beta_1"), "{e}");
        s.set_by_name("beta-2", "0.99").unwrap();
        assert_eq!(s.beta_2, Some(0.99));
        let e = s.set_by_name("beta_1", "zero").unwrap_err().to_string();
        assert!(e.contains("a number"), "{e}");
        let mut l = OptimizerSpec::new(OptimizerKind::Lamb);
        l.set_by_name("exclude_from_weight_decay", "bias, LayerNorm")
            .unwrap();
        assert_eq!(
            l.exclude_from_weight_decay,
            Some(vec!["bias".to_string(), "LayerNorm".to_string()])
        );
        l.set_by_name("step_memory", "lean").unwrap();
        l.set_by_name("trust_clip", "true").unwrap();
        let line = settings_line(OptimizerKind::Lamb, None, &effective(&l).unwrap());
        assert!(
            line.starts_with("lamb: learning_rate 0.001, beta_1 0.9")
                && line.contains("trust_clip true")
                && line.contains("exclude_from_weight_decay [bias, LayerNorm]"),
            "{line}"
        );
    }

    #[test]
    fn presets_resolve_by_name_or_alias_and_set_their_defaults() {
        let t = defaults(OptimizerKind::Lamb, Some("timm")).unwrap();
        let get = |s: &[Setting], k| s.iter().find(|s| s.key == k).unwrap().value.clone();
        assert_eq!(get(&t, Key::WeightDecayRate), Value::Number(Some(0.01)));
        assert_eq!(get(&t, Key::MaxGradNorm), Value::Number(Some(1.0)));
        let tfa = defaults(OptimizerKind::Lamb, None).unwrap();
        assert_eq!(get(&tfa, Key::MaxGradNorm), Value::Number(None));
        assert_eq!(get(&tfa, Key::Epsilon), Value::Number(Some(1e-6)));
        assert_eq!(
            OptimizerKind::Lamb
                .description()
                .preset("Tensorflow_Addons")
                .unwrap()
                .name,
            "tfa"
        );
        let e = defaults(OptimizerKind::Adamw, Some("keras"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("adamw: one of pytorch"), "{e}");
        let timm = preset_changes(OptimizerKind::Lamb, "timm").unwrap();
        let changed: Vec<&str> = timm.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            changed,
            [
                "f64_scalars",
                "layer_adaptation",
                "max_grad_norm",
                "weight_decay_rate"
            ],
            "{timm:?}"
        );
        let sgd = defaults(OptimizerKind::Sgd, None).unwrap();
        assert_eq!(get(&sgd, Key::LearningRate), Value::Number(Some(1e-2)));
    }
}
