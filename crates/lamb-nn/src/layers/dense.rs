//! Keras `Dense` on a flat input: `act(x W + b)` with an (in, out) kernel, the engine's
//! dense kernels (bit-identical for any thread count), optional bias and L2 regulariser.

use super::config::Config;
use super::init::Init;
use super::{one_input, ActFn, BuildCtx, Layer, Pass, Scratch, Shape};
use crate::kernels::dense;
use crate::model::Param;
use crate::Activation;

#[derive(Debug)]
struct Dense {
    inp: usize,
    units: usize,
    act: ActFn,
    use_bias: bool,
    l2: f64,
    /// Kernel, then bias when `use_bias`.
    params: Vec<Param>,
    /// Zero bias when `!use_bias`.
    zero_bias: Vec<f32>,
    /// The kernel transposed (`units x inp`), made by each forward pass.
    wt: Vec<f32>,
    /// Pre-activation outputs when the activation's derivative needs them.
    pre: Vec<f32>,
    shape: Shape,
}

pub(super) fn build(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    let cfg = Config(ctx.config);
    cfg.common()?;
    let inp = match one_input(ctx.inputs)?[..] {
        [n] => n,
        ref s => {
            return Err(format!(
                "needs a flat input, got {s:?}: add a Flatten or GlobalAveragePooling2D before it"
            ))
        }
    };
    let units = cfg.positive("units")?;
    let act = ActFn::read(&cfg)?;
    let use_bias = cfg.bool_or("use_bias", true)?;
    let l2 = cfg.l2("kernel_regularizer")?;
    let kinit = Init::read(ctx.config, "kernel_initializer", Init::GlorotUniform)?;
    let binit = Init::read(ctx.config, "bias_initializer", Init::Zeros)?;
    let mut params = vec![Param::new(
        format!("{}/kernel", ctx.name),
        vec![inp, units],
        kinit.draw(inp * units, inp, units, ctx.rng),
    )];
    if use_bias {
        params.push(Param::new(
            format!("{}/bias", ctx.name),
            vec![units],
            binit.draw(units, units, units, ctx.rng),
        ));
    }
    Ok(Box::new(Dense {
        inp,
        units,
        act,
        use_bias,
        l2,
        params,
        zero_bias: vec![0.0; units],
        wt: vec![0.0; inp * units],
        pre: Vec::new(),
        shape: vec![units],
    }))
}

impl Layer for Dense {
    fn class(&self) -> &'static str {
        "Dense"
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
    fn forward(&mut self, _: Pass, inputs: &[&[f32]], out: &mut [f32], _: usize, _: &mut Scratch) {
        let (inp, units) = (self.inp, self.units);
        dense::transpose(&self.params[0].value, inp, units, &mut self.wt);
        let bias = if self.use_bias {
            &self.params[1].value
        } else {
            &self.zero_bias
        };
        dense::forward(inputs[0], &self.wt, bias, Activation::Linear, inp, out);
        if self.act.needs_input() {
            self.pre.clear();
            self.pre.extend_from_slice(out);
        }
        self.act.apply(out, units);
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
        let (inp, units) = (self.inp, self.units);
        self.act.backward(Some(&self.pre), out, dy, units);
        if self.use_bias {
            dense::bias_grad(dy, &mut self.params[1].grad);
        }
        let dy = &*dy;
        let (grad, wt) = (&mut self.params[0].grad, &self.wt);
        rayon::join(
            || dense::weight_grad(inputs[0], dy, inp, units, grad),
            || {
                if let Some(dx) = dx[0].as_deref_mut() {
                    dense::input_grad(dy, wt, units, inp, dx);
                }
            },
        );
    }
    fn add_regularization(&mut self) -> f64 {
        add_l2(&mut self.params[0], self.l2)
    }
    fn regularization_loss(&self) -> f64 {
        l2_loss(&self.params[0], self.l2)
    }
}

/// `l2 * sum(w^2)` (Keras' L2 regulariser).
pub(crate) fn l2_loss(p: &Param, l2: f64) -> f64 {
    if l2 == 0.0 {
        return 0.0;
    }
    l2 * p
        .value
        .iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum::<f64>()
}

/// Adds the L2 regulariser's gradient `2 l2 w` to `p.grad`; returns its loss.
pub(crate) fn add_l2(p: &mut Param, l2: f64) -> f64 {
    if l2 == 0.0 {
        return 0.0;
    }
    let k = (2.0 * l2) as f32;
    for (g, v) in p.grad.iter_mut().zip(&p.value) {
        *g += k * v;
    }
    l2_loss(p, l2)
}
