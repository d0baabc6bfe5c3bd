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
    bias_correction, clip_divisor, complement, first_bad_update, global_norm, gradient_norms, safe,
    scalar, Core, Family,
};
use crate::describe::{check_ranges, configure, settings_of, Field, Hyperparameter, Key, Preset};
use crate::patterns::LayerAdaptation;
use crate::reduce::{abs_bits, combine, for_blocks, reduce_chunks, Lanes, Partial, CHUNK, LANES};
use crate::schedule::Schedule;
use crate::simd::{multiversion, prefetch, PREFETCH_AHEAD};
use crate::slots::{first_bad_gradient, StateBuf};
use crate::validate;
use crate::validate::Range;
use crate::{
    Description, MemoryPass, NonFinitePolicy, OptimError, Optimizer, OptimizerKind, OptimizerSpec,
    ParamMut,
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

impl LambPreset {
    /// Every preset, in the order of [`DESCRIPTION`]'s presets.
    const ALL: [LambPreset; 7] = [
        LambPreset::Tfa,
        LambPreset::Nvlamb,
        LambPreset::PytorchLamb,
        LambPreset::TorchOptimizer,
        LambPreset::Timm,
        LambPreset::Optax,
        LambPreset::DeepSpeed,
    ];

    /// The preset a description entry names.
    fn of(p: &Preset) -> Self {
        let i = DESCRIPTION.presets.iter().position(|q| q == p).unwrap_or(0);
        Self::ALL[i]
    }
}

impl FromStr for LambPreset {
    type Err = OptimError;
    /// Accepts `tfa`, `nvlamb`, `pytorch-lamb`, `torch-optimizer`, `timm`, `optax`,
    /// `deepspeed` and their aliases in [`DESCRIPTION`] (and `_` for `-`, any case).
    fn from_str(s: &str) -> Result<Self, OptimError> {
        Ok(Self::of(DESCRIPTION.preset(s)?))
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
    /// Scratch memory traded for step speed. Default [`StepMemory::Fast`].
    pub step_memory: StepMemory,
}

/// How much scratch memory a LAMB step may use. Both give bit-identical results.
///
/// A step needs every tensor's norms before it can change any weight, so it reads the
/// tensors twice. The second read is what this chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepMemory {
    /// The first pass writes the new moments to spare buffers and each update to a scratch
    /// buffer (12 bytes per parameter beside the 8 of the moments; whole cache lines written
    /// with non-temporal stores where AVX-512 is in use); the second reads only the update
    /// and the weight. The spares become the moments by swapping once every value is known
    /// to be finite, so a refused or skipped step still changes nothing. About 24 bytes read
    /// and 16 written per parameter.
    #[default]
    Fast,
    /// No scratch: the second pass recomputes each update from the moments. Checked steps
    /// read 32 bytes and write 12 per parameter (a read-only pass, then the write pass);
    /// unchecked ones 28 and 12.
    Lean,
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
            step_memory: StepMemory::Fast,
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
pub(crate) struct Plan {
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

/// Largest `abs_bits` of a new first moment, second moment and update: not finite iff
/// `>= 0x7f80_0000` (a finite gradient can still overflow `v` through `g*g`).
#[inline(always)]
fn state_bits(m2: f32, v2: f32, u: f32) -> u32 {
    abs_bits(u).max(abs_bits(m2)).max(abs_bits(v2))
}

/// One block of [`LANES`] elements: the new moments and updates, with `w^2` and `u^2` added
/// to the lanes and the maxima taken. Kept out of the callers' closures so that it is always
/// inlined into the vectorised kernels.
#[inline(always)]
fn lamb_block(
    c: &Coef,
    wd: f32,
    g: &[f32; LANES],
    m: &[f32; LANES],
    v: &[f32; LANES],
    w: &[f32; LANES],
    l: &mut Lanes<2>,
) -> [[f32; LANES]; 3] {
    let mut out = [[0.0f32; LANES]; 3];
    for j in 0..LANES {
        let (m2, v2, u) = elem(c, wd, g[j], m[j], v[j], w[j]);
        out[0][j] = m2;
        out[1][j] = v2;
        out[2][j] = u;
        l.acc[0][j] += w[j] * w[j];
        l.acc[1][j] += u * u;
        l.bits[j] = l.bits[j].max(abs_bits(g[j]));
        l.xbits[j] = l.xbits[j].max(state_bits(m2, v2, u));
    }
    out
}

/// One tail element (lane `j`): as [`lamb_block`] for a single element.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn lamb_tail(
    c: &Coef,
    wd: f32,
    g: f32,
    m: f32,
    v: f32,
    w: f32,
    j: usize,
    l: &mut Lanes<2>,
) -> (f32, f32, f32) {
    let (m2, v2, u) = elem(c, wd, g, m, v, w);
    l.acc[0][j] += w * w;
    l.acc[1][j] += u * u;
    l.bits[j] = l.bits[j].max(abs_bits(g));
    l.xbits[j] = l.xbits[j].max(state_bits(m2, v2, u));
    (m2, v2, u)
}

/// Whether [`store_fresh`] may use wide non-temporal stores for these outputs: AVX-512 in
/// use and every output starting a cache line.
#[inline(always)]
fn streaming(outs: &[&[f32]]) -> bool {
    cfg!(target_arch = "x86_64")
        && crate::simd::simd_level() == crate::simd::SimdLevel::Avx512
        && outs
            .iter()
            .all(|o| o.is_empty() || (o.as_ptr() as usize).is_multiple_of(64))
}

/// Stores a block to lines that were not read first (scratch outputs). With `nt` (see
/// [`streaming`]), one non-temporal store per cache line, so the line is not fetched from
/// memory before it is overwritten; else plain stores. Callers end with [`stream_fence`].
#[inline(always)]
fn store_fresh(dst: &mut [f32], src: &[f32; LANES], nt: bool) {
    #[cfg(target_arch = "x86_64")]
    if nt && dst.len() == LANES {
        use std::arch::x86_64::{_mm512_loadu_ps, _mm512_stream_ps};
        // SAFETY: `nt` is only set when AVX-512F is in use and `dst` is 64-byte aligned (its
        // chunk starts a line and blocks are 16 floats); `dst` holds LANES = 16 floats.
        unsafe { _mm512_stream_ps(dst.as_mut_ptr(), _mm512_loadu_ps(src.as_ptr())) };
        return;
    }
    let _ = nt;
    dst.copy_from_slice(src);
}

/// Orders the non-temporal stores of [`store_fresh`] before whatever follows (another thread
/// reads the outputs after the pass).
#[inline(always)]
fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Read pass: sums of w^2 and u^2, gradient maxima and [`state_bits`] maxima. Changes nothing.
#[inline(always)]
fn read_chunk(c: &Coef, wd: f32, g: &[f32], m: &[f32], v: &[f32], w: &[f32]) -> Partial {
    let n = g.len();
    let (m, v, w) = (&m[..n], &v[..n], &w[..n]);
    let mut l = Lanes::<2>::new();
    for_blocks!(
        n,
        &mut l,
        |o, l| {
            let r = o..o + LANES;
            let (gb, mb) = (
                g[r.clone()].try_into().unwrap(),
                m[r.clone()].try_into().unwrap(),
            );
            let (vb, wb) = (v[r.clone()].try_into().unwrap(), w[r].try_into().unwrap());
            lamb_block(c, wd, gb, mb, vb, wb, l);
        },
        |i, j, l| {
            lamb_tail(c, wd, g[i], m[i], v[i], w[i], j, l);
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

/// The slices of one chunk for the staging pass: inputs `g, m, v, w`, outputs `mo, vo, uo`.
struct StageIo<'a> {
    g: &'a [f32],
    m: &'a [f32],
    v: &'a [f32],
    w: &'a [f32],
    mo: &'a mut [f32],
    vo: &'a mut [f32],
    uo: &'a mut [f32],
}

/// One block of the staging pass at offset `o`.
#[inline(always)]
fn stage_block(c: &Coef, wd: f32, io: &mut StageIo<'_>, o: usize, nt: bool, l: &mut Lanes<2>) {
    let r = o..o + LANES;
    let ahead = o + PREFETCH_AHEAD;
    for s in [io.g, io.m, io.v, io.w] {
        prefetch(s, ahead);
    }
    let (gb, mb) = (
        io.g[r.clone()].try_into().unwrap(),
        io.m[r.clone()].try_into().unwrap(),
    );
    let (vb, wb) = (
        io.v[r.clone()].try_into().unwrap(),
        io.w[r.clone()].try_into().unwrap(),
    );
    let [m2, v2, u] = lamb_block(c, wd, gb, mb, vb, wb, l);
    store_fresh(&mut io.mo[r.clone()], &m2, nt);
    store_fresh(&mut io.vo[r.clone()], &v2, nt);
    store_fresh(&mut io.uo[r], &u, nt);
}

/// Staging pass ([`StepMemory::Fast`]) over one chunk: the new moments and updates go to the
/// outputs (the state is not touched), with the same sums and maxima as [`read_chunk`].
/// (Walking two chunks side by side measured slower here: too many streams. Prefetching the
/// four inputs [`PREFETCH_AHEAD`] elements ahead measured ~10% faster.)
#[inline(always)]
fn stage_chunk(c: &Coef, wd: f32, mut io: StageIo<'_>) -> Partial {
    let nt = streaming(&[&*io.mo, &*io.vo, &*io.uo]);
    let mut l = Lanes::<2>::new();
    for_blocks!(
        io.g.len(),
        &mut l,
        |o, l| stage_block(c, wd, &mut io, o, nt, l),
        |i, j, l| {
            (io.mo[i], io.vo[i], io.uo[i]) =
                lamb_tail(c, wd, io.g[i], io.m[i], io.v[i], io.w[i], j, l)
        },
    );
    stream_fence();
    l.finish()
}

/// Unchecked first pass without scratch: new moments written in place, with the same sums
/// and maxima as [`read_chunk`].
#[inline(always)]
fn moments_chunk(c: &Coef, wd: f32, g: &[f32], m: &mut [f32], v: &mut [f32], w: &[f32]) -> Partial {
    let n = g.len();
    let (m, v, w) = (&mut m[..n], &mut v[..n], &w[..n]);
    let mut l = Lanes::<2>::new();
    for_blocks!(
        n,
        &mut l,
        |o, l| {
            let r = o..o + LANES;
            let (gb, wb) = (
                g[r.clone()].try_into().unwrap(),
                w[r.clone()].try_into().unwrap(),
            );
            let (mb, vb) = (
                m[r.clone()].try_into().unwrap(),
                v[r.clone()].try_into().unwrap(),
            );
            let [m2, v2, _] = lamb_block(c, wd, gb, mb, vb, wb, l);
            m[r.clone()].copy_from_slice(&m2);
            v[r].copy_from_slice(&v2);
        },
        |i, j, l| {
            (m[i], v[i], _) = lamb_tail(c, wd, g[i], m[i], v[i], w[i], j, l);
        },
    );
    l.finish()
}

/// Second pass without scratch: the update recomputed from the new moments (the same f32
/// values [`elem`] computes, so the weights are bit-identical to [`write_chunk`]'s).
#[inline(always)]
fn apply_chunk(c: &Coef, wd: f32, k: f32, m: &[f32], v: &[f32], w: &mut [f32]) {
    let n = w.len();
    let (m, v) = (&m[..n], &v[..n]);
    for i in 0..n {
        let u = (m[i] * c.rc1) / ((v[i] * c.rc2 + c.eps_root).sqrt() + c.eps) + wd * w[i];
        w[i] -= k * u;
    }
}

/// Second pass with scratch: `w -= k*u` from the stored updates. The two halves of the
/// range are walked side by side: four memory streams per thread instead of two, which
/// measured ~25% faster here (a core keeps more misses in flight). No reduction, so the
/// order does not change any result.
#[inline(always)]
fn apply_stash_chunk(k: f32, u: &[f32], w: &mut [f32]) {
    let n = w.len();
    let h = n / 2 / LANES * LANES;
    let (w1, w2) = w.split_at_mut(h);
    let (u1, u2) = u[..n].split_at(h);
    let (w2a, w2b) = w2.split_at_mut(h);
    let u2a = &u2[..h];
    for i in 0..h {
        w1[i] -= k * u1[i];
        w2a[i] -= k * u2a[i];
    }
    for (w, u) in w2b.iter_mut().zip(&u2[h..]) {
        *w -= k * u;
    }
}

multiversion! {
    fn moments_chunk_mv(c: &Coef, wd: f32, g: &[f32], m: &mut [f32], v: &mut [f32], w: &[f32]) -> Partial = moments_chunk;
}
multiversion! {
    fn stage_chunk_mv(c: &Coef, wd: f32, io: StageIo<'_>) -> Partial = stage_chunk;
}
multiversion! {
    fn apply_chunk_mv(c: &Coef, wd: f32, k: f32, m: &[f32], v: &[f32], w: &mut [f32]) = apply_chunk;
}
multiversion! {
    fn apply_stash_chunk_mv(k: f32, u: &[f32], w: &mut [f32]) = apply_stash_chunk;
}
multiversion! {
    fn read_chunk_mv(c: &Coef, wd: f32, g: &[f32], m: &[f32], v: &[f32], w: &[f32]) -> Partial = read_chunk;
}
multiversion! {
    fn write_chunk_mv(c: &Coef, wd: f32, k: f32, g: &[f32], m: &mut [f32], v: &mut [f32], w: &mut [f32]) = write_chunk;
}

type Slot = crate::slots::TensorSlot<Plan>;

/// Scratch buffers of one tensor for [`StepMemory::Fast`] (never saved; contents are only
/// meaningful within a step).
#[derive(Debug, Clone, Default)]
struct Scratch {
    /// The updates of the current step.
    u: StateBuf,
    /// Spare first moments: the new ones of a checked step, committed by swapping.
    m: StateBuf,
    /// Spare second moments.
    v: StateBuf,
}

impl Scratch {
    /// Sizes the buffers for a tensor of `len` elements (allocates only when that changes).
    fn fit(&mut self, len: usize) {
        if self.u.len() != len {
            self.u = StateBuf::zeros(len);
        }
        if self.m.len() != len {
            self.m = StateBuf::zeros(len);
            self.v = StateBuf::zeros(len);
        }
    }
}

/// Read pass over one tensor: its norms and maxima into `ts.total`; nothing written.
fn read_tensor(coef: &Coef, ts: &mut Slot, g: &[f32], w: &[f32]) {
    let (m, v) = (&ts.bufs[0], &ts.bufs[1]);
    let wd = ts.plan.wd;
    ts.total = reduce_chunks(&mut ts.partials, g.len(), |r| {
        read_chunk_mv(coef, wd, &g[r.clone()], &m[r.clone()], &v[r.clone()], &w[r])
    });
}

/// First pass with scratch: new moments and updates into `sc`, norms and maxima into
/// `ts.total` (reads g, m, v, w; writes three scratch streams). The state is not touched.
fn stage_tensor(coef: &Coef, ts: &mut Slot, sc: &mut Scratch, g: &[f32], w: &[f32]) {
    let wd = ts.plan.wd;
    let (m, v) = (&ts.bufs[0], &ts.bufs[1]);
    sc.m.par_chunks_mut(CHUNK)
        .zip(sc.v.par_chunks_mut(CHUNK))
        .zip(sc.u.par_chunks_mut(CHUNK))
        .zip(ts.partials.par_iter_mut())
        .enumerate()
        .for_each(|(c, (((mo, vo), uo), part))| {
            let r = c * CHUNK..((c + 1) * CHUNK).min(g.len());
            let io = StageIo {
                g: &g[r.clone()],
                m: &m[r.clone()],
                v: &v[r.clone()],
                w: &w[r],
                mo,
                vo,
                uo,
            };
            *part = stage_chunk_mv(coef, wd, io);
        });
    ts.total = combine(&ts.partials);
}

/// Unchecked first pass over one tensor without scratch: new moments written in place,
/// norms and maxima into `ts.total`.
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

/// Second pass over one tensor without scratch: weights from the new moments (reads m, v, w;
/// writes w).
fn apply_tensor(coef: &Coef, ts: &Slot, w: &mut [f32]) {
    let plan = ts.plan;
    w.par_chunks_mut(CHUNK)
        .zip(ts.bufs[0].par_chunks(CHUNK))
        .zip(ts.bufs[1].par_chunks(CHUNK))
        .for_each(|((w, m), v)| apply_chunk_mv(coef, plan.wd, plan.k, m, v, w));
}

/// Second pass over one tensor with scratch: weights from the stored updates (reads u, w;
/// writes w).
fn apply_stash_tensor(k: f32, u: &[f32], w: &mut [f32]) {
    w.par_chunks_mut(2 * CHUNK)
        .zip(u.par_chunks(2 * CHUNK))
        .for_each(|(w, u)| apply_stash_chunk_mv(k, u, w));
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
    core: Core<Plan>,
    /// One per tensor, used with [`StepMemory::Fast`].
    scratch: Vec<Scratch>,
}

impl Lamb {
    /// Validates every hyperparameter and compiles the exclusion patterns.
    pub fn new(mut cfg: LambConfig) -> Result<Self, OptimError> {
        check_ranges(&DESCRIPTION, &mut cfg, fields)?;
        cfg.schedule.validate()?;
        Range::NonNegative.check("epsilon_root", cfg.epsilon_root)?;
        if let Some((lo, hi)) = cfg.weight_norm_clamp {
            validate::clamp_range("weight_norm_clamp", lo, hi)?;
        }
        if let Some((lo, hi)) = cfg.trust_ratio_clamp {
            validate::clamp_range("trust_ratio_clamp", lo, hi)?;
        }
        let core = Core::new(
            &["m", "v"],
            &cfg.exclude_from_weight_decay,
            &cfg.exclude_from_layer_adaptation,
            cfg.layer_adaptation,
            cfg.weight_decay_rate,
        )?;
        Ok(Self {
            cfg,
            core,
            scratch: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LambConfig {
        &self.cfg
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

    fn attempt(&mut self, params: &mut [ParamMut<'_>], t: u64) -> Result<(), OptimError> {
        let lr = self.current_learning_rate();
        let mut gscale = 1.0f32;
        if let Some(max_norm) = self.cfg.max_grad_norm {
            gradient_norms(&mut self.core.reg, params);
            if self.cfg.non_finite != NonFinitePolicy::Unchecked {
                if let Some(e) = first_bad_gradient(&self.core.reg, params, t) {
                    return Err(e);
                }
            }
            gscale = (1.0 / clip_divisor(global_norm(&self.core.reg), max_norm)) as f32;
        }
        let coef = self.coef(t, gscale);
        let wd_rate = self.cfg.weight_decay_rate;
        for ts in &mut self.core.reg.tensors {
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
        let Lamb { cfg, core, scratch } = self;
        let reg = &mut core.reg;
        let fast = cfg.step_memory == StepMemory::Fast;
        let checked = cfg.non_finite != NonFinitePolicy::Unchecked;
        if fast {
            scratch.resize_with(reg.tensors.len(), Scratch::default);
            for (sc, ts) in scratch.iter_mut().zip(&reg.tensors) {
                sc.fit(ts.len);
            }
        }
        if !fast && !checked {
            // Each tensor's norms, then its update, back to back. No tensor waits for the
            // others' norms.
            reg.tensors
                .par_iter_mut()
                .zip(params.par_iter_mut())
                .for_each(|(ts, p)| {
                    moments_tensor(&coef, ts, p.grad, p.value);
                    set_ratio(cfg, ts, step_size);
                    apply_tensor(&coef, ts, p.value);
                });
        } else {
            // First pass: norms and maxima of every tensor; the state is not changed (with
            // scratch, the new moments and updates are staged beside it).
            let tensors = reg.tensors.par_iter_mut().zip(params.par_iter());
            if fast {
                tensors
                    .zip(scratch.par_iter_mut())
                    .for_each(|((ts, p), sc)| stage_tensor(&coef, ts, sc, p.grad, p.value));
            } else {
                tensors.for_each(|(ts, p)| read_tensor(&coef, ts, p.grad, p.value));
            }
            if checked {
                if let Some(e) = first_bad_gradient(reg, params, t) {
                    return Err(e);
                }
            }
            for (i, (ts, p)) in reg.tensors.iter_mut().zip(params.iter()).enumerate() {
                set_ratio(cfg, ts, step_size);
                let (k, un) = (ts.plan.k, ts.plan.un as f64);
                let bounded = crate::reduce::bits_finite(ts.total.xbits)
                    && un.is_finite()
                    && safe(k as f64 * un * 1.001);
                if checked && !bounded {
                    let (m, v) = (&ts.bufs[0], &ts.bufs[1]);
                    let w = &*p.value;
                    first_bad_update(&ts.name, t, ts.len, |j| {
                        let (m2, v2, u) = match scratch.get(i) {
                            Some(sc) if fast => (sc.m[j], sc.v[j], sc.u[j]),
                            _ => elem(&coef, ts.plan.wd, p.grad[j], m[j], v[j], w[j]),
                        };
                        let nw = w[j] - k * u;
                        let finite =
                            m2.is_finite() && v2.is_finite() && u.is_finite() && nw.is_finite();
                        (finite, if u.is_finite() { nw } else { u })
                    })?;
                }
            }
            // Checked: every value is finite. Commit.
            if fast {
                for (ts, sc) in reg.tensors.iter_mut().zip(scratch.iter_mut()) {
                    std::mem::swap(&mut ts.bufs[0], &mut sc.m);
                    std::mem::swap(&mut ts.bufs[1], &mut sc.v);
                }
                reg.tensors
                    .par_iter()
                    .zip(params.par_iter_mut())
                    .zip(scratch.par_iter())
                    .for_each(|((ts, p), sc)| apply_stash_tensor(ts.plan.k, &sc.u, p.value));
            } else {
                reg.tensors
                    .par_iter_mut()
                    .zip(params.par_iter_mut())
                    .for_each(|(ts, p)| write_tensor(&coef, ts, p));
            }
        }
        for (tel, ts) in self
            .core
            .reg
            .telemetry
            .iter_mut()
            .zip(&self.core.reg.tensors)
        {
            tel.weight_norm = ts.plan.wn;
            tel.update_norm = ts.plan.un;
            tel.trust_ratio = ts.plan.ratio;
            tel.learning_rate = lr;
        }
        Ok(())
    }
}

impl Family for Lamb {
    type Plan = Plan;

    fn label(&self) -> &'static str {
        "lamb"
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
        let mut passes = Vec::new();
        if self.cfg.max_grad_norm.is_some() {
            passes.push(MemoryPass::new("grad norm", 4, 0));
        }
        let checked = self.cfg.non_finite != NonFinitePolicy::Unchecked;
        match (self.cfg.step_memory, checked) {
            (StepMemory::Fast, _) => {
                // g, m, v, w in; new m, v and the update to scratch lines (streamed with
                // AVX-512); then u, w in, w out.
                passes.push(MemoryPass {
                    streamed: crate::simd_level() == crate::SimdLevel::Avx512,
                    ..MemoryPass::new("stage", 16, 12)
                });
                passes.push(MemoryPass::new("apply", 8, 4));
            }
            (StepMemory::Lean, true) => {
                passes.push(MemoryPass::new("read", 16, 0));
                passes.push(MemoryPass::new("write", 16, 12));
            }
            (StepMemory::Lean, false) => {
                passes.push(MemoryPass::new("moments", 16, 8));
                passes.push(MemoryPass::new("apply", 12, 4));
            }
        }
        passes
    }
}

/// LAMB's description: hyperparameters, presets and how a spec becomes a [`LambConfig`].
pub(crate) static DESCRIPTION: Description = Description {
    kind: OptimizerKind::Lamb,
    name: "lamb",
    summary: "LAMB (You et al. 2019): Adam's direction rescaled per tensor by the trust ratio ||w||/||u||",
    trust_ratio: true,
    hyperparameters: &[
        Hyperparameter {
            key: Key::LearningRate,
            range: Some(Range::NonNegative),
            doc: "Base learning rate (the peak of warmup schedules).",
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
            doc: "Added to sqrt(v_hat) in the direction's denominator.",
        },
        Hyperparameter {
            key: Key::WeightDecayRate,
            range: Some(Range::NonNegative),
            doc: "Decoupled weight decay: wd*w is added to the Adam direction before the trust \
                  ratio (u += wd*w), so it counts in ||u||.",
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
                  lists (tfa); empty: the weight-decay list.",
        },
        Hyperparameter {
            key: Key::MaxGradNorm,
            range: Some(Range::Positive),
            doc: "Global gradient-norm clipping before the moments: g /= max(G/max, 1).",
        },
        Hyperparameter {
            key: Key::TrustClip,
            range: None,
            doc: "Cap the trust ratio at 1 (LAMBC, timm trust_clip).",
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
        Hyperparameter {
            key: Key::StepMemory,
            range: None,
            doc: "Scratch memory traded for step speed: fast or lean (bit-identical results).",
        },
    ],
    presets: &[
        Preset {
            name: "tfa",
            aliases: &["tensorflow-addons"],
            reference: "tensorflow-addons 0.23 LAMB",
            verified: "golden files tfa/",
        },
        Preset {
            name: "nvlamb",
            aliases: &["apex"],
            reference: "NVIDIA apex FusedLAMB(use_nvlamb=True)",
            verified: "documented formula only (CUDA-only reference)",
        },
        Preset {
            name: "pytorch-lamb",
            aliases: &["cybertronai"],
            reference: "cybertronai pytorch-lamb Lamb",
            verified: "golden files pytorch_lamb/",
        },
        Preset {
            name: "torch-optimizer",
            aliases: &[],
            reference: "torch_optimizer 0.3 Lamb",
            verified: "golden files torch_optimizer/",
        },
        Preset {
            name: "timm",
            aliases: &[],
            reference: "timm 1.0 Lamb",
            verified: "golden files timm/",
        },
        Preset {
            name: "optax",
            aliases: &[],
            reference: "optax 0.2 lamb",
            verified: "golden files optax/",
        },
        Preset {
            name: "deepspeed",
            aliases: &[],
            reference: "DeepSpeed FusedLamb",
            verified: "documented formula only (CUDA-only reference)",
        },
    ],
    build: |spec| Ok(Box::new(Lamb::new(lamb_config(spec)?)?)),
    effective: |spec| Ok(settings_of(&DESCRIPTION, &mut lamb_config(spec)?, fields)),
    config: |spec| Ok(serde_json::to_value(lamb_config(spec)?).unwrap_or_default()),
};

/// Which [`LambConfig`] field each of LAMB's hyperparameters is.
fn fields(c: &mut LambConfig) -> Vec<(Key, Field<'_>)> {
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
        (
            Key::ExcludeFromLayerAdaptation,
            Field::Patterns(&mut c.exclude_from_layer_adaptation),
        ),
        (
            Key::MaxGradNorm,
            Field::OptionalNumber(&mut c.max_grad_norm),
        ),
        (Key::TrustClip, Field::Switch(&mut c.trust_clip)),
        (Key::Schedule, Field::Schedule(&mut c.schedule)),
        (Key::NonFinite, Field::NonFinite(&mut c.non_finite)),
        (Key::StepMemory, Field::StepMemory(&mut c.step_memory)),
    ]
}

/// The LAMB configuration a spec describes (preset, then overrides).
pub fn lamb_config(spec: &OptimizerSpec) -> Result<LambConfig, OptimError> {
    configure(
        spec,
        &DESCRIPTION,
        |p| LambConfig::preset(LambPreset::of(p)),
        fields,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_presets_name_the_preset_enum_in_order() {
        assert_eq!(LambPreset::ALL.len(), DESCRIPTION.presets.len());
        let names = [
            "tfa",
            "nvlamb",
            "pytorch-lamb",
            "torch-optimizer",
            "timm",
            "optax",
            "deepspeed",
        ];
        for (p, name) in LambPreset::ALL.iter().zip(names) {
            assert_eq!(name.parse::<LambPreset>().unwrap(), *p);
        }
        assert_eq!("apex".parse::<LambPreset>().unwrap(), LambPreset::Nvlamb);
        assert_eq!(
            "Cybertronai".parse::<LambPreset>().unwrap(),
            LambPreset::PytorchLamb
        );
        assert!("lamb".parse::<LambPreset>().is_err());
    }
}
