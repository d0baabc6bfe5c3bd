//! LAMB on Burn tensors: every [`LambConfig`] of `lamb-optim` (its presets, exclusions,
//! clamps, clipping, schedules) as a per-parameter rule implementing Burn's
//! [`burn::optim::Optimizer`] ([`LambRule`]), and the module-level [`Lamb`] around Burn's
//! `ModuleOptimizer` that adds names, global clipping, the finiteness check, telemetry and
//! state files.

use crate::engine::{
    self, all_finite, classify, grouped, norm, report, Check, Engine, Sink, StepRecord,
};
use crate::error::Result;
use crate::names::{module_params, NamedParam};
use burn::module::Module;
use burn::optim::{
    GradientsParams, LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource,
};
use burn::tensor::{Device, Tensor};
use lamb_optim::scalars::{bias_correction, complement, scalar};
use lamb_optim::{BiasCorrection, Exclusions, LambConfig, StepOutcome, TensorTelemetry};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// LAMB's per-parameter state: the moments and the parameter's step counter.
#[derive(Clone, Debug)]
pub struct LambState<const D: usize> {
    /// Steps applied to this parameter (the `t` of the bias correction and the schedule).
    pub time: u64,
    /// First moment.
    pub m: Tensor<D>,
    /// Second moment.
    pub v: Tensor<D>,
}

impl<const D: usize> RecordState for LambState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_scalar(prefix, "time", burn_pack::Scalar::from(self.time));
        out.push_tensor(prefix, "m", self.m.clone().into_data());
        out.push_tensor(prefix, "v", self.v.clone().into_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let time = u64::try_from(src.take_scalar(prefix, "time")?).ok()?;
        let m = Tensor::from_data(src.take_tensor(prefix, "m")?, device);
        let v = Tensor::from_data(src.take_tensor(prefix, "v")?, device);
        Some(Self { time, m, v })
    }
}

/// LAMB for one parameter, implementing Burn's per-parameter [`Optimizer`]: wrap it in a
/// `ModuleOptimizer` (`ModuleOptimizer::from(rule)`, or per class of parameters with
/// [`lamb_module_optimizer`]) or use [`Lamb`], which does that for you.
///
/// The learning rate Burn passes to `step` is the base rate: the configuration's schedule is
/// applied to it with the parameter's own step counter (keep the schedule
/// [`Schedule::Constant`](lamb_optim::Schedule::Constant) when a Burn scheduler computes the
/// rate). Global clipping (`max_grad_norm`) needs every gradient, so the rule does not apply
/// it: call [`clip_grad_norm`](crate::clip_grad_norm) first, or use [`Lamb`].
#[derive(Clone, Debug)]
pub struct LambRule {
    cfg: Arc<LambConfig>,
    decay: bool,
    adapt: bool,
    sink: Option<Sink>,
}

impl LambRule {
    /// The rule for a parameter whose name no exclusion pattern matches (decayed; adapted
    /// unless the configuration's `layer_adaptation` says otherwise), after validating `cfg`
    /// exactly as `lamb_optim::Lamb::new` does.
    pub fn new(cfg: LambConfig) -> Result<Self> {
        lamb_optim::Lamb::new(cfg.clone())?;
        let excl = Exclusions::new(
            &cfg.exclude_from_weight_decay,
            &cfg.exclude_from_layer_adaptation,
        )?;
        let (decay, adapt) = excl.classify(cfg.layer_adaptation, cfg.weight_decay_rate, "");
        Ok(Self::with_class(Arc::new(cfg), decay, adapt, None))
    }

