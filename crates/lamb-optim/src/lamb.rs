//! LAMB (You et al. 2019): Adam's direction, rescaled per tensor by the trust ratio
//! `||w|| / ||u||`.
//!
//! The default follows tensorflow-addons 0.23 `LAMB`. The other implementations users ask
//! for are [`LambPreset`]s, each setting the formula switches and that reference's default
//! hyperparameters. One step of tensor `w` with gradient `g` at step `t` (from 1):
//!
//! ```text
//! g = g / max(G / max_grad_norm, 1)      G = global norm of all gradients (if max_grad_norm)
//! m = b1*m + a*g           a = 1 - b1 (grad_averaging) or 1
//! v = b2*v + (1-b2)*g*g
//! u = (m/bc1) / (sqrt(v/bc2 + epsilon_root) + epsilon)
//!                          bc = 1 - b^t with BiasCorrection::Moments, else 1
//! if decayed:  u += wd*w   (w before the step)
//! r = 1
//! if adapted:  r = min(||w||, clamp) / ||u||     (1 if either norm is 0)
//!              r = clamp(r, trust_ratio_clamp); if trust_clip: r = min(r, 1)
//! s = lr                   BiasCorrection::StepSize: s = lr * sqrt(bc2) / bc1
//! w = w - s*r*u
//! ```

use crate::common::{
    bias_correction, clip_divisor, complement, global_norm, gradient_norms, safe, scalar, Counters,
};
use crate::patterns::Exclusions;
use crate::reduce::{abs_bits, combine, for_blocks, reduce_chunks, Lanes, Partial, CHUNK, LANES};
use crate::schedule::Schedule;
use crate::simd::multiversion;
use crate::slots::{first_bad_gradient, Registry};
use crate::validate;
use crate::{
    NonFinitePolicy, OptimError, Optimizer, OptimizerState, ParamMut, StepOutcome, TensorTelemetry,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Where bias correction enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BiasCorrection {
    /// `m/(1-b1^t)` and `v/(1-b2^t)` inside the direction (tensorflow-addons, timm, optax,
    /// apex, DeepSpeed).
    Moments,
    /// Only the step size is scaled by `sqrt(1-b2^t)/(1-b1^t)`, after the trust ratio
    /// (torch_optimizer `debias=True`).
    StepSize,
    /// No correction (cybertronai pytorch-lamb, torch_optimizer default).
    None,
}

/// Which tensors get the trust ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerAdaptation {
    /// Every tensor not matched by `exclude_from_layer_adaptation` (or, when that list is
    /// empty, by `exclude_from_weight_decay`): tensorflow-addons.
    Exclusions,
    /// Every tensor (optax, pytorch-lamb, NVLAMB, DeepSpeed; timm `always_adapt=True`).
    All,
    /// Only tensors that are weight-decayed with a non-zero rate (timm `always_adapt=False`,
    /// apex `use_nvlamb=False`).
    DecayedOnly,
    /// No tensor (pytorch-lamb `adam=True`: ratio forced to 1).
    Never,
}

/// Named LAMB implementations. [`LambConfig::preset`] sets their formula switches and
/// default hyperparameters.
///
/// | preset | defaults | verified |
/// |---|---|---|
/// | `Tfa` | lr 1e-3, eps 1e-6, wd 0, exclusion lists | golden `tfa/` (tensorflow-addons 0.23) |
/// | `PytorchLamb` | lr 1e-3, eps 1e-6, wd 0, no bias correction, ‖w‖ clamped to [0, 10], all adapt | golden `pytorch_lamb/` (cybertronai) |
/// | `TorchOptimizer` | as `PytorchLamb` (clamp_value 10); `debias` = [`BiasCorrection::StepSize`] | golden `torch_optimizer/` |
/// | `Timm` | lr 1e-3, eps 1e-6, wd 0.01, max_grad_norm 1, adapt decayed only | golden `timm/` |
/// | `Optax` | lr 1e-3, eps 1e-6, eps_root 0, wd 0, all adapt | golden `optax/` |
/// | `Nvlamb` | apex FusedLAMB with `use_nvlamb=True`: lr 1e-3, eps 1e-6, wd 0.01, max_grad_norm 1, all adapt | formula only (CUDA-only reference) |
/// | `DeepSpeed` | lr 1e-3, eps 1e-8, wd 0, trust ratio clamped to [0.01, 10], all adapt | formula only (CUDA-only reference) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LambPreset {
    /// tensorflow-addons `LAMB` (the default).
    Tfa,
    /// NVIDIA apex `FusedLAMB(use_nvlamb=True)`.
    Nvlamb,
    /// cybertronai pytorch-lamb `Lamb`.
    PytorchLamb,
    /// torch_optimizer 0.3 `Lamb`.
    TorchOptimizer,
    /// timm 1.0 `Lamb`.
    Timm,
    /// optax 0.2 `lamb`.
    Optax,
    /// DeepSpeed `FusedLamb`.
    DeepSpeed,
}

