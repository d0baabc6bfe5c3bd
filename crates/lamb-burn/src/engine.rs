//! What [`Lamb`](crate::Lamb) and [`Lars`](crate::Lars) share around Burn's `ModuleOptimizer`:
//! names and classification of the parameters (one Burn parameter group per class), the
//! gradient scan before a step (unknown parameters, shapes, global clipping), the all-or-nothing
//! finiteness check, per-tensor telemetry, and state files in Burn's burnpack record format with
//! the optimizer's counters and a fit check.

use crate::clip;
use crate::error::{Error, Result};
use crate::names::NamedParam;
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer, Optimizer};
use burn::tensor::Tensor;
use lamb_optim::{Exclusions, LayerAdaptation, NonFinitePolicy, StepOutcome, TensorTelemetry};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What one per-parameter step reports to its optimizer: scalar tensors on the parameter's
/// device (read only on request, so a step never waits for them).
#[derive(Clone, Debug)]
pub(crate) struct StepRecord {
    /// `||w||` before the step (after any clamp).
    pub weight_norm: Tensor<1>,
    /// Norm of the direction the trust ratio divides by.
    pub update_norm: Tensor<1>,
    /// The trust ratio applied.
    pub ratio: Tensor<1>,
    /// The learning rate used (after the schedule).
    pub lr: f32,
    /// The parameter's step counter after this step (1-based).
    pub time: u64,
    /// The finiteness check (`None`: not checked). Dropped once the step is decided, so it
    /// never keeps tensors alive into the next step.
    pub check: Option<Check>,
}

/// Whether one parameter's step is finite: a cheap test that proves it in the common case, and
/// the exact one for when it does not.
#[derive(Clone)]
pub(crate) struct Check {
    /// Sum of sums of tensors whose elements are all finite iff the gradient and every new
    /// value are (a NaN or infinity in any of them makes it non-finite). Finite proves the step
    /// finite; non-finite may also be an overflow of the sums of finite values, which
    /// [`Check::exact`] tells apart.
    pub fast: Tensor<1>,
    /// Element-wise test: `(gradient finite, new values finite)`.
    pub exact: Arc<dyn Fn() -> (bool, bool) + Send + Sync>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check").field("fast", &self.fast).finish()
    }
}

/// Where the per-parameter rules of one optimizer report their steps.
pub(crate) type Sink = Arc<Mutex<Vec<StepRecord>>>;

/// Appends a record to a sink (a poisoned lock only means another step panicked: the records
/// are plain data, so they are still usable).
pub(crate) fn report(sink: &Sink, r: StepRecord) {
    sink.lock().unwrap_or_else(|e| e.into_inner()).push(r);
}

/// Whether every element of `x` is finite (reads one value from the device).
pub(crate) fn all_finite<const D: usize>(x: &Tensor<D>) -> bool {
    x.clone().is_finite().all().float().into_scalar::<f32>() == 1.0
}

/// L2 norm of a tensor as a one-element tensor on its device.
pub(crate) fn norm<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    x.square().sum().sqrt()
}

/// A named parameter and its classification.
#[derive(Debug, Clone)]
pub(crate) struct Classified {
    pub param: NamedParam,
    pub decay: bool,
    pub adapt: bool,
}

/// Classifies named parameters by `lamb-optim`'s rules; duplicate names or ids are errors.
pub(crate) fn classify(
    params: Vec<NamedParam>,
    excl: &Exclusions,
    mode: LayerAdaptation,
    wd: f32,
) -> Result<Vec<Classified>> {
    let mut out: Vec<Classified> = Vec::with_capacity(params.len());
    for p in params {
        if out
            .iter()
            .any(|q| q.param.name == p.name || q.param.id == p.id)
        {
            return Err(Error::Parameter(format!(
                "parameter `{}` (id {}) given twice: names and ids must be unique",
                p.name, p.id
            )));
        }
        let (decay, adapt) = excl.classify(mode, wd, &p.name);
        out.push(Classified {
            param: p,
            decay,
            adapt,
        });
    }
    Ok(out)
}

