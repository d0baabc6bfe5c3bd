//! Per-tensor optimizer state (moment buffers, cached maxima, scratch partials) and the checks
//! that every step's tensors are well formed and the same set as before.

use crate::reduce::{Partial, CHUNK};
use crate::{OptimError, OptimizerState, ParamMut, TensorState, TensorTelemetry};
use std::collections::HashSet;

/// One cache line of f32 (the unit of [`StateBuf`]'s allocation).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// An f32 buffer whose first element starts a cache line (64 bytes), so that wide
/// non-temporal stores can write whole lines. Dereferences to `[f32]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct StateBuf {
    lines: Vec<Line>,
    len: usize,
}

impl StateBuf {
    /// `len` zeros.
    pub(crate) fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }
}

impl std::ops::Deref for StateBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` initialised f32 (16 per line, repr(C)).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
}

impl std::ops::DerefMut for StateBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, and `&mut self` gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// State of one tensor.
#[derive(Debug, Clone)]
pub(crate) struct TensorSlot<P> {
    /// Tensor name.
    pub name: String,
    /// Number of elements.
    pub len: usize,
    /// One buffer per slot name of the optimizer, each `len` long (zeros at the start).
    pub bufs: Vec<StateBuf>,
    /// Largest |x| of each buffer, kept up to date by the write pass (used for cheap
    /// finiteness bounds).
    pub buf_max: Vec<f64>,
    /// Scratch: one partial per chunk (allocated once).
    pub partials: Vec<Partial>,
    /// Scratch: the combined partial of the last pass.
    pub total: Partial,
    /// Whether the tensor is weight-decayed (resolved once from its name).
    pub decay: bool,
    /// Whether the tensor is layer-adapted (resolved once from its name).
    pub adapt: bool,
    /// Per-step scalars computed between the read and the write pass.
    pub plan: P,
}

/// Number of chunks of a tensor of `len` elements.
pub(crate) fn chunks(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

/// The state of every tensor an optimizer has seen, in step order.
#[derive(Debug, Clone)]
pub(crate) struct Registry<P> {
    /// Slot names of this optimizer (`m`, `v`, `momentum`).
    pub slot_names: &'static [&'static str],
    /// Tensors in step order; empty until the first step (or a load).
    pub tensors: Vec<TensorSlot<P>>,
    /// Whether the tensor set is fixed (after the first step or a load).
    pub established: bool,
    /// Telemetry of the last applied step.
    pub telemetry: Vec<TensorTelemetry>,
}

impl<P: Default + Clone> Registry<P> {
    /// An empty registry for an optimizer with these slots.
    pub(crate) fn new(slot_names: &'static [&'static str]) -> Self {
        Self {
            slot_names,
            tensors: Vec::new(),
            established: false,
            telemetry: Vec::new(),
        }
    }

    /// Checks buffer lengths and the tensor set without changing anything.
    pub(crate) fn check(&self, params: &[ParamMut<'_>], step: u64) -> Result<(), OptimError> {
        for p in params {
            let n: usize = p.shape.iter().product();
            if p.value.len() != n {
                return Err(OptimError::ShapeMismatch {
                    name: p.name.to_string(),
                    message: format!(
                        "value buffer has {} elements but shape {:?} needs {n}",
                        p.value.len(),
                        p.shape
                    ),
                });
            }
            if p.grad.len() != p.value.len() {
                return Err(OptimError::ShapeMismatch {
                    name: p.name.to_string(),
                    message: format!(
                        "gradient buffer has {} elements, value buffer {}",
                        p.grad.len(),
                        p.value.len()
                    ),
                });
            }
        }
        if self.established {
            if params.len() != self.tensors.len() {
                return Err(OptimError::TensorSetChanged {
                    step,
                    message: format!(
                        "{} tensors given, {} expected (the set of the first step)",
                        params.len(),
                        self.tensors.len()
                    ),
                });
            }
            for (i, (p, t)) in params.iter().zip(&self.tensors).enumerate() {
                if p.name != t.name {
                    return Err(OptimError::TensorSetChanged {
                        step,
                        message: format!(
                            "tensor {i} is `{}`, expected `{}` (same names in the same order)",
                            p.name, t.name
                        ),
                    });
                }
                if p.value.len() != t.len {
                    return Err(OptimError::TensorSetChanged {
                        step,
                        message: format!(
                            "tensor `{}` has {} elements, expected {}",
                            p.name,
                            p.value.len(),
                            t.len
                        ),
                    });
                }
            }
        } else {
            let mut seen = HashSet::new();
            for p in params {
                if !seen.insert(p.name) {
                    return Err(OptimError::ShapeMismatch {
                        name: p.name.to_string(),
                        message: "the name appears twice in one step; names must be unique".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates zero state for every tensor if the set is not fixed yet. Returns whether it did
    /// (so that a failed first step can be undone with [`Registry::reset`]).
    pub(crate) fn establish(
        &mut self,
        params: &[ParamMut<'_>],
        classify: impl Fn(&str) -> (bool, bool),
    ) -> bool {
        if self.established {
            return false;
        }
        self.tensors = params
            .iter()
            .map(|p| self.new_slot(p.name, p.value.len(), &classify))
            .collect();
        self.telemetry = params
            .iter()
            .map(|p| TensorTelemetry {
                name: p.name.to_string(),
                weight_norm: 0.0,
                update_norm: 0.0,
                trust_ratio: 1.0,
                learning_rate: 0.0,
            })
            .collect();
        self.established = true;
        true
    }

    fn new_slot(
        &self,
        name: &str,
        len: usize,
        classify: &impl Fn(&str) -> (bool, bool),
    ) -> TensorSlot<P> {
        let (decay, adapt) = classify(name);
        TensorSlot {
            name: name.to_string(),
            len,
            bufs: self
                .slot_names
                .iter()
                .map(|_| StateBuf::zeros(len))
                .collect(),
            buf_max: vec![0.0; self.slot_names.len()],
            partials: vec![Partial::default(); chunks(len)],
            total: Partial::default(),
            decay,
            adapt,
            plan: P::default(),
        }
    }

    /// Forgets everything (used to undo a first step that failed).
    pub(crate) fn reset(&mut self) {
        self.tensors.clear();
        self.telemetry.clear();
        self.established = false;
    }

    /// Writes the serialisable state.
    pub(crate) fn to_state(&self, optimizer: &str, step: u64, skipped: u64) -> OptimizerState {
        OptimizerState {
            optimizer: optimizer.to_string(),
            step,
            skipped_steps: skipped,
            tensors: self
                .tensors
                .iter()
                .map(|t| TensorState {
                    name: t.name.clone(),
                    len: t.len,
                    step,
                    slots: self
                        .slot_names
                        .iter()
                        .zip(&t.bufs)
                        .map(|(n, b)| (n.to_string(), b.to_vec()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Replaces the state by `state` after checking it fully (nothing changes on error).
    pub(crate) fn load(
        &mut self,
        optimizer: &str,
        state: &OptimizerState,
        classify: impl Fn(&str) -> (bool, bool),
    ) -> Result<(), OptimError> {
        if state.optimizer != optimizer {
            return Err(OptimError::StateMismatch(format!(
                "state was written by `{}`, this optimizer is `{optimizer}`",
                state.optimizer
            )));
        }
        let mut seen = HashSet::new();
        for t in &state.tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(OptimError::StateMismatch(format!(
                    "tensor `{}` appears twice",
                    t.name
                )));
            }
            if t.slots.len() != self.slot_names.len() {
                return Err(OptimError::StateMismatch(format!(
                    "tensor `{}` has {} slots, `{optimizer}` needs {:?}",
                    t.name,
                    t.slots.len(),
                    self.slot_names
                )));
            }
            for ((n, b), want) in t.slots.iter().zip(self.slot_names) {
                if n != want {
                    return Err(OptimError::StateMismatch(format!(
                        "tensor `{}`: slot `{n}` where `{want}` was expected",
                        t.name
                    )));
                }
                if b.len() != t.len {
                    return Err(OptimError::StateMismatch(format!(
                        "tensor `{}`: slot `{n}` has {} values, the tensor {}",
                        t.name,
                        b.len(),
                        t.len
                    )));
                }
                if let Some(i) = b.iter().position(|x| !x.is_finite()) {
                    return Err(OptimError::StateMismatch(format!(
                        "tensor `{}`: slot `{n}` element {i} is not finite ({})",
                        t.name, b[i]
                    )));
                }
            }
        }
        let mut tensors = Vec::with_capacity(state.tensors.len());
        for t in &state.tensors {
            let mut slot = self.new_slot(&t.name, t.len, &classify);
            for (k, (_, b)) in t.slots.iter().enumerate() {
                slot.buf_max[k] = b.iter().fold(0.0f64, |a, &x| a.max(x.abs() as f64));
                slot.bufs[k].copy_from_slice(b);
            }
            tensors.push(slot);
        }
        self.telemetry = tensors
            .iter()
            .map(|t| TensorTelemetry {
                name: t.name.clone(),
                weight_norm: 0.0,
                update_norm: 0.0,
                trust_ratio: 1.0,
                learning_rate: 0.0,
            })
            .collect();
        self.tensors = tensors;
        self.established = !self.tensors.is_empty();
        Ok(())
    }
}

/// The error for the first non-finite gradient (tensors in order), if any. `totals` gives the
/// per-tensor `gbits` maxima of a read pass.
pub(crate) fn first_bad_gradient<P>(
    reg: &Registry<P>,
    params: &[ParamMut<'_>],
    step: u64,
) -> Option<OptimError> {
    for (t, p) in reg.tensors.iter().zip(params) {
        if !crate::reduce::bits_finite(t.total.gbits) {
            let (index, value) = crate::reduce::first_non_finite(p.grad).unwrap_or((0, f32::NAN));
            return Some(OptimError::NonFinite {
                what: "gradient",
                name: p.name.to_string(),
                step,
                index,
                value,
            });
        }
    }
    None
}
