//! LARS (You et al. 2017): SGD with momentum where each tensor's step is scaled by
//! `trust_coefficient * ||w|| / ||update||`, with LARC-style clipping as an option.
//!
//! ```text
//! d = g + wd*w                                  (wd = 0 for excluded tensors)
//! if adapted:
//!     Timm norm:  r = tc*||w|| / (||g|| + wd*||w|| + eps)
//!     Optax norm: r = tc*||w|| / (||g + wd*w|| + eps)
//!     r = 1 if ||w|| == 0 or the gradient norm is 0
//!     trust_clip (LARC): r = min(r/lr, 1)
//!     d = d*r
//! Timm momentum (buffer of unscaled d; timm, PyTorch SGD):
//!     buf = d at the first step, else momentum*buf + (1-dampening)*d
//!     w -= lr * (d + momentum*buf if nesterov else buf)          (w -= lr*d if momentum == 0)
//! Optax momentum (trace of lr-scaled updates; same as Timm for a constant lr):
//!     u = -lr*d ;  T = u + momentum*T ;  w += (u + momentum*T if nesterov else T)
//! ```
//! Presets: `Timm` (timm 1.0 `Lars`: lr 1.0, momentum 0, wd 0, tc 1e-3, eps 1e-8, adapt only
//! decayed tensors) and `Optax` (optax 0.2 `lars`: momentum 0.9, eps 0, tc 1e-3, masks by
//! exclusion lists). Both are verified against the golden files `timm/*lars*` and
//! `optax/*lars*`.

use crate::common::{complement, first_bad_update, safe, scalar, Core, Family};
use crate::describe::{check_ranges, configure, settings_of, Field, Hyperparameter, Key, Preset};
use crate::patterns::LayerAdaptation;
use crate::reduce::{
    abs_bits, bits_value, combine, for_blocks, lockstep_chunks, Lanes, Partial, CHUNK, GROUP, LANES,
};
use crate::schedule::Schedule;
use crate::simd::multiversion;
use crate::slots::first_bad_gradient;
use crate::validate::Range;
use crate::{
    Description, MemoryPass, NonFinitePolicy, OptimError, Optimizer, OptimizerKind, OptimizerSpec,
    ParamMut,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Reference implementations of LARS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LarsPreset {
    /// timm 1.0 `Lars` (verified against golden files).
    Timm,
    /// optax 0.2 `lars` (verified against golden files).
    Optax,
}

impl LarsPreset {
    /// The preset a description entry names.
    fn of(p: &Preset) -> Self {
        match p.name {
            "optax" => Self::Optax,
            _ => Self::Timm,
        }
    }
}

impl FromStr for LarsPreset {
    type Err = OptimError;
    /// `timm` or `optax` (any case).
    fn from_str(s: &str) -> Result<Self, OptimError> {
        Ok(Self::of(DESCRIPTION.preset(s)?))
    }
}

/// Which implementation's formula details to follow (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LarsForm {
    /// `||g|| + wd*||w||` in the ratio; momentum buffer of unscaled directions.
    Timm,
    /// `||g + wd*w||` in the ratio; momentum trace of lr-scaled updates.
    Optax,
}