/// A Burn `ModuleOptimizer` with one parameter group per (decayed, adapted) class; `make`
/// builds the per-parameter rule of a class. Parameters outside `params` get the rule of
/// (decayed, adapted).
pub(crate) fn grouped<O: Optimizer>(
    params: &[Classified],
    make: impl Fn(bool, bool) -> O,
) -> ModuleOptimizer {
    let mut opt = ModuleOptimizer::from(make(true, true));
    for (decay, adapt) in [(true, false), (false, true), (false, false)] {
        let ids: Vec<ParamId> = params
            .iter()
            .filter(|p| p.decay == decay && p.adapt == adapt)
            .map(|p| p.param.id)
            .collect();
        if !ids.is_empty() {
            opt = opt.with_group(ParamGroup::from_ids(ids), make(decay, adapt), None);
        }
    }
    opt
}

/// The module-level half of an optimizer.
pub(crate) struct Engine {
    /// Written to and checked in saved state (`lamb`, `lars`).
    pub label: &'static str,
    /// Slot names of the per-parameter state (`m`, `v` / `momentum`).
    pub slot_names: &'static [&'static str],
    /// Burn's module optimizer, one group per class.
    pub inner: ModuleOptimizer,
    /// The parameters, by id.
    pub params: HashMap<ParamId, Classified>,
    /// Where the rules report.
    pub sink: Sink,
    /// Learning rate handed to the rules (they apply the schedule).
    pub base_lr: f64,
    /// Non-finite policy.
    pub policy: NonFinitePolicy,
    /// Global gradient-norm clipping.
    pub max_grad_norm: Option<f32>,
    /// Step counter of the last applied step.
    pub step: u64,
    /// Skipped steps.
    pub skipped: u64,
    /// Telemetry of the last applied step, in step order.
    pub stats: Vec<(String, StepRecord)>,
}

impl Engine {
    /// The parameters in `module` that have a gradient in `grads`, in step order, after
    /// checking each is known and its gradient has its shape; with clipping, also the sum of
    /// the squared gradients.
    fn scan<M: Module>(
        &self,
        module: &M,
        grads: &GradientsParams,
    ) -> Result<(Vec<ParamId>, Option<Tensor<1>>)> {
        let mut s = Scan {
            engine: self,
            grads,
            order: Vec::new(),
            sum: None,
            error: None,
            clip: self.max_grad_norm.is_some(),
        };
        module.visit(&mut s);
        if let Some(e) = s.error {
            return Err(e);
        }
        Ok((s.order, s.sum))
    }

    /// One step: clip if configured, step every parameter with a gradient through Burn's
    /// module optimizer, then (unless unchecked) read one scalar saying whether everything is
    /// finite; a non-finite step is undone (module and state as before) and reported. The
    /// module comes back in every case (unchanged when the step failed or was skipped).
    pub fn step<M: Module>(
        &mut self,
        module: M,
        mut grads: GradientsParams,
    ) -> (M, Result<StepOutcome>) {
        let (order, sum) = match self.scan(&module, &grads) {
            Ok(x) => x,
            Err(e) => return (module, Err(e)),
        };
        if let (Some(max_norm), Some(sum)) = (self.max_grad_norm, sum) {
            grads = clip::scale(&module, grads, sum, max_norm);
        }
        let checked = self.policy != NonFinitePolicy::Unchecked;
        let backup = checked.then(|| (module.clone(), self.inner.clone()));
        self.sink.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let stepped = self.inner.step(self.base_lr, module, grads);
        let records = std::mem::take(&mut *self.sink.lock().unwrap_or_else(|e| e.into_inner()));
        if records.len() != order.len() {
            let msg = format!(
                "internal: {} parameters had gradients but {} were stepped",
                order.len(),
                records.len()
            );
            return match backup {
                Some((m, o)) => {
                    self.inner = o;
                    (m, Err(Error::Parameter(msg)))
                }
                None => (stepped, Err(Error::Parameter(msg))),
            };
        }
        if let Some((old_module, old_inner)) = backup {
            if let Some(bad) = self.first_non_finite(&order, &records) {
                self.inner = old_inner;
                if self.policy == NonFinitePolicy::SkipStep {
                    self.skipped += 1;
                    return (old_module, Ok(StepOutcome::Skipped));
                }
                return (old_module, Err(bad));
            }
        }
        self.step = records.iter().map(|r| r.time).max().unwrap_or(self.step);
        self.stats = order
            .iter()
            .zip(records)
            .map(|(id, mut r)| {
                r.check = None;
                (self.params[id].param.name.clone(), r)
            })
            .collect();
        (stepped, Ok(StepOutcome::Applied))
    }

