//! LARS on candle tensors: every [`LarsConfig`] of `lamb-optim` (timm and optax forms,
//! exclusions, LARC clipping, momentum, Nesterov, schedules) with candle tensor operations on
//! the variables' device.

use crate::engine::{norm, where_or_one, Engine, Pending, Stats};
use crate::error::{optim, Result};
use crate::named::{build_params, positional_names, varmap_vars};
use candle_core::backprop::GradStore;
use candle_core::Var;
use candle_nn::VarMap;
use lamb_optim::scalars::{complement, scalar};
use lamb_optim::{Exclusions, LarsConfig, LarsForm, NonFinitePolicy, StepOutcome, TensorTelemetry};
use std::path::Path;

/// The LARS optimizer for candle variables: `lamb-optim`'s [`lamb_optim::Lars`] (formula,
/// presets, defaults) evaluated with candle tensor operations on each variable's device.
/// Constructors as for [`Lamb`](crate::Lamb).
#[derive(Debug)]
pub struct Lars {
    cfg: LarsConfig,
    engine: Engine,
}

impl Lars {
    /// LARS over named variables, validating `cfg` exactly as `lamb_optim::Lars::new` does.
    pub fn from_named(vars: Vec<(String, Var)>, cfg: LarsConfig) -> Result<Self> {
        lamb_optim::Lars::new(cfg.clone()).map_err(optim)?;
        let excl = Exclusions::new(
            &cfg.exclude_from_weight_decay,
            &cfg.exclude_from_layer_adaptation,
        )
        .map_err(optim)?;
        let params = build_params(
            vars,
            &["momentum"],
            &excl,
            cfg.layer_adaptation,
            cfg.weight_decay_rate,
        )?;
        Ok(Self {
            cfg,
            engine: Engine::new("lars", &["momentum"], params),
        })
    }

    /// LARS over every variable of a [`VarMap`], named as the map names them (sorted).
    pub fn from_varmap(varmap: &VarMap, cfg: LarsConfig) -> Result<Self> {
        Self::from_named(varmap_vars(varmap)?, cfg)
    }

    /// The configuration.
    pub fn config(&self) -> &LarsConfig {
        &self.cfg
    }

    /// Steps applied so far.
    pub fn steps(&self) -> u64 {
        self.engine.step
    }

    /// Steps skipped under [`NonFinitePolicy::SkipStep`].
    pub fn skipped_steps(&self) -> u64 {
        self.engine.skipped
    }

    /// The learning rate the next step uses (base rate through the schedule).
    pub fn current_learning_rate(&self) -> f32 {
        self.cfg
            .schedule
            .learning_rate(self.cfg.learning_rate, self.engine.step + 1)
    }

    /// Parameter names in step order.
    pub fn names(&self) -> Vec<&str> {
        self.engine.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// One step from the gradients of `grads` (variables without a gradient are left alone).
    /// Nothing changes when it fails. As in `lamb-optim`, LARS always checks for non-finite
    /// values (`Unchecked` acts as `Error`): one scalar read from the device per step.
    pub fn step_grads(&mut self, grads: &GradStore) -> Result<StepOutcome> {
        let t = self.engine.step + 1;
        let cfg = &self.cfg;
        let lr = self.current_learning_rate();
        let optax = cfg.form == LarsForm::Optax;
        let mu = cfg.momentum as f64;
        let one_minus_damp = complement(cfg.dampening, cfg.f64_scalars) as f64;
        let lr64 = scalar(lr, cfg.f64_scalars);
        let items = self.engine.gather(grads)?;
        let mut pending = Vec::with_capacity(items.len());
        for (index, w, g) in items {
            let p = &self.engine.params[index];
            let wd = if p.decay { cfg.weight_decay_rate } else { 0.0 };
            let s = if wd != 0.0 {
                (&g + w.affine(wd as f64, 0.0)?)?
            } else {
                g.clone()
            };
            let wn = norm(&w)?;
            let (denom, gnorm) = if optax {
                let sn = norm(&s)?;
                (sn.clone(), sn)
            } else {
                let gn = norm(&g)?;
                let d = if wd != 0.0 {
                    (&gn + wn.affine(wd as f64, 0.0)?)?
                } else {
                    gn.clone()
                };
                (d, gn)
            };
            let ratio = if p.adapt {
                let r = (wn.affine(cfg.trust_coefficient as f64, 0.0)?
                    / denom.affine(1.0, cfg.epsilon as f64)?)?;
                let usable = (wn.gt(0.0)? * gnorm.gt(0.0)?)?;
                let r = where_or_one(&usable, &r)?;
                if cfg.trust_clip {
                    (r / lr64)?.minimum(1.0)?
                } else {
                    r
                }
            } else {
                wn.ones_like()?
            };
            let d = s.broadcast_mul(&ratio)?;
            let buf = &p.slots[0];
            let (new_buf, weight) = if optax {
                let u = d.affine(-(lr as f64), 0.0)?;
                let tr = (&u + buf.affine(mu, 0.0)?)?;
                let out = if cfg.nesterov {
                    (&u + tr.affine(mu, 0.0)?)?
                } else {
                    tr.clone()
                };
                (tr, (&w + out)?)
            } else if cfg.momentum == 0.0 {
                (buf.clone(), (&w - d.affine(lr as f64, 0.0)?)?)
            } else {
                let b = if t == 1 {
                    d.clone()
                } else {
                    (buf.affine(mu, 0.0)? + d.affine(one_minus_damp, 0.0)?)?
                };
                let out = if cfg.nesterov {
                    (&d + b.affine(mu, 0.0)?)?
                } else {
                    b.clone()
                };
                (b, (&w - out.affine(lr as f64, 0.0)?)?)
            };
            pending.push(Pending {
                index,
                grad: g,
                weight,
                slots: vec![new_buf],
                stats: Stats {
                    weight_norm: wn,
                    update_norm: denom,
                    ratio,
                },
            });
        }
        let policy = match cfg.non_finite {
            NonFinitePolicy::Unchecked => NonFinitePolicy::Error,
            p => p,
        };
        self.engine.commit(policy, lr, pending)
    }

    /// Norms and trust ratio of every tensor stepped last (in step order), read from the
    /// device.
    pub fn telemetry(&self) -> Result<Vec<TensorTelemetry>> {
        self.engine.telemetry()
    }

    /// `(name, trust ratio)` of every tensor stepped last.
    pub fn trust_ratios(&self) -> Result<Vec<(String, f32)>> {
        Ok(self
            .telemetry()?
            .into_iter()
            .map(|t| (t.name, t.trust_ratio))
            .collect())
    }

    /// Saves the momentum buffers and counters as safetensors (`momentum/<name>`,
    /// `meta/step`, `meta/skipped`, `meta/optimizer`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.engine.save(path.as_ref())
    }

    /// Loads a state [`Lars::save`] wrote; an error names what does not fit, and then nothing
    /// changes.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.engine.load(path.as_ref())
    }
}

impl candle_nn::Optimizer for Lars {
    type Config = LarsConfig;

    fn new(vars: Vec<Var>, config: LarsConfig) -> Result<Self> {
        Self::from_named(positional_names(vars), config)
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_grads(grads).map(|_| ())
    }

    fn learning_rate(&self) -> f64 {
        self.current_learning_rate() as f64
    }

    /// Sets the base learning rate (the schedule still applies to it).
    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.learning_rate = lr as f32;
    }
}
