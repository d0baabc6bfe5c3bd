//! The types every optimizer of the family shares: the tensor view a step receives, the
//! [`Optimizer`] trait, per-tensor telemetry, serialisable state and the error type.

use serde::{Deserialize, Serialize};

/// One parameter tensor handed to [`Optimizer::step`]: its name (searched by exclusion regexes,
/// e.g. `conv2d/kernel`), its shape, the parameter values (updated in place) and the gradient.
#[derive(Debug)]
pub struct ParamMut<'a> {
    /// Tensor name, Keras style (`dense/bias`).
    pub name: &'a str,
    /// Shape, row-major; its product must equal `value.len()`.
    pub shape: &'a [usize],
    /// Parameter values, updated in place by a step.
    pub value: &'a mut [f32],
    /// Gradient of the loss with respect to `value`; same length.
    pub grad: &'a [f32],
    /// The largest `|grad|` element as measured by the code that made the gradient in its last
    /// pass over it (see [`ParamMut::with_grad_max_abs`]); `None`: the optimizer measures it.
    pub grad_max_abs: Option<f32>,
}

impl<'a> ParamMut<'a> {
    /// Bundles a name, shape, parameter buffer and gradient buffer.
    pub fn new(name: &'a str, shape: &'a [usize], value: &'a mut [f32], grad: &'a [f32]) -> Self {
        Self {
            name,
            shape,
            value,
            grad,
            grad_max_abs: None,
        }
    }

    /// Declares the largest `|grad|` element, measured where the gradient was made (the
    /// engine's or the reducer's last pass over it; [`max_abs`] computes it): NaN or infinite
    /// when any element is not finite, never below the true maximum. A checked Adam/AdamW
    /// step then skips its own read of the gradient (4 of 32 bytes per parameter) and still
    /// refuses a non-finite step before anything is written. A wrong declaration breaks that
    /// guarantee.
    pub fn with_grad_max_abs(mut self, max_abs: f32) -> Self {
        self.grad_max_abs = Some(max_abs);
        self
    }
}

/// The largest `|x|` of `x` (0 when empty), or NaN when any element is NaN, or infinity when
/// any is infinite and none NaN: the declaration [`ParamMut::with_grad_max_abs`] takes.
pub fn max_abs(x: &[f32]) -> f32 {
    let bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    f32::from_bits(bits)
}

/// What one step did to one tensor, for logging and plotting trust ratios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorTelemetry {
    /// Tensor name.
    pub name: String,
    /// L2 norm of the weights before the step (after any clamp the variant applies).
    pub weight_norm: f32,
    /// L2 norm of the update direction the trust ratio divides by (before lr and ratio).
    pub update_norm: f32,
    /// Trust ratio applied (1 where the tensor is not adapted or a norm is 0).
    pub trust_ratio: f32,
    /// Learning rate used at this step.
    pub learning_rate: f32,
}

/// Result of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutcome {
    /// Every tensor was updated.
    Applied,
    /// A gradient or update was not finite and [`NonFinitePolicy::SkipStep`] was chosen: no
    /// tensor changed and the step counter did not advance.
    Skipped,
}

/// What to do when a gradient or a computed update is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NonFinitePolicy {
    /// Return [`OptimError::NonFinite`] naming the tensor and step; nothing is changed.
    #[default]
    Error,
    /// Skip the whole step (every tensor), count it in [`Optimizer::skipped_steps`].
    SkipStep,
    /// No check before writing, as PyTorch's optimizers: a non-finite gradient propagates
    /// into the weights and moments. Saves the read pass that proves a step safe before any
    /// tensor changes (LAMB: each tensor's norms and update then run back to back, while the
    /// tensor is still in cache). For callers that check the loss or gradients themselves.
    /// Honoured by LAMB, Adam and AdamW; LARS and SGD check as with `Error`.
    Unchecked,
}

/// Serialisable optimizer state: everything needed to resume bit-identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// Which optimizer wrote this state (e.g. `lamb`), checked on load.
    pub optimizer: String,
    /// Steps applied so far (the schedule position).
    pub step: u64,
    /// Steps skipped because of non-finite values.
    pub skipped_steps: u64,
    /// Per-tensor slots, in the order of the tensors at the last step.
    pub tensors: Vec<TensorState>,
}

