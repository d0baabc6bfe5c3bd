//! Keras `BatchNormalization` over the last axis (Keras defaults: momentum 0.99, epsilon
//! 1e-3, center and scale). Training normalises with the batch statistics and updates the
//! moving statistics (`moving = momentum * moving + (1 - momentum) * batch`, the batch
//! variance with Bessel's correction for image inputs, as Keras' fused kernel); evaluation
//! normalises with the moving statistics. The moving statistics are state, not parameters: no
//! optimizer sees them. Statistics are summed over fixed blocks of rows in f64, blocks in
//! order, so no bit depends on the thread count. A ReLU `Activation` reading only this layer
//! is applied here ([`Layer::fuse_activation`]): forward makes three passes over memory (sum,
//! squared deviations, normalise + ReLU), backward two (sums, input gradient), the normalised
//! input recomputed from the input rather than stored; the work buffers are reused across
//! steps.

use rayon::prelude::*;
use serde_json::{json, Value};

use super::config::Config;
use super::init::Init;
use super::{one_input, ActFn, BuildCtx, Layer, Pass, Scratch, Shape};
use crate::model::Param;

/// Rows (values of one channel) per block of the statistics.
const ROWS: usize = 1024;

#[derive(Debug)]
struct BatchNorm {
    channels: usize,
    momentum: f32,
    epsilon: f32,
    center: bool,
    scale: bool,
    /// Whether the moving variance uses Bessel's correction (image inputs).
    bessel: bool,
    /// gamma when `scale`, beta when `center`.
    params: Vec<Param>,
    /// moving_mean, moving_variance.
    state: Vec<Param>,
    /// Whether a following ReLU is applied here (see the module doc).
    relu: bool,
    /// Of the last forward pass: whether it trained, and per channel the mean and
    /// `1 / sqrt(var + eps)` of the statistics it used.
    trained: bool,
    mean: Vec<f32>,
    inv: Vec<f32>,
    /// gamma and beta, ones and zeros where the layer has none.
    gamma: Vec<f32>,
    beta: Vec<f32>,
    /// Work buffers: per-block partial sums, their f64 totals, per-channel coefficients.
    parts: Vec<f32>,
    totals: Vec<f64>,
    coef: Vec<f32>,
    shape: Shape,
}

