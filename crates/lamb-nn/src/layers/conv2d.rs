//! Keras `Conv2D`: square kernels of any size, equal strides, padding `valid`/`same` (split
//! as TensorFlow does), optional bias, any supported activation, L2 kernel regulariser. Runs
//! the engine's convolution kernels (direct AVX-512, Winograd 3x3 or im2col + GEMM, chosen by
//! geometry; chunks of images summed in order, so no bit depends on the thread count).

use rayon::prelude::*;
use serde_json::json;

use super::config::Config;
use super::dense::{add_l2, l2_loss};
use super::init::Init;
use super::{one_image, ActFn, BuildCtx, Layer, Pass, Scratch, Shape};
use crate::kernels::{self, ConvBuffers, ConvGeom};
use crate::model::Param;
use crate::Activation;

#[derive(Debug)]
struct Conv2D {
    g: ConvGeom,
    /// When the layer pads (`same`) and the direct or Winograd kernels run the convolution of
    /// the explicitly zero-padded input: that geometry (no padding).
    padded: Option<ConvGeom>,
    filters: usize,
    act: ActFn,
    use_bias: bool,
    l2: f64,
    /// Kernel (HWIO), then bias when `use_bias`.
    params: Vec<Param>,
    /// Zero bias and its (discarded) gradient when `!use_bias`.
    zero_bias: Vec<f32>,
    spare_db: Vec<f32>,
    /// Pre-activation outputs when the activation's derivative needs them.
    pre: Vec<f32>,
    /// The kernels' work buffers, reused step after step.
    bufs: ConvBuffers,
    /// The zero-padded input of the last forward pass when `padded` (backward reads it
    /// rather than padding again). One per padded layer: memory (a padded copy of the layer's
    /// input batch: ~9.5 MB for a 32x32x16 input at batch 128, ~110 MB over ResNet-20's padded
    /// convolutions, growing with the batch) traded for one fewer pass over it per step.
    xp: Vec<f32>,
    shape: Shape,
}

/// The convolution geometry of a `k x k` kernel with stride `s` and `padding` on `[h, w, c]`.
pub(crate) fn geometry(
    [h, w, c]: [usize; 3],
    k: usize,
    s: usize,
    padding: &str,
) -> Result<ConvGeom, String> {
    let (ho, wo, pad_top, pad_left) = match padding {
        "valid" => {
            if k > h || k > w {
                return Err(format!(
                    "kernel {k}x{k} is larger than its input {h}x{w} (padding `valid`)"
                ));
            }
            ((h - k) / s + 1, (w - k) / s + 1, 0, 0)
        }
        "same" => {
            let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
            let th = ((ho - 1) * s + k).saturating_sub(h);
            let tw = ((wo - 1) * s + k).saturating_sub(w);
            (ho, wo, th / 2, tw / 2)
        }
        other => {
            return Err(format!(
                "option `padding` = \"{other}\" is not supported (supported: \"valid\" or \"same\")"
            ))
        }
    };
    Ok(ConvGeom {
        h,
        w,
        c,
        k,
        s,
        pad_top,
        pad_left,
        ho,
        wo,
    })
}

