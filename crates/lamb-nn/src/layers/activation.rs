//! Keras `Activation` layer and the activation functions layers apply (relu, selu, elu, gelu,
//! tanh, sigmoid, softmax over the last axis, linear).

use super::config::Config;
use super::{one_input, BuildCtx, Layer, Pass, Scratch, Shape};
use rayon::prelude::*;

const SELU_ALPHA: f32 = 1.673_263_2;
const SELU_SCALE: f32 = 1.050_701;
/// Values per parallel block of element-wise work.
const BLOCK: usize = 1 << 14;

/// An activation function by its Keras name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActFn {
    Linear,
    Relu,
    Selu,
    Elu,
    Gelu,
    Tanh,
    Sigmoid,
    Softmax,
}

impl ActFn {
    /// The function Keras calls `name`.
    pub fn from_keras(name: &str) -> Result<ActFn, String> {
        Ok(match name {
            "linear" => ActFn::Linear,
            "relu" => ActFn::Relu,
            "selu" => ActFn::Selu,
            "elu" => ActFn::Elu,
            "gelu" => ActFn::Gelu,
            "tanh" => ActFn::Tanh,
            "sigmoid" => ActFn::Sigmoid,
            "softmax" => ActFn::Softmax,
            _ => {
                return Err(format!(
                    "activation `{name}` is not supported (supported: linear, relu, selu, elu, gelu, tanh, sigmoid, softmax)"
                ))
            }
        })
    }

    /// Reads the `activation` option of a config (`linear` when absent).
    pub fn read(cfg: &Config<'_>) -> Result<ActFn, String> {
        ActFn::from_keras(cfg.str_or("activation", "linear")?)
    }

    /// Whether the backward pass needs the pre-activation input (else the output suffices).
    pub fn needs_input(self) -> bool {
        self == ActFn::Gelu
    }

    /// Applies the function in place to rows of `width` values (softmax is per row).
    pub fn apply(self, v: &mut [f32], width: usize) {
        match self {
            ActFn::Linear => {}
            ActFn::Softmax => v.par_chunks_mut(width * 64).for_each(|rows| {
                for row in rows.chunks_exact_mut(width) {
                    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let mut s = 0.0f32;
                    for x in row.iter_mut() {
                        *x = (*x - m).exp();
                        s += *x;
                    }
                    row.iter_mut().for_each(|x| *x /= s);
                }
            }),
            f => v
                .par_chunks_mut(BLOCK)
                .for_each(|b| b.iter_mut().for_each(|x| *x = f.scalar(*x))),
        }
    }

    fn scalar(self, x: f32) -> f32 {
        match self {
            ActFn::Linear | ActFn::Softmax => x,
            ActFn::Relu => x.max(0.0),
            ActFn::Selu => {
                if x > 0.0 {
                    SELU_SCALE * x
                } else {
                    SELU_SCALE * SELU_ALPHA * x.exp_m1()
                }
            }
            ActFn::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            ActFn::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            ActFn::Tanh => x.tanh(),
            ActFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }

    /// Multiplies `dy` in place by the derivative, from the output `y` (and the input `x`
    /// when [`ActFn::needs_input`]); rows of `width` values.
    pub fn backward(self, x: Option<&[f32]>, y: &[f32], dy: &mut [f32], width: usize) {
        match self {
            ActFn::Linear => {}
            ActFn::Softmax => dy
                .par_chunks_mut(width * 64)
                .zip(y.par_chunks(width * 64))
                .for_each(|(d, y)| {
                    for (d, y) in d.chunks_exact_mut(width).zip(y.chunks_exact(width)) {
                        let dot: f32 = d.iter().zip(y).map(|(a, b)| a * b).sum();
                        d.iter_mut().zip(y).for_each(|(d, y)| *d = y * (*d - dot));
                    }
                }),
            ActFn::Gelu => {
                let x = x.expect("gelu backward needs its input");
                dy.par_chunks_mut(BLOCK)
                    .zip(x.par_chunks(BLOCK))
                    .for_each(|(d, x)| {
                        for (d, &x) in d.iter_mut().zip(x) {
                            let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
                            let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
                            *d *= cdf + x * pdf;
                        }
                    })
            }
            f => dy
                .par_chunks_mut(BLOCK)
                .zip(y.par_chunks(BLOCK))
                .for_each(|(d, y)| {
                    for (d, &y) in d.iter_mut().zip(y) {
                        *d *= f.derivative_from_output(y);
                    }
                }),
        }
    }

    /// The derivative at the output `y` (element-wise functions other than gelu; 1 for the
    /// others).
    pub(crate) fn derivative_from_output(self, y: f32) -> f32 {
        match self {
            ActFn::Relu => (y > 0.0) as u8 as f32,
            ActFn::Selu => {
                if y > 0.0 {
                    SELU_SCALE
                } else {
                    y + SELU_SCALE * SELU_ALPHA
                }
            }
            ActFn::Elu => {
                if y > 0.0 {
                    1.0
                } else {
                    y + 1.0
                }
            }
            ActFn::Tanh => 1.0 - y * y,
            ActFn::Sigmoid => y * (1.0 - y),
            ActFn::Linear | ActFn::Softmax | ActFn::Gelu => 1.0,
        }
    }
}

/// Keras `Activation`.
#[derive(Debug)]
struct Activation {
    act: ActFn,
    shape: Shape,
}

pub(super) fn build(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    let cfg = Config(ctx.config);
    cfg.common()?;
    let shape = one_input(ctx.inputs)?.clone();
    let act = ActFn::read(&cfg)?;
    Ok(Box::new(Activation { act, shape }))
}

impl Layer for Activation {
    fn class(&self) -> &'static str {
        "Activation"
    }
    fn output_shape(&self) -> &Shape {
        &self.shape
    }
    fn strip_softmax(&mut self) -> bool {
        let was = self.act == ActFn::Softmax;
        if was {
            self.act = ActFn::Linear;
        }
        was
    }
    fn as_activation(&self) -> Option<ActFn> {
        Some(self.act)
    }
    fn forward(&mut self, _: Pass, inputs: &[&[f32]], out: &mut [f32], _: usize, _: &mut Scratch) {
        out.copy_from_slice(inputs[0]);
        let width = *self.shape.last().unwrap_or(&1);
        self.act.apply(out, width);
    }
    fn backward(
        &mut self,
        inputs: &[&[f32]],
        out: &[f32],
        dy: &mut [f32],
        dx: &mut [Option<&mut [f32]>],
        _: usize,
        _: &mut Scratch,
    ) {
        let width = *self.shape.last().unwrap_or(&1);
        self.act.backward(Some(inputs[0]), out, dy, width);
        if let Some(dx) = dx[0].as_deref_mut() {
            dx.copy_from_slice(dy);
        }
    }
}