/// LARS hyperparameters. `Default` is the timm preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LarsConfig {
    /// Base learning rate. Default 1.0 (timm).
    pub learning_rate: f32,
    /// Learning-rate schedule. Default constant.
    pub schedule: Schedule,
    /// Momentum in [0, 1). Default 0 (timm), 0.9 (optax).
    pub momentum: f32,
    /// Dampening in [0, 1] (Timm form only). Default 0.
    pub dampening: f32,
    /// Nesterov momentum. Default false.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient before the trust ratio (`d = g + wd*w`, not
    /// decoupled); the ratio's norm includes it. Default 0.
    pub weight_decay_rate: f32,
    /// Trust coefficient `tc` (> 0). Default 1e-3.
    pub trust_coefficient: f32,
    /// Added to the ratio's denominator (>= 0). Default 1e-8 (timm), 0 (optax).
    pub epsilon: f32,
    /// Regexes of tensors not decayed.
    pub exclude_from_weight_decay: Vec<String>,
    /// Regexes of tensors not adapted (with [`LayerAdaptation::Exclusions`]; empty: the
    /// weight-decay list).
    pub exclude_from_layer_adaptation: Vec<String>,
    /// Which tensors are adapted. Default [`LayerAdaptation::DecayedOnly`] (timm).
    pub layer_adaptation: LayerAdaptation,
    /// LARC clipping: `r = min(r/lr, 1)`. Default false.
    pub trust_clip: bool,
    /// Formula details. Default [`LarsForm::Timm`].
    pub form: LarsForm,
    /// Scalar coefficients from decimal hyperparameters in f64 (Python references). Default true.
    pub f64_scalars: bool,
    /// What a non-finite gradient or update does. Default: error.
    pub non_finite: NonFinitePolicy,
}

impl Default for LarsConfig {
    fn default() -> Self {
        Self::preset(LarsPreset::Timm)
    }
}

impl LarsConfig {
    /// A reference implementation's defaults and formula details.
    pub fn preset(p: LarsPreset) -> Self {
        let timm = LarsConfig {
            learning_rate: 1.0,
            schedule: Schedule::Constant,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay_rate: 0.0,
            trust_coefficient: 1e-3,
            epsilon: 1e-8,
            exclude_from_weight_decay: Vec::new(),
            exclude_from_layer_adaptation: Vec::new(),
            layer_adaptation: LayerAdaptation::DecayedOnly,
            trust_clip: false,
            form: LarsForm::Timm,
            f64_scalars: true,
            non_finite: NonFinitePolicy::Error,
        };
        match p {
            LarsPreset::Timm => timm,
            LarsPreset::Optax => LarsConfig {
                momentum: 0.9,
                epsilon: 0.0,
                layer_adaptation: LayerAdaptation::Exclusions,
                form: LarsForm::Optax,
                ..timm
            },
        }
    }

