//! The engine's error type.

use std::path::PathBuf;

/// Errors of the engine. Each says what was wrong, where, and what is valid.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// The layer stack cannot be built as described.
    #[error("invalid model: layer {layer} ({kind}): {message}")]
    InvalidModel {
        /// 0-based index of the offending layer.
        layer: usize,
        /// Layer type (`Conv2D`, `Dense`, ...).
        kind: &'static str,
        /// What is wrong and what is valid.
        message: String,
    },
    /// A layer of a model description is invalid (unknown, an unsupported option, shapes
    /// that do not fit, part of a cycle, ...).
    #[error("invalid model: layer `{layer}` ({class}): {message}")]
    InvalidLayer {
        /// The layer's name.
        layer: String,
        /// Its Keras class.
        class: String,
        /// What is wrong and what is valid.
        message: String,
    },
    /// A model description is malformed as a whole (not Keras JSON, two inputs, no output).
    #[error("invalid model description: {0}")]
    ModelFile(String),
    /// A model file could not be used.
    #[error("model file {path}: {cause}")]
    ModelFileAt {
        /// The file.
        path: PathBuf,
        /// What is wrong (in the message, not a `source()`, so chains print it once).
        cause: Box<NnError>,
    },
    /// An argument is outside its valid range.
    #[error("invalid argument `{name}` = {value}: {valid}")]
    InvalidArgument {
        /// Argument name.
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// The valid range, in words.
        valid: String,
    },
    /// Input data does not fit the model (image shape, label range, buffer lengths).
    #[error("data does not fit the model: {0}")]
    DataMismatch(String),
    /// No parameter of that name exists.
    #[error("unknown parameter `{name}`; the model has: {known}")]
    UnknownParameter {
        /// The name asked for.
        name: String,
        /// Comma-separated list of the model's parameter names.
        known: String,
    },
    /// A parameter buffer has the wrong number of values.
    #[error("parameter `{name}`: got {found} values, expected {expected}")]
    ParameterLength {
        /// Parameter name.
        name: String,
        /// Values given.
        found: usize,
        /// Values expected.
        expected: usize,
    },
    /// The training loss became NaN or infinite; nothing was modified by that step.
    #[error("non-finite training loss {value} at epoch {epoch}, step {step} (1-based); parameters were not modified by this step")]
    NonFiniteLoss {
        /// Epoch, 1-based (0 outside `fit`).
        epoch: usize,
        /// Step within the epoch, 1-based (0 outside `fit`).
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// The optimizer refused a step (its error names the tensor).
    #[error(
        "optimizer step failed at epoch {epoch}, step {step} (1-based; 0 outside `fit`): {cause}"
    )]
    Optimizer {
        /// Epoch, 1-based (0 outside `fit`).
        epoch: usize,
        /// Step within the epoch, 1-based (0 outside `fit`).
        step: usize,
        /// The optimizer's error (in the message, not a `source()`, so chains print it once).
        cause: lamb_optim::OptimError,
    },
    /// Reading or writing a file failed.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done (`writing`, `reading`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error (in the message, not a `source()`, so chains print it once).
        cause: std::io::Error,
    },
    /// A weights file is malformed or does not match the model.
    #[error("weights file {path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong (tensor, found vs expected).
        message: String,
    },
    /// An event callback of `fit` returned an error.
    #[error("fit callback failed: {0}")]
    Callback(String),
}