pub(super) fn build(ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String> {
    let cfg = Config(ctx.config);
    cfg.common()?;
    let shape = one_input(ctx.inputs)?.clone();
    let rank = shape.len() as i64 + 1;
    let axis_ok = |v: &Value| v.as_i64().is_some_and(|a| a == -1 || a == rank - 1);
    match ctx.config.get("axis").filter(|v| !v.is_null()) {
        None => {}
        Some(v) if axis_ok(v) => {}
        Some(Value::Array(a)) if a.len() == 1 && axis_ok(&a[0]) => {}
        Some(v) => {
            return Err(format!(
                "option `axis` = {v} is not supported (supported: the last axis, {} or -1)",
                rank - 1
            ))
        }
    }
    cfg.only("renorm", &[json!(false)])?;
    cfg.only("virtual_batch_size", &[json!(null)])?;
    cfg.only("adjustment", &[json!(null)])?;
    cfg.only("synchronized", &[json!(false)])?;
    let momentum = cfg.f64_or("momentum", 0.99)?;
    let epsilon = cfg.f64_or("epsilon", 1e-3)?;
    if !(0.0..=1.0).contains(&momentum) || epsilon.is_nan() || epsilon <= 0.0 {
        return Err(format!(
            "momentum {momentum}, epsilon {epsilon}: expected momentum in [0, 1], epsilon > 0"
        ));
    }
    let center = cfg.bool_or("center", true)?;
    let scale = cfg.bool_or("scale", true)?;
    let channels = *shape.last().unwrap_or(&1);
    let read = |key, default| Init::read(ctx.config, key, default);
    let (gi, bi) = (
        read("gamma_initializer", Init::Ones)?,
        read("beta_initializer", Init::Zeros)?,
    );
    let (mi, vi) = (
        read("moving_mean_initializer", Init::Zeros)?,
        read("moving_variance_initializer", Init::Ones)?,
    );
    let name = ctx.name;
    let mut params = Vec::new();
    let mut tensor = |suffix: &str, init: Init| {
        Param::new(
            format!("{name}/{suffix}"),
            vec![channels],
            init.draw(channels, channels, channels, ctx.rng),
        )
    };
    if scale {
        params.push(tensor("gamma", gi));
    }
    if center {
        params.push(tensor("beta", bi));
    }
    let mut state = vec![tensor("moving_mean", mi), tensor("moving_variance", vi)];
    for s in &mut state {
        s.grad = Vec::new();
    }
    Ok(Box::new(BatchNorm {
        channels,
        momentum: momentum as f32,
        epsilon: epsilon as f32,
        center,
        scale,
        bessel: shape.len() == 3,
        params,
        state,
        relu: false,
        trained: false,
        mean: vec![0.0; channels],
        inv: vec![0.0; channels],
        gamma: vec![1.0; channels],
        beta: vec![0.0; channels],
        parts: Vec::new(),
        totals: Vec::new(),
        coef: Vec::new(),
        shape,
    }))
}

/// Per-channel sums over blocks of [`ROWS`] rows of `c` values: `f(b, acc)` adds block `b`'s
/// rows into `acc` (`width` f32 sums, zeroed), blocks in parallel; `totals` (overwritten) is
/// the f64 sum of the blocks' sums in block order. `parts` holds the blocks' sums.
fn block_sums(
    parts: &mut Vec<f32>,
    totals: &mut Vec<f64>,
    blocks: usize,
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    parts.resize(blocks * width, 0.0);
    parts
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(b, acc)| {
            acc.fill(0.0);
            f(b, acc);
        });
    totals.clear();
    totals.resize(width, 0.0);
    for p in parts[..blocks * width].chunks_exact(width) {
        totals.iter_mut().zip(p).for_each(|(t, v)| *t += *v as f64);
    }
}

/// `d` times the ReLU derivative at the output `y`, as [`ActFn::Relu`]'s backward computes it.
#[inline(always)]
fn relu_grad(d: f32, y: f32) -> f32 {
    d * ((y > 0.0) as u8 as f32)
}

// The per-block loops, vectorised over the channels of each row (rows of `mean.len()`
// values; the per-channel sums run over the rows in order, as a scalar loop would).

simd_fn! {
/// `acc` += the rows of `x`.
fn sum_rows(x: &[f32], acc: &mut [f32]) {
    let c = acc.len();
    for row in x.chunks_exact(c) {
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
}
}

simd_fn! {
/// `acc` += the squared deviations of the rows of `x` from `mean`.
fn sq_dev_rows(x: &[f32], mean: &[f32], acc: &mut [f32]) {
    let c = acc.len();
    let mean = &mean[..c];
    for row in x.chunks_exact(c) {
        for ((a, v), m) in acc.iter_mut().zip(row).zip(mean) {
            let d = v - m;
            *a += d * d;
        }
    }
}
}

simd_fn! {
/// `out` = `(x - mean) * inv * gamma + beta`, then the ReLU when `relu`.
fn normalize_rows(
    x: &[f32],
    mean: &[f32],
    inv: &[f32],
    gamma: &[f32],
    beta: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let c = mean.len();
    let (inv, gamma, beta) = (&inv[..c], &gamma[..c], &beta[..c]);
    for (or, xr) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for ((((o, v), m), i), (g, b)) in or
            .iter_mut()
            .zip(xr)
            .zip(mean)
            .zip(inv)
            .zip(gamma.iter().zip(beta))
        {
            *o = ((v - m) * i) * g + b;
        }
        if relu {
            or.iter_mut().for_each(|o| *o = o.max(0.0));
        }
    }
}
}