    fn with_class(cfg: Arc<LambConfig>, decay: bool, adapt: bool, sink: Option<Sink>) -> Self {
        Self {
            cfg,
            decay,
            adapt,
            sink,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LambConfig {
        &self.cfg
    }
}

impl Optimizer for LambRule {
    type State<const D: usize> = LambState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        w: Tensor<D>,
        g: Tensor<D>,
        state: Option<LambState<D>>,
    ) -> (Tensor<D>, Option<LambState<D>>) {
        let cfg = &*self.cfg;
        let (m, v, t) = match state {
            Some(s) => (s.m, s.v, s.time + 1),
            None => (g.zeros_like(), g.zeros_like(), 1),
        };
        let lr = cfg.schedule.learning_rate(lr as f32, t);
        let f64s = cfg.f64_scalars;
        let (rc1, rc2) = match cfg.bias_correction {
            BiasCorrection::Moments => (
                1.0 / bias_correction(cfg.beta_1, t, f64s),
                1.0 / bias_correction(cfg.beta_2, t, f64s),
            ),
            _ => (1.0, 1.0),
        };
        // Rounded to f32 as lamb-optim rounds them.
        let (rc1, rc2) = (rc1 as f32, rc2 as f32);
        let a1 = if cfg.grad_averaging {
            complement(cfg.beta_1, f64s)
        } else {
            1.0
        };
        let a2 = complement(cfg.beta_2, f64s);
        let step_size = match cfg.bias_correction {
            BiasCorrection::StepSize => {
                let b1 = bias_correction(cfg.beta_1, t, f64s);
                let b2 = bias_correction(cfg.beta_2, t, f64s);
                scalar(lr, f64s) * b2.sqrt() / b1
            }
            _ => scalar(lr, f64s),
        } as f32;
        let m2 = m.mul_scalar(cfg.beta_1).add(g.clone().mul_scalar(a1));
        let v2 = v
            .mul_scalar(cfg.beta_2)
            .add(g.clone().square().mul_scalar(a2));
        let denom = v2
            .clone()
            .mul_scalar(rc2)
            .add_scalar(cfg.epsilon_root)
            .sqrt()
            .add_scalar(cfg.epsilon);
        let mut u = m2.clone().mul_scalar(rc1).div(denom);
        if self.decay && cfg.weight_decay_rate != 0.0 {
            u = u.add(w.clone().mul_scalar(cfg.weight_decay_rate));
        }
        let mut wn = norm(w.clone());
        if let Some((lo, hi)) = cfg.weight_norm_clamp {
            wn = wn.clamp(lo, hi);
        }
        let un = norm(u.clone());
        let mut ratio = if self.adapt {
            let mut r = wn.clone().div(un.clone());
            if let Some((lo, hi)) = cfg.trust_ratio_clamp {
                r = r.clamp(lo, hi);
            }
            let usable = wn
                .clone()
                .greater_scalar(0.0)
                .bool_and(un.clone().greater_scalar(0.0));
            r.ones_like().mask_where(usable, r)
        } else {
            wn.ones_like()
        };
        if self.adapt && cfg.trust_clip {
            ratio = ratio.clamp_max(1.0);
        }
        let k: Tensor<D> = ratio.clone().mul_scalar(step_size).unsqueeze();
        let new_w = w - u.mul(k);
        if let Some(sink) = &self.sink {
            let checked = cfg.non_finite != lamb_optim::NonFinitePolicy::Unchecked;
            // A non-finite gradient reaches `v2` (`(1-b2)*g^2`, `1-b2 > 0`), so the new values
            // cover it.
            let check = checked.then(|| {
                let (g, w2, m, v) = (g.clone(), new_w.clone(), m2.clone(), v2.clone());
                Check {
                    fast: new_w.clone().sum() + m2.clone().sum() + v2.clone().sum(),
                    exact: Arc::new(move || {
                        (
                            all_finite(&g),
                            all_finite(&w2) && all_finite(&m) && all_finite(&v),
                        )
                    }),
                }
            });
            report(
                sink,
                StepRecord {
                    weight_norm: wn,
                    update_norm: un,
                    ratio,
                    lr,
                    time: t,
                    check,
                },
            );
        }
        (
            new_w,
            Some(LambState {
                time: t,
                m: m2,
                v: v2,
            }),
        )
    }

    fn to_device<const D: usize>(mut state: LambState<D>, device: &Device) -> LambState<D> {
        state.m = state.m.to_device(device);
        state.v = state.v.to_device(device);
        state
    }
}

/// Validates `cfg` and classifies the parameters.
fn prepare(params: Vec<NamedParam>, cfg: &LambConfig) -> Result<Vec<engine::Classified>> {
    lamb_optim::Lamb::new(cfg.clone())?;
    let excl = Exclusions::new(
        &cfg.exclude_from_weight_decay,
        &cfg.exclude_from_layer_adaptation,
    )?;
    classify(params, &excl, cfg.layer_adaptation, cfg.weight_decay_rate)
}

/// A plain Burn `ModuleOptimizer` running LAMB on `module`'s parameters, the exclusion
/// patterns applied to their module paths (one Burn parameter group per class). For Burn code
/// that expects a `ModuleOptimizer` (pass `cfg.learning_rate` as the rate); it has no
/// telemetry, no finiteness check, and no global clipping (call
/// [`clip_grad_norm`](crate::clip_grad_norm) first when `max_grad_norm` is set). Its state
/// saves and loads with `ModuleOptimizer::save`/`load`.
pub fn lamb_module_optimizer<M: Module>(module: &M, cfg: LambConfig) -> Result<ModuleOptimizer> {
    let params = prepare(module_params(module), &cfg)?;
    let cfg = Arc::new(cfg);
    Ok(grouped(&params, |d, a| {
        LambRule::with_class(cfg.clone(), d, a, None)
    }))
}

/// The LAMB optimizer for Burn modules: `lamb-optim`'s [`lamb_optim::Lamb`] (formula,
/// presets, defaults) evaluated with Burn tensor operations on each parameter's device,
/// through Burn's own `ModuleOptimizer` and per-parameter [`Optimizer`] interface.
///
/// Parameters are named by their module paths (`encoder.0.linear.weight`), which the
/// exclusion patterns search and telemetry reports; [`Lamb::from_named`] takes other names.
/// A step applies the configured global clipping first, and (unless the configuration's
/// `non_finite` is `Unchecked`) reads one scalar from the device to check that every new
/// value is finite: a non-finite step changes nothing. (To undo one, a checked step keeps the
/// previous weights and state until the check: at its peak, one more copy of both than an
/// unchecked step.)
pub struct Lamb {
    cfg: LambConfig,
    engine: Engine,
}

impl Lamb {
    /// LAMB over every float parameter of `module`, named by module path.
    pub fn new<M: Module>(module: &M, cfg: LambConfig) -> Result<Self> {
        Self::from_named(module_params(module), cfg)
    }

