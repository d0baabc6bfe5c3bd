//! The CPU training engine of `lamb`: Sequential models of Conv2D, MaxPool2D, Flatten and Dense
//! layers with ReLU, SELU and softmax, over contiguous NHWC f32 buffers reused across steps;
//! convolutions by direct AVX-512 kernels and Winograd F(2,3) for 3x3 stride 1 (im2col + GEMM
//! with the `gemm` crate where those do not apply or AVX-512 is missing), a convolution that
//! feeds a max-pool keeping its output in cache for it, chunks of images across rayon threads;
//! softmax cross-entropy from logits; `fit`/`evaluate` driving any `lamb_optim::Optimizer` by
//! parameter name; weights as safetensors with Keras names and layouts. Same seed, same
//! results, for any thread count.

pub mod bench;
mod error;
#[cfg(test)]
mod grad_tests;
mod grads;
mod graph;
#[cfg(test)]
mod graph_tests;
mod io;
pub mod kernels;
mod layers;
mod model;
mod spec;
#[cfg(test)]
mod tests;
mod train;

pub use error::NnError;
pub use grads::{local_gradients, split_even, GradientAccumulator};
pub use model::{classic_cnn, Activation, Model, Padding, Sequential};
pub use spec::ModelSpec;
pub use train::*;