    /// Sets the base learning rate.
    pub fn with_learning_rate(mut self, lr: f32) -> Self {
        self.learning_rate = lr;
        self
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Plan {
    wd: f32,
    ratio: f32,
    wn: f32,
    dn: f32,
}

#[derive(Debug, Clone, Copy)]
struct Coef {
    lr: f32,
    neg_lr: f32,
    mu: f32,
    one_minus_damp: f32,
    first: bool,
    nesterov: bool,
}

/// New (buffer, weight) for one element.
#[inline(always)]
fn elem<const OPTAX: bool>(c: &Coef, p: Plan, g: f32, buf: f32, w: f32) -> (f32, f32) {
    let d = (g + p.wd * w) * p.ratio;
    if OPTAX {
        let u = c.neg_lr * d;
        let t = u + c.mu * buf;
        let out = if c.nesterov { u + c.mu * t } else { t };
        (t, w + out)
    } else if c.mu == 0.0 {
        (buf, w - c.lr * d)
    } else {
        let b = if c.first {
            d
        } else {
            c.mu * buf + c.one_minus_damp * d
        };
        let out = if c.nesterov { d + c.mu * b } else { b };
        (b, w - c.lr * out)
    }
}

/// One element of the read pass into lane `j`: w^2, g^2, (g + wd*w)^2 and the maxima.
#[inline(always)]
fn read_elem(wd: f32, g: f32, w: f32, j: usize, l: &mut Lanes<3>) {
    let s = g + wd * w;
    l.acc[0][j] += w * w;
    l.acc[1][j] += g * g;
    l.acc[2][j] += s * s;
    l.bits[j] = l.bits[j].max(abs_bits(g));
    l.xbits[j] = l.xbits[j].max(abs_bits(w));
}

/// One block of the read pass at offset `o`.
#[inline(always)]
fn read_block(wd: f32, g: &[f32], w: &[f32], o: usize, l: &mut Lanes<3>) {
    let gb: &[f32; LANES] = g[o..o + LANES].try_into().unwrap();
    let wb: &[f32; LANES] = w[o..o + LANES].try_into().unwrap();
    for j in 0..LANES {
        read_elem(wd, gb[j], wb[j], j, l);
    }
}

/// Read pass: sums of w^2, g^2, (g + wd*w)^2; gradient and weight maxima.
#[inline(always)]
fn read_chunk(wd: f32, g: &[f32], w: &[f32]) -> Partial {
    let n = g.len();
    let w = &w[..n];
    let mut l = Lanes::<3>::new();
    for_blocks!(n, &mut l, |o, l| read_block(wd, g, w, o, l), |i, j, l| {
        read_elem(wd, g[i], w[i], j, l)
    },);
    l.finish()
}

/// [`read_chunk`] of each chunk of a group of up to [`GROUP`] chunks into `parts`, the full
/// chunks walked side by side (bit-identical partials; see [`lockstep_chunks!`]).
#[inline(always)]
fn read_group(wd: f32, g: &[f32], w: &[f32], parts: &mut [Partial]) {
    let w = &w[..g.len()];
    let mut ls = [Lanes::<3>::new(); GROUP];
    let full = lockstep_chunks!(g.len(), &mut ls, |c, o, l| read_block(wd, g, w, o, l));
    for (p, l) in parts.iter_mut().zip(ls).take(full) {
        *p = l.finish();
    }
    if full < parts.len() {
        parts[full] = read_chunk(wd, &g[full * CHUNK..], &w[full * CHUNK..]);
    }
}

/// Write pass; returns the largest |buffer| in `gbits`.
#[inline(always)]
fn write_chunk<const OPTAX: bool>(
    c: &Coef,
    p: Plan,
    g: &[f32],
    b: &mut [f32],
    w: &mut [f32],
) -> Partial {
    let n = g.len();
    let (b, w) = (&mut b[..n], &mut w[..n]);
    let mut l = Lanes::<0>::new();
    let mut gi = g.chunks_exact(LANES);
    let mut bi = b.chunks_exact_mut(LANES);
    let mut wi = w.chunks_exact_mut(LANES);
    for ((gb, bb), wb) in (&mut gi).zip(&mut bi).zip(&mut wi) {
        let gb: &[f32; LANES] = gb.try_into().unwrap();
        let bb: &mut [f32; LANES] = bb.try_into().unwrap();
        let wb: &mut [f32; LANES] = wb.try_into().unwrap();
        for j in 0..LANES {
            let (nb, nw) = elem::<OPTAX>(c, p, gb[j], bb[j], wb[j]);
            bb[j] = nb;
            wb[j] = nw;
            l.bits[j] = l.bits[j].max(abs_bits(nb));
        }
    }
    let (gr, br, wr) = (gi.remainder(), bi.into_remainder(), wi.into_remainder());
    for i in 0..gr.len() {
        let (nb, nw) = elem::<OPTAX>(c, p, gr[i], br[i], wr[i]);
        br[i] = nb;
        wr[i] = nw;
        l.bits[0] = l.bits[0].max(abs_bits(nb));
    }
    l.finish()
}

multiversion! {
    fn read_group_mv(wd: f32, g: &[f32], w: &[f32], parts: &mut [Partial]) = read_group;
}
multiversion! {
    fn write_optax(c: &Coef, p: Plan, g: &[f32], b: &mut [f32], w: &mut [f32]) -> Partial = write_chunk::<true>;
}
multiversion! {
    fn write_timm(c: &Coef, p: Plan, g: &[f32], b: &mut [f32], w: &mut [f32]) -> Partial = write_chunk::<false>;
}

/// The LARS optimizer (also the engine behind [`crate::Sgd`]).
#[derive(Debug, Clone)]
pub struct Lars {
    cfg: LarsConfig,
    core: Core<Plan>,
}

impl Lars {
    /// Validates every hyperparameter and compiles the exclusion patterns.
    pub fn new(mut cfg: LarsConfig) -> Result<Self, OptimError> {
        check_ranges(&DESCRIPTION, &mut cfg, fields)?;
        cfg.schedule.validate()?;
        if cfg.nesterov && cfg.momentum == 0.0 {
            return Err(OptimError::InvalidHyperparameter {
                name: "nesterov",
                value: "true".into(),
                valid: "requires momentum > 0".into(),
            });
        }
        let core = Core::new(
            &["momentum"],
            &cfg.exclude_from_weight_decay,
            &cfg.exclude_from_layer_adaptation,
            cfg.layer_adaptation,
            cfg.weight_decay_rate,
        )?;
        Ok(Self { cfg, core })
    }

    /// The configuration.
    pub fn config(&self) -> &LarsConfig {
        &self.cfg
    }

    /// One step attempt (see [`Family::try_step`]).
    pub(crate) fn attempt(
        &mut self,
        params: &mut [ParamMut<'_>],
        t: u64,
    ) -> Result<(), OptimError> {
        let lr = self.current_learning_rate();
        let cfg = &self.cfg;
        let optax = cfg.form == LarsForm::Optax;
        let coef = Coef {
            lr,
            neg_lr: -lr,
            mu: cfg.momentum,
            one_minus_damp: complement(cfg.dampening, cfg.f64_scalars),
            first: t == 1,
            nesterov: cfg.nesterov,
        };
        for ts in &mut self.core.reg.tensors {
            ts.plan.wd = if ts.decay { cfg.weight_decay_rate } else { 0.0 };
        }
        self.core
            .reg
            .tensors
            .par_iter_mut()
            .zip(params.par_iter())
            .for_each(|(ts, p)| {
                let (g, w) = (p.grad, &*p.value);
                let wd = ts.plan.wd;
                ts.partials
                    .par_chunks_mut(GROUP)
                    .zip(g.par_chunks(GROUP * CHUNK))
                    .zip(w.par_chunks(GROUP * CHUNK))
                    .for_each(|((parts, g), w)| read_group_mv(wd, g, w, parts));
                ts.total = combine(&ts.partials);
            });
        if let Some(e) = first_bad_gradient(&self.core.reg, params, t) {
            return Err(e);
        }
        let lr64 = scalar(lr, cfg.f64_scalars);
        for ts in self.core.reg.tensors.iter_mut() {
            let wn = ts.total.sums[0].sqrt();
            let gn = ts.total.sums[1].sqrt();
            let sn = ts.total.sums[2].sqrt();
            let wd = ts.plan.wd as f64;
            let (denom, gnorm) = if optax { (sn, sn) } else { (gn + wd * wn, gn) };
            let mut r = 1.0f64;
            if ts.adapt {
                if wn > 0.0 && gnorm > 0.0 {
                    r = cfg.trust_coefficient as f64 * wn / (denom + cfg.epsilon as f64);
                }
                if cfg.trust_clip {
                    r = (r / lr64).min(1.0);
                }
            }
            ts.plan.ratio = r as f32;
            ts.plan.wn = wn as f32;
            ts.plan.dn = denom as f32;
        }
        for (ts, p) in self.core.reg.tensors.iter().zip(params.iter()) {
            // |d| <= r*||g + wd*w||; bound the new buffer and the weight change.
            let dmax = ts.plan.ratio as f64 * ts.total.sums[2].sqrt() * 1.001;
            let bmax = ts.buf_max[0];
            let mu = cfg.momentum as f64;
            let lr = lr as f64;
            let (buf, delta) = if optax {
                let tr = lr * dmax + mu * bmax;
                (
                    tr,
                    if cfg.nesterov {
                        lr * dmax + mu * tr
                    } else {
                        tr
                    },
                )
            } else if cfg.momentum == 0.0 {
                (bmax, lr * dmax)
            } else {
                let b = if t == 1 { dmax } else { mu * bmax + dmax };
                (b, lr * if cfg.nesterov { dmax + mu * b } else { b })
            };
            let bounded = safe(buf * 1.001) && safe(delta * 1.001);
            if !bounded {
                let b = &ts.bufs[0];
                first_bad_update(&ts.name, t, ts.len, |i| {
                    let (nb, nw) = if optax {
                        elem::<true>(&coef, ts.plan, p.grad[i], b[i], p.value[i])
                    } else {
                        elem::<false>(&coef, ts.plan, p.grad[i], b[i], p.value[i])
                    };
                    (nb.is_finite() && nw.is_finite(), nw)
                })?;
            }
        }
        self.core
            .reg
            .tensors
            .par_iter_mut()
            .zip(params.par_iter_mut())
            .for_each(|(ts, p)| {
                let plan = ts.plan;
                p.value
                    .par_chunks_mut(CHUNK)
                    .zip(p.grad.par_chunks(CHUNK))
                    .zip(ts.bufs[0].par_chunks_mut(CHUNK))
                    .zip(ts.partials.par_iter_mut())
                    .for_each(|(((w, g), b), part)| {
                        *part = if optax {
                            write_optax(&coef, plan, g, b, w)
                        } else {
                            write_timm(&coef, plan, g, b, w)
                        }
                    });
                ts.buf_max[0] = bits_value(combine(&ts.partials).gbits);
            });
        for (tel, ts) in self
            .core
            .reg
            .telemetry
            .iter_mut()
            .zip(&self.core.reg.tensors)
        {
            tel.weight_norm = ts.plan.wn;
            tel.update_norm = ts.plan.dn;
            tel.trust_ratio = ts.plan.ratio;
            tel.learning_rate = lr;
        }
        Ok(())
    }
}

impl Family for Lars {
    type Plan = Plan;

    fn label(&self) -> &'static str {
        "lars"
    }

    fn core(&self) -> &Core<Plan> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core<Plan> {
        &mut self.core
    }

    fn schedule(&self) -> (f32, &Schedule) {
        (self.cfg.learning_rate, &self.cfg.schedule)
    }

    fn non_finite(&self) -> NonFinitePolicy {
        self.cfg.non_finite
    }

    fn try_step(&mut self, params: &mut [ParamMut<'_>], t: u64) -> Result<(), OptimError> {
        self.attempt(params, t)
    }

    fn memory_passes(&self) -> Vec<MemoryPass> {
        // Norms and gradient maxima from g, w; then g, buffer, w in, buffer, w out.
        vec![
            MemoryPass::new("norms", 8, 0),
            MemoryPass::new("update", 12, 8),
        ]
    }
}

/// LARS's description: hyperparameters, presets and how a spec becomes a [`LarsConfig`].
pub(crate) static DESCRIPTION: Description = Description {
    kind: OptimizerKind::Lars,
    name: "lars",
    summary: "LARS (You et al. 2017): SGD with momentum, each tensor's step scaled by tc*||w||/||g + wd*w||",
    trust_ratio: true,
    hyperparameters: &[
        Hyperparameter {
            key: Key::LearningRate,
            range: Some(Range::NonNegative),
            doc: "Base learning rate.",
        },
        Hyperparameter {
            key: Key::Momentum,
            range: Some(Range::Fraction),
            doc: "Momentum.",
        },
        Hyperparameter {
            key: Key::Dampening,
            range: Some(Range::UnitInterval),
            doc: "Dampening of the momentum buffer (timm form only).",
        },
        Hyperparameter {
            key: Key::Nesterov,
            range: None,
            doc: "Nesterov momentum (needs momentum > 0).",
        },
        Hyperparameter {
            key: Key::WeightDecayRate,
            range: Some(Range::NonNegative),
            doc: "L2 weight decay added to the gradient before the trust ratio (d = g + wd*w, \
                  not decoupled); the ratio's norm includes it.",
        },
        Hyperparameter {
            key: Key::TrustCoefficient,
            range: Some(Range::Positive),
            doc: "Trust coefficient tc of the ratio tc*||w||/||d||.",
        },
        Hyperparameter {
            key: Key::Epsilon,
            range: Some(Range::NonNegative),
            doc: "Added to the ratio's denominator.",
        },
        Hyperparameter {
            key: Key::TrustClip,
            range: None,
            doc: "LARC clipping: r = min(r/lr, 1).",
        },
        Hyperparameter {
            key: Key::ExcludeFromWeightDecay,
            range: None,
            doc: "Regexes searched in tensor names; matching tensors are not decayed.",
        },
        Hyperparameter {
            key: Key::ExcludeFromLayerAdaptation,
            range: None,
            doc: "Regexes of tensors that keep ratio 1 where the preset adapts by exclusion \
                  lists (optax); empty: the weight-decay list.",
        },
        Hyperparameter {
            key: Key::Schedule,
            range: None,
            doc: "Learning-rate schedule.",
        },
        Hyperparameter {
            key: Key::NonFinite,
            range: None,
            doc: "What a non-finite gradient or update does: error or skip_step (unchecked \
                  checks as error).",
        },
    ],
    presets: &[
        Preset {
            name: "timm",
            aliases: &[],
            reference: "timm 1.0 Lars",
            verified: "golden files timm/*lars*",
        },
        Preset {
            name: "optax",
            aliases: &[],
            reference: "optax 0.2 lars",
            verified: "golden files optax/*lars*",
        },
    ],
    build: |spec| Ok(Box::new(Lars::new(lars_config(spec)?)?)),
    effective: |spec| Ok(settings_of(&DESCRIPTION, &mut lars_config(spec)?, fields)),
    config: |spec| Ok(serde_json::to_value(lars_config(spec)?).unwrap_or_default()),
};

/// Which [`LarsConfig`] field each of LARS's hyperparameters is.
fn fields(c: &mut LarsConfig) -> Vec<(Key, Field<'_>)> {
    vec![
        (Key::LearningRate, Field::Number(&mut c.learning_rate)),
        (Key::Momentum, Field::Number(&mut c.momentum)),
        (Key::Dampening, Field::Number(&mut c.dampening)),
        (Key::Nesterov, Field::Switch(&mut c.nesterov)),
        (
            Key::WeightDecayRate,
            Field::Number(&mut c.weight_decay_rate),
        ),
        (
            Key::TrustCoefficient,
            Field::Number(&mut c.trust_coefficient),
        ),
        (Key::Epsilon, Field::Number(&mut c.epsilon)),
        (Key::TrustClip, Field::Switch(&mut c.trust_clip)),
        (
            Key::ExcludeFromWeightDecay,
            Field::Patterns(&mut c.exclude_from_weight_decay),
        ),
        (
            Key::ExcludeFromLayerAdaptation,
            Field::Patterns(&mut c.exclude_from_layer_adaptation),
        ),
        (Key::Schedule, Field::Schedule(&mut c.schedule)),
        (Key::NonFinite, Field::NonFinite(&mut c.non_finite)),
    ]
}

/// The LARS configuration a spec describes (preset, then overrides).
pub fn lars_config(spec: &OptimizerSpec) -> Result<LarsConfig, OptimError> {
    configure(
        spec,
        &DESCRIPTION,
        |p| LarsConfig::preset(LarsPreset::of(p)),
        fields,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_read_pass_equals_chunk_by_chunk_bit_for_bit() {
        for len in [
            0,
            7,
            CHUNK,
            2 * CHUNK + 33,
            GROUP * CHUNK,
            GROUP * CHUNK - 1,
        ] {
            let g: Vec<f32> = (0..len)
                .map(|i| ((i * 31) % 97) as f32 * 1e-3 - 0.04)
                .collect();
            let w: Vec<f32> = (0..len)
                .map(|i| ((i * 17) % 89) as f32 * 1e-2 - 0.4)
                .collect();
            let mut grouped = vec![Partial::default(); len.div_ceil(CHUNK)];
            read_group(1e-4, &g, &w, &mut grouped);
            let single: Vec<Partial> = g
                .chunks(CHUNK)
                .zip(w.chunks(CHUNK))
                .map(|(g, w)| read_chunk(1e-4, g, w))
                .collect();
            assert_eq!(grouped, single, "len {len}");
        }
    }
}
