//! Adam with Keras or PyTorch epsilon semantics, L2 or decoupled (AdamW) weight decay.
//!
//! ```text
//! Keras (tf.keras 2.15 Adam, the classic experiment's baseline):
//!     m += (g - m)*(1-b1) ;  v += (g*g - v)*(1-b2)
//!     w -= (m * lr*sqrt(1-b2^t)/(1-b1^t)) / (sqrt(v) + eps)      eps on the un-corrected sqrt(v)
//! PyTorch (torch.optim.Adam / AdamW):
//!     g += wd*w                                  (Adam with weight_decay: L2)
//!     w *= 1 - lr*wd                             (AdamW: decoupled, before the step)
//!     m += (1-b1)*(g - m) ;  v = b2*v + (1-b2)*g*g
//!     w -= (lr/(1-b1^t)) * m / (sqrt(v)/sqrt(1-b2^t) + eps)      eps on sqrt(v_hat)
//! ```
//! Verified against the golden files `tfa/adam_a_keras_defaults`, `torch_adam/a_adam_*` and
//! `torch_adam/b_adamw_*`.

use crate::common::{bias_correction, complement, first_bad_update, safe, scalar, Core, Family};
use crate::describe::{check_ranges, configure, settings_of, Field, Hyperparameter, Key, Preset};
use crate::patterns::LayerAdaptation;
use crate::reduce::{abs_bits, bits_finite, bits_value, combine, Lanes, Partial, CHUNK, LANES};
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

/// Where epsilon is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpsilonMode {
    /// To the un-corrected `sqrt(v)`, with the bias corrections folded into the step size
    /// (Keras, tensorflow).
    Keras,
    /// To `sqrt(v)/sqrt(1-b2^t)` (PyTorch).
    PyTorch,
}

/// Adam / AdamW hyperparameters. `Default` is Keras Adam (lr 1e-3, betas 0.9/0.999,
/// epsilon 1e-7, no decay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamConfig {
    /// Base learning rate. Default 1e-3.
    pub learning_rate: f32,
    /// Learning-rate schedule. Default constant.
    pub schedule: Schedule,
    /// First-moment decay in [0, 1). Default 0.9.
    pub beta_1: f32,
    /// Second-moment decay in [0, 1). Default 0.999.
    pub beta_2: f32,
    /// > 0. Default 1e-7 (Keras); PyTorch's is 1e-8.
    pub epsilon: f32,
    /// Keras or PyTorch placement of epsilon. Default Keras.
    pub epsilon_mode: EpsilonMode,
    /// Weight decay rate (L2 on the gradient, or decoupled for AdamW). Default 0.
    pub weight_decay_rate: f32,
    /// Decoupled weight decay `w *= 1 - lr*wd` (AdamW) instead of L2. Default false.
    pub decoupled_weight_decay: bool,
    /// Regexes searched in tensor names; matching tensors are not decayed.
    pub exclude_from_weight_decay: Vec<String>,
    /// Scalar coefficients computed in f64 from the decimal hyperparameters (PyTorch) instead
    /// of in f32 (Keras). Set by the constructors.
    pub f64_scalars: bool,
    /// What a non-finite gradient or update does. Default: error.
    pub non_finite: NonFinitePolicy,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self::keras()
    }
}

impl AdamConfig {
    /// Keras 2.15 `Adam()` defaults: lr 1e-3, betas 0.9/0.999, epsilon 1e-7.
    pub fn keras() -> Self {
        AdamConfig {
            learning_rate: 1e-3,
            schedule: Schedule::Constant,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            epsilon_mode: EpsilonMode::Keras,
            weight_decay_rate: 0.0,
            decoupled_weight_decay: false,
            exclude_from_weight_decay: Vec::new(),
            f64_scalars: false,
            non_finite: NonFinitePolicy::Error,
        }
    }

    /// `torch.optim.Adam()` defaults: lr 1e-3, betas 0.9/0.999, eps 1e-8, weight_decay 0.
    pub fn pytorch() -> Self {
        AdamConfig {
            epsilon: 1e-8,
            epsilon_mode: EpsilonMode::PyTorch,
            f64_scalars: true,
            ..Self::keras()
        }
    }

