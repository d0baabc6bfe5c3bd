//! The CPU training engine of `lamb`: Sequential models of Conv2D, MaxPool2D, Flatten and Dense
//! layers with ReLU, SELU and softmax, over contiguous NHWC f32 buffers reused across steps;
//! convolutions as im2col + GEMM (the `gemm` crate), threads from rayon; softmax cross-entropy
//! from logits; `fit`/`evaluate` driving any `lamb_optim::Optimizer` by parameter name; weights
//! as safetensors with Keras names and layouts. Same seed, same results, for any thread count.

pub mod bench;
mod error;
#[cfg(test)]
mod grad_tests;
mod grads;
mod io;
pub mod kernels;
mod model;
#[cfg(test)]
mod tests;
mod train;

pub use error::NnError;
pub use grads::{local_gradients, split_even, GradientAccumulator};
pub use model::{classic_cnn, Activation, Model, Padding, Sequential};
pub use train::*;
