//! Pieces shared by the optimizers, each written once: the state and bookkeeping every
//! optimizer keeps ([`Core`]) and the [`Optimizer`] trait plumbing around a step ([`Family`]),
//! the commit policy of a step attempt ([`Counters::finish`]), the exact element check behind
//! the cheap finiteness bounds ([`first_bad_update`]), the global gradient norm, and the
//! scalar coefficients (`1 - beta`, bias corrections) in f32 or from the decimal in f64.

use crate::patterns::{Exclusions, LayerAdaptation};
use crate::reduce::{combine, sum_squares_group, CHUNK, GROUP};
use crate::schedule::Schedule;
use crate::simd::multiversion;
use crate::slots::Registry;
use crate::{
    MemoryPass, NonFinitePolicy, OptimError, Optimizer, OptimizerState, ParamMut, StepOutcome,
    TensorTelemetry,
};
use rayon::prelude::*;

/// Largest update magnitude for which `w - delta` is guaranteed finite for every finite `w`
/// (half an ulp of `f32::MAX` is 2^103 ~ 1.01e31).
pub(crate) const SAFE_DELTA: f64 = 1e30;

/// Step counters shared by every optimizer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    /// Steps applied.
    pub step: u64,
    /// Steps skipped under [`NonFinitePolicy::SkipStep`].
    pub skipped: u64,
    /// Whether the registry's telemetry describes an applied step.
    pub telemetry_valid: bool,
}

impl Counters {
    /// Counters restored from a saved state (no telemetry yet).
    pub(crate) fn loaded(state: &crate::OptimizerState) -> Self {
        Self {
            step: state.step,
            skipped: state.skipped_steps,
            telemetry_valid: false,
        }
    }

    /// Turns the result of a step attempt into the step's outcome, updating the counters and
    /// undoing a first step's registration when nothing was applied.
    pub(crate) fn finish<P: Default + Clone>(
        &mut self,
        result: Result<(), OptimError>,
        policy: NonFinitePolicy,
        fresh: bool,
        reg: &mut Registry<P>,
    ) -> Result<StepOutcome, OptimError> {
        match result {
            Ok(()) => {
                self.step += 1;
                self.telemetry_valid = true;
                Ok(StepOutcome::Applied)
            }
            Err(e) => {
                if fresh {
                    reg.reset();
                }
                match (&e, policy) {
                    (OptimError::NonFinite { .. }, NonFinitePolicy::SkipStep) => {
                        self.skipped += 1;
                        Ok(StepOutcome::Skipped)
                    }
                    _ => Err(e),
                }
            }
        }
    }
}

/// What every optimizer keeps besides its configuration: the per-tensor state, the step
/// counters and how tensors are classified (decayed, adapted) from their names.
#[derive(Debug, Clone)]
pub(crate) struct Core<P> {
    /// Per-tensor slots, in step order.
    pub reg: Registry<P>,
    /// Steps applied and skipped.
    pub count: Counters,
    /// The compiled exclusion lists.
    excl: Exclusions,
    /// Which tensors get a trust ratio.
    adaptation: LayerAdaptation,
    /// The weight-decay rate (`LayerAdaptation::DecayedOnly` adapts only when it is not 0).
    decay_rate: f32,
}

impl<P: Default + Clone> Core<P> {
    /// Empty state for an optimizer with these slots, compiling the exclusion lists.
    pub(crate) fn new(
        slots: &'static [&'static str],
        exclude_from_weight_decay: &[String],
        exclude_from_layer_adaptation: &[String],
        adaptation: LayerAdaptation,
        decay_rate: f32,
    ) -> Result<Self, OptimError> {
        Ok(Self {
            reg: Registry::new(slots),
            count: Counters::default(),
            excl: Exclusions::new(exclude_from_weight_decay, exclude_from_layer_adaptation)?,
            adaptation,
            decay_rate,
        })
    }

    /// Whether the tensor `name` is (decayed, adapted).
    fn classify(&self, name: &str) -> (bool, bool) {
        self.excl.classify(self.adaptation, self.decay_rate, name)
    }
}

