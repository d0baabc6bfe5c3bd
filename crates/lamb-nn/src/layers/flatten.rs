//! Keras `Flatten` over (h, w, c): NHWC buffers are already in that order, so it copies.

use super::config::Config;
use super::{one_input, BuildCtx, Layer, Pass, Scratch, Shape};

#[derive(Debug)]
struct Flatten {
    shape: Shape,
}

pub(super) fn build(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    Config(ctx.config).common()?;
    let n = one_input(ctx.inputs)?.iter().product();
    Ok(Box::new(Flatten { shape: vec![n] }))
}

impl Layer for Flatten {
    fn class(&self) -> &'static str {
        "Flatten"
    }
    fn output_shape(&self) -> &Shape {
        &self.shape
    }
    fn forward(&mut self, _: Pass, inputs: &[&[f32]], out: &mut [f32], _: usize, _: &mut Scratch) {
        out.copy_from_slice(inputs[0]);
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
        if let Some(dx) = dx[0].as_deref_mut() {
            dx.copy_from_slice(dy);
        }
    }
}
