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

mod api;
pub use api::*;