    /// `None` when the step is finite (one scalar read from the device in the common case);
    /// otherwise the error for the first tensor whose gradient, else whose new values, are not
    /// finite.
    fn first_non_finite(&self, order: &[ParamId], records: &[StepRecord]) -> Option<Error> {
        let fast: Vec<Tensor<1>> = records
            .iter()
            .filter_map(|r| r.check.as_ref().map(|c| c.fast.clone()))
            .collect();
        if fast.is_empty() {
            return None;
        }
        let total: f32 = Tensor::cat(fast, 0).sum().into_scalar();
        if total.is_finite() {
            return None;
        }
        let exact: Vec<(bool, bool)> = records
            .iter()
            .map(|r| r.check.as_ref().map_or((true, true), |c| (c.exact)()))
            .collect();
        for (what, pick) in [("gradient", 0usize), ("update", 1usize)] {
            for ((id, r), ok) in order.iter().zip(records).zip(&exact) {
                if !(if pick == 0 { ok.0 } else { ok.1 }) {
                    return Some(Error::NonFinite {
                        what,
                        name: self.params[id].param.name.clone(),
                        step: r.time,
                    });
                }
            }
        }
        // Every element finite: the sums overflowed.
        None
    }

    /// Norms, trust ratio and learning rate of every tensor stepped last, read from the device
    /// in one transfer.
    pub fn telemetry(&self) -> Vec<TensorTelemetry> {
        if self.stats.is_empty() {
            return Vec::new();
        }
        let all: Vec<Tensor<1>> = self
            .stats
            .iter()
            .flat_map(|(_, r)| {
                [
                    r.weight_norm.clone(),
                    r.update_norm.clone(),
                    r.ratio.clone(),
                ]
            })
            .collect();
        let values: Vec<f32> = Tensor::cat(all, 0)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        self.stats
            .iter()
            .zip(values.chunks_exact(3))
            .map(|((name, r), v)| TensorTelemetry {
                name: name.clone(),
                weight_norm: v[0],
                update_norm: v[1],
                trust_ratio: v[2],
                learning_rate: r.lr,
            })
            .collect()
    }

