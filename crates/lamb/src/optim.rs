//! The command's side of `lamb_optim`'s optimizer descriptions: its names for the library's
//! hyperparameters (`--lr`, `--beta1`, ... and `--hyper KEY=VALUE` for the rest), the spec a
//! run's settings describe, and the effective values (the preset's defaults where the user gave
//! none) recorded in the run directory. Knows nothing of runs or config files.

use anyhow::{anyhow, bail, Result};
use lamb_optim::{Key, NonFinitePolicy, Optimizer, OptimizerKind, OptimizerSpec, Setting, Value};
use serde::{Deserialize, Serialize};

/// The command's dedicated flags (and config-file keys) for library hyperparameters. Every
/// other hyperparameter of an optimizer's description is given with `--hyper KEY=VALUE`.
pub const FLAGS: [(&str, Key); 6] = [
    ("lr", Key::LearningRate),
    ("beta1", Key::Beta1),
    ("beta2", Key::Beta2),
    ("epsilon", Key::Epsilon),
    ("weight-decay", Key::WeightDecayRate),
    ("momentum", Key::Momentum),
];

/// The command's flag for `key`, if it has a dedicated one.
pub fn flag_of(key: Key) -> Option<&'static str> {
    FLAGS.iter().find(|(_, k)| *k == key).map(|(f, _)| *f)
}

/// Hyperparameters as the user gave them (`None`: the preset's default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Given {
    /// Learning rate.
    pub lr: Option<f64>,
    /// beta_1.
    pub beta1: Option<f64>,
    /// beta_2.
    pub beta2: Option<f64>,
    /// Epsilon.
    pub epsilon: Option<f64>,
    /// Weight decay rate.
    pub weight_decay: Option<f64>,
    /// Momentum (LARS, SGD).
    pub momentum: Option<f64>,
    /// Other hyperparameters of the optimizer's description (`--hyper KEY=VALUE`), as given.
    pub extra: Vec<(String, String)>,
}

impl Given {
    /// The values of the dedicated flags, in [`FLAGS`] order.
    fn flag_values(&self) -> [Option<f64>; 6] {
        [
            self.lr,
            self.beta1,
            self.beta2,
            self.epsilon,
            self.weight_decay,
            self.momentum,
        ]
    }
}

/// Optimizer hyperparameters after the preset's defaults are applied, for the dedicated flags.
/// `None` means "does not apply to this optimizer".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay (Adam family, LAMB).
    pub beta1: Option<f64>,
    /// Second-moment decay (Adam family, LAMB).
    pub beta2: Option<f64>,
    /// Denominator epsilon (LAMB, Adam family, LARS).
    pub epsilon: Option<f64>,
    /// Weight decay rate: decoupled for LAMB (added to the direction before the trust ratio)
    /// and AdamW (`w *= 1 - lr*wd`); L2 on the gradient for Adam, SGD and LARS (before the
    /// trust ratio).
    pub weight_decay: f64,
    /// Momentum (LARS, SGD).
    pub momentum: Option<f64>,
}

/// An f32 hyperparameter as the f64 with the same shortest decimal form (1e-3, not
/// 0.0010000000474974513), so that recorded values read back as the same f32.
fn widen(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}

fn narrow(name: &str, x: f64) -> Result<f32> {
    let y = x as f32;
    if x.is_finite() && !y.is_finite() {
        bail!("`{name}` = {x}: too large for f32 (the optimizers compute in f32)");
    }
    Ok(y)
}

/// Why a key may not be given with `--hyper`: the flag or setting that gives it instead.
fn not_by_hyper(key: Key) -> Option<String> {
    match key {
        Key::Schedule => Some("--schedule, --warmup-epochs and --decay-power".into()),
        Key::NonFinite => Some(
            "nothing: a run always stops at a non-finite gradient or update (non_finite = error)"
                .into(),
        ),
        k => flag_of(k).map(|f| format!("--{f}")),
    }
}

