//! LAMB and LARS for [Burn](https://burn.dev) 0.22: the `lamb-optim` optimizers (every
//! preset: tfa, nvlamb, pytorch-lamb, torch-optimizer, timm, optax, deepspeed; LARS timm and
//! optax), with exclusion patterns by parameter name, trust-ratio clamps, gradient clipping and
//! schedules, on Burn's own optimizer interface.
//!
//! Names, defaults, presets and rules come from `lamb-optim` (build a [`LambConfig`] with
//! [`LambConfig::preset`] or from an [`OptimizerSpec`] with [`lamb_config`]); this crate only
//! evaluates the formula with Burn tensor operations on each parameter's own device: a step
//! copies no tensor to the host (with a checked [`NonFinitePolicy`], one scalar says whether
//! the step is finite).
//!
//! Two layers:
//! - [`LambRule`] and [`LarsRule`] implement Burn's per-parameter [`burn::optim::Optimizer`];
//!   [`lamb_module_optimizer`] / [`lars_module_optimizer`] wrap them in a plain Burn
//!   `ModuleOptimizer` with one parameter group per class (decayed, adapted), the classes found
//!   by applying the exclusion patterns to the module paths of the parameters.
//! - [`Lamb`] and [`Lars`] wrap that `ModuleOptimizer` and add what a per-parameter step
//!   cannot do: global gradient-norm clipping before the step (timm's `max_grad_norm`; for the
//!   plain adaptor call [`clip_grad_norm`] yourself), the all-or-nothing finiteness check,
//!   per-tensor telemetry ([`Lamb::telemetry`], [`Lamb::trust_ratios`]) and state files in
//!   Burn's burnpack record format with a fit check ([`Lamb::save`], [`Lamb::load`]; a
//!   resumed run continues exactly).
//!
//! Parameter names are module paths (`encoder.0.attention.query.weight`: the struct fields,
//! `Vec` and tuple indices that lead to the parameter), the same paths Burn's `ParamGroup`
//! matches; [`module_params`] lists them.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Tensor};
//! use lamb_burn::{Lamb, LambConfig, LambPreset};
//! let device = Device::default().autodiff();
//! let mut model: Linear = LinearConfig::new(4, 1).init(&device);
//! let cfg = LambConfig::preset(LambPreset::Timm).with_exclusions(&["bias"], &[]);
//! let mut opt = Lamb::new(&model, cfg.with_learning_rate(1e-2))?;
//! let (x, y) = (Tensor::<2>::ones([8, 4], &device), Tensor::<2>::zeros([8, 1], &device));
//! for _ in 0..10 {
//!     let loss = (model.forward(x.clone()) - y.clone()).square().mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     let (stepped, outcome) = opt.step(model, grads);
//!     model = stepped;
//!     outcome?;
//! }
//! println!("{:?}", opt.trust_ratios()); // per-tensor trust ratios of the last step
//! # Ok::<(), lamb_burn::Error>(())
//! ```
//!
//! Verified in f32 (Burn's default float type; other float types run the same operations in
//! that type, unverified) against every trajectory in `../shared/golden` on Burn's CPU backend
//! (tests/golden.rs) and against `lamb-optim` for the presets without one
//! (tests/against_core.rs).

#![warn(missing_docs)]

mod clip;
mod engine;
mod error;
mod lamb;
mod lars;
mod names;

pub use clip::clip_grad_norm;
pub use error::{Error, Result};
pub use lamb::{lamb_module_optimizer, Lamb, LambRule, LambState};
pub use lamb_optim::{
    lamb_config, lars_config, BiasCorrection, LambConfig, LambPreset, LarsConfig, LarsForm,
    LarsPreset, LayerAdaptation, NonFinitePolicy, OptimizerKind, OptimizerSpec, Schedule,
    StepOutcome, TensorTelemetry,
};
pub use lars::{lars_module_optimizer, Lars, LarsRule, LarsState};
pub use names::{module_params, NamedParam};
