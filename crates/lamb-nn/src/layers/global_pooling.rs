//! Keras `GlobalAveragePooling2D`: the mean over height and width of each channel
//! (`keepdims` as Keras).

use rayon::prelude::*;

use super::config::Config;
use super::{one_image, BuildCtx, Layer, Pass, Scratch, Shape};

#[derive(Debug)]
struct GlobalAverage {
    input: [usize; 3],
    shape: Shape,
}

pub(super) fn build(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    let cfg = Config(ctx.config);
    cfg.common()?;
    let input = one_image(ctx.inputs)?;
    let c = input[2];
    let shape = if cfg.bool_or("keepdims", false)? {
        vec![1, 1, c]
    } else {
        vec![c]
    };
    Ok(Box::new(GlobalAverage { input, shape }))
}

impl Layer for GlobalAverage {
    fn class(&self) -> &'static str {
        "GlobalAveragePooling2D"
    }
    fn output_shape(&self) -> &Shape {
        &self.shape
    }
    fn forward(&mut self, _: Pass, inputs: &[&[f32]], out: &mut [f32], _: usize, _: &mut Scratch) {
        let [h, w, c] = self.input;
        let n = (h * w) as f32;
        out.par_chunks_mut(c)
            .zip(inputs[0].par_chunks(h * w * c))
            .for_each(|(o, x)| {
                o.fill(0.0);
                for px in x.chunks_exact(c) {
                    o.iter_mut().zip(px).for_each(|(a, b)| *a += b);
                }
                o.iter_mut().for_each(|a| *a /= n);
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
        let [h, w, c] = self.input;
        let n = (h * w) as f32;
        if let Some(dx) = dx[0].as_deref_mut() {
            dx.par_chunks_mut(h * w * c)
                .zip(dy.par_chunks(c))
                .for_each(|(d, g)| {
                    for px in d.chunks_exact_mut(c) {
                        px.iter_mut().zip(g).for_each(|(a, b)| *a = b / n);
                    }
                });
        }
    }
}