    /// LAMB over the given parameters (ids, names and shapes of your choosing; see
    /// [`module_params`](crate::module_params) for the module-path names).
    pub fn from_named(params: Vec<NamedParam>, cfg: LambConfig) -> Result<Self> {
        let params = prepare(params, &cfg)?;
        let sink: Sink = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(cfg.clone());
        let inner = grouped(&params, |d, a| {
            LambRule::with_class(shared.clone(), d, a, Some(sink.clone()))
        });
        let engine = Engine {
            label: "lamb",
            slot_names: &["m", "v"],
            inner,
            params: params
                .into_iter()
                .map(|p| (p.param.id, p))
                .collect::<HashMap<_, _>>(),
            sink,
            base_lr: cfg.learning_rate as f64,
            policy: cfg.non_finite,
            max_grad_norm: cfg.max_grad_norm,
            step: 0,
            skipped: 0,
            stats: Vec::new(),
        };
        Ok(Self { cfg, engine })
    }

    /// One step of `module` from `grads` (parameters without a gradient are left alone).
    /// Returns the module, stepped, or unchanged when the step failed or was skipped; see
    /// [`lamb_optim::NonFinitePolicy`] for non-finite values.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: GradientsParams,
    ) -> (M, Result<StepOutcome>) {
        self.engine.step(module, grads)
    }

    /// The configuration.
    pub fn config(&self) -> &LambConfig {
        &self.cfg
    }

    /// The step counter of the last applied step (restored by [`Lamb::load`]).
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
            .learning_rate(self.engine.base_lr as f32, self.engine.step + 1)
    }

    /// Sets the base learning rate (the schedule still applies to it).
    pub fn set_learning_rate(&mut self, lr: f32) {
        self.engine.base_lr = lr as f64;
    }

    /// Parameter names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .engine
            .params
            .values()
            .map(|p| p.param.name.as_str())
            .collect();
        v.sort_unstable();
        v
    }

    /// Norms, trust ratio and learning rate of every tensor stepped last (in step order),
    /// read from the device in one transfer: what `lamb train` records per tensor.
    pub fn telemetry(&self) -> Vec<TensorTelemetry> {
        self.engine.telemetry()
    }

    /// `(name, trust ratio)` of every tensor stepped last.
    pub fn trust_ratios(&self) -> Vec<(String, f32)> {
        self.telemetry()
            .into_iter()
            .map(|t| (t.name, t.trust_ratio))
            .collect()
    }

    /// The Burn module optimizer underneath (its record is the state [`Lamb::save`] writes).
    pub fn module_optimizer(&self) -> &ModuleOptimizer {
        &self.engine.inner
    }

    /// Saves the state in Burn's burnpack record format (the `ModuleOptimizer` record: per
    /// parameter `m`, `v` and `time`), plus this optimizer's name and counters. With the
    /// module saved beside it (its record keeps the parameter ids), [`Lamb::load`] resumes the
    /// run exactly. Written atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.engine.save(path.as_ref())
    }

    /// Loads a state [`Lamb::save`] wrote for parameters of the same ids and shapes; an error
    /// names what does not fit, and then nothing changes.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.engine.load(path.as_ref())
    }
}
