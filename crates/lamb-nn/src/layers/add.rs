//! Keras `Add`: the element-wise sum of two or more inputs of the same shape (residual
//! connections). A ReLU `Activation` reading only this layer is applied here
//! ([`Layer::fuse_activation`]).

use rayon::prelude::*;

use super::config::Config;
use super::{ActFn, BuildCtx, Layer, Pass, Scratch, Shape};

/// Values per parallel block.
const BLOCK: usize = 1 << 14;

simd_fn! {
/// `dy` times the ReLU derivative at the output `y`, as [`ActFn::Relu`]'s backward computes it.
fn relu_mask(dy: &mut [f32], y: &[f32]) {
    for (d, y) in dy.iter_mut().zip(y) {
        *d *= (*y > 0.0) as u8 as f32;
    }
}
}

#[derive(Debug)]
struct Add {
    /// Whether a following ReLU is applied here.
    relu: bool,
    shape: Shape,
}

pub(super) fn build(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    Config(ctx.config).common()?;
    let shape = match ctx.inputs {
        [first, rest @ ..] if !rest.is_empty() => {
            if let Some(other) = rest.iter().find(|s| *s != first) {
                return Err(format!(
                    "inputs of different shapes {first:?} and {other:?}: all must be equal"
                ));
            }
            first.clone()
        }
        _ => {
            return Err(format!(
                "needs at least two inputs, got {}",
                ctx.inputs.len()
            ))
        }
    };
    Ok(Box::new(Add { relu: false, shape }))
}

impl Layer for Add {
    fn class(&self) -> &'static str {
        "Add"
    }
    fn output_shape(&self) -> &Shape {
        &self.shape
    }
    fn fuse_activation(&mut self, act: ActFn) -> bool {
        self.relu = act == ActFn::Relu;
        self.relu
    }
    fn forward(&mut self, _: Pass, inputs: &[&[f32]], out: &mut [f32], _: usize, _: &mut Scratch) {
        let relu = self.relu;
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, o)| {
            let at = b * BLOCK;
            o.copy_from_slice(&inputs[0][at..][..o.len()]);
            for x in &inputs[1..] {
                o.iter_mut().zip(&x[at..]).for_each(|(o, x)| *o += x);
            }
            if relu {
                o.iter_mut().for_each(|o| *o = o.max(0.0));
            }
        });
    }
    fn backward(
        &mut self,
        _: &[&[f32]],
        out: &[f32],
        dy: &mut [f32],
        dx: &mut [Option<&mut [f32]>],
        _: usize,
        _: &mut Scratch,
    ) {
        if self.relu {
            dy.par_chunks_mut(BLOCK)
                .zip(out.par_chunks(BLOCK))
                .for_each(|(d, y)| relu_mask(d, y));
        }
        for d in dx.iter_mut().flatten() {
            d.copy_from_slice(dy);
        }
    }
}
