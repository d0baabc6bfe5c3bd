//! Building the run's optimizer through `lamb_optim`'s spec, and reading back the effective
//! hyperparameters (the preset's defaults where the user gave none) to record them.

use anyhow::{anyhow, bail, Result};
use lamb_optim::{NonFinitePolicy, Optimizer, OptimizerSpec};

use crate::config::{Hyper, OptimizerKind, RunConfig};

/// Hyperparameters as the user gave them (`None`: the preset's default).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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

fn lib_kind(kind: OptimizerKind) -> lamb_optim::OptimizerKind {
    match kind {
        OptimizerKind::Lamb => lamb_optim::OptimizerKind::Lamb,
        OptimizerKind::Adam => lamb_optim::OptimizerKind::Adam,
        OptimizerKind::Adamw => lamb_optim::OptimizerKind::Adamw,
        OptimizerKind::Lars => lamb_optim::OptimizerKind::Lars,
        OptimizerKind::Sgd => lamb_optim::OptimizerKind::Sgd,
    }
}

/// The `lamb_optim` spec for `kind`, `preset` and the given values (non-finite values are
/// errors naming epoch, step and tensor).
pub fn spec(kind: OptimizerKind, preset: Option<&str>, g: &Given) -> Result<OptimizerSpec> {
    let f = |name: &str, v: Option<f64>| v.map(|x| narrow(name, x)).transpose();
    Ok(OptimizerSpec {
        kind: Some(lib_kind(kind)),
        preset: preset.map(str::to_string),
        learning_rate: f("lr", g.lr)?,
        beta_1: f("beta1", g.beta1)?,
        beta_2: f("beta2", g.beta2)?,
        epsilon: f("epsilon", g.epsilon)?,
        weight_decay_rate: f("weight-decay", g.weight_decay)?,
        momentum: f("momentum", g.momentum)?,
        non_finite: Some(NonFinitePolicy::Error),
        ..Default::default()
    })
}

/// The effective hyperparameters of `kind` with `preset` and the given values, validated by
/// building the optimizer once.
pub fn effective(kind: OptimizerKind, preset: Option<&str>, g: &Given) -> Result<Hyper> {
    let s = spec(kind, preset, g)?;
    lamb_optim::build(&s).map_err(|e| anyhow!("{e}"))?;
    let e = |x: lamb_optim::OptimError| anyhow!("{x}");
    Ok(match kind {
        OptimizerKind::Lamb => {
            let c = lamb_optim::lamb_config(&s).map_err(e)?;
            Hyper {
                lr: widen(c.learning_rate),
                beta1: Some(widen(c.beta_1)),
                beta2: Some(widen(c.beta_2)),
                epsilon: Some(widen(c.epsilon)),
                weight_decay: widen(c.weight_decay_rate),
                momentum: None,
            }
        }
        OptimizerKind::Adam | OptimizerKind::Adamw => {
            let c = lamb_optim::adam_config(&s).map_err(e)?;
            Hyper {
                lr: widen(c.learning_rate),
                beta1: Some(widen(c.beta_1)),
                beta2: Some(widen(c.beta_2)),
                epsilon: Some(widen(c.epsilon)),
                weight_decay: widen(c.weight_decay_rate),
                momentum: None,
            }
        }
        OptimizerKind::Lars => {
            let c = lamb_optim::lars_config(&s).map_err(e)?;
            Hyper {
                lr: widen(c.learning_rate),
                beta1: None,
                beta2: None,
                epsilon: Some(widen(c.epsilon)),
                weight_decay: widen(c.weight_decay_rate),
                momentum: Some(widen(c.momentum)),
            }
        }
        OptimizerKind::Sgd => {
            let c = lamb_optim::sgd_config(&s).map_err(e)?;
            Hyper {
                lr: widen(c.learning_rate),
                beta1: None,
                beta2: None,
                epsilon: None,
                weight_decay: widen(c.weight_decay_rate),
                momentum: Some(widen(c.momentum)),
            }
        }
    })
}

/// Builds the optimizer of a run with `train_len` training images (which, with the batch size
/// and epochs, turns the schedule's epochs into steps).
pub fn build_for_run(cfg: &RunConfig, train_len: usize) -> Result<Box<dyn Optimizer>> {
    let steps_per_epoch = train_len.div_ceil(cfg.batch_size).max(1);
    let schedule = cfg.schedule.in_steps(steps_per_epoch, cfg.epochs);
    build_scheduled(cfg.optimizer, cfg.preset.as_deref(), &cfg.hyper, schedule)
}

/// Builds the optimizer of a resolved configuration (constant learning rate).
#[cfg(test)]
pub fn build(kind: OptimizerKind, preset: Option<&str>, h: &Hyper) -> Result<Box<dyn Optimizer>> {
    build_scheduled(kind, preset, h, lamb_optim::Schedule::Constant)
}

fn build_scheduled(
    kind: OptimizerKind,
    preset: Option<&str>,
    h: &Hyper,
    schedule: lamb_optim::Schedule,
) -> Result<Box<dyn Optimizer>> {
    let g = Given {
        lr: Some(h.lr),
        beta1: h.beta1,
        beta2: h.beta2,
        epsilon: h.epsilon,
        weight_decay: Some(h.weight_decay),
        momentum: h.momentum,
    };
    let mut s = spec(kind, preset, &g)?;
    s.schedule = Some(schedule);
    lamb_optim::build(&s).map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let o = build(OptimizerKind::Adam, None, &a).unwrap();
        assert_eq!(o.name(), "adam");
        for kind in [
            OptimizerKind::Adamw,
            OptimizerKind::Lars,
            OptimizerKind::Sgd,
        ] {
            let h = effective(kind, None, &Given::default()).unwrap();
            assert_eq!(build(kind, None, &h).unwrap().name(), kind.as_str());
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
        assert!(e.to_string().contains("beta_1"), "{e}");
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
}