pub(super) fn build(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    let cfg = Config(ctx.config);
    cfg.common()?;
    cfg.only("dilation_rate", &[json!([1, 1]), json!(1)])?;
    cfg.only("groups", &[json!(1)])?;
    let filters = cfg.positive("filters")?;
    let [kh, kw] = cfg.pair_or("kernel_size", None)?;
    if kh != kw || kh == 0 {
        return Err(format!(
            "option `kernel_size` = [{kh}, {kw}] is not supported (supported: square kernels, at least 1)"
        ));
    }
    let [sh, sw] = cfg.pair_or("strides", Some([1, 1]))?;
    if sh != sw || sh == 0 {
        return Err(format!(
            "option `strides` = [{sh}, {sw}] is not supported (supported: equal strides, at least 1)"
        ));
    }
    let input = one_image(ctx.inputs)?;
    let g = geometry(input, kh, sh, cfg.str_or("padding", "valid")?)?;
    let act = ActFn::read(&cfg)?;
    let use_bias = cfg.bool_or("use_bias", true)?;
    let l2 = cfg.l2("kernel_regularizer")?;
    let kinit = Init::read(ctx.config, "kernel_initializer", Init::GlorotUniform)?;
    let binit = Init::read(ctx.config, "bias_initializer", Init::Zeros)?;
    let c = input[2];
    let (fan_in, fan_out) = (kh * kh * c, kh * kh * filters);
    let mut params = vec![Param::new(
        format!("{}/kernel", ctx.name),
        vec![kh, kh, c, filters],
        kinit.draw(fan_in * filters, fan_in, fan_out, ctx.rng),
    )];
    if use_bias {
        params.push(Param::new(
            format!("{}/bias", ctx.name),
            vec![filters],
            binit.draw(filters, filters, filters, ctx.rng),
        ));
    }
    Ok(Box::new(Conv2D {
        g,
        padded: padded_geometry(&g, filters),
        filters,
        act,
        use_bias,
        l2,
        params,
        zero_bias: vec![0.0; filters],
        spare_db: vec![0.0; filters],
        pre: Vec::new(),
        bufs: ConvBuffers::default(),
        xp: Vec::new(),
        shape: vec![g.ho, g.wo, filters],
    }))
}

/// The geometry of `g` run as an unpadded convolution on its input zero-padded to
/// `pad_top + h + bottom` rows and `pad_left + w + right` columns, when `g` pads and the
/// direct kernels ([`kernels::conv_direct`], Winograd among them) then apply.
fn padded_geometry(g: &ConvGeom, f: usize) -> Option<ConvGeom> {
    let hp = g.pad_top + g.h + ((g.ho - 1) * g.s + g.k).saturating_sub(g.pad_top + g.h);
    let wp = g.pad_left + g.w + ((g.wo - 1) * g.s + g.k).saturating_sub(g.pad_left + g.w);
    if (hp, wp) == (g.h, g.w) {
        return None;
    }
    let gp = ConvGeom {
        h: hp,
        w: wp,
        pad_top: 0,
        pad_left: 0,
        ..*g
    };
    kernels::conv_direct(&gp, f).then_some(gp)
}

/// `xp` (`batch` images of `gp`) = the images `x` of `g`, zero-padded (top/left by `g`'s
/// padding).
fn pad_images(g: &ConvGeom, gp: &ConvGeom, x: &[f32], xp: &mut [f32]) {
    let row = g.w * g.c;
    xp.par_chunks_mut(gp.in_len())
        .zip(x.par_chunks(g.in_len()))
        .for_each(|(dst, src)| {
            dst.fill(0.0);
            for (r, s) in src.chunks_exact(row).enumerate() {
                let at = ((r + g.pad_top) * gp.w + g.pad_left) * g.c;
                dst[at..at + row].copy_from_slice(s);
            }
        });
}

/// `dx` (images of `g`) = the interior of the padded gradient `dxp` (images of `gp`).
fn crop_images(g: &ConvGeom, gp: &ConvGeom, dxp: &[f32], dx: &mut [f32]) {
    let row = g.w * g.c;
    dx.par_chunks_mut(g.in_len())
        .zip(dxp.par_chunks(gp.in_len()))
        .for_each(|(dst, src)| {
            for (r, d) in dst.chunks_exact_mut(row).enumerate() {
                let at = ((r + g.pad_top) * gp.w + g.pad_left) * g.c;
                d.copy_from_slice(&src[at..at + row]);
            }
        });
}

