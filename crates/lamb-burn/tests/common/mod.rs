//! Helpers shared by the integration tests: a module of named flat parameters, gradients made
//! by a real backward pass, values read back.

#![allow(dead_code)]

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use lamb_burn::NamedParam;

/// A module holding flat (1-D) parameters: the optimizers' arithmetic is element-wise plus
/// whole-tensor norms, so a tensor's shape does not change its trajectory.
#[derive(Module, Debug)]
pub struct Vars {
    /// The parameters, in order.
    pub p: Vec<Param<Tensor<1>>>,
}

/// Burn's default CPU device (flex in these tests) with autodiff, as training uses.
pub fn device() -> Device {
    Device::default().autodiff()
}

/// A 1-D tensor holding `x`.
pub fn tensor(x: &[f32], dev: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(x.to_vec(), [x.len()]), dev)
}

/// A module with one parameter per initial value list.
pub fn make_vars(init: &[Vec<f32>], dev: &Device) -> Vars {
    Vars {
        p: init
            .iter()
            .map(|x| Param::from_tensor(tensor(x, dev).require_grad()))
            .collect(),
    }
}

/// The parameters of `vars` under the given names.
pub fn named(vars: &Vars, names: &[String]) -> Vec<NamedParam> {
    vars.p
        .iter()
        .zip(names)
        .map(|(p, n)| NamedParam {
            id: p.id,
            name: n.clone(),
            shape: p.val().dims().to_vec(),
        })
        .collect()
}

/// Gradients holding exactly `gs` for the first `gs.len()` parameters, made the way users make
/// them: the backward pass of `sum_i sum(w_i * g_i)` (whose gradient is `1 * g_i`, exact).
pub fn grads_of(vars: &Vars, gs: &[Vec<f32>]) -> GradientsParams {
    let mut loss: Option<Tensor<1>> = None;
    for (p, g) in vars.p.iter().zip(gs) {
        let w = p.val();
        let term = (w.clone() * tensor(g, &w.device())).sum();
        loss = Some(match loss {
            None => term,
            Some(l) => l + term,
        });
    }
    let loss = loss.expect("at least one gradient");
    GradientsParams::from_grads(loss.backward(), vars)
}

/// The values of every parameter.
pub fn values(vars: &Vars) -> Vec<Vec<f32>> {
    vars.p
        .iter()
        .map(|p| {
            p.val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
        })
        .collect()
}

/// The golden tolerance of lamb-optim's replay: `2e-6*|expected| + 1e-7`.
pub fn close(got: f32, exp: f32) -> bool {
    ((got as f64) - (exp as f64)).abs() <= 2e-6 * (exp as f64).abs() + 1e-7
}
