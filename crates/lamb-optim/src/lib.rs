//! Optimizers on named f32 tensors: LAMB (tensorflow-addons semantics by default, with the
//! variants of NVLAMB, pytorch-lamb, timm and optax as presets), LARS, Adam, AdamW and SGD.
//!
//! The crate knows nothing about layers or engines: a step receives a list of [`ParamMut`]
//! (name, shape, parameter buffer, gradient buffer) and updates the parameters in place.
//!
//! ```
//! use lamb_optim::{Lamb, LambConfig, Optimizer, ParamMut};
//! let mut w = vec![1.0f32, 2.0];
//! let g = vec![0.1f32, -0.2];
//! let mut opt = Lamb::new(LambConfig::default()).unwrap();
//! opt.step(&mut [ParamMut::new("dense/kernel", &[2], &mut w, &g)]).unwrap();
//! assert!(w[0] < 1.0 && w[1] > 2.0);
//! ```
//!
//! Construction from names and flags: [`build`] with an [`OptimizerSpec`]. Each optimizer's
//! [`Description`] (`OptimizerKind::Lamb.description()`) lists its hyperparameters with their
//! ranges and docs and its presets with their references; [`defaults`], [`effective`] and
//! [`preset_changes`] give the values and formula switches they lead to. Every optimizer
//! validates its hyperparameters at construction ([`OptimError::InvalidHyperparameter`] names
//! the argument, value and valid range), checks every tensor and gradient before changing
//! anything in a step, and saves/loads its state bit-exactly ([`Optimizer::state`]).
//!
//! Verification against the recorded reference trajectories in `../shared/golden` (every value
//! of every step within `2e-6*|expected| + 1e-7`; `tests/golden.rs`):
//! - [`LambPreset::Tfa`]: all 8 `tfa/` LAMB files; Keras [`Adam`]: `tfa/adam_a_keras_defaults`.
//! - [`LambPreset::PytorchLamb`], [`LambPreset::TorchOptimizer`], [`LambPreset::Timm`],
//!   [`LambPreset::Optax`]: every file of their families (including timm's param groups,
//!   torch_optimizer's `debias`, pytorch-lamb's `adam=True`).
//! - [`Lars`] (timm and optax forms), PyTorch [`Adam`], AdamW and [`Sgd`] (Nesterov).
//! - [`LambPreset::Nvlamb`] and [`LambPreset::DeepSpeed`] follow their documented formulas only
//!   (CUDA-only references, no golden files).
//!
//! Speed: LAMB makes two passes (it needs every norm before any weight changes): by default
//! ([`StepMemory::Fast`]) the first stages the new moments and updates in scratch buffers with
//! non-temporal stores and the second reads only update and weight (about 24 bytes read per
//! parameter); [`StepMemory::Lean`] uses no scratch and reads 32. LARS makes a read pass for
//! the norms and a write pass (SGD is LARS without the trust ratio); Adam a gradient check
//! that walks eight chunks side by side (one memory stream per thread leaves bandwidth
//! unused) plus one fused pass. [`NonFinitePolicy::Unchecked`] drops the checks, as PyTorch
//! does. Loops run over fixed 16-lane blocks compiled for AVX-512/AVX2 at run time; rayon
//! works across tensors and across fixed [`CHUNK`]-element chunks inside them, reduced in a
//! fixed order, so results are bit-identical for any thread count; no allocation after the
//! first step.

// The element loops index several arrays in step with one lane index; that form is what
// the compiler vectorises reliably.
#![allow(clippy::needless_range_loop)]

mod api;
pub use api::*;

mod adam;
pub mod bench;
mod common;
mod describe;
mod lamb;
mod lars;
mod patterns;
mod reduce;
mod schedule;
mod sgd;
mod simd;
mod slots;
mod spec;
mod validate;

pub use adam::{adam_config, Adam, AdamConfig, EpsilonMode};
pub use describe::{
    defaults, effective, preset_changes, settings_line, Description, Hyperparameter, Key,
    OptimizerKind, Preset, Setting, Value, ValueKind,
};
pub use lamb::{lamb_config, BiasCorrection, Lamb, LambConfig, LambPreset, StepMemory};
pub use lars::{lars_config, Lars, LarsConfig, LarsForm, LarsPreset};
pub use patterns::{Exclusions, LayerAdaptation};

/// The scalar coefficients of a step (`1 - beta`, bias corrections, learning rate, clipping
/// divisor) as the optimizers here compute them, for the framework adapters (`lamb-candle`),
/// whose tensor arithmetic must use the same scalars.
pub mod scalars {
    pub use crate::common::{bias_correction, clip_divisor, complement, scalar};
}
pub use reduce::CHUNK;
pub use schedule::{linear_scaled_learning_rate, sqrt_scaled_learning_rate, Schedule};
pub use sgd::{sgd_config, Sgd, SgdConfig};
pub use simd::{best_available, set_simd_level, simd_level, SimdLevel};
pub use spec::{build, OptimizerSpec};
pub use validate::Range;