/// Grows `v` to at least `n` values.
fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Layer for Conv2D {
    fn class(&self) -> &'static str {
        "Conv2D"
    }
    fn output_shape(&self) -> &Shape {
        &self.shape
    }
    fn params(&self) -> &[Param] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }
    fn strip_softmax(&mut self) -> bool {
        let was = self.act == ActFn::Softmax;
        if was {
            self.act = ActFn::Linear;
        }
        was
    }
    fn forward(
        &mut self,
        _: Pass,
        inputs: &[&[f32]],
        out: &mut [f32],
        batch: usize,
        scratch: &mut Scratch,
    ) {
        let f = self.filters;
        let (g, input): (&ConvGeom, &[f32]) = match &self.padded {
            Some(gp) => {
                grow(&mut self.xp, batch * gp.in_len());
                let xp = &mut self.xp[..batch * gp.in_len()];
                pad_images(&self.g, gp, inputs[0], xp);
                (gp, xp)
            }
            None => (&self.g, inputs[0]),
        };
        if !kernels::conv_direct(g, f) {
            grow(&mut scratch.cols, batch * g.positions() * g.kkc());
        }
        let bias = if self.use_bias {
            &self.params[1].value
        } else {
            &self.zero_bias
        };
        let act = match self.act {
            ActFn::Relu => Activation::Relu,
            _ => Activation::Linear,
        };
        kernels::conv_forward_buffered(
            g,
            f,
            act,
            &self.params[0].value,
            bias,
            input,
            &mut scratch.cols,
            out,
            &mut self.bufs,
        );
        if self.act != ActFn::Relu {
            if self.act.needs_input() {
                self.pre.clear();
                self.pre.extend_from_slice(out);
            }
            self.act.apply(out, f);
        }
    }
    fn backward(
        &mut self,
        inputs: &[&[f32]],
        out: &[f32],
        dy: &mut [f32],
        dx: &mut [Option<&mut [f32]>],
        batch: usize,
        scratch: &mut Scratch,
    ) {
        let f = self.filters;
        let g = self.padded.as_ref().unwrap_or(&self.g);
        let n = batch * g.positions() * g.kkc();
        if !kernels::conv_direct(g, f) {
            grow(&mut scratch.cols, n);
        }
        let input: &[f32] = match &self.padded {
            Some(gp) => {
                // The forward pass's padded copy of these inputs.
                grow(&mut scratch.dpadded, batch * gp.in_len());
                &self.xp[..batch * gp.in_len()]
            }
            None => inputs[0],
        };
        let mut crop_to: Option<&mut [f32]> = None;
        let dx = dx[0].as_deref_mut().map(|dx| {
            grow(&mut scratch.dcols, n);
            let dx: &mut [f32] = match &self.padded {
                Some(gp) => {
                    crop_to = Some(dx);
                    &mut scratch.dpadded[..batch * gp.in_len()]
                }
                None => dx,
            };
            (dx, &mut scratch.dcols[..])
        });
        self.act.backward(Some(&self.pre), out, dy, f);
        let (kp, bp) = self.params.split_at_mut(1);
        let db = if self.use_bias {
            &mut bp[0].grad
        } else {
            &mut self.spare_db
        };
        kernels::conv_backward_buffered(
            g,
            f,
            Activation::Linear,
            &kp[0].value,
            input,
            out,
            dy,
            &mut scratch.cols,
            &mut kp[0].grad,
            db,
            dx,
            true,
            &mut self.bufs,
        );
        if let (Some(dx), Some(gp)) = (crop_to, &self.padded) {
            crop_images(&self.g, gp, &scratch.dpadded[..batch * gp.in_len()], dx);
        }
    }
    fn add_regularization(&mut self) -> f64 {
        add_l2(&mut self.params[0], self.l2)
    }
    fn regularization_loss(&self) -> f64 {
        l2_loss(&self.params[0], self.l2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_runs_on_the_direct_kernels_where_they_apply() {
        let g = geometry([4, 4, 16], 3, 1, "same").unwrap();
        if kernels::conv_direct(
            &ConvGeom {
                pad_top: 0,
                pad_left: 0,
                h: 6,
                w: 6,
                ..g
            },
            16,
        ) {
            let gp = padded_geometry(&g, 16).expect("the padded geometry");
            assert_eq!((gp.h, gp.w, gp.pad_top, gp.pad_left), (6, 6, 0, 0));
            assert!(kernels::conv_winograd(&gp, 16));
            // Stride 2, 'same' on an even input: TensorFlow pads only at the bottom/right.
            let g2 = geometry([4, 4, 16], 3, 2, "same").unwrap();
            let gp2 = padded_geometry(&g2, 16).unwrap();
            assert_eq!((g2.pad_top, gp2.h, gp2.ho), (0, 5, 2));
        }
        // 3 filters: no direct kernel, im2col with implicit padding.
        assert!(padded_geometry(&g, 3).is_none());
        // Valid padding needs none.
        assert!(padded_geometry(&geometry([4, 4, 16], 3, 1, "valid").unwrap(), 16).is_none());
    }
}
