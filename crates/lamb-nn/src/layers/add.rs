//! Keras `Add`: the element-wise sum of two or more inputs of the same shape (residual
//! connections).

use rayon::prelude::*;

use super::config::Config;
use super::{BuildCtx, Layer, Pass, Scratch, Shape};

#[derive(Debug)]
struct Add {
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
    Ok(Box::new(Add { shape }))
}

impl Layer for Add {
    fn class(&self) -> &'static str {
        "Add"
    }
    fn output_shape(&self) -> &Shape {
        &self.shape
    }
    fn forward(&mut self, _: Pass, inputs: &[&[f32]], out: &mut [f32], _: usize, _: &mut Scratch) {
        const BLOCK: usize = 1 << 14;
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, o)| {
            let at = b * BLOCK;
            o.copy_from_slice(&inputs[0][at..][..o.len()]);
            for x in &inputs[1..] {
                o.iter_mut().zip(&x[at..]).for_each(|(o, x)| *o += x);
            }
        });
    }
    fn backward(
        &mut self,
        _: &[&[f32]],
        _: &[f32],
        dy: &mut [f32],
        dx: &mut [Option<&mut [f32]>],
        _: usize,
        _: &mut Scratch,
    ) {
        for d in dx.iter_mut().flatten() {
            d.copy_from_slice(dy);
        }
    }
}