impl FromStr for LambPreset {
    type Err = OptimError;
    /// Accepts `tfa`, `nvlamb`, `pytorch-lamb`, `torch-optimizer`, `timm`, `optax`,
    /// `deepspeed` (and `_` for `-`, any case).
    fn from_str(s: &str) -> Result<Self, OptimError> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "tfa" | "tensorflow-addons" => Ok(Self::Tfa),
            "nvlamb" | "apex" => Ok(Self::Nvlamb),
            "pytorch-lamb" | "cybertronai" => Ok(Self::PytorchLamb),
            "torch-optimizer" => Ok(Self::TorchOptimizer),
            "timm" => Ok(Self::Timm),
            "optax" => Ok(Self::Optax),
            "deepspeed" => Ok(Self::DeepSpeed),
            _ => Err(OptimError::InvalidHyperparameter {
                name: "preset",
                value: s.to_string(),
                valid: "one of tfa, nvlamb, pytorch-lamb, torch-optimizer, timm, optax, deepspeed"
                    .into(),
            }),
        }
    }
}

/// LAMB hyperparameters and formula switches. `Default` is the tensorflow-addons preset.
/// Override single fields with struct update syntax:
/// `LambConfig { weight_decay_rate: 0.01, ..LambConfig::preset(LambPreset::Timm) }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LambConfig {
    /// Base learning rate (the peak for warmup schedules). Default 1e-3.
    pub learning_rate: f32,
    /// Learning-rate schedule. Default constant.
    pub schedule: Schedule,
    /// First-moment decay, in [0, 1). Default 0.9.
    pub beta_1: f32,
    /// Second-moment decay, in [0, 1). Default 0.999.
    pub beta_2: f32,
    /// Added to `sqrt(v_hat)`; > 0. Default 1e-6.
    pub epsilon: f32,
    /// Added inside the square root (optax `eps_root`); >= 0. Default 0.
    pub epsilon_root: f32,
    /// Weight decay added to the direction (`u += wd*w`, inside the trust-ratio norm). Default 0.
    pub weight_decay_rate: f32,
    /// Regexes searched in tensor names; matching tensors are not decayed.
    pub exclude_from_weight_decay: Vec<String>,
    /// Regexes searched in tensor names; matching tensors get ratio 1 (with
    /// [`LayerAdaptation::Exclusions`]). Empty: the weight-decay list is used.
    pub exclude_from_layer_adaptation: Vec<String>,
    /// Where bias correction enters. Default [`BiasCorrection::Moments`].
    pub bias_correction: BiasCorrection,
    /// First moment from `(1-b1)*g` (true, default) or `g` (false).
    pub grad_averaging: bool,
    /// Global gradient-norm clipping before the moments (timm, apex). Default none.
    pub max_grad_norm: Option<f32>,
    /// Which tensors are adapted. Default [`LayerAdaptation::Exclusions`].
    pub layer_adaptation: LayerAdaptation,
    /// Clamp `||w||` to `[min, max]` before the ratio (pytorch-lamb: `[0, 10]`). Default none.
    pub weight_norm_clamp: Option<(f32, f32)>,
    /// Clamp computed trust ratios to `[min, max]` (DeepSpeed `[0.01, 10]`). Default none.
    pub trust_ratio_clamp: Option<(f32, f32)>,
    /// Cap the trust ratio at 1 (LAMBC, timm `trust_clip`). Default false.
    pub trust_clip: bool,
    /// Scalar coefficients (`1-beta`, `1-beta^t`, step size) computed in f64 from the
    /// decimal hyperparameters and rounded once, as the Python-driven references (PyTorch,
    /// optax) do; false: in f32 as TensorFlow does. Set by the presets.
    pub f64_scalars: bool,
    /// What a non-finite gradient or update does. Default: error.
    pub non_finite: NonFinitePolicy,
}