/// Per-tensor state slots (moments, momentum buffers), by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorState {
    /// Tensor name.
    pub name: String,
    /// Number of elements.
    pub len: usize,
    /// Per-tensor step counter (variants that count per tensor).
    pub step: u64,
    /// Named slots, e.g. `m`, `v`, `momentum`; each of length `len`.
    pub slots: Vec<(String, Vec<f32>)>,
}

/// Errors of this crate. Each names what was wrong, where and what is valid.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OptimError {
    /// A hyperparameter is outside its valid range.
    #[error("invalid hyperparameter `{name}` = {value}: {valid}")]
    InvalidHyperparameter {
        /// Argument name as in tensorflow-addons (`learning_rate`, `beta_1`, ...).
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// The valid range, in words.
        valid: String,
    },
    /// An exclusion pattern is not a valid (or supported) regular expression.
    #[error("invalid regular expression {pattern:?} in `{argument}`: {message}")]
    InvalidRegex {
        /// Which list (`exclude_from_weight_decay`, ...).
        argument: &'static str,
        /// The pattern.
        pattern: String,
        /// The regex crate's message (look-around and backreferences are unsupported).
        message: String,
    },
    /// Buffers of one tensor disagree in length with each other or with the shape.
    #[error("tensor `{name}`: {message}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// What disagrees.
        message: String,
    },
    /// The tensors of this step differ from those of earlier steps (names, order or lengths).
    #[error("tensor set changed at step {step}: {message}")]
    TensorSetChanged {
        /// The step (1-based) that was attempted.
        step: u64,
        /// What changed.
        message: String,
    },
    /// A gradient or an update is NaN or infinite.
    #[error("non-finite {what} in tensor `{name}` at step {step} (element {index}: {value})")]
    NonFinite {
        /// `gradient` or `update`.
        what: &'static str,
        /// Tensor name.
        name: String,
        /// The step (1-based) that was attempted.
        step: u64,
        /// Index of the first offending element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A saved state does not fit this optimizer or these tensors.
    #[error("cannot load optimizer state: {0}")]
    StateMismatch(String),
}

/// An optimizer of the family. One instance owns the state of every tensor it has stepped.
pub trait Optimizer: Send {
    /// Short name (`lamb`, `lars`, `adam`, `adamw`, `sgd`).
    fn name(&self) -> &'static str;

    /// Applies one step to every tensor. All gradients are checked for finiteness before
    /// anything changes; on error no tensor and no state is modified.
    fn step(&mut self, params: &mut [ParamMut<'_>]) -> Result<StepOutcome, OptimError>;

    /// Telemetry of the last applied step, one entry per tensor in step order.
    fn telemetry(&self) -> &[TensorTelemetry];

    /// Steps applied so far.
    fn steps(&self) -> u64;

    /// Steps skipped under [`NonFinitePolicy::SkipStep`].
    fn skipped_steps(&self) -> u64;

    /// The learning rate the next step will use (after the schedule).
    fn current_learning_rate(&self) -> f32;

    /// A copy of the full state, for checkpoints.
    fn state(&self) -> OptimizerState;

    /// Restores a state written by [`Optimizer::state`] of the same optimizer.
    fn load_state(&mut self, state: &OptimizerState) -> Result<(), OptimError>;

    /// The passes a step makes over the bulk of the parameters, in order, with the bytes
    /// per parameter each reads and writes (for benchmarks: the memory traffic a step needs).
    /// Empty when unknown.
    fn memory_passes(&self) -> Vec<MemoryPass> {
        Vec::new()
    }
}

/// One pass of a step over the parameters: f32 bytes per parameter read and written, counted
/// for a tensor that is decayed when decay is on (the bulk of a model). A write to a line the
/// pass does not read costs a line fetch too unless it is a non-temporal store (`streamed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPass {
    /// What the pass does (`check`, `update`, `stage`, ...).
    pub name: &'static str,
    /// Bytes read per parameter.
    pub read: u32,
    /// Bytes written per parameter.
    pub written: u32,
    /// Whether the writes go to lines not read in the pass, with non-temporal stores.
    pub streamed: bool,
}

impl MemoryPass {
    /// A pass reading `read` and writing `written` bytes per parameter in place.
    pub const fn new(name: &'static str, read: u32, written: u32) -> Self {
        Self {
            name,
            read,
            written,
            streamed: false,
        }
    }

    /// Bytes moved per parameter (read + written).
    pub fn bytes(&self) -> u32 {
        self.read + self.written
    }
}
