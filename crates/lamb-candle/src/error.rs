//! Errors: candle's own [`candle_core::Error`], so the optimizers fit `candle_nn::Optimizer`.

/// candle's result type, used by every fallible function of this crate.
pub type Result<T> = candle_core::Result<T>;

/// A candle error carrying a message.
pub(crate) fn msg(text: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::msg(text)
}

/// A `lamb-optim` error (invalid hyperparameter, regex, ...) as a candle error, message kept.
pub(crate) fn optim(e: lamb_optim::OptimError) -> candle_core::Error {
    candle_core::Error::msg(e)
}