impl Default for LambConfig {
    fn default() -> Self {
        Self::preset(LambPreset::Tfa)
    }
}

impl LambConfig {
    /// The switches and default hyperparameters of a reference implementation.
    pub fn preset(p: LambPreset) -> Self {
        let tfa = LambConfig {
            learning_rate: 1e-3,
            schedule: Schedule::Constant,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-6,
            epsilon_root: 0.0,
            weight_decay_rate: 0.0,
            exclude_from_weight_decay: Vec::new(),
            exclude_from_layer_adaptation: Vec::new(),
            bias_correction: BiasCorrection::Moments,
            grad_averaging: true,
            max_grad_norm: None,
            layer_adaptation: LayerAdaptation::Exclusions,
            weight_norm_clamp: None,
            trust_ratio_clamp: None,
            trust_clip: false,
            f64_scalars: false,
            non_finite: NonFinitePolicy::Error,
        };
        match p {
            LambPreset::Tfa => tfa,
            LambPreset::Nvlamb => LambConfig {
                f64_scalars: true,
                weight_decay_rate: 0.01,
                max_grad_norm: Some(1.0),
                layer_adaptation: LayerAdaptation::All,
                ..tfa
            },
            LambPreset::PytorchLamb | LambPreset::TorchOptimizer => LambConfig {
                f64_scalars: true,
                bias_correction: BiasCorrection::None,
                layer_adaptation: LayerAdaptation::All,
                weight_norm_clamp: Some((0.0, 10.0)),
                ..tfa
            },
            LambPreset::Timm => LambConfig {
                f64_scalars: true,
                weight_decay_rate: 0.01,
                max_grad_norm: Some(1.0),
                layer_adaptation: LayerAdaptation::DecayedOnly,
                ..tfa
            },
            LambPreset::Optax => LambConfig {
                f64_scalars: true,
                layer_adaptation: LayerAdaptation::All,
                ..tfa
            },
            LambPreset::DeepSpeed => LambConfig {
                f64_scalars: true,
                epsilon: 1e-8,
                layer_adaptation: LayerAdaptation::All,
                trust_ratio_clamp: Some((0.01, 10.0)),
                ..tfa
            },
        }
    }

    /// Sets the base learning rate.
    pub fn with_learning_rate(mut self, lr: f32) -> Self {
        self.learning_rate = lr;
        self
    }

    /// Sets the schedule.
    pub fn with_schedule(mut self, s: Schedule) -> Self {
        self.schedule = s;
        self
    }

    /// Sets the weight decay rate.
    pub fn with_weight_decay(mut self, wd: f32) -> Self {
        self.weight_decay_rate = wd;
        self
    }

    /// Sets both exclusion lists.
    pub fn with_exclusions(mut self, decay: &[&str], adaptation: &[&str]) -> Self {
        self.exclude_from_weight_decay = decay.iter().map(|s| s.to_string()).collect();
        self.exclude_from_layer_adaptation = adaptation.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the non-finite policy.
    pub fn with_non_finite(mut self, p: NonFinitePolicy) -> Self {
        self.non_finite = p;
        self
    }
}

/// Per-step scalars of one tensor.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    wd: f32,
    k: f32,
    ratio: f32,
    wn: f32,
    un: f32,
}

/// Constants of the element formula for one step.
#[derive(Debug, Clone, Copy)]
struct Coef {
    gscale: f32,
    b1: f32,
    a1: f32,
    b2: f32,
    a2: f32,
    rc1: f32,
    rc2: f32,
    eps_root: f32,
    eps: f32,
}

#[inline(always)]
fn elem(c: &Coef, wd: f32, g: f32, m: f32, v: f32, w: f32) -> (f32, f32, f32) {
    let g = g * c.gscale;
    let m2 = c.b1 * m + c.a1 * g;
    let v2 = c.b2 * v + c.a2 * (g * g);
    let u = (m2 * c.rc1) / ((v2 * c.rc2 + c.eps_root).sqrt() + c.eps) + wd * w;
    (m2, v2, u)
}