/// Checks the `--hyper` keys without an optimizer: each must name a hyperparameter of some
/// description and not one the command sets another way. Returns the normalised keys.
pub fn normalise_extra(extra: &[(String, String)]) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in extra {
        let key = Key::from_name(k).ok_or_else(|| {
            let names: Vec<&str> = Key::ALL
                .into_iter()
                .filter(|k| not_by_hyper(*k).is_none())
                .map(Key::name)
                .collect();
            anyhow!(
                "`hyper` key `{k}`: no optimizer has it; valid: {}",
                names.join(", ")
            )
        })?;
        if let Some(instead) = not_by_hyper(key) {
            bail!("`hyper` key `{k}`: set it with {instead}");
        }
        match out.iter_mut().find(|(n, _)| n == key.name()) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((key.name().to_string(), v.clone())),
        }
    }
    Ok(out)
}

/// The `lamb_optim` spec for `kind`, `preset` and the given values. A value that does not fit
/// f32, a key that does not apply to `kind` or a misspelt one is an error naming it.
pub fn spec(kind: OptimizerKind, preset: Option<&str>, g: &Given) -> Result<OptimizerSpec> {
    let mut s = OptimizerSpec {
        preset: preset.map(str::to_string),
        non_finite: Some(NonFinitePolicy::Error),
        ..OptimizerSpec::new(kind)
    };
    for ((flag, key), v) in FLAGS.iter().zip(g.flag_values()) {
        if let Some(x) = v {
            s.set(*key, Value::Number(Some(narrow(flag, x)?)))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    for (k, v) in normalise_extra(&g.extra)? {
        s.set_by_name(&k, &v)
            .map_err(|e| anyhow!("`--hyper {k}={v}`: {e}"))?;
    }
    Ok(s)
}

/// The message of a library error, naming the command's flag where the key has one
/// (`beta1` for `beta_1`).
fn with_flag_names(e: lamb_optim::OptimError) -> anyhow::Error {
    if let lamb_optim::OptimError::InvalidHyperparameter { name, value, valid } = &e {
        if let Some(flag) = Key::from_name(name).and_then(flag_of) {
            return anyhow!("`{flag}` ({name}) = {value}: {valid}");
        }
    }
    anyhow!("{e}")
}

/// Every effective hyperparameter of `kind` with `preset` and the given values, validated by
/// building the optimizer once.
pub fn effective_settings(
    kind: OptimizerKind,
    preset: Option<&str>,
    g: &Given,
) -> Result<Vec<Setting>> {
    lamb_optim::effective(&spec(kind, preset, g)?).map_err(with_flag_names)
}

/// The effective values of the dedicated flags of `kind` with `preset` and the given values.
pub fn effective(kind: OptimizerKind, preset: Option<&str>, g: &Given) -> Result<Hyper> {
    let settings = effective_settings(kind, preset, g)?;
    let get = |key: Key| {
        settings
            .iter()
            .find(|s| s.key == key)
            .and_then(|s| s.value.number())
            .map(widen)
    };
    Ok(Hyper {
        lr: get(Key::LearningRate).unwrap_or(f64::NAN),
        beta1: get(Key::Beta1),
        beta2: get(Key::Beta2),
        epsilon: get(Key::Epsilon),
        weight_decay: get(Key::WeightDecayRate).unwrap_or(0.0),
        momentum: get(Key::Momentum),
    })
}

/// The values a resolved configuration gives (every dedicated flag, plus the extras).
pub fn given_of(h: &Hyper, extra: &[(String, String)]) -> Given {
    Given {
        lr: Some(h.lr),
        beta1: h.beta1,
        beta2: h.beta2,
        epsilon: h.epsilon,
        weight_decay: Some(h.weight_decay),
        momentum: h.momentum,
        extra: extra.to_vec(),
    }
}

/// Builds the optimizer of a resolved configuration with `schedule`.
pub fn build(
    kind: OptimizerKind,
    preset: Option<&str>,
    g: &Given,
    schedule: lamb_optim::Schedule,
) -> Result<Box<dyn Optimizer>> {
    let mut s = spec(kind, preset, g)?;
    s.schedule = Some(schedule);
    lamb_optim::build(&s).map_err(with_flag_names)
}

/// One line for reports: the optimizer, its preset and every effective hyperparameter by the
/// description's names (`lamb (timm): learning_rate 0.001, beta_1 0.9, ...`).
pub fn settings_line(kind: OptimizerKind, preset: Option<&str>, g: &Given) -> String {
    match effective_settings(kind, preset, g) {
        Ok(s) => lamb_optim::settings_line(kind, preset, &s),
        Err(e) => format!("{kind}: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build0(kind: OptimizerKind, preset: Option<&str>, h: &Hyper) -> Box<dyn Optimizer> {
        build(
            kind,
            preset,
            &given_of(h, &[]),
            lamb_optim::Schedule::Constant,
        )
        .unwrap()
    }

    #[test]
    fn classic_defaults() {
        let l = effective(OptimizerKind::Lamb, None, &Given::default()).unwrap();
        assert_eq!(
            (l.lr, l.beta1, l.beta2, l.epsilon, l.weight_decay),
            (1e-3, Some(0.9), Some(0.999), Some(1e-6), 0.0)
        );
        let a = effective(OptimizerKind::Adam, None, &Given::default()).unwrap();
        assert_eq!(a.epsilon, Some(1e-7));
        let t = effective(OptimizerKind::Lamb, Some("timm"), &Given::default()).unwrap();
        assert_eq!(t.weight_decay, 0.01);
        assert_eq!(build0(OptimizerKind::Adam, None, &a).name(), "adam");
        for kind in [
            OptimizerKind::Adamw,
            OptimizerKind::Lars,
            OptimizerKind::Sgd,
        ] {
            let h = effective(kind, None, &Given::default()).unwrap();
            assert_eq!(build0(kind, None, &h).name(), kind.as_str());
        }
        let sgd = effective(OptimizerKind::Sgd, None, &Given::default()).unwrap();
        assert_eq!((sgd.beta1, sgd.epsilon), (None, None));
        // Values that do not apply to an optimizer are refused.
        assert!(effective(
            OptimizerKind::Sgd,
            None,
            &Given {
                beta1: Some(0.9),
                ..Default::default()
            }
        )
        .is_err());
        assert!(effective(
            OptimizerKind::Lamb,
            None,
            &Given {
                momentum: Some(0.9),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn invalid_values_are_errors_naming_them() {
        let e = effective(
            OptimizerKind::Lamb,
            None,
            &Given {
                beta1: Some(1.5),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("`beta1` (beta_1)"), "{e}");
        let e = effective(OptimizerKind::Lamb, Some("nonsense"), &Given::default()).unwrap_err();
        assert!(e.to_string().contains("preset"), "{e}");
        let e = effective(
            OptimizerKind::Lamb,
            None,
            &Given {
                lr: Some(1e300),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("lr"), "{e}");
    }

    #[test]
    fn other_hyperparameters_come_from_the_description() {
        let extra = |pairs: &[(&str, &str)]| Given {
            extra: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let g = extra(&[("nesterov", "true"), ("trust-coefficient", "0.02")]);
        let s = spec(
            OptimizerKind::Lars,
            None,
            &Given {
                momentum: Some(0.9),
                ..g
            },
        )
        .unwrap();
        assert_eq!((s.nesterov, s.trust_coefficient), (Some(true), Some(0.02)));
        let line = settings_line(
            OptimizerKind::Lamb,
            Some("timm"),
            &extra(&[("exclude_from_weight_decay", "bias,LayerNorm")]),
        );
        assert!(
            line.starts_with("lamb (timm): learning_rate 0.001")
                && line.contains("max_grad_norm 1")
                && line.contains("exclude_from_weight_decay [bias, LayerNorm]"),
            "{line}"
        );
        for (pairs, needle) in [
            (&[("nesterov", "true")][..], "does not apply to lamb"),
            (&[("trust_clipp", "true")][..], "trust_clipp"),
            (&[("learning_rate", "0.1")][..], "--lr"),
            (&[("schedule", "{}")][..], "--schedule"),
            (&[("trust_clip", "yes")][..], "true or false"),
        ] {
            let e = effective(OptimizerKind::Lamb, None, &extra(pairs))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{pairs:?}: {e}");
        }
    }
}
