//! The crate's error type.

/// What can go wrong building, stepping, saving or loading an optimizer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid configuration (hyperparameter out of range, bad regex, ...), as
    /// `lamb-optim` reports it.
    #[error(transparent)]
    Config(#[from] lamb_optim::OptimError),
    /// A gradient or parameter that does not fit the optimizer (unknown parameter, shape).
    #[error("{0}")]
    Parameter(String),
    /// A gradient or an update is NaN or infinite; the step changed nothing.
    #[error("non-finite {what} in tensor `{name}` at step {step}: the step changed nothing")]
    NonFinite {
        /// `gradient` or `update`.
        what: &'static str,
        /// The parameter's name.
        name: String,
        /// The step (1-based) that was attempted.
        step: u64,
    },
    /// Saved optimizer state that cannot be written, read, or does not fit.
    #[error("optimizer state {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
