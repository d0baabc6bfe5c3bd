//! Keras `MaxPooling2D` and `AveragePooling2D`: any pool size, strides (default: the pool
//! size) and padding `valid`/`same` (split as TensorFlow does, the extra row/column at the
//! bottom/right; padded positions are ignored: a max over the window's valid values, an
//! average dividing by their count, as TensorFlow). Parallel over images.

use super::config::Config;
use super::{one_image, BuildCtx, Layer, Pass, Scratch, Shape};
use rayon::prelude::*;

/// A 2-D window geometry (pooling), NHWC.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub ph: usize,
    pub pw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Window {
    /// Output size and padding for `padding` (`valid` or `same`), or an error.
    pub fn new(
        [h, w, c]: [usize; 3],
        [ph, pw]: [usize; 2],
        [sh, sw]: [usize; 2],
        padding: &str,
    ) -> Result<Window, String> {
        if ph == 0 || pw == 0 || sh == 0 || sw == 0 {
            return Err("pool size and strides must be at least 1".into());
        }
        let (ho, wo, pad_top, pad_left) = match padding {
            "valid" => {
                if ph > h || pw > w {
                    return Err(format!(
                        "pool {ph}x{pw} is larger than its input {h}x{w} (padding `valid`)"
                    ));
                }
                ((h - ph) / sh + 1, (w - pw) / sw + 1, 0, 0)
            }
            "same" => {
                let (ho, wo) = (h.div_ceil(sh), w.div_ceil(sw));
                let th = ((ho - 1) * sh + ph).saturating_sub(h);
                let tw = ((wo - 1) * sw + pw).saturating_sub(w);
                (ho, wo, th / 2, tw / 2)
            }
            other => {
                return Err(format!(
                    "option `padding` = \"{other}\" is not supported (supported: \"valid\" or \"same\")"
                ))
            }
        };
        Ok(Window {
            h,
            w,
            c,
            ph,
            pw,
            sh,
            sw,
            pad_top,
            pad_left,
            ho,
            wo,
        })
    }

    /// The input rows and columns window (`oh`, `ow`) covers, clipped to the input.
    fn span(&self, oh: usize, ow: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let top = (oh * self.sh) as isize - self.pad_top as isize;
        let left = (ow * self.sw) as isize - self.pad_left as isize;
        let r0 = top.max(0) as usize;
        let c0 = left.max(0) as usize;
        let r1 = ((top + self.ph as isize) as usize).min(self.h);
        let c1 = ((left + self.pw as isize) as usize).min(self.w);
        (r0..r1, c0..c1)
    }

    fn in_len(&self) -> usize {
        self.h * self.w * self.c
    }

    fn out_len(&self) -> usize {
        self.ho * self.wo * self.c
    }
}

#[derive(Debug)]
struct Pool {
    max: bool,
    g: Window,
    shape: Shape,
}

fn build(ctx: &mut BuildCtx<'_>, max: bool) -> Result<Box<dyn Layer>, String> {
    let cfg = Config(ctx.config);
    cfg.common()?;
    let pool = cfg.pair_or("pool_size", Some([2, 2]))?;
    let strides = cfg.pair_or("strides", Some(pool))?;
    let padding = cfg.str_or("padding", "valid")?;
    let g = Window::new(one_image(ctx.inputs)?, pool, strides, padding)?;
    Ok(Box::new(Pool {
        max,
        g,
        shape: vec![g.ho, g.wo, g.c],
    }))
}

pub(super) fn build_max(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    build(ctx, true)
}

pub(super) fn build_average(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    build(ctx, false)
}

impl Layer for Pool {
    fn class(&self) -> &'static str {
        if self.max {
            "MaxPooling2D"
        } else {
            "AveragePooling2D"
        }
    }
    fn output_shape(&self) -> &Shape {
        &self.shape
    }
    fn forward(&mut self, _: Pass, inputs: &[&[f32]], out: &mut [f32], _: usize, _: &mut Scratch) {
        let g = self.g;
        let max = self.max;
        out.par_chunks_mut(g.out_len())
            .zip(inputs[0].par_chunks(g.in_len()))
            .for_each(|(o, x)| {
                for oh in 0..g.ho {
                    for ow in 0..g.wo {
                        let (rows, cols) = g.span(oh, ow);
                        let dst = &mut o[(oh * g.wo + ow) * g.c..][..g.c];
                        dst.fill(if max { f32::NEG_INFINITY } else { 0.0 });
                        for r in rows.clone() {
                            for col in cols.clone() {
                                let src = &x[(r * g.w + col) * g.c..][..g.c];
                                if max {
                                    dst.iter_mut().zip(src).for_each(|(d, s)| {
                                        if *s > *d {
                                            *d = *s
                                        }
                                    });
                                } else {
                                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                                }
                            }
                        }
                        if !max {
                            let n = (rows.len() * cols.len()) as f32;
                            dst.iter_mut().for_each(|d| *d /= n);
                        }
                    }
                }
            });
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
        let Some(dx) = dx[0].as_deref_mut() else {
            return;
        };
        let g = self.g;
        let max = self.max;
        dx.par_chunks_mut(g.in_len())
            .zip(inputs[0].par_chunks(g.in_len()))
            .zip(out.par_chunks(g.out_len()).zip(dy.par_chunks(g.out_len())))
            .for_each(|((dxi, x), (y, dyi))| {
                dxi.fill(0.0);
                for oh in 0..g.ho {
                    for ow in 0..g.wo {
                        let (rows, cols) = g.span(oh, ow);
                        let at = (oh * g.wo + ow) * g.c;
                        let d = &dyi[at..][..g.c];
                        if max {
                            // The gradient goes to the first maximum in scan order.
                            let m = &y[at..][..g.c];
                            for ch in 0..g.c {
                                'find: for r in rows.clone() {
                                    for col in cols.clone() {
                                        let i = (r * g.w + col) * g.c + ch;
                                        if x[i] == m[ch] {
                                            dxi[i] += d[ch];
                                            break 'find;
                                        }
                                    }
                                }
                            }
                        } else {
                            let n = (rows.len() * cols.len()) as f32;
                            for r in rows.clone() {
                                for col in cols.clone() {
                                    let dst = &mut dxi[(r * g.w + col) * g.c..][..g.c];
                                    dst.iter_mut().zip(d).for_each(|(a, b)| *a += b / n);
                                }
                            }
                        }
                    }
                }
            });
    }
}