simd_fn! {
/// `acc[..c]` += `dy'`, `acc[c..]` += `dy' * xhat` over the rows, where `dy'` is `dy`
/// through the ReLU at the output `y` when `relu` and `xhat = (x - mean) * inv`.
fn grad_sum_rows(
    dy: &[f32],
    x: &[f32],
    y: &[f32],
    mean: &[f32],
    inv: &[f32],
    relu: bool,
    acc: &mut [f32],
) {
    let c = mean.len();
    let inv = &inv[..c];
    let (sb, sg) = acc.split_at_mut(c);
    let (sb, sg) = (&mut sb[..c], &mut sg[..c]);
    for ((d, xr), yr) in dy.chunks_exact(c).zip(x.chunks_exact(c)).zip(y.chunks_exact(c)) {
        for (((((b, g), &d), v), m), (i, &y)) in sb
            .iter_mut()
            .zip(sg.iter_mut())
            .zip(d)
            .zip(xr)
            .zip(mean)
            .zip(inv.iter().zip(yr))
        {
            let d = if relu { relu_grad(d, y) } else { d };
            let h = (v - m) * i;
            *b += d;
            *g += d * h;
        }
    }
}
}

simd_fn! {
/// The input gradient of rows: `k * (dy' - db - xhat * dg)` when `trained`, else `k * dy'`
/// (`dy'`, `xhat` as in [`grad_sum_rows`]); `coef` holds `k`, `db`, `dg`, `mean`, `inv`.
fn input_grad_rows(
    dy: &[f32],
    x: &[f32],
    y: &[f32],
    coef: &[f32],
    relu: bool,
    trained: bool,
    dx: &mut [f32],
) {
    let c = coef.len() / 5;
    let (k, rest) = coef.split_at(c);
    let (db, rest) = rest.split_at(c);
    let (dg, rest) = rest.split_at(c);
    let (mean, inv) = rest.split_at(c);
    for (((dxr, d), xr), yr) in dx
        .chunks_exact_mut(c)
        .zip(dy.chunks_exact(c))
        .zip(x.chunks_exact(c))
        .zip(y.chunks_exact(c))
    {
        for ((((o, &d), v), &y), (((k, b), g), (m, i))) in dxr
            .iter_mut()
            .zip(d)
            .zip(xr)
            .zip(yr)
            .zip(k.iter().zip(db).zip(dg).zip(mean.iter().zip(inv)))
        {
            let d = if relu { relu_grad(d, y) } else { d };
            *o = if trained {
                let h = (v - m) * i;
                k * (d - b - h * g)
            } else {
                k * d
            };
        }
    }
}
}