    /// Writes Burn's record of the module optimizer (burnpack) with the optimizer's name and
    /// counters added as scalars, atomically (a failed write leaves any earlier file intact).
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |reason: String| Error::State {
            path: path.display().to_string(),
            reason,
        };
        let bytes = self
            .inner
            .into_bytes()
            .map_err(|e| err(format!("cannot encode: {e}")))?;
        let reader = burn_pack::Reader::from_bytes(bytes)
            .map_err(|e| err(format!("cannot re-read the encoded record: {e}")))?;
        let scalars = reader.scalars().clone();
        let metadata = reader.metadata().clone();
        let tensors = reader
            .into_tensors()
            .map_err(|e| err(format!("cannot re-read the encoded record: {e}")))?;
        let mut w = burn_pack::Writer::new(tensors).auto_extension(false);
        for (k, v) in &scalars {
            w = w.with_scalar(k, *v);
        }
        for (k, v) in &metadata {
            w = w.with_metadata(k, v);
        }
        w = w
            .with_metadata(META_OPTIMIZER, self.label)
            .with_scalar(META_STEP, burn_pack::Scalar::from(self.step))
            .with_scalar(META_SKIPPED, burn_pack::Scalar::from(self.skipped));
        w.write_to_file(path)
            .map_err(|e| err(format!("cannot write: {e}")))
    }

    /// Loads a file [`Engine::save`] wrote, after checking it fits: written by this kind of
    /// optimizer, every state tensor belonging to one of this optimizer's parameters with its
    /// shape. On error nothing changes.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let err = |reason: String| Error::State {
            path: path.display().to_string(),
            reason,
        };
        let reader =
            burn_pack::Reader::from_file(path).map_err(|e| err(format!("cannot read: {e}")))?;
        match reader.metadata().get(META_OPTIMIZER) {
            Some(l) if l == self.label => {}
            Some(l) => {
                return Err(err(format!(
                    "written by optimizer `{l}`, this is `{}`",
                    self.label
                )))
            }
            None => {
                return Err(err(format!(
                    "no `{META_OPTIMIZER}` entry: not a lamb-burn state"
                )))
            }
        }
        let counter = |k: &str| -> Result<u64> {
            reader
                .scalars()
                .get(k)
                .and_then(|s| u64::try_from(*s).ok())
                .ok_or_else(|| err(format!("`{k}` missing or not a non-negative integer")))
        };
        let (step, skipped) = (counter(META_STEP)?, counter(META_SKIPPED)?);
        let tensors = reader
            .into_tensors()
            .map_err(|e| err(format!("cannot read tensors: {e}")))?;
        for t in &tensors {
            let name = &t.name;
            let Some(p) = t
                .param_id
                .and_then(|id| self.params.get(&ParamId::from(id)))
            else {
                return Err(err(format!(
                    "tensor `{name}` belongs to a parameter this optimizer does not have"
                )));
            };
            let leaf = name.rsplit('.').next().unwrap_or("");
            if !self.slot_names.contains(&leaf) {
                return Err(err(format!(
                    "tensor `{name}` (of `{}`) is not a {} slot ({:?})",
                    p.param.name, self.label, self.slot_names
                )));
            }
            if t.shape.as_slice() != p.param.shape.as_slice() {
                return Err(err(format!(
                    "`{leaf}` of `{}` has shape {:?}, the parameter {:?}",
                    p.param.name,
                    t.shape.as_slice(),
                    p.param.shape
                )));
            }
        }
        let inner = self
            .inner
            .clone()
            .load(path)
            .map_err(|e| err(format!("Burn cannot load it: {e}")))?;
        self.inner = inner;
        self.step = step;
        self.skipped = skipped;
        self.stats.clear();
        Ok(())
    }
}

/// Metadata key naming the optimizer that wrote a state file.
const META_OPTIMIZER: &str = "lamb_burn.optimizer";
/// Scalar key of the step counter.
const META_STEP: &str = "lamb_burn.step";
/// Scalar key of the skipped-step counter.
const META_SKIPPED: &str = "lamb_burn.skipped";

struct Scan<'a> {
    engine: &'a Engine,
    grads: &'a GradientsParams,
    order: Vec<ParamId>,
    sum: Option<Tensor<1>>,
    error: Option<Error>,
    clip: bool,
}

impl ModuleVisitor for Scan<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let Some(g) = self.grads.get::<D>(param.id) else {
            return;
        };
        let Some(p) = self.engine.params.get(&param.id) else {
            self.error = Some(Error::Parameter(format!(
                "parameter {} has a gradient but is not one this optimizer was built for \
                 (build it from this module, or pass its name to `from_named`)",
                param.id
            )));
            return;
        };
        if g.dims().as_slice() != p.param.shape.as_slice() {
            self.error = Some(Error::Parameter(format!(
                "gradient of `{}` has shape {:?}, the parameter {:?}",
                p.param.name,
                g.dims(),
                p.param.shape
            )));
            return;
        }
        if self.clip {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                None => s,
                Some(acc) => acc + s,
            });
        }
        self.order.push(param.id);
    }
}
