//! What [`Lamb`](crate::Lamb) and [`Lars`](crate::Lars) share: the named parameters and their
//! slots, the step counters, gathering gradients, the all-or-nothing commit of a step with
//! its finiteness check, trust-ratio telemetry, and state in safetensors.

use crate::error::{msg, Result};
use crate::named::Param;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use lamb_optim::{NonFinitePolicy, StepOutcome, TensorTelemetry};
use std::collections::HashMap;
use std::path::Path;

/// Per-tensor norms and trust ratio of a step, as scalar tensors on the parameter's device
/// (read only when asked for, so a step never waits for them).
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// `||w||` before the step (after any clamp).
    pub weight_norm: Tensor,
    /// Norm of the update direction the ratio divides by.
    pub update_norm: Tensor,
    /// The trust ratio applied.
    pub ratio: Tensor,
}

/// The new values one step computed for one parameter, not yet written.
pub(crate) struct Pending {
    /// Index into [`Engine::params`].
    pub index: usize,
    /// The gradient used (for the error message of a non-finite step).
    pub grad: Tensor,
    /// New weights.
    pub weight: Tensor,
    /// New slots, in slot order.
    pub slots: Vec<Tensor>,
    /// Telemetry.
    pub stats: Stats,
}

/// Parameters, slots and counters of one optimizer.
#[derive(Debug)]
pub(crate) struct Engine {
    /// Optimizer name written to and checked in saved state (`lamb`, `lars`).
    pub label: &'static str,
    /// Slot names (`m`, `v` / `momentum`).
    pub slot_names: &'static [&'static str],
    /// The parameters in step order.
    pub params: Vec<Param>,
    /// Steps applied.
    pub step: u64,
    /// Steps skipped under [`NonFinitePolicy::SkipStep`].
    pub skipped: u64,
    /// Telemetry of the last applied step (`None`: the parameter had no gradient).
    pub stats: Vec<Option<Stats>>,
    /// Learning rate of the last applied step.
    pub last_lr: f32,
}

