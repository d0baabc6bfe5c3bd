//! Global gradient-norm clipping (timm's and apex's `max_grad_norm`): every gradient divided
//! by `max(G / max_norm, 1)`, `G` the L2 norm of all gradients together.
//!
//! Burn's module optimizer steps one parameter at a time, so a rule that needs all gradients
//! at once runs before it. [`Lamb::step`](crate::Lamb::step) does this itself when the
//! configuration has `max_grad_norm`; users of the plain Burn adaptor
//! ([`lamb_module_optimizer`](crate::lamb_module_optimizer)) call [`clip_grad_norm`] on the
//! gradients before `ModuleOptimizer::step`.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Divides every gradient of `module`'s parameters in `grads` by `max(G / max_norm, 1)`, where
/// `G` is the global L2 norm of those gradients, with tensor operations on their device
/// (nothing is read to the host). Gradients of parameters not in `module` are left alone.
pub fn clip_grad_norm<M: Module>(
    module: &M,
    grads: GradientsParams,
    max_norm: f32,
) -> GradientsParams {
    let mut sum = SquaredSum {
        grads: &grads,
        sum: None,
    };
    module.visit(&mut sum);
    match sum.sum {
        Some(s) => scale(module, grads, s, max_norm),
        None => grads,
    }
}

/// Multiplies the gradients by `1 / max(sqrt(squared_sum) / max_norm, 1)`.
pub(crate) fn scale<M: Module>(
    module: &M,
    grads: GradientsParams,
    squared_sum: Tensor<1>,
    max_norm: f32,
) -> GradientsParams {
    // Multiplied by the reciprocal, as lamb-optim applies its clipping factor.
    let factor = squared_sum
        .sqrt()
        .div_scalar(max_norm)
        .clamp_min(1.0)
        .recip();
    let mut s = Scale { grads, factor };
    module.visit(&mut s);
    s.grads
}

/// Sum of the squared gradients of a module's parameters, as a one-element tensor.
struct SquaredSum<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                None => s,
                Some(acc) => acc + s,
            });
        }
    }
}

struct Scale {
    grads: GradientsParams,
    factor: Tensor<1>,
}

impl ModuleVisitor for Scale {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let f: Tensor<D> = self.factor.clone().unsqueeze();
            self.grads.register(param.id, g.mul(f));
        }
    }
}