    /// `torch.optim.AdamW()` defaults: as [`AdamConfig::pytorch`] with decoupled decay 0.01.
    pub fn adamw() -> Self {
        AdamConfig {
            weight_decay_rate: 0.01,
            decoupled_weight_decay: true,
            ..Self::pytorch()
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
    l2: f32,
    decay: f32,
}

#[derive(Debug, Clone, Copy)]
struct Coef {
    a1: f32,
    b2: f32,
    a2: f32,
    /// Keras: lr*sqrt(bc2)/bc1; PyTorch: lr/bc1.
    step: f32,
    /// PyTorch: 1/sqrt(bc2).
    rs2: f32,
    eps: f32,
}

#[inline(always)]
fn elem<const KERAS: bool>(c: &Coef, p: Plan, g: f32, m: f32, v: f32, w: f32) -> (f32, f32, f32) {
    let g = g + p.l2 * w;
    if KERAS {
        let m2 = m + (g - m) * c.a1;
        let v2 = v + (g * g - v) * c.a2;
        (m2, v2, w * p.decay - (m2 * c.step) / (v2.sqrt() + c.eps))
    } else {
        let m2 = m + c.a1 * (g - m);
        let v2 = c.b2 * v + c.a2 * (g * g);
        (
            m2,
            v2,
            w * p.decay - c.step * (m2 / (v2.sqrt() * c.rs2 + c.eps)),
        )
    }
}

/// Streams a check-pass task walks side by side.
const STREAMS: usize = 8;

/// Check pass over a group of up to [`STREAMS`] chunks: gradient maxima (and weight maxima
/// when L2 decay is on). The quarters of the group are walked side by side: one read stream
/// per thread measured ~16 GB/s here, four ~30 GB/s (a core keeps more misses in flight).
/// Maxima do not depend on the order.
#[inline(always)]
fn read_chunk(g: &[f32], w: &[f32], with_w: bool) -> Partial {
    let n = g.len();
    let w = &w[..n];
    let q = n / STREAMS / LANES * LANES;
    let mut l = Lanes::<0>::new();
    for o in (0..q).step_by(LANES) {
        for s in 0..STREAMS {
            let r = s * q + o..s * q + o + LANES;
            let gb: &[f32; LANES] = g[r.clone()].try_into().unwrap();
            for j in 0..LANES {
                l.bits[j] = l.bits[j].max(abs_bits(gb[j]));
            }
            if with_w {
                let wb: &[f32; LANES] = w[r].try_into().unwrap();
                for j in 0..LANES {
                    l.xbits[j] = l.xbits[j].max(abs_bits(wb[j]));
                }
            }
        }
    }
    for i in STREAMS * q..n {
        let j = i % LANES;
        l.bits[j] = l.bits[j].max(abs_bits(g[i]));
        if with_w {
            l.xbits[j] = l.xbits[j].max(abs_bits(w[i]));
        }
    }
    l.finish()
}

/// Write pass; returns the largest |m| written in `gbits`.
#[inline(always)]
fn write_chunk<const KERAS: bool>(
    c: &Coef,
    p: Plan,
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    w: &mut [f32],
) -> Partial {
    let n = g.len();
    let (m, v, w) = (&mut m[..n], &mut v[..n], &mut w[..n]);
    let mut l = Lanes::<0>::new();
    let mut gi = g.chunks_exact(LANES);
    let mut mi = m.chunks_exact_mut(LANES);
    let mut vi = v.chunks_exact_mut(LANES);
    let mut wi = w.chunks_exact_mut(LANES);
    for (((gb, mb), vb), wb) in (&mut gi).zip(&mut mi).zip(&mut vi).zip(&mut wi) {
        let gb: &[f32; LANES] = gb.try_into().unwrap();
        let mb: &mut [f32; LANES] = mb.try_into().unwrap();
        let vb: &mut [f32; LANES] = vb.try_into().unwrap();
        let wb: &mut [f32; LANES] = wb.try_into().unwrap();
        for j in 0..LANES {
            let (m2, v2, nw) = elem::<KERAS>(c, p, gb[j], mb[j], vb[j], wb[j]);
            mb[j] = m2;
            vb[j] = v2;
            wb[j] = nw;
            l.bits[j] = l.bits[j].max(abs_bits(m2));
        }
    }
    let (gr, mr, vr, wr) = (
        gi.remainder(),
        mi.into_remainder(),
        vi.into_remainder(),
        wi.into_remainder(),
    );
    for i in 0..gr.len() {
        let (m2, v2, nw) = elem::<KERAS>(c, p, gr[i], mr[i], vr[i], wr[i]);
        mr[i] = m2;
        vr[i] = v2;
        wr[i] = nw;
        l.bits[0] = l.bits[0].max(abs_bits(m2));
    }
    l.finish()
}

multiversion! {
    fn read_chunk_mv(g: &[f32], w: &[f32], with_w: bool) -> Partial = read_chunk;
}
multiversion! {
    fn write_keras(c: &Coef, p: Plan, g: &[f32], m: &mut [f32], v: &mut [f32], w: &mut [f32]) -> Partial = write_chunk::<true>;
}
multiversion! {
    fn write_torch(c: &Coef, p: Plan, g: &[f32], m: &mut [f32], v: &mut [f32], w: &mut [f32]) -> Partial = write_chunk::<false>;
}

/// Adam or AdamW (see the module documentation).
#[derive(Debug, Clone)]
pub struct Adam {
    cfg: AdamConfig,
    core: Core<Plan>,
}

impl Adam {
    /// Validates every hyperparameter.
    pub fn new(mut cfg: AdamConfig) -> Result<Self, OptimError> {
        check_ranges(&DESCRIPTION, &mut cfg, fields)?;
        cfg.schedule.validate()?;
        let core = Core::new(
            &["m", "v"],
            &cfg.exclude_from_weight_decay,
            &[],
            LayerAdaptation::Never,
            cfg.weight_decay_rate,
        )?;
        Ok(Self { cfg, core })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    fn attempt(&mut self, params: &mut [ParamMut<'_>], t: u64) -> Result<(), OptimError> {
        let lr = self.current_learning_rate();
        let cfg = &self.cfg;
        let f64s = cfg.f64_scalars;
        let bc1 = bias_correction(cfg.beta_1, t, f64s);
        let bc2 = bias_correction(cfg.beta_2, t, f64s);
        let lr64 = scalar(lr, f64s);
        let keras = cfg.epsilon_mode == EpsilonMode::Keras;
        let coef = Coef {
            a1: complement(cfg.beta_1, f64s),
            b2: cfg.beta_2,
            a2: complement(cfg.beta_2, f64s),
            step: if keras {
                (lr64 * bc2.sqrt() / bc1) as f32
            } else {
                (lr64 / bc1) as f32
            },
            rs2: (1.0 / bc2.sqrt()) as f32,
            eps: cfg.epsilon,
        };
        let (wd, decoupled) = (cfg.weight_decay_rate, cfg.decoupled_weight_decay);
        for ts in &mut self.core.reg.tensors {
            let on = ts.decay && wd != 0.0;
            ts.plan = Plan {
                l2: if on && !decoupled { wd } else { 0.0 },
                decay: if on && decoupled {
                    (1.0 - lr64 * scalar(wd, f64s)) as f32
                } else {
                    1.0
                },
            };
        }
        if cfg.non_finite != NonFinitePolicy::Unchecked {
            self.check_pass(params, t, &coef, keras)?;
        }
        self.core
            .reg
            .tensors
            .par_iter_mut()
            .zip(params.par_iter_mut())
            .for_each(|(ts, p)| {
                let plan = ts.plan;
                let (mb, vb) = ts.bufs.split_at_mut(1);
                p.value
                    .par_chunks_mut(CHUNK)
                    .zip(p.grad.par_chunks(CHUNK))
                    .zip(mb[0].par_chunks_mut(CHUNK))
                    .zip(vb[0].par_chunks_mut(CHUNK))
                    .zip(ts.partials.par_iter_mut())
                    .for_each(|((((w, g), m), v), part)| {
                        *part = if keras {
                            write_keras(&coef, plan, g, m, v, w)
                        } else {
                            write_torch(&coef, plan, g, m, v, w)
                        }
                    });
                ts.buf_max[0] = bits_value(combine(&ts.partials).gbits);
            });
        for tel in self.core.reg.telemetry.iter_mut() {
            tel.weight_norm = 0.0;
            tel.update_norm = 0.0;
            tel.trust_ratio = 1.0;
            tel.learning_rate = lr;
        }
        Ok(())
    }

    /// Read pass proving the step safe before anything is written: every gradient finite and
    /// every new moment and weight bounded (exactly, element by element, where the cheap bound
    /// does not suffice).
    fn check_pass(
        &mut self,
        params: &[ParamMut<'_>],
        t: u64,
        coef: &Coef,
        keras: bool,
    ) -> Result<(), OptimError> {
        let coef = *coef;
        self.core
            .reg
            .tensors
            .par_iter_mut()
            .zip(params.par_iter())
            .for_each(|(ts, p)| {
                let (g, w) = (p.grad, &*p.value);
                let with_w = ts.plan.l2 != 0.0;
                if let (false, Some(given)) = (with_w, p.grad_max_abs) {
                    // Measured where the gradient was made: no read here. Only the maxima are
                    // used, and the write pass refills every partial.
                    debug_assert!(
                        abs_bits(given) >= crate::max_abs(g).to_bits(),
                        "{}: declared max |grad| {given} below the measured {}",
                        p.name,
                        crate::max_abs(g)
                    );
                    ts.total = Partial {
                        gbits: abs_bits(given),
                        ..Partial::default()
                    };
                    return;
                }
                // One partial per group of STREAMS chunks (the others cleared): only maxima
                // are used here, and the write pass refills every partial.
                let group = STREAMS * CHUNK;
                ts.partials
                    .par_chunks_mut(STREAMS)
                    .zip(g.par_chunks(group))
                    .zip(w.par_chunks(group))
                    .for_each(|((parts, g), w)| {
                        parts.fill(Partial::default());
                        parts[0] = read_chunk_mv(g, w, with_w);
                    });
                ts.total = combine(&ts.partials);
            });
        if let Some(e) = first_bad_gradient(&self.core.reg, params, t) {
            return Err(e);
        }
        for (ts, p) in self.core.reg.tensors.iter().zip(params.iter()) {
            // |g'| <= |g| + l2*|w|; m' is a convex combination of m and g'; |sqrt(v')+eps| >= eps.
            let gmax = bits_value(ts.total.gbits) + ts.plan.l2 as f64 * bits_value(ts.total.xbits);
            let mb = ts.buf_max[0].max(gmax) * (1.0 + 1e-5);
            let delta = coef.step as f64 * mb / coef.eps as f64;
            let bounded = gmax < 1e18 && safe(delta) && (ts.plan.decay as f64).abs() <= 1.0;
            if !bounded {
                let (m, v) = (&ts.bufs[0], &ts.bufs[1]);
                first_bad_update(&ts.name, t, ts.len, |i| {
                    let (m2, v2, nw) = if keras {
                        elem::<true>(&coef, ts.plan, p.grad[i], m[i], v[i], p.value[i])
                    } else {
                        elem::<false>(&coef, ts.plan, p.grad[i], m[i], v[i], p.value[i])
                    };
                    (m2.is_finite() && v2.is_finite() && nw.is_finite(), nw)
                })?;
            }
        }
        debug_assert!(self
            .core
            .reg
            .tensors
            .iter()
            .all(|t| bits_finite(t.total.gbits)));
        Ok(())
    }
}

impl Family for Adam {
    type Plan = Plan;

    fn label(&self) -> &'static str {
        if self.cfg.decoupled_weight_decay {
            "adamw"
        } else {
            "adam"
        }
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
        let l2 = self.cfg.weight_decay_rate != 0.0 && !self.cfg.decoupled_weight_decay;
        let mut passes = Vec::new();
        if self.cfg.non_finite != NonFinitePolicy::Unchecked {
            // Gradient maxima (and weight maxima for the L2 bound); without L2, no read when
            // every tensor comes with its gradient maximum (ParamMut::with_grad_max_abs).
            passes.push(MemoryPass::new("check", if l2 { 8 } else { 4 }, 0));
        }
        // g, m, v, w in; m, v, w out.
        passes.push(MemoryPass::new("update", 16, 12));
        passes
    }
}

/// The hyperparameters of Adam and AdamW.
const ADAM_HYPERPARAMETERS: &[Hyperparameter] = &[
    Hyperparameter {
        key: Key::LearningRate,
        range: Some(Range::NonNegative),
        doc: "Learning rate.",
    },
    Hyperparameter {
        key: Key::Beta1,
        range: Some(Range::Fraction),
        doc: "First-moment decay.",
    },
    Hyperparameter {
        key: Key::Beta2,
        range: Some(Range::Fraction),
        doc: "Second-moment decay.",
    },
    Hyperparameter {
        key: Key::Epsilon,
        range: Some(Range::Positive),
        doc: "Added to sqrt(v) (keras: un-corrected; pytorch: bias-corrected).",
    },
    Hyperparameter {
        key: Key::WeightDecayRate,
        range: Some(Range::NonNegative),
        doc: "adam: L2 decay added to the gradient (g += wd*w); adamw: decoupled, \
              w *= 1 - lr*wd before the step.",
    },
    Hyperparameter {
        key: Key::ExcludeFromWeightDecay,
        range: None,
        doc: "Regexes searched in tensor names; matching tensors are not decayed.",
    },
    Hyperparameter {
        key: Key::Schedule,
        range: None,
        doc: "Learning-rate schedule.",
    },
    Hyperparameter {
        key: Key::NonFinite,
        range: None,
        doc: "What a non-finite gradient or update does: error, skip_step or unchecked.",
    },
];

/// The PyTorch preset of Adam and AdamW.
const PYTORCH: Preset = Preset {
    name: "pytorch",
    aliases: &["torch"],
    reference: "torch.optim.Adam / AdamW",
    verified: "golden files torch_adam/a_adam_*, torch_adam/b_adamw_*",
};

/// Adam's description.
pub(crate) static DESCRIPTION: Description = Description {
    kind: OptimizerKind::Adam,
    name: "adam",
    summary: "Adam (Kingma & Ba 2015) with L2 weight decay; Keras or PyTorch epsilon placement",
    trust_ratio: false,
    hyperparameters: ADAM_HYPERPARAMETERS,
    presets: &[
        Preset {
            name: "keras",
            aliases: &["tf", "tensorflow"],
            reference: "tf.keras 2.15 Adam",
            verified: "golden file tfa/adam_a_keras_defaults",
        },
        PYTORCH,
    ],
    build,
    effective: |spec| Ok(settings_of(&DESCRIPTION, &mut adam_config(spec)?, fields)),
    config,
};

/// AdamW's description.
pub(crate) static DESCRIPTION_ADAMW: Description = Description {
    kind: OptimizerKind::Adamw,
    name: "adamw",
    summary:
        "AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, PyTorch semantics",
    trust_ratio: false,
    hyperparameters: ADAM_HYPERPARAMETERS,
    presets: &[PYTORCH],
    build,
    effective: |spec| {
        Ok(settings_of(
            &DESCRIPTION_ADAMW,
            &mut adam_config(spec)?,
            fields,
        ))
    },
    config,
};

fn build(spec: &OptimizerSpec) -> Result<Box<dyn Optimizer>, OptimError> {
    Ok(Box::new(Adam::new(adam_config(spec)?)?))
}

fn config(spec: &OptimizerSpec) -> Result<serde_json::Value, OptimError> {
    Ok(serde_json::to_value(adam_config(spec)?).unwrap_or_default())
}

/// Which [`AdamConfig`] field each of Adam's hyperparameters is.
fn fields(c: &mut AdamConfig) -> Vec<(Key, Field<'_>)> {
    vec![
        (Key::LearningRate, Field::Number(&mut c.learning_rate)),
        (Key::Beta1, Field::Number(&mut c.beta_1)),
        (Key::Beta2, Field::Number(&mut c.beta_2)),
        (Key::Epsilon, Field::Number(&mut c.epsilon)),
        (
            Key::WeightDecayRate,
            Field::Number(&mut c.weight_decay_rate),
        ),
        (
            Key::ExcludeFromWeightDecay,
            Field::Patterns(&mut c.exclude_from_weight_decay),
        ),
        (Key::Schedule, Field::Schedule(&mut c.schedule)),
        (Key::NonFinite, Field::NonFinite(&mut c.non_finite)),
    ]
}

/// The Adam configuration a spec describes (`kind` adam, the default, or adamw).
pub fn adam_config(spec: &OptimizerSpec) -> Result<AdamConfig, OptimError> {
    let adamw = spec.kind == Some(OptimizerKind::Adamw);
    let d = if adamw {
        &DESCRIPTION_ADAMW
    } else {
        &DESCRIPTION
    };
    let preset = |p: &Preset| match (adamw, p.name) {
        (true, _) => AdamConfig::adamw(),
        (false, "pytorch") => AdamConfig::pytorch(),
        _ => AdamConfig::keras(),
    };
    configure(spec, d, preset, fields)
}
