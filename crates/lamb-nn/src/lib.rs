//! The CPU training engine of `lamb`. Models are Keras-style: a graph of named layers
//! ([`ModelSpec`]: built in Rust, built in (`seed_cnn`, `resnet20`), or read from a tf.keras
//! `model.to_json()` file), each layer one module of `layers` (Conv2D, MaxPooling2D,
//! AveragePooling2D, GlobalAveragePooling2D, Flatten, Dense, Dropout, Activation,
//! BatchNormalization, Add). Two engines run them over contiguous NHWC f32 buffers reused
//! across steps: the fused engine of the seed CNN's stacks ([`Sequential`]: convolutions by
//! direct AVX-512 kernels and Winograd F(2,3) for 3x3 stride 1, im2col + GEMM with the `gemm`
//! crate elsewhere, a convolution that feeds a max-pool keeping its output in cache for it,
//! chunks of images across rayon threads), chosen where a description matches it, and the
//! general graph engine for everything else (the same convolution kernels, one layer at a
//! time). Softmax cross-entropy from logits; `fit`/`evaluate` driving any
//! `lamb_optim::Optimizer` by parameter name; weights (and BatchNormalization's moving
//! statistics) as safetensors with Keras names and layouts, with the model's description.
//! Same seed, same results, for any thread count.

pub mod bench;
mod error;
pub mod files;
#[cfg(test)]
mod grad_tests;
mod grads;
mod graph;
#[cfg(test)]
mod graph_tests;
mod io;
#[macro_use]
pub mod kernels;
mod layers;
mod model;
mod spec;
#[cfg(test)]
mod tests;
mod train;

pub use error::NnError;
pub use grads::{local_gradients, split_even, GradientAccumulator};
pub use model::{classic_cnn, classic_cnn_for, Activation, Model, Padding, Sequential};
pub use spec::ModelSpec;
pub use train::*;