/// Read pass: sums of w^2 and u^2, gradient and update maxima. Changes nothing.
#[inline(always)]
fn read_chunk(c: &Coef, wd: f32, g: &[f32], m: &[f32], v: &[f32], w: &[f32]) -> Partial {
    let n = g.len();
    let (m, v, w) = (&m[..n], &v[..n], &w[..n]);
    let mut l = Lanes::<2>::new();
    for_blocks(
        n,
        &mut l,
        |o, l| {
            let gb: &[f32; LANES] = g[o..o + LANES].try_into().unwrap();
            let mb: &[f32; LANES] = m[o..o + LANES].try_into().unwrap();
            let vb: &[f32; LANES] = v[o..o + LANES].try_into().unwrap();
            let wb: &[f32; LANES] = w[o..o + LANES].try_into().unwrap();
            for j in 0..LANES {
                let (_, _, u) = elem(c, wd, gb[j], mb[j], vb[j], wb[j]);
                l.acc[0][j] += wb[j] * wb[j];
                l.acc[1][j] += u * u;
                l.bits[j] = l.bits[j].max(abs_bits(gb[j]));
                l.xbits[j] = l.xbits[j].max(abs_bits(u));
            }
        },
        |i, j, l| {
            let (_, _, u) = elem(c, wd, g[i], m[i], v[i], w[i]);
            l.acc[0][j] += w[i] * w[i];
            l.acc[1][j] += u * u;
            l.bits[j] = l.bits[j].max(abs_bits(g[i]));
            l.xbits[j] = l.xbits[j].max(abs_bits(u));
        },
    );
    l.finish()
}

/// Write pass: new moments and weights.
#[inline(always)]
fn write_chunk(c: &Coef, wd: f32, k: f32, g: &[f32], m: &mut [f32], v: &mut [f32], w: &mut [f32]) {
    let n = g.len();
    let (m, v, w) = (&mut m[..n], &mut v[..n], &mut w[..n]);
    for i in 0..n {
        let (m2, v2, u) = elem(c, wd, g[i], m[i], v[i], w[i]);
        m[i] = m2;
        v[i] = v2;
        w[i] -= k * u;
    }
}

/// Unchecked first pass: new moments written in place, with the same sums and maxima as
/// [`read_chunk`].
#[inline(always)]
fn moments_chunk(c: &Coef, wd: f32, g: &[f32], m: &mut [f32], v: &mut [f32], w: &[f32]) -> Partial {
    let n = g.len();
    let (m, v, w) = (&mut m[..n], &mut v[..n], &w[..n]);
    // The block and tail closures get disjoint halves (for_blocks' tail starts here).
    let full = n / LANES * LANES;
    let (m, mt) = m.split_at_mut(full);
    let (v, vt) = v.split_at_mut(full);
    let mut l = Lanes::<2>::new();
    for_blocks(
        n,
        &mut l,
        |o, l| {
            let gb: &[f32; LANES] = g[o..o + LANES].try_into().unwrap();
            let wb: &[f32; LANES] = w[o..o + LANES].try_into().unwrap();
            let mb: &mut [f32; LANES] = (&mut m[o..o + LANES]).try_into().unwrap();
            let vb: &mut [f32; LANES] = (&mut v[o..o + LANES]).try_into().unwrap();
            for j in 0..LANES {
                let (m2, v2, u) = elem(c, wd, gb[j], mb[j], vb[j], wb[j]);
                mb[j] = m2;
                vb[j] = v2;
                l.acc[0][j] += wb[j] * wb[j];
                l.acc[1][j] += u * u;
                l.bits[j] = l.bits[j].max(abs_bits(gb[j]));
                l.xbits[j] = l.xbits[j].max(abs_bits(u));
            }
        },
        |i, j, l| {
            let (m2, v2, u) = elem(c, wd, g[i], mt[i - full], vt[i - full], w[i]);
            mt[i - full] = m2;
            vt[i - full] = v2;
            l.acc[0][j] += w[i] * w[i];
            l.acc[1][j] += u * u;
            l.bits[j] = l.bits[j].max(abs_bits(g[i]));
            l.xbits[j] = l.xbits[j].max(abs_bits(u));
        },
    );
    l.finish()
}

/// Unchecked second pass: the update recomputed from the new moments (the same f32 values
/// [`elem`] computes, so the weights are bit-identical to [`write_chunk`]'s).
#[inline(always)]
fn apply_chunk(c: &Coef, wd: f32, k: f32, m: &[f32], v: &[f32], w: &mut [f32]) {
    let n = w.len();
    let (m, v) = (&m[..n], &v[..n]);
    for i in 0..n {
        let u = (m[i] * c.rc1) / ((v[i] * c.rc2 + c.eps_root).sqrt() + c.eps) + wd * w[i];
        w[i] -= k * u;
    }
}

