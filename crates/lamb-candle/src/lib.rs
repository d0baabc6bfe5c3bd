//! LAMB and LARS for [candle](https://github.com/huggingface/candle): the `lamb-optim`
//! optimizers (every preset: tfa, nvlamb, pytorch-lamb, torch-optimizer, timm, optax,
//! deepspeed; LARS timm and optax), with exclusion patterns by parameter name, trust-ratio
//! clamps, gradient clipping and schedules, implementing [`candle_nn::Optimizer`].
//!
//! Names, defaults, presets and rules come from `lamb-optim` (build a [`LambConfig`] with
//! [`LambConfig::preset`] or from an [`OptimizerSpec`] with [`lamb_config`]); this crate only
//! evaluates the formula with candle tensor operations on each variable's own device: a step
//! copies no tensor to the host (with a checked [`NonFinitePolicy`], one scalar says whether
//! the step is finite). Trust ratios are kept on the device and read on request
//! ([`Lamb::telemetry`]); state saves as safetensors and a resumed run continues exactly.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{linear, loss, Module, Optimizer, VarBuilder, VarMap};
//! use lamb_candle::{Lamb, LambConfig, LambPreset};
//! let (dev, varmap) = (Device::Cpu, VarMap::new());
//! let model = linear(4, 1, VarBuilder::from_varmap(&varmap, DType::F32, &dev).pp("fc"))?;
//! let cfg = LambConfig::preset(LambPreset::Timm).with_exclusions(&["bias"], &[]);
//! let mut opt = Lamb::from_varmap(&varmap, cfg.with_learning_rate(1e-2))?;
//! let (x, y) = (Tensor::ones((8, 4), DType::F32, &dev)?, Tensor::zeros((8, 1), DType::F32, &dev)?);
//! for _ in 0..10 { opt.backward_step(&loss::mse(&model.forward(&x)?, &y)?)?; }
//! println!("{:?}", opt.trust_ratios()?); // per-tensor trust ratios of the last step
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Parameters must be f32. Verified against every trajectory in `../shared/golden` on the
//! CPU device (tests/golden.rs) and against `lamb-optim` for the presets without one.

#![warn(missing_docs)]

mod engine;
mod error;
mod lamb;
mod lars;
mod named;

pub use error::Result;
pub use lamb::Lamb;
pub use lamb_optim::{
    lamb_config, lars_config, BiasCorrection, LambConfig, LambPreset, LarsConfig, LarsForm,
    LarsPreset, LayerAdaptation, NonFinitePolicy, OptimizerKind, OptimizerSpec, Schedule,
    StepOutcome, TensorTelemetry,
};
pub use lars::Lars;