impl Engine {
    /// An engine over classified parameters.
    pub fn new(
        label: &'static str,
        slot_names: &'static [&'static str],
        params: Vec<Param>,
    ) -> Self {
        let n = params.len();
        Self {
            label,
            slot_names,
            params,
            step: 0,
            skipped: 0,
            stats: vec![None; n],
            last_lr: 0.0,
        }
    }

    /// `(index, weight, gradient)` of every parameter that has a gradient in `grads`, both
    /// detached (the optimizer's arithmetic records no autograd graph). A gradient of another
    /// shape or dtype is an error naming the parameter.
    pub fn gather(&self, grads: &GradStore) -> Result<Vec<(usize, Tensor, Tensor)>> {
        let mut out = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            if g.shape() != p.var.shape() || g.dtype() != DType::F32 {
                return Err(msg(format!(
                    "gradient of `{}` is {:?} {:?}, the variable is {:?} f32",
                    p.name,
                    g.dtype(),
                    g.dims(),
                    p.var.dims()
                )));
            }
            out.push((i, p.var.as_tensor().detach(), g.detach()));
        }
        Ok(out)
    }

    /// Writes a computed step, or refuses it: unless `policy` is `Unchecked`, one scalar is
    /// read from the device (whether every new weight and slot is finite); when one is not,
    /// nothing changes and the step is an error naming the tensor (or, under `SkipStep`,
    /// counted as skipped).
    pub fn commit(
        &mut self,
        policy: NonFinitePolicy,
        lr: f32,
        pending: Vec<Pending>,
    ) -> Result<StepOutcome> {
        let t = self.step + 1;
        if policy != NonFinitePolicy::Unchecked && !pending.is_empty() {
            let mut flag: Option<Tensor> = None;
            for p in &pending {
                for x in std::iter::once(&p.weight).chain(&p.slots) {
                    let z = not_finite_marker(x)?;
                    flag = Some(match flag {
                        None => z,
                        Some(f) => (f + z)?,
                    });
                }
            }
            let ok = match flag {
                Some(f) => f.to_scalar::<f32>()?.is_finite(),
                None => true,
            };
            if !ok {
                if policy == NonFinitePolicy::SkipStep {
                    self.skipped += 1;
                    return Ok(StepOutcome::Skipped);
                }
                return Err(self.non_finite_error(t, &pending));
            }
        }
        self.stats = vec![None; self.params.len()];
        for p in pending {
            let param = &mut self.params[p.index];
            param.var.set(&p.weight)?;
            param.slots = p.slots;
            self.stats[p.index] = Some(p.stats);
        }
        self.step = t;
        self.last_lr = lr;
        Ok(StepOutcome::Applied)
    }

    /// The error for a refused step: the first tensor whose gradient, else whose new state,
    /// is not finite (reads values: only on this error path).
    fn non_finite_error(&self, t: u64, pending: &[Pending]) -> candle_core::Error {
        let first_bad = |x: &Tensor| -> Option<(usize, f32)> {
            let v = x.flatten_all().ok()?.to_vec1::<f32>().ok()?;
            v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i]))
        };
        for (what, pick) in [("gradient", 0usize), ("update", 1usize)] {
            for p in pending {
                let xs: Vec<&Tensor> = if pick == 0 {
                    vec![&p.grad]
                } else {
                    std::iter::once(&p.weight).chain(&p.slots).collect()
                };
                for x in xs {
                    if let Some((index, value)) = first_bad(x) {
                        return msg(lamb_optim::OptimError::NonFinite {
                            what,
                            name: self.params[p.index].name.clone(),
                            step: t,
                            index,
                            value,
                        });
                    }
                }
            }
        }
        msg(format!("non-finite value at step {t}"))
    }

    /// Norms and trust ratio of every parameter stepped last, read from the device.
    pub fn telemetry(&self) -> Result<Vec<TensorTelemetry>> {
        let mut out = Vec::new();
        for (p, s) in self.params.iter().zip(&self.stats) {
            let Some(s) = s else { continue };
            out.push(TensorTelemetry {
                name: p.name.clone(),
                weight_norm: s.weight_norm.to_scalar::<f32>()?,
                update_norm: s.update_norm.to_scalar::<f32>()?,
                trust_ratio: s.ratio.to_scalar::<f32>()?,
                learning_rate: self.last_lr,
            });
        }
        Ok(out)
    }

    /// The state as named tensors: `<slot>/<parameter name>` for every slot,
    /// `meta/step`, `meta/skipped` (i64, one element) and `meta/optimizer` (the name in
    /// UTF-8 bytes).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut map = HashMap::new();
        for p in &self.params {
            for (s, x) in self.slot_names.iter().zip(&p.slots) {
                map.insert(format!("{s}/{}", p.name), x.clone());
            }
        }
        let cpu = Device::Cpu;
        map.insert("meta/step".into(), Tensor::new(&[self.step as i64], &cpu)?);
        map.insert(
            "meta/skipped".into(),
            Tensor::new(&[self.skipped as i64], &cpu)?,
        );
        map.insert(
            "meta/optimizer".into(),
            Tensor::new(self.label.as_bytes(), &cpu)?,
        );
        Ok(map)
    }

    /// Writes [`Engine::state_tensors`] to a safetensors file (through a temporary file
    /// renamed into place, so a failed write never leaves a partial state under `path`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let map = self.state_tensors()?;
        let tmp = path.with_extension("safetensors.partial");
        candle_core::safetensors::save(&map, &tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            msg(format!(
                "cannot move optimizer state into place at {}: {e}",
                path.display()
            ))
        })
    }

    /// Restores the state [`Engine::save`] wrote, after checking all of it fits: the same
    /// optimizer, a slot of the right shape for every parameter. On error nothing changes.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            msg(format!(
                "cannot read optimizer state {}: {e}",
                path.display()
            ))
        })?;
        self.load_tensors(&map)
            .map_err(|e| msg(format!("optimizer state {}: {e}", path.display())))
    }

    /// Restores state from named tensors (see [`Engine::state_tensors`]).
    pub fn load_tensors(&mut self, map: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| msg(format!("`{k}` missing (not a {} state?)", self.label)))
        };
        let label = String::from_utf8(get("meta/optimizer")?.to_vec1::<u8>()?)
            .map_err(|_| msg("`meta/optimizer` is not UTF-8"))?;
        if label != self.label {
            return Err(msg(format!(
                "written by optimizer `{label}`, this is `{}`",
                self.label
            )));
        }
        let counter = |k: &str| -> Result<u64> {
            let v = get(k)?.to_vec1::<i64>()?;
            match v.as_slice() {
                [x] if *x >= 0 => Ok(*x as u64),
                _ => Err(msg(format!("`{k}` must be one non-negative integer"))),
            }
        };
        let (step, skipped) = (counter("meta/step")?, counter("meta/skipped")?);
        let mut all = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut slots = Vec::with_capacity(self.slot_names.len());
            for s in self.slot_names {
                let key = format!("{s}/{}", p.name);
                let x = get(&key)?;
                if x.dims() != p.var.dims() || x.dtype() != DType::F32 {
                    return Err(msg(format!(
                        "`{key}` is {:?} {:?}, the variable is {:?} f32",
                        x.dtype(),
                        x.dims(),
                        p.var.dims()
                    )));
                }
                slots.push(x.to_device(p.var.device())?);
            }
            all.push(slots);
        }
        let known = self.params.len() * self.slot_names.len() + 3;
        if map.len() != known {
            let extra: Vec<&String> = map
                .keys()
                .filter(|k| {
                    !k.starts_with("meta/")
                        && !self.params.iter().any(|p| {
                            self.slot_names
                                .iter()
                                .any(|s| **k == format!("{s}/{}", p.name))
                        })
                })
                .collect();
            return Err(msg(format!(
                "state has tensors of parameters this optimizer does not have: {extra:?}"
            )));
        }
        for (p, slots) in self.params.iter_mut().zip(all) {
            p.slots = slots;
        }
        self.step = step;
        self.skipped = skipped;
        self.stats = vec![None; self.params.len()];
        Ok(())
    }
}

/// A one-element tensor that is 0 when every element of `x` is finite and NaN otherwise
/// (`x - x` is 0 for finite values and NaN for infinities and NaN; the sum of zeros is 0).
fn not_finite_marker(x: &Tensor) -> Result<Tensor> {
    x.sub(x)?.sum_all()
}

/// `where(cond, a, 1)` for one-element tensors: the trust ratio where both norms allow it.
pub(crate) fn where_or_one(cond: &Tensor, a: &Tensor) -> Result<Tensor> {
    cond.where_cond(a, &a.ones_like()?)
}

/// L2 norm of a tensor as a one-element tensor on its device.
pub(crate) fn norm(x: &Tensor) -> Result<Tensor> {
    x.sqr()?.sum_all()?.sqrt()
}