multiversion! {
    fn moments_chunk_mv(c: &Coef, wd: f32, g: &[f32], m: &mut [f32], v: &mut [f32], w: &[f32]) -> Partial = moments_chunk;
}
multiversion! {
    fn apply_chunk_mv(c: &Coef, wd: f32, k: f32, m: &[f32], v: &[f32], w: &mut [f32]) = apply_chunk;
}
multiversion! {
    fn read_chunk_mv(c: &Coef, wd: f32, g: &[f32], m: &[f32], v: &[f32], w: &[f32]) -> Partial = read_chunk;
}
multiversion! {
    fn write_chunk_mv(c: &Coef, wd: f32, k: f32, g: &[f32], m: &mut [f32], v: &mut [f32], w: &mut [f32]) = write_chunk;
}

type Slot = crate::slots::TensorSlot<Plan>;

/// Read pass over one tensor: its norms and maxima into `ts.total`; nothing written.
fn read_tensor(coef: &Coef, ts: &mut Slot, g: &[f32], w: &[f32]) {
    let (m, v) = (&ts.bufs[0], &ts.bufs[1]);
    let wd = ts.plan.wd;
    ts.total = reduce_chunks(&mut ts.partials, g.len(), |r| {
        read_chunk_mv(coef, wd, &g[r.clone()], &m[r.clone()], &v[r.clone()], &w[r])
    });
}

/// Unchecked first pass over one tensor: new moments written, norms and maxima into
/// `ts.total` (reads g, m, v, w; writes m, v: 24 bytes per parameter).
fn moments_tensor(coef: &Coef, ts: &mut Slot, g: &[f32], w: &[f32]) {
    let wd = ts.plan.wd;
    let (mb, vb) = ts.bufs.split_at_mut(1);
    mb[0]
        .par_chunks_mut(CHUNK)
        .zip(vb[0].par_chunks_mut(CHUNK))
        .zip(ts.partials.par_iter_mut())
        .enumerate()
        .for_each(|(c, ((m, v), part))| {
            let r = c * CHUNK..((c + 1) * CHUNK).min(g.len());
            *part = moments_chunk_mv(coef, wd, &g[r.clone()], m, v, &w[r]);
        });
    ts.total = combine(&ts.partials);
}

/// Unchecked second pass over one tensor: weights from the new moments (reads m, v, w;
/// writes w: 16 bytes per parameter).
fn apply_tensor(coef: &Coef, ts: &Slot, w: &mut [f32]) {
    let plan = ts.plan;
    w.par_chunks_mut(CHUNK)
        .zip(ts.bufs[0].par_chunks(CHUNK))
        .zip(ts.bufs[1].par_chunks(CHUNK))
        .for_each(|((w, m), v)| apply_chunk_mv(coef, plan.wd, plan.k, m, v, w));
}

/// Trust ratio and step coefficient of one tensor from its norms.
fn set_ratio(cfg: &LambConfig, ts: &mut Slot, step_size: f64) {
    let mut wn = ts.total.sums[0].sqrt();
    if let Some((lo, hi)) = cfg.weight_norm_clamp {
        wn = wn.clamp(lo as f64, hi as f64);
    }
    let un = ts.total.sums[1].sqrt();
    let mut r = 1.0f64;
    if ts.adapt && wn > 0.0 && un > 0.0 {
        r = wn / un;
        if let Some((lo, hi)) = cfg.trust_ratio_clamp {
            r = r.clamp(lo as f64, hi as f64);
        }
    }
    if ts.adapt && cfg.trust_clip {
        r = r.min(1.0);
    }
    let ratio = r as f32;
    ts.plan.ratio = ratio;
    ts.plan.k = (step_size * ratio as f64) as f32;
    ts.plan.wn = wn as f32;
    ts.plan.un = un as f32;
}

/// Write pass over one tensor: new moments and weights.
fn write_tensor(coef: &Coef, ts: &mut Slot, p: &mut ParamMut<'_>) {
    let plan = ts.plan;
    let (mb, vb) = ts.bufs.split_at_mut(1);
    p.value
        .par_chunks_mut(CHUNK)
        .zip(p.grad.par_chunks(CHUNK))
        .zip(mb[0].par_chunks_mut(CHUNK))
        .zip(vb[0].par_chunks_mut(CHUNK))
        .for_each(|(((w, g), m), v)| write_chunk_mv(coef, plan.wd, plan.k, g, m, v, w));
}

