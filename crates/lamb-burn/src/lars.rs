//! LARS on Burn tensors: every [`LarsConfig`] of `lamb-optim` (timm and optax forms,
//! exclusions, LARC clipping, momentum, Nesterov, schedules) as a per-parameter rule
//! implementing Burn's [`burn::optim::Optimizer`] ([`LarsRule`]), and the module-level [`Lars`].

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
use lamb_optim::scalars::{complement, scalar};
use lamb_optim::{Exclusions, LarsConfig, LarsForm, NonFinitePolicy, StepOutcome, TensorTelemetry};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// LARS's per-parameter state: the momentum buffer and the parameter's step counter.
#[derive(Clone, Debug)]
pub struct LarsState<const D: usize> {
    /// Steps applied to this parameter.
    pub time: u64,
    /// Momentum buffer (optax: the trace).
    pub momentum: Tensor<D>,
}

impl<const D: usize> RecordState for LarsState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_scalar(prefix, "time", burn_pack::Scalar::from(self.time));
        out.push_tensor(prefix, "momentum", self.momentum.clone().into_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let time = u64::try_from(src.take_scalar(prefix, "time")?).ok()?;
        let momentum = Tensor::from_data(src.take_tensor(prefix, "momentum")?, device);
        Some(Self { time, momentum })
    }
}

/// LARS for one parameter, implementing Burn's per-parameter [`Optimizer`] (see
/// [`LambRule`](crate::LambRule) for how the learning rate and schedule combine).
#[derive(Clone, Debug)]
pub struct LarsRule {
    cfg: Arc<LarsConfig>,
    decay: bool,
    adapt: bool,
    sink: Option<Sink>,
}

impl LarsRule {
    /// The rule for a parameter whose name no exclusion pattern matches, after validating
    /// `cfg` exactly as `lamb_optim::Lars::new` does.
    pub fn new(cfg: LarsConfig) -> Result<Self> {
        lamb_optim::Lars::new(cfg.clone())?;
        let excl = Exclusions::new(
            &cfg.exclude_from_weight_decay,
            &cfg.exclude_from_layer_adaptation,
        )?;
        let (decay, adapt) = excl.classify(cfg.layer_adaptation, cfg.weight_decay_rate, "");
        Ok(Self::with_class(Arc::new(cfg), decay, adapt, None))
    }

