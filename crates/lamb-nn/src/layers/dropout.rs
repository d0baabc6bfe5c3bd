//! Keras `Dropout`: in training, each value is kept with probability `1 - rate` and scaled by
//! `1 / (1 - rate)`; inactive at evaluation. The mask of a step is drawn from a ChaCha8
//! generator seeded by the layer's seed (drawn at build time from the model seed) and the
//! step counter, so it does not depend on the thread count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::config::Config;
use super::{one_input, BuildCtx, Layer, Pass, Scratch, Shape};

#[derive(Debug)]
pub(crate) struct Dropout {
    rate: f32,
    seed: u64,
    shape: Shape,
    /// The scale (0 or 1 / (1 - rate)) of each value of the last training forward pass;
    /// empty after an evaluation pass.
    mask: Vec<f32>,
}

pub(super) fn build(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    let cfg = Config(ctx.config);
    cfg.common()?;
    cfg.only("noise_shape", &[json!(null)])?;
    let rate = cfg.f64_or("rate", f64::NAN)?;
    if !(0.0..1.0).contains(&rate) {
        return Err(format!(
            "option `rate` = {rate}: expected a number in [0, 1)"
        ));
    }
    Ok(Box::new(Dropout {
        rate: rate as f32,
        seed: ctx.rng.gen(),
        shape: one_input(ctx.inputs)?.clone(),
        mask: Vec::new(),
    }))
}

impl Dropout {
    /// Draws the mask of step `step` for `n` values.
    fn draw_mask(&mut self, step: u64, n: usize) {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let keep = 1.0 / (1.0 - self.rate);
        self.mask.clear();
        self.mask.extend((0..n).map(|_| {
            if rng.gen::<f32>() < self.rate {
                0.0
            } else {
                keep
            }
        }));
    }
}

impl Layer for Dropout {
    fn class(&self) -> &'static str {
        "Dropout"
    }
    fn output_shape(&self) -> &Shape {
        &self.shape
    }
    fn forward(
        &mut self,
        pass: Pass,
        inputs: &[&[f32]],
        out: &mut [f32],
        _: usize,
        _: &mut Scratch,
    ) {
        if !pass.training || self.rate == 0.0 {
            self.mask.clear();
            out.copy_from_slice(inputs[0]);
            return;
        }
        self.draw_mask(pass.step, out.len());
        for ((o, x), m) in out.iter_mut().zip(inputs[0]).zip(&self.mask) {
            *o = x * m;
        }
    }
    #[cfg(test)]
    fn test_mask(&self) -> Option<&[f32]> {
        Some(&self.mask)
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
            if self.mask.is_empty() {
                dx.copy_from_slice(dy);
            } else {
                for ((d, g), m) in dx.iter_mut().zip(&*dy).zip(&self.mask) {
                    *d = g * m;
                }
            }
        }
    }
}
