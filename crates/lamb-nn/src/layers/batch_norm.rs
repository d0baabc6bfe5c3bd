//! Keras `BatchNormalization` over the last axis (Keras defaults: momentum 0.99, epsilon
//! 1e-3, center and scale). Training normalises with the batch statistics and updates the
//! moving statistics (`moving = momentum * moving + (1 - momentum) * batch`, the batch
//! variance with Bessel's correction for image inputs, as Keras' fused kernel); evaluation
//! normalises with the moving statistics. The moving statistics are state, not parameters: no
//! optimizer sees them. Statistics are summed over fixed blocks of rows in f64, blocks in
//! order, so no bit depends on the thread count.

use rayon::prelude::*;
use serde_json::{json, Value};

use super::config::Config;
use super::init::Init;
use super::{one_input, BuildCtx, Layer, Pass, Scratch, Shape};
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
    /// Of the last forward pass: whether it trained, the normalised input (training), and
    /// per channel `1 / sqrt(var + eps)` of the statistics it used.
    trained: bool,
    xhat: Vec<f32>,
    inv: Vec<f32>,
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
        trained: false,
        xhat: Vec::new(),
        inv: vec![0.0; channels],
        shape,
    }))
}

/// Per-channel sums over the rows of `x` (rows of `c` values) of `f(row, acc)`, which adds a
/// row into `acc` (f32): fixed blocks of [`ROWS`] rows in parallel, each block's f32 sums
/// added in order in f64. `k` sums per channel (`acc` holds `k * c` values).
fn channel_sums(
    x: &[f32],
    y: Option<&[f32]>,
    c: usize,
    k: usize,
    f: impl Fn(&[f32], Option<&[f32]>, &mut [f32]) + Sync,
) -> Vec<f64> {
    let parts: Vec<Vec<f32>> = x
        .par_chunks(ROWS * c)
        .enumerate()
        .map(|(b, blk)| {
            let mut acc = vec![0.0f32; k * c];
            let yb = y.map(|y| &y[b * ROWS * c..][..blk.len()]);
            for (r, row) in blk.chunks_exact(c).enumerate() {
                f(row, yb.map(|y| &y[r * c..][..c]), &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; k * c];
    for p in parts {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v as f64);
    }
    total
}

impl BatchNorm {
    fn gamma_beta(&self) -> (Option<&[f32]>, Option<&[f32]>) {
        let mut it = self.params.iter();
        let g = if self.scale { it.next() } else { None };
        let b = if self.center { it.next() } else { None };
        (g.map(|p| &p.value[..]), b.map(|p| &p.value[..]))
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
        let eps = self.epsilon as f64;
        let (mean, inv): (Vec<f32>, Vec<f32>) = if pass.training {
            let sum = channel_sums(x, None, c, 1, |row, _, acc| {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v)
            });
            let mean: Vec<f64> = sum.iter().map(|s| s / rows as f64).collect();
            let m32: Vec<f32> = mean.iter().map(|m| *m as f32).collect();
            let sq = channel_sums(x, None, c, 1, |row, _, acc| {
                for ((a, v), m) in acc.iter_mut().zip(row).zip(&m32) {
                    let d = v - m;
                    *a += d * d;
                }
            });
            let var: Vec<f64> = sq.iter().map(|s| s / rows as f64).collect();
            let corr = if self.bessel && rows > 1 {
                rows as f64 / (rows - 1) as f64
            } else {
                1.0
            };
            let mom = self.momentum;
            let (mm, mv) = self.state.split_at_mut(1);
            for ch in 0..c {
                let m = &mut mm[0].value[ch];
                *m = *m * mom + mean[ch] as f32 * (1.0 - mom);
                let v = &mut mv[0].value[ch];
                *v = *v * mom + (var[ch] * corr) as f32 * (1.0 - mom);
            }
            (
                mean.iter().map(|m| *m as f32).collect(),
                var.iter()
                    .map(|v| (1.0 / (v + eps).sqrt()) as f32)
                    .collect(),
            )
        } else {
            (
                self.state[0].value.clone(),
                self.state[1]
                    .value
                    .iter()
                    .map(|v| (1.0 / (*v as f64 + eps).sqrt()) as f32)
                    .collect(),
            )
        };
        self.trained = pass.training;
        self.inv.copy_from_slice(&inv);
        if pass.training {
            self.xhat.resize(x.len(), 0.0);
        }
        let (gamma, beta) = {
            let (g, b) = self.gamma_beta();
            (
                g.map_or(vec![1.0; c], |g| g.to_vec()),
                b.map_or(vec![0.0; c], |b| b.to_vec()),
            )
        };
        let norm = |xr: &[f32], hr: &mut [f32], or: &mut [f32]| {
            for ch in 0..c {
                let h = (xr[ch] - mean[ch]) * inv[ch];
                hr[ch] = h;
                or[ch] = h * gamma[ch] + beta[ch];
            }
        };
        if pass.training {
            self.xhat
                .par_chunks_mut(ROWS * c)
                .zip(out.par_chunks_mut(ROWS * c))
                .zip(x.par_chunks(ROWS * c))
                .for_each(|((hb, ob), xb)| {
                    for ((hr, or), xr) in hb
                        .chunks_exact_mut(c)
                        .zip(ob.chunks_exact_mut(c))
                        .zip(xb.chunks_exact(c))
                    {
                        norm(xr, hr, or);
                    }
                });
        } else {
            out.par_chunks_mut(ROWS * c)
                .zip(x.par_chunks(ROWS * c))
                .for_each(|(ob, xb)| {
                    let mut h = vec![0.0f32; c];
                    for (or, xr) in ob.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                        norm(xr, &mut h, or);
                    }
                });
        }
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
        let c = self.channels;
        let rows = dy.len() / c;
        let xhat = &self.xhat;
        let trained = self.trained;
        // dbeta = sum dy, dgamma = sum dy * xhat, in one pass.
        let sums = channel_sums(dy, trained.then_some(&xhat[..]), c, 2, |d, h, acc| {
            let (sb, sg) = acc.split_at_mut(c);
            sb.iter_mut().zip(d).for_each(|(a, v)| *a += v);
            if let Some(h) = h {
                for ((a, v), hv) in sg.iter_mut().zip(d).zip(h) {
                    *a += v * hv;
                }
            }
        });
        let (dbeta, dgamma) = sums.split_at(c);
        let gamma: Vec<f32> = self.gamma_beta().0.map_or(vec![1.0; c], |g| g.to_vec());
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
        let inv = &self.inv;
        let m = rows as f32;
        let (db, dg): (Vec<f32>, Vec<f32>) = (
            dbeta.iter().map(|v| *v as f32 / m).collect(),
            dgamma.iter().map(|v| *v as f32 / m).collect(),
        );
        let k: Vec<f32> = gamma.iter().zip(inv).map(|(g, i)| g * i).collect();
        if !trained {
            dx.par_chunks_mut(ROWS * c)
                .zip(dy.par_chunks(ROWS * c))
                .for_each(|(dxb, dyb)| {
                    for (dxr, dyr) in dxb.chunks_exact_mut(c).zip(dyb.chunks_exact(c)) {
                        for ch in 0..c {
                            dxr[ch] = k[ch] * dyr[ch];
                        }
                    }
                });
            return;
        }
        dx.par_chunks_mut(ROWS * c)
            .zip(dy.par_chunks(ROWS * c))
            .zip(xhat.par_chunks(ROWS * c))
            .for_each(|((dxb, dyb), hb)| {
                for ((dxr, dyr), hr) in dxb
                    .chunks_exact_mut(c)
                    .zip(dyb.chunks_exact(c))
                    .zip(hb.chunks_exact(c))
                {
                    for ch in 0..c {
                        dxr[ch] = k[ch] * (dyr[ch] - db[ch] - hr[ch] * dg[ch]);
                    }
                }
            });
    }
}
