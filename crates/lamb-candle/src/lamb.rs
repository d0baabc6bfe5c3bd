//! LAMB on candle tensors: every [`LambConfig`] of `lamb-optim` (its presets, exclusions,
//! clamps, clipping, schedules), stepped with candle tensor operations on the variables'
//! device.

use crate::engine::{norm, where_or_one, Engine, Pending, Stats};
use crate::error::{optim, Result};
use crate::named::{build_params, positional_names, varmap_vars};
use candle_core::backprop::GradStore;
use candle_core::Var;
use candle_nn::VarMap;
use lamb_optim::scalars::{bias_correction, complement, scalar};
use lamb_optim::{BiasCorrection, Exclusions, LambConfig, StepOutcome, TensorTelemetry};
use std::path::Path;

/// The LAMB optimizer for candle variables. The formula, presets and defaults are
/// `lamb-optim`'s ([`lamb_optim::Lamb`]); this type evaluates them with candle tensor
/// operations on each variable's device, so it steps on the CPU, CUDA or Metal alike.
///
/// Build it from a [`VarMap`] ([`Lamb::from_varmap`]: the names exclusion patterns search
/// and saved state uses), from named variables ([`Lamb::from_named`]), or through
/// [`candle_nn::Optimizer::new`] (names `param.0`, `param.1`, ... in the order given).
#[derive(Debug)]
pub struct Lamb {
    cfg: LambConfig,
    engine: Engine,
}

impl Lamb {
    /// LAMB over named variables, validating `cfg` exactly as `lamb_optim::Lamb::new` does.
    pub fn from_named(vars: Vec<(String, Var)>, cfg: LambConfig) -> Result<Self> {
        lamb_optim::Lamb::new(cfg.clone()).map_err(optim)?;
        let excl = Exclusions::new(
            &cfg.exclude_from_weight_decay,
            &cfg.exclude_from_layer_adaptation,
        )
        .map_err(optim)?;
        let params = build_params(
            vars,
            &["m", "v"],
            &excl,
            cfg.layer_adaptation,
            cfg.weight_decay_rate,
        )?;
        Ok(Self {
            cfg,
            engine: Engine::new("lamb", &["m", "v"], params),
        })
    }

    /// LAMB over every variable of a [`VarMap`], named as the map names them (sorted).
    pub fn from_varmap(varmap: &VarMap, cfg: LambConfig) -> Result<Self> {
        Self::from_named(varmap_vars(varmap)?, cfg)
    }

    /// The configuration.
    pub fn config(&self) -> &LambConfig {
        &self.cfg
    }

    /// Steps applied so far.
    pub fn steps(&self) -> u64 {
        self.engine.step
    }

    /// Steps skipped under [`lamb_optim::NonFinitePolicy::SkipStep`].
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
    /// Nothing changes when it fails; see [`lamb_optim::NonFinitePolicy`] for non-finite
    /// values (checking costs one scalar read from the device per step; `Unchecked` none).
    pub fn step_grads(&mut self, grads: &GradStore) -> Result<StepOutcome> {
        let t = self.engine.step + 1;
        let cfg = &self.cfg;
        let lr = self.current_learning_rate();
        let f64s = cfg.f64_scalars;
        let items = self.engine.gather(grads)?;
        // Global gradient-norm clipping: g * 1/max(G/max_norm, 1), on the device.
        let gscale = match (cfg.max_grad_norm, items.first()) {
            (Some(max_norm), Some(first)) => {
                let mut sum = first.2.sqr()?.sum_all()?;
                for (_, _, g) in &items[1..] {
                    sum = (sum + g.sqr()?.sum_all()?)?;
                }
                let divisor = (sum.sqrt()? / max_norm as f64)?.maximum(1.0)?;
                Some(divisor.recip()?)
            }
            _ => None,
        };
        let (rc1, rc2) = match cfg.bias_correction {
            BiasCorrection::Moments => (
                1.0 / bias_correction(cfg.beta_1, t, f64s),
                1.0 / bias_correction(cfg.beta_2, t, f64s),
            ),
            _ => (1.0, 1.0),
        };
        // Rounded to f32 as lamb-optim rounds them.
        let (rc1, rc2) = (rc1 as f32 as f64, rc2 as f32 as f64);
        let a1 = if cfg.grad_averaging {
            complement(cfg.beta_1, f64s)
        } else {
            1.0
        } as f64;
        let a2 = complement(cfg.beta_2, f64s) as f64;
        let step_size = match cfg.bias_correction {
            BiasCorrection::StepSize => {
                let b1 = bias_correction(cfg.beta_1, t, f64s);
                let b2 = bias_correction(cfg.beta_2, t, f64s);
                scalar(lr, f64s) * b2.sqrt() / b1
            }
            _ => scalar(lr, f64s),
        };
        let mut pending = Vec::with_capacity(items.len());
        for (index, w, g) in items {
            let p = &self.engine.params[index];
            let g = match &gscale {
                Some(s) => g.broadcast_mul(s)?,
                None => g,
            };
            let (m, v) = (&p.slots[0], &p.slots[1]);
            let m2 = (m.affine(cfg.beta_1 as f64, 0.0)? + g.affine(a1, 0.0)?)?;
            let v2 = (v.affine(cfg.beta_2 as f64, 0.0)? + g.sqr()?.affine(a2, 0.0)?)?;
            let denom = v2
                .affine(rc2, cfg.epsilon_root as f64)?
                .sqrt()?
                .affine(1.0, cfg.epsilon as f64)?;
            let mut u = (m2.affine(rc1, 0.0)? / denom)?;
            if p.decay && cfg.weight_decay_rate != 0.0 {
                u = (u + w.affine(cfg.weight_decay_rate as f64, 0.0)?)?;
            }
            let mut wn = norm(&w)?;
            if let Some((lo, hi)) = cfg.weight_norm_clamp {
                wn = wn.clamp(lo, hi)?;
            }
            let un = norm(&u)?;
            let mut ratio = if p.adapt {
                let mut r = (&wn / &un)?;
                if let Some((lo, hi)) = cfg.trust_ratio_clamp {
                    r = r.clamp(lo, hi)?;
                }
                let usable = (wn.gt(0.0)? * un.gt(0.0)?)?;
                where_or_one(&usable, &r)?
            } else {
                wn.ones_like()?
            };
            if p.adapt && cfg.trust_clip {
                ratio = ratio.minimum(1.0)?;
            }
            let k = ratio.affine(step_size, 0.0)?;
            let weight = (&w - u.broadcast_mul(&k)?)?;
            pending.push(Pending {
                index,
                grad: g,
                weight,
                slots: vec![m2, v2],
                stats: Stats {
                    weight_norm: wn,
                    update_norm: un,
                    ratio,
                },
            });
        }
        self.engine.commit(cfg.non_finite, lr, pending)
    }

    /// Norms and trust ratio of every tensor stepped last (in step order), read from the
    /// device: what `lamb train` records per tensor.
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

    /// Saves the moments and counters as safetensors (`m/<name>`, `v/<name>`, `meta/step`,
    /// `meta/skipped`, `meta/optimizer`); with the variables saved beside it (e.g.
    /// `VarMap::save`), [`Lamb::load`] resumes the run exactly.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.engine.save(path.as_ref())
    }

    /// Loads a state [`Lamb::save`] wrote for variables of the same names and shapes; an
    /// error names what does not fit, and then nothing changes.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.engine.load(path.as_ref())
    }
}

impl candle_nn::Optimizer for Lamb {
    type Config = LambConfig;

    fn new(vars: Vec<Var>, config: LambConfig) -> Result<Self> {
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