/// An optimizer of the family as its module writes it: a name, its [`Core`], its schedule
/// and policy, and one step attempt. Every [`Optimizer`] method around that is written once,
/// in the blanket implementation below.
pub(crate) trait Family: Send {
    /// Per-tensor scalars of a step.
    type Plan: Default + Clone + Send;
    /// The optimizer's name in states and messages.
    fn label(&self) -> &'static str;
    /// The shared state.
    fn core(&self) -> &Core<Self::Plan>;
    /// The shared state, mutably.
    fn core_mut(&mut self) -> &mut Core<Self::Plan>;
    /// Base learning rate and schedule.
    fn schedule(&self) -> (f32, &Schedule);
    /// What a non-finite value does.
    fn non_finite(&self) -> NonFinitePolicy;
    /// One step attempt at step `t` on tensors already checked and registered; changes
    /// nothing when it returns an error.
    fn try_step(&mut self, params: &mut [ParamMut<'_>], t: u64) -> Result<(), OptimError>;
    /// The passes [`Family::try_step`] makes (see [`Optimizer::memory_passes`]).
    fn memory_passes(&self) -> Vec<MemoryPass>;
}

impl<F: Family> Optimizer for F {
    fn name(&self) -> &'static str {
        self.label()
    }

    fn step(&mut self, params: &mut [ParamMut<'_>]) -> Result<StepOutcome, OptimError> {
        let t = self.core().count.step + 1;
        self.core().reg.check(params, t)?;
        let core = self.core_mut();
        let fresh = {
            let Core {
                reg,
                excl,
                adaptation,
                decay_rate,
                ..
            } = core;
            reg.establish(params, |n| excl.classify(*adaptation, *decay_rate, n))
        };
        let result = self.try_step(params, t);
        let policy = self.non_finite();
        let Core { reg, count, .. } = self.core_mut();
        count.finish(result, policy, fresh, reg)
    }

    fn telemetry(&self) -> &[TensorTelemetry] {
        let c = self.core();
        if c.count.telemetry_valid {
            &c.reg.telemetry
        } else {
            &[]
        }
    }

    fn steps(&self) -> u64 {
        self.core().count.step
    }

    fn skipped_steps(&self) -> u64 {
        self.core().count.skipped
    }

    fn current_learning_rate(&self) -> f32 {
        let (lr, schedule) = self.schedule();
        schedule.learning_rate(lr, self.core().count.step + 1)
    }

    fn state(&self) -> OptimizerState {
        let c = self.core();
        c.reg.to_state(self.label(), c.count.step, c.count.skipped)
    }

    fn memory_passes(&self) -> Vec<MemoryPass> {
        Family::memory_passes(self)
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), OptimError> {
        let c = self.core();
        let mut reg = c.reg.clone();
        reg.load(self.label(), state, |n| c.classify(n))?;
        let c = self.core_mut();
        c.reg = reg;
        c.count = Counters::loaded(state);
        Ok(())
    }
}

/// The exact check behind a cheap bound that did not suffice: the first element `i` of
/// `0..len` whose new state or weight is not finite (`new(i)` gives whether all are finite
/// and the value to report) is an error naming the tensor, step and element.
pub(crate) fn first_bad_update(
    name: &str,
    step: u64,
    len: usize,
    new: impl Fn(usize) -> (bool, f32),
) -> Result<(), OptimError> {
    for index in 0..len {
        let (finite, value) = new(index);
        if !finite {
            return Err(OptimError::NonFinite {
                what: "update",
                name: name.to_string(),
                step,
                index,
                value,
            });
        }
    }
    Ok(())
}

multiversion! {
    fn sum_squares_group_mv(x: &[f32], parts: &mut [crate::reduce::Partial]) = sum_squares_group;
}

/// Sum of squares of every gradient (per tensor into `total.sums[0]`, with the gradient
/// maxima in `total.gbits`), computed in the fixed chunk order.
pub(crate) fn gradient_norms<P: Send + Default + Clone>(
    reg: &mut Registry<P>,
    params: &[ParamMut<'_>],
) {
    reg.tensors
        .par_iter_mut()
        .zip(params.par_iter())
        .for_each(|(ts, p)| {
            let g = p.grad;
            ts.partials
                .par_chunks_mut(GROUP)
                .zip(g.par_chunks(GROUP * CHUNK))
                .for_each(|(parts, x)| sum_squares_group_mv(x, parts));
            ts.total = combine(&ts.partials);
        });
}

/// The global L2 norm of all gradients from per-tensor totals (in tensor order).
pub(crate) fn global_norm<P>(reg: &Registry<P>) -> f64 {
    reg.tensors
        .iter()
        .map(|t| t.total.sums[0])
        .sum::<f64>()
        .sqrt()
}

/// The divisor timm and apex apply to every gradient: `max(G / max_norm, 1)`.
pub fn clip_divisor(global: f64, max_norm: f32) -> f64 {
    (global / max_norm as f64).max(1.0)
}

/// Whether `x` (a bound on |update|) leaves every finite weight finite.
#[inline]
pub(crate) fn safe(x: f64) -> bool {
    x.is_finite() && x < SAFE_DELTA
}

/// The decimal value a user most likely typed for an f32 hyperparameter (its shortest
/// round-trip representation), as f64. Python-driven libraries compute `1 - beta`,
/// `beta ** t` and step sizes from such Python floats in f64.
pub(crate) fn decimal(x: f32) -> f64 {
    use std::fmt::Write;
    // Formatted into a stack buffer: steps must not allocate.
    struct Buf {
        bytes: [u8; 64],
        len: usize,
    }
    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            if end > self.bytes.len() {
                return Err(std::fmt::Error);
            }
            self.bytes[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut b = Buf {
        bytes: [0; 64],
        len: 0,
    };
    if write!(b, "{x:e}").is_err() {
        return x as f64;
    }
    std::str::from_utf8(&b.bytes[..b.len])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(x as f64)
}

/// `1 - beta`: from the decimal in f64 and rounded once (`f64_scalars`), or in f32
/// (TensorFlow).
pub fn complement(beta: f32, f64_scalars: bool) -> f32 {
    if f64_scalars {
        (1.0 - decimal(beta)) as f32
    } else {
        1.0 - beta
    }
}

/// `1 - beta^t` in f64: from the decimal (`f64_scalars`), or as TensorFlow computes it in f32.
pub fn bias_correction(beta: f32, t: u64, f64_scalars: bool) -> f64 {
    if f64_scalars {
        1.0 - decimal(beta).powf(t as f64)
    } else {
        (1.0f32 - beta.powf(t as f32)) as f64
    }
}

/// A learning rate as f64 (its decimal with `f64_scalars`).
pub fn scalar(x: f32, f64_scalars: bool) -> f64 {
    if f64_scalars {
        decimal(x)
    } else {
        x as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_recovers_typed_values() {
        assert_eq!(decimal(0.999), 0.999f64);
        assert_eq!(decimal(1e-8), 1e-8f64);
        assert_eq!(decimal(0.0), 0.0);
        assert_eq!(decimal(f32::MAX), 3.4028235e38f64);
        assert_eq!(complement(0.999, true), (1.0f64 - 0.999f64) as f32);
        assert_eq!(complement(0.999, false), 1.0f32 - 0.999f32);
    }
}