impl Layer for BatchNorm {
    fn class(&self) -> &'static str {
        "BatchNormalization"
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
    fn state(&self) -> &[Param] {
        &self.state
    }
    fn state_mut(&mut self) -> &mut [Param] {
        &mut self.state
    }
    fn fuse_activation(&mut self, act: ActFn) -> bool {
        self.relu = act == ActFn::Relu;
        self.relu
    }
    fn forward(
        &mut self,
        pass: Pass,
        inputs: &[&[f32]],
        out: &mut [f32],
        _: usize,
        _: &mut Scratch,
    ) {
        let c = self.channels;
        let x = inputs[0];
        let rows = x.len() / c;
        let blocks = rows.div_ceil(ROWS);
        let eps = self.epsilon as f64;
        let block = |b: usize| &x[b * ROWS * c..((b + 1) * ROWS * c).min(x.len())];
        if pass.training {
            block_sums(&mut self.parts, &mut self.totals, blocks, c, |b, acc| {
                sum_rows(block(b), acc)
            });
            for (m, s) in self.mean.iter_mut().zip(&self.totals) {
                *m = (s / rows as f64) as f32;
            }
            let mean = &self.mean;
            block_sums(&mut self.parts, &mut self.totals, blocks, c, |b, acc| {
                sq_dev_rows(block(b), mean, acc)
            });
            let corr = if self.bessel && rows > 1 {
                rows as f64 / (rows - 1) as f64
            } else {
                1.0
            };
            let mom = self.momentum;
            let (mm, mv) = self.state.split_at_mut(1);
            for ch in 0..c {
                let mean = self.mean[ch];
                let var = self.totals[ch] / rows as f64;
                let m = &mut mm[0].value[ch];
                *m = *m * mom + mean * (1.0 - mom);
                let v = &mut mv[0].value[ch];
                *v = *v * mom + (var * corr) as f32 * (1.0 - mom);
                self.inv[ch] = (1.0 / (var + eps).sqrt()) as f32;
            }
        } else {
            self.mean.copy_from_slice(&self.state[0].value);
            for (i, v) in self.inv.iter_mut().zip(&self.state[1].value) {
                *i = (1.0 / (*v as f64 + eps).sqrt()) as f32;
            }
        }
        self.trained = pass.training;
        let mut it = self.params.iter();
        if self.scale {
            self.gamma.copy_from_slice(&it.next().expect("gamma").value);
        }
        if self.center {
            self.beta.copy_from_slice(&it.next().expect("beta").value);
        }
        let (mean, inv, gamma, beta, relu) =
            (&self.mean, &self.inv, &self.gamma, &self.beta, self.relu);
        out.par_chunks_mut(ROWS * c)
            .zip(x.par_chunks(ROWS * c))
            .for_each(|(ob, xb)| normalize_rows(xb, mean, inv, gamma, beta, relu, ob));
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
        let c = self.channels;
        let x = inputs[0];
        let rows = dy.len() / c;
        let blocks = rows.div_ceil(ROWS);
        let (mean, inv, relu) = (&self.mean, &self.inv, self.relu);
        let dy: &[f32] = dy;
        let range = |b: usize| b * ROWS * c..((b + 1) * ROWS * c).min(dy.len());
        // dbeta = sum dy, dgamma = sum dy * xhat (dy through the fused ReLU), in one pass.
        block_sums(
            &mut self.parts,
            &mut self.totals,
            blocks,
            2 * c,
            |b, acc| {
                let r = range(b);
                grad_sum_rows(&dy[r.clone()], &x[r.clone()], &out[r], mean, inv, relu, acc)
            },
        );
        let (dbeta, dgamma) = self.totals.split_at(c);
        let mut it = self.params.iter_mut();
        if self.scale {
            let g = it.next().expect("gamma");
            g.grad
                .iter_mut()
                .zip(dgamma)
                .for_each(|(a, b)| *a = *b as f32);
        }
        if self.center {
            let b = it.next().expect("beta");
            b.grad
                .iter_mut()
                .zip(dbeta)
                .for_each(|(a, v)| *a = *v as f32);
        }
        let Some(dx) = dx[0].as_deref_mut() else {
            return;
        };
        let m = rows as f32;
        // Per channel: gamma * inv, dbeta / m, dgamma / m, mean, inv.
        self.coef.clear();
        self.coef
            .extend(self.gamma.iter().zip(inv.iter()).map(|(g, i)| g * i));
        self.coef.extend(dbeta.iter().map(|v| *v as f32 / m));
        self.coef.extend(dgamma.iter().map(|v| *v as f32 / m));
        self.coef.extend_from_slice(mean);
        self.coef.extend_from_slice(inv);
        let (coef, trained) = (&self.coef, self.trained);
        dx.par_chunks_mut(ROWS * c)
            .enumerate()
            .for_each(|(b, dxb)| {
                let r = range(b);
                input_grad_rows(
                    &dy[r.clone()],
                    &x[r.clone()],
                    &out[r],
                    coef,
                    relu,
                    trained,
                    dxb,
                )
            });
    }
}