    fn with_class(cfg: Arc<LarsConfig>, decay: bool, adapt: bool, sink: Option<Sink>) -> Self {
        Self {
            cfg,
            decay,
            adapt,
            sink,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LarsConfig {
        &self.cfg
    }
}

impl Optimizer for LarsRule {
    type State<const D: usize> = LarsState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        w: Tensor<D>,
        g: Tensor<D>,
        state: Option<LarsState<D>>,
    ) -> (Tensor<D>, Option<LarsState<D>>) {
        let cfg = &*self.cfg;
        let (buf, t) = match state {
            Some(s) => (s.momentum, s.time + 1),
            None => (g.zeros_like(), 1),
        };
        let lr = cfg.schedule.learning_rate(lr as f32, t);
        let optax = cfg.form == LarsForm::Optax;
        let mu = cfg.momentum;
        let one_minus_damp = complement(cfg.dampening, cfg.f64_scalars);
        let lr64 = scalar(lr, cfg.f64_scalars);
        let wd = if self.decay {
            cfg.weight_decay_rate
        } else {
            0.0
        };
        let s = if wd != 0.0 {
            g.clone().add(w.clone().mul_scalar(wd))
        } else {
            g.clone()
        };
        let wn = norm(w.clone());
        let (denom, gnorm) = if optax {
            let sn = norm(s.clone());
            (sn.clone(), sn)
        } else {
            let gn = norm(g.clone());
            let d = if wd != 0.0 {
                gn.clone().add(wn.clone().mul_scalar(wd))
            } else {
                gn.clone()
            };
            (d, gn)
        };
        let ratio = if self.adapt {
            let r = wn
                .clone()
                .mul_scalar(cfg.trust_coefficient)
                .div(denom.clone().add_scalar(cfg.epsilon));
            let usable = wn
                .clone()
                .greater_scalar(0.0)
                .bool_and(gnorm.greater_scalar(0.0));
            let r = r.ones_like().mask_where(usable, r);
            if cfg.trust_clip {
                r.div_scalar(lr64).clamp_max(1.0)
            } else {
                r
            }
        } else {
            wn.ones_like()
        };
        let d = s.mul(ratio.clone().unsqueeze::<D>());
        let (new_buf, new_w) = if optax {
            let u = d.mul_scalar(-lr);
            let tr = u.clone().add(buf.mul_scalar(mu));
            let out = if cfg.nesterov {
                u.add(tr.clone().mul_scalar(mu))
            } else {
                tr.clone()
            };
            (tr, w.add(out))
        } else if cfg.momentum == 0.0 {
            (buf, w.sub(d.mul_scalar(lr)))
        } else {
            let b = if t == 1 {
                d.clone()
            } else {
                buf.mul_scalar(mu).add(d.clone().mul_scalar(one_minus_damp))
            };
            let out = if cfg.nesterov {
                d.add(b.clone().mul_scalar(mu))
            } else {
                b.clone()
            };
            (b, w.sub(out.mul_scalar(lr)))
        };
        if let Some(sink) = &self.sink {
            // LARS always checks, as in lamb-optim (`Unchecked` acts as `Error`).
            let (g2, w2, b2) = (g.clone(), new_w.clone(), new_buf.clone());
            let check = Check {
                fast: g.sum() + new_w.clone().sum() + new_buf.clone().sum(),
                exact: Arc::new(move || (all_finite(&g2), all_finite(&w2) && all_finite(&b2))),
            };
            report(
                sink,
                StepRecord {
                    weight_norm: wn,
                    update_norm: denom,
                    ratio,
                    lr,
                    time: t,
                    check: Some(check),
                },
            );
        }
        (
            new_w,
            Some(LarsState {
                time: t,
                momentum: new_buf,
            }),
        )
    }

    fn to_device<const D: usize>(mut state: LarsState<D>, device: &Device) -> LarsState<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// Validates `cfg` and classifies the parameters.
fn prepare(params: Vec<NamedParam>, cfg: &LarsConfig) -> Result<Vec<engine::Classified>> {
    lamb_optim::Lars::new(cfg.clone())?;
    let excl = Exclusions::new(
        &cfg.exclude_from_weight_decay,
        &cfg.exclude_from_layer_adaptation,
    )?;
    classify(params, &excl, cfg.layer_adaptation, cfg.weight_decay_rate)
}

/// A plain Burn `ModuleOptimizer` running LARS on `module`'s parameters, exclusion patterns
/// applied to their module paths (see [`lamb_module_optimizer`](crate::lamb_module_optimizer)).
pub fn lars_module_optimizer<M: Module>(module: &M, cfg: LarsConfig) -> Result<ModuleOptimizer> {
    let params = prepare(module_params(module), &cfg)?;
    let cfg = Arc::new(cfg);
    Ok(grouped(&params, |d, a| {
        LarsRule::with_class(cfg.clone(), d, a, None)
    }))
}

/// The LARS optimizer for Burn modules: `lamb-optim`'s [`lamb_optim::Lars`] evaluated with
/// Burn tensor operations on each parameter's device (constructors, names and checks as for
/// [`Lamb`](crate::Lamb); LARS always checks for non-finite values, as in `lamb-optim`).
pub struct Lars {
    cfg: LarsConfig,
    engine: Engine,
}

impl Lars {
    /// LARS over every float parameter of `module`, named by module path.
    pub fn new<M: Module>(module: &M, cfg: LarsConfig) -> Result<Self> {
        Self::from_named(module_params(module), cfg)
    }

    /// LARS over the given parameters.
    pub fn from_named(params: Vec<NamedParam>, cfg: LarsConfig) -> Result<Self> {
        let params = prepare(params, &cfg)?;
        let sink: Sink = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(cfg.clone());
        let inner = grouped(&params, |d, a| {
            LarsRule::with_class(shared.clone(), d, a, Some(sink.clone()))
        });
        let policy = match cfg.non_finite {
            NonFinitePolicy::Unchecked => NonFinitePolicy::Error,
            p => p,
        };
        let engine = Engine {
            label: "lars",
            slot_names: &["momentum"],
            inner,
            params: params
                .into_iter()
                .map(|p| (p.param.id, p))
                .collect::<HashMap<_, _>>(),
            sink,
            base_lr: cfg.learning_rate as f64,
            policy,
            max_grad_norm: None,
            step: 0,
            skipped: 0,
            stats: Vec::new(),
        };
        Ok(Self { cfg, engine })
    }

    /// One step of `module` from `grads`; the module comes back stepped, or unchanged when the
    /// step failed or was skipped.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: GradientsParams,
    ) -> (M, Result<StepOutcome>) {
        self.engine.step(module, grads)
    }

    /// The configuration.
    pub fn config(&self) -> &LarsConfig {
        &self.cfg
    }

    /// The step counter of the last applied step (restored by [`Lars::load`]).
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

    /// Norms, trust ratio and learning rate of every tensor stepped last (in step order).
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

    /// The Burn module optimizer underneath.
    pub fn module_optimizer(&self) -> &ModuleOptimizer {
        &self.engine.inner
    }

    /// Saves the state in Burn's burnpack record format (per parameter `momentum` and
    /// `time`) plus this optimizer's name and counters, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.engine.save(path.as_ref())
    }

    /// Loads a state [`Lars::save`] wrote; an error names what does not fit, and then nothing
    /// changes.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.engine.load(path.as_ref())
    }
}