/// The LAMB optimizer. See the module documentation for the formula and [`LambPreset`] for
/// the reference implementations it reproduces.
#[derive(Debug, Clone)]
pub struct Lamb {
    cfg: LambConfig,
    excl: Exclusions,
    reg: Registry<Plan>,
    count: Counters,
}

impl Lamb {
    /// Validates every hyperparameter and compiles the exclusion patterns.
    pub fn new(cfg: LambConfig) -> Result<Self, OptimError> {
        validate::learning_rate("learning_rate", cfg.learning_rate)?;
        cfg.schedule.validate()?;
        validate::beta("beta_1", cfg.beta_1)?;
        validate::beta("beta_2", cfg.beta_2)?;
        validate::positive("epsilon", cfg.epsilon)?;
        validate::non_negative("epsilon_root", cfg.epsilon_root)?;
        validate::non_negative("weight_decay_rate", cfg.weight_decay_rate)?;
        if let Some(n) = cfg.max_grad_norm {
            validate::positive("max_grad_norm", n)?;
        }
        if let Some((lo, hi)) = cfg.weight_norm_clamp {
            validate::clamp_range("weight_norm_clamp", lo, hi)?;
        }
        if let Some((lo, hi)) = cfg.trust_ratio_clamp {
            validate::clamp_range("trust_ratio_clamp", lo, hi)?;
        }
        let excl = Exclusions::new(
            &cfg.exclude_from_weight_decay,
            &cfg.exclude_from_layer_adaptation,
        )?;
        Ok(Self {
            cfg,
            excl,
            reg: Registry::new(&["m", "v"]),
            count: Counters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LambConfig {
        &self.cfg
    }

    fn classify(&self) -> impl Fn(&str) -> (bool, bool) + '_ {
        move |name: &str| {
            classify_with(
                &self.excl,
                self.cfg.layer_adaptation,
                self.cfg.weight_decay_rate,
                name,
            )
        }
    }

    fn coef(&self, t: u64, gscale: f32) -> Coef {
        let cfg = &self.cfg;
        let f64s = cfg.f64_scalars;
        let (rc1, rc2) = match cfg.bias_correction {
            BiasCorrection::Moments => (
                (1.0 / bias_correction(cfg.beta_1, t, f64s)) as f32,
                (1.0 / bias_correction(cfg.beta_2, t, f64s)) as f32,
            ),
            _ => (1.0, 1.0),
        };
        Coef {
            gscale,
            b1: cfg.beta_1,
            a1: if cfg.grad_averaging {
                complement(cfg.beta_1, f64s)
            } else {
                1.0
            },
            b2: cfg.beta_2,
            a2: complement(cfg.beta_2, f64s),
            rc1,
            rc2,
            eps_root: cfg.epsilon_root,
            eps: cfg.epsilon,
        }
    }

    fn try_step(&mut self, params: &mut [ParamMut<'_>], t: u64) -> Result<(), OptimError> {
        let lr = self.current_learning_rate();
        let mut gscale = 1.0f32;
        if let Some(max_norm) = self.cfg.max_grad_norm {
            gradient_norms(&mut self.reg, params);
            if self.cfg.non_finite != NonFinitePolicy::Unchecked {
                if let Some(e) = first_bad_gradient(&self.reg, params, t) {
                    return Err(e);
                }
            }
            gscale = (1.0 / clip_divisor(global_norm(&self.reg), max_norm)) as f32;
        }
        let coef = self.coef(t, gscale);
        let wd_rate = self.cfg.weight_decay_rate;
        for ts in &mut self.reg.tensors {
            ts.plan.wd = if ts.decay { wd_rate } else { 0.0 };
        }
        let step_size = match self.cfg.bias_correction {
            BiasCorrection::StepSize => {
                let b1 = bias_correction(self.cfg.beta_1, t, self.cfg.f64_scalars);
                let b2 = bias_correction(self.cfg.beta_2, t, self.cfg.f64_scalars);
                scalar(lr, self.cfg.f64_scalars) * b2.sqrt() / b1
            }
            _ => scalar(lr, self.cfg.f64_scalars),
        };
        let cfg = &self.cfg;
        if cfg.non_finite == NonFinitePolicy::Unchecked {
            // Each tensor's norms, then its update, back to back: the second pass reads what the
            // first left in cache. No tensor waits for the others' norms.
            self.reg
                .tensors
                .par_iter_mut()
                .zip(params.par_iter_mut())
                .for_each(|(ts, p)| {
                    moments_tensor(&coef, ts, p.grad, p.value);
                    set_ratio(cfg, ts, step_size);
                    apply_tensor(&coef, ts, p.value);
                });
        } else {
            // Read pass: norms and maxima of every tensor, nothing written.
            self.reg
                .tensors
                .par_iter_mut()
                .zip(params.par_iter())
                .for_each(|(ts, p)| read_tensor(&coef, ts, p.grad, p.value));
            if let Some(e) = first_bad_gradient(&self.reg, params, t) {
                return Err(e);
            }
            for (ts, p) in self.reg.tensors.iter_mut().zip(params.iter()) {
                set_ratio(cfg, ts, step_size);
                let (k, un) = (ts.plan.k, ts.plan.un as f64);
                let bounded = crate::reduce::bits_finite(ts.total.xbits)
                    && un.is_finite()
                    && safe(k as f64 * un * 1.001);
                if !bounded {
                    let (m, v) = (&ts.bufs[0], &ts.bufs[1]);
                    let w = &*p.value;
                    for i in 0..ts.len {
                        let (m2, v2, u) = elem(&coef, ts.plan.wd, p.grad[i], m[i], v[i], w[i]);
                        let nw = w[i] - k * u;
                        if !(m2.is_finite() && v2.is_finite() && u.is_finite() && nw.is_finite()) {
                            return Err(OptimError::NonFinite {
                                what: "update",
                                name: ts.name.clone(),
                                step: t,
                                index: i,
                                value: if u.is_finite() { nw } else { u },
                            });
                        }
                    }
                }
            }
            // Write pass.
            self.reg
                .tensors
                .par_iter_mut()
                .zip(params.par_iter_mut())
                .for_each(|(ts, p)| write_tensor(&coef, ts, p));
        }
        for (tel, ts) in self.reg.telemetry.iter_mut().zip(&self.reg.tensors) {
            tel.weight_norm = ts.plan.wn;
            tel.update_norm = ts.plan.un;
            tel.trust_ratio = ts.plan.ratio;
            tel.learning_rate = lr;
        }
        Ok(())
    }
}

impl Optimizer for Lamb {
    fn name(&self) -> &'static str {
        "lamb"
    }

    fn step(&mut self, params: &mut [ParamMut<'_>]) -> Result<StepOutcome, OptimError> {
        let t = self.count.step + 1;
        self.reg.check(params, t)?;
        let Lamb { cfg, excl, reg, .. } = self;
        let fresh = reg.establish(params, |n| {
            classify_with(excl, cfg.layer_adaptation, cfg.weight_decay_rate, n)
        });
        let result = self.try_step(params, t);
        self.count
            .finish(result, self.cfg.non_finite, fresh, &mut self.reg)
    }

    fn telemetry(&self) -> &[TensorTelemetry] {
        if self.count.telemetry_valid {
            &self.reg.telemetry
        } else {
            &[]
        }
    }

    fn steps(&self) -> u64 {
        self.count.step
    }

    fn skipped_steps(&self) -> u64 {
        self.count.skipped
    }

    fn current_learning_rate(&self) -> f32 {
        self.cfg
            .schedule
            .learning_rate(self.cfg.learning_rate, self.count.step + 1)
    }

    fn state(&self) -> OptimizerState {
        self.reg
            .to_state(self.name(), self.count.step, self.count.skipped)
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), OptimError> {
        let classify = self.classify();
        let mut reg = self.reg.clone();
        reg.load("lamb", state, classify)?;
        self.reg = reg;
        self.count = Counters::loaded(state);
        Ok(())
    }
}

fn classify_with(excl: &Exclusions, mode: LayerAdaptation, wd: f32, name: &str) -> (bool, bool) {
    let decay = excl.decays(name);
    let adapt = match mode {
        LayerAdaptation::Exclusions => excl.adapts(name),
        LayerAdaptation::All => true,
        LayerAdaptation::DecayedOnly => decay && wd != 0.0,
        LayerAdaptation::Never => false,
    };
    (decay, adapt)
}
