//! Step-time benchmark of every optimizer on the seed CNN's tensors and on a BERT-base-sized
//! set, next to a STREAM triad measured in the same run. Used by the `bench_step` example and
//! the `lamb bench` command. This is a benchmark, not a test: it asserts nothing.

use crate::{build, MemoryPass, NonFinitePolicy, OptimizerKind, OptimizerSpec, ParamMut};
use rayon::prelude::*;
use std::fmt;
use std::time::Instant;

mod compare;
pub mod torch;
pub use compare::{
    load_average, run_comparison, CompareConfig, CompareError, ComparedRow, ComparedSet,
    Comparison, Spread,
};

/// Bytes per parameter counted for the effective bandwidth of an optimizer step: read
/// gradient, weight and two moments (16), write weight and two moments (12).
pub const BYTES_PER_PARAM: f64 = 28.0;

/// A named tensor shape.
pub type TensorShape = (String, Vec<usize>);

/// The seed CNN's trainable tensors (Keras names).
pub fn seed_cnn_tensors() -> Vec<TensorShape> {
    vec![
        ("conv2d/kernel".into(), vec![3, 3, 3, 32]),
        ("conv2d/bias".into(), vec![32]),
        ("conv2d_1/kernel".into(), vec![3, 3, 32, 64]),
        ("conv2d_1/bias".into(), vec![64]),
        ("dense/kernel".into(), vec![2304, 10]),
        ("dense/bias".into(), vec![10]),
    ]
}

/// BERT-base's 199 trainable tensors (109,482,240 parameters): embeddings, 12 encoder layers,
/// pooler.
pub fn bert_base_tensors() -> Vec<TensorShape> {
    let h = 768;
    let mut v: Vec<TensorShape> = vec![
        ("bert/embeddings/word_embeddings".into(), vec![30522, h]),
        ("bert/embeddings/position_embeddings".into(), vec![512, h]),
        ("bert/embeddings/token_type_embeddings".into(), vec![2, h]),
        ("bert/embeddings/LayerNorm/gamma".into(), vec![h]),
        ("bert/embeddings/LayerNorm/beta".into(), vec![h]),
    ];
    for l in 0..12 {
        let p = format!("bert/encoder/layer_{l}");
        for n in ["query", "key", "value"] {
            v.push((format!("{p}/attention/self/{n}/kernel"), vec![h, h]));
            v.push((format!("{p}/attention/self/{n}/bias"), vec![h]));
        }
        v.push((format!("{p}/attention/output/dense/kernel"), vec![h, h]));
        v.push((format!("{p}/attention/output/dense/bias"), vec![h]));
        v.push((format!("{p}/attention/output/LayerNorm/gamma"), vec![h]));
        v.push((format!("{p}/attention/output/LayerNorm/beta"), vec![h]));
        v.push((format!("{p}/intermediate/dense/kernel"), vec![h, 4 * h]));
        v.push((format!("{p}/intermediate/dense/bias"), vec![4 * h]));
        v.push((format!("{p}/output/dense/kernel"), vec![4 * h, h]));
        v.push((format!("{p}/output/dense/bias"), vec![h]));
        v.push((format!("{p}/output/LayerNorm/gamma"), vec![h]));
        v.push((format!("{p}/output/LayerNorm/beta"), vec![h]));
    }
    v.push(("bert/pooler/dense/kernel".into(), vec![h, h]));
    v.push(("bert/pooler/dense/bias".into(), vec![h]));
    v
}

/// A benchmark label from the optimizer's description: `kind (preset)` or `kind (preset, note)`.
/// A preset the description does not know is named as given (`build` then reports it).
pub fn label(spec: &OptimizerSpec, note: &str) -> String {
    let kind = spec.kind.map_or("?", OptimizerKind::as_str);
    let preset = spec
        .description()
        .and_then(|d| match &spec.preset {
            Some(p) => d.preset(p).map(|p| p.name),
            None => Ok(d.default_preset().name),
        })
        .unwrap_or_else(|_| spec.preset.as_deref().unwrap_or("?"));
    if note.is_empty() {
        format!("{kind} ({preset})")
    } else {
        format!("{kind} ({preset}, {note})")
    }
}

/// The optimizers benchmarked by default, with labels: chosen variants (weight decay with the
/// usual exclusions where it matters, the checked/unchecked pairs), then the default preset of
/// every other optimizer of [`OptimizerKind::ALL`], so that one added later is measured too.
pub fn default_optimizers() -> Vec<(String, OptimizerSpec)> {
    let decay = |k: OptimizerKind, p: Option<&str>, wd: f32| OptimizerSpec {
        preset: p.map(str::to_string),
        weight_decay_rate: Some(wd),
        exclude_from_weight_decay: Some(vec!["bias".into(), "LayerNorm".into()]),
        ..OptimizerSpec::new(k)
    };
    let unchecked = |s: OptimizerSpec| OptimizerSpec {
        non_finite: Some(NonFinitePolicy::Unchecked),
        ..s
    };
    let momentum = |s: OptimizerSpec| OptimizerSpec {
        momentum: Some(0.9),
        ..s
    };
    let mut v: Vec<(&str, OptimizerSpec)> = vec![
        ("", decay(OptimizerKind::Lamb, Some("tfa"), 0.01)),
        ("clip", decay(OptimizerKind::Lamb, Some("timm"), 0.01)),
        (
            "",
            OptimizerSpec::new(OptimizerKind::Lamb).with_preset("pytorch-lamb"),
        ),
        ("", OptimizerSpec::new(OptimizerKind::Adam)),
        (
            "",
            OptimizerSpec::new(OptimizerKind::Adam).with_preset("pytorch"),
        ),
        ("", OptimizerSpec::new(OptimizerKind::Adamw)),
        (
            "unchecked",
            unchecked(decay(OptimizerKind::Lamb, Some("tfa"), 0.01)),
        ),
        (
            "unchecked",
            unchecked(OptimizerSpec::new(OptimizerKind::Adam)),
        ),
        (
            "unchecked",
            unchecked(OptimizerSpec::new(OptimizerKind::Adamw)),
        ),
        (GRAD_MAX_GIVEN, OptimizerSpec::new(OptimizerKind::Adam)),
        (GRAD_MAX_GIVEN, OptimizerSpec::new(OptimizerKind::Adamw)),
        ("", momentum(decay(OptimizerKind::Lars, Some("timm"), 1e-4))),
        ("momentum", momentum(OptimizerSpec::new(OptimizerKind::Sgd))),
    ];
    for &kind in OptimizerKind::ALL {
        if !v.iter().any(|(_, s)| s.kind == Some(kind)) {
            v.push(("", OptimizerSpec::new(kind)));
        }
    }
    v.into_iter()
        .map(|(note, s)| (label(&s, note), s))
        .collect()
}

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Timed steps per optimizer and set (after one untimed first step).
    pub steps: usize,
    /// Worker threads (a dedicated rayon pool).
    pub threads: usize,
    /// Tensor sets: (label, tensors).
    pub sets: Vec<(String, Vec<TensorShape>)>,
    /// Optimizers: (label, spec).
    pub optimizers: Vec<(String, OptimizerSpec)>,
    /// Elements per STREAM triad array (0: no triad).
    pub triad_elems: usize,
}

impl Default for BenchConfig {
    /// 7 timed steps, 2 threads, the seed CNN and BERT-base sets, every default optimizer,
    /// triad arrays of 64 Mi elements (256 MiB each, beyond any cache here).
    fn default() -> Self {
        BenchConfig {
            steps: 7,
            threads: 2,
            sets: vec![
                ("seed CNN".into(), seed_cnn_tensors()),
                ("BERT-base".into(), bert_base_tensors()),
            ],
            optimizers: default_optimizers(),
            triad_elems: 64 << 20,
        }
    }
}

/// One optimizer on one tensor set.
#[derive(Debug, Clone)]
pub struct StepTiming {
    /// Tensor set label.
    pub set: String,
    /// Optimizer label.
    pub optimizer: String,
    /// Tensors in the set.
    pub tensors: usize,
    /// Parameters in the set.
    pub params: usize,
    /// Median step time in seconds.
    pub median_s: f64,
    /// Fastest step time in seconds.
    pub min_s: f64,
}

impl StepTiming {
    /// Effective bandwidth at [`BYTES_PER_PARAM`] and the median time, in GB/s.
    pub fn gbps(&self) -> f64 {
        self.params as f64 * BYTES_PER_PARAM / self.median_s / 1e9
    }
}

/// STREAM triad result.
#[derive(Debug, Clone)]
pub struct TriadTiming {
    /// Elements per array.
    pub elems: usize,
    /// Median time of one triad in seconds.
    pub median_s: f64,
    /// Fastest time.
    pub min_s: f64,
}

impl TriadTiming {
    /// Bandwidth counted as STREAM does: 12 bytes per element (read b and c, write a; the
    /// write-allocate read of a is not counted), median time.
    pub fn gbps(&self) -> f64 {
        self.elems as f64 * 12.0 / self.median_s / 1e9
    }
    /// Same, best time.
    pub fn best_gbps(&self) -> f64 {
        self.elems as f64 * 12.0 / self.min_s / 1e9
    }
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone)]
pub struct StepBenchReport {
    /// Threads used.
    pub threads: usize,
    /// Instruction-set level of the element loops.
    pub simd: crate::SimdLevel,
    /// Timings, per set and optimizer.
    pub steps: Vec<StepTiming>,
    /// The triad, if measured.
    pub triad: Option<TriadTiming>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fill(v: &mut [f32], seed: u32, scale: f32) {
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(c, ch)| {
        let mut s = seed ^ (c as u32).wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995;
        for x in ch {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            *x = ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * scale;
        }
    });
}

#[inline(always)]
fn triad_impl(a: &mut [f32], b: &[f32], c: &[f32], s: f32) {
    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
        *a = *b + s * *c;
    }
}

crate::simd::multiversion! {
    fn triad_chunk(a: &mut [f32], b: &[f32], c: &[f32], s: f32) = triad_impl;
}

/// STREAM triad `a[i] = b[i] + s*c[i]` over `elems`-element arrays, `reps` times.
pub fn stream_triad(elems: usize, reps: usize) -> TriadTiming {
    let mut a = vec![0.0f32; elems];
    let mut b = vec![0.0f32; elems];
    let mut c = vec![0.0f32; elems];
    fill(&mut a, 1, 1.0);
    fill(&mut b, 2, 1.0);
    fill(&mut c, 3, 1.0);
    let s = 3.0f32;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        a.par_chunks_mut(1 << 16)
            .zip(b.par_chunks(1 << 16))
            .zip(c.par_chunks(1 << 16))
            .for_each(|((a, b), c)| triad_chunk(a, b, c, s));
        times.push(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(&a);
    let min_s = times.iter().copied().fold(f64::INFINITY, f64::min);
    TriadTiming {
        elems,
        median_s: median(&mut times),
        min_s,
    }
}

/// One optimizer on one tensor set, ready to time: weights, gradients and the optimizer after
/// its first (untimed) step, which allocates the state.
pub struct OptimizerRun<'s> {
    set: &'s [TensorShape],
    weights: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    /// Per tensor, the gradient maximum handed with the gradient, if the row declares it.
    given: Vec<Option<f32>>,
    opt: Box<dyn crate::Optimizer>,
}

/// The note of benchmark rows whose gradients come with their maxima, as a gradient producer
/// would measure them in its last pass ([`ParamMut::with_grad_max_abs`]). The gradients are
/// the same at every step, so the maxima are measured once, outside the timing.
pub const GRAD_MAX_GIVEN: &str = "grad max given";

impl<'s> OptimizerRun<'s> {
    /// Fills the tensors (fixed pseudo-random values) and takes the first step. With
    /// `grad_max_given`, each step's tensors declare their gradient maxima.
    pub fn new(
        spec: &OptimizerSpec,
        set: &'s [TensorShape],
        grad_max_given: bool,
    ) -> Result<Self, crate::OptimError> {
        let mut weights: Vec<Vec<f32>> = Vec::with_capacity(set.len());
        let mut grads: Vec<Vec<f32>> = Vec::with_capacity(set.len());
        for (i, (_, shape)) in set.iter().enumerate() {
            let n: usize = shape.iter().product();
            let mut w = vec![0.0f32; n];
            let mut g = vec![0.0f32; n];
            fill(&mut w, 2 * i as u32 + 1, 0.1);
            fill(&mut g, 2 * i as u32 + 2, 0.01);
            weights.push(w);
            grads.push(g);
        }
        let given = grads
            .iter()
            .map(|g| grad_max_given.then(|| crate::max_abs(g)))
            .collect();
        let mut run = OptimizerRun {
            set,
            weights,
            grads,
            given,
            opt: build(spec)?,
        };
        run.block(1)?;
        Ok(run)
    }

    /// Times `steps` steps; seconds per step.
    pub fn block(&mut self, steps: usize) -> Result<Vec<f64>, crate::OptimError> {
        Ok(self.block_faults(steps)?.0)
    }

    /// Times `steps` steps: seconds per step and the minor page faults of this process
    /// during them (Linux; None elsewhere).
    pub fn block_faults(
        &mut self,
        steps: usize,
    ) -> Result<(Vec<f64>, Option<u64>), crate::OptimError> {
        let before = minor_faults();
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            let mut params: Vec<ParamMut> = self
                .weights
                .iter_mut()
                .zip(&self.grads)
                .zip(self.set)
                .zip(&self.given)
                .map(|(((w, g), (n, s)), given)| {
                    let p = ParamMut::new(n, s, w, g);
                    match given {
                        Some(m) => p.with_grad_max_abs(*m),
                        None => p,
                    }
                })
                .collect();
            let t0 = Instant::now();
            self.opt.step(&mut params)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let faults = minor_faults().zip(before).map(|(a, b)| a.saturating_sub(b));
        Ok((times, faults))
    }

    /// The optimizer's passes (see [`crate::Optimizer::memory_passes`]); a gradient check
    /// pass that reads only the gradient is dropped when the maxima are given.
    pub fn passes(&self) -> Vec<MemoryPass> {
        let mut p = self.opt.memory_passes();
        if self.given.iter().all(Option::is_some) {
            p.retain(|p| !(p.name == "check" && p.read == 4));
        }
        p
    }
}

/// Minor page faults of this process so far, from `/proc/self/stat` (None elsewhere).
pub fn minor_faults() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name in parentheses: state, ppid, pgrp, session, tty, tpgid, flags,
    // minflt.
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(7)?
        .parse()
        .ok()
}

/// Times `steps` steps (after one untimed step that allocates the state).
pub fn time_optimizer(spec: &OptimizerSpec, set: &[TensorShape], steps: usize) -> (f64, f64) {
    time_row(spec, set, steps, false)
}

fn time_row(spec: &OptimizerSpec, set: &[TensorShape], steps: usize, given: bool) -> (f64, f64) {
    let mut run = OptimizerRun::new(spec, set, given).expect("benchmark optimizer spec");
    let mut times = run.block(steps.max(1)).expect("benchmark step");
    let min_s = times.iter().copied().fold(f64::INFINITY, f64::min);
    (median(&mut times), min_s)
}

/// Runs the benchmark in a dedicated pool of `cfg.threads` threads.
pub fn run_step_benchmark(cfg: &BenchConfig) -> StepBenchReport {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads.max(1))
        .build()
        .expect("rayon pool");
    pool.install(|| {
        let triad = (cfg.triad_elems > 0).then(|| stream_triad(cfg.triad_elems, 7));
        let mut steps = Vec::new();
        for (set_label, set) in &cfg.sets {
            let params = set.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            let n = if params < 1_000_000 {
                cfg.steps.max(50)
            } else {
                cfg.steps
            };
            for (label, spec) in &cfg.optimizers {
                let given = label.contains(GRAD_MAX_GIVEN);
                let (median_s, min_s) = time_row(spec, set, n, given);
                steps.push(StepTiming {
                    set: set_label.clone(),
                    optimizer: label.clone(),
                    tensors: set.len(),
                    params,
                    median_s,
                    min_s,
                });
            }
        }
        StepBenchReport {
            threads: cfg.threads,
            simd: crate::simd_level(),
            steps,
            triad,
        }
    })
}

impl fmt::Display for StepBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "optimizer step benchmark: {} threads, element loops {:?}, bandwidth at {BYTES_PER_PARAM} bytes/param",
            self.threads, self.simd
        )?;
        if let Some(t) = &self.triad {
            writeln!(
                f,
                "STREAM triad a=b+s*c, {} Mi elements/array, 12 bytes/elem: {:.1} GB/s median, {:.1} GB/s best",
                t.elems >> 20,
                t.gbps(),
                t.best_gbps()
            )?;
        }
        let mut last = String::new();
        for s in &self.steps {
            if s.set != last {
                writeln!(
                    f,
                    "\n{} ({} tensors, {} parameters)",
                    s.set, s.tensors, s.params
                )?;
                writeln!(
                    f,
                    "  {:<22} {:>12} {:>12} {:>10}",
                    "optimizer", "median", "best", "GB/s@28B"
                )?;
                last = s.set.clone();
            }
            let (m, b, unit) = if s.median_s < 1e-2 {
                (s.median_s * 1e6, s.min_s * 1e6, "us")
            } else {
                (s.median_s * 1e3, s.min_s * 1e3, "ms")
            };
            writeln!(
                f,
                "  {:<22} {:>9.1} {unit} {:>9.1} {unit} {:>10.1}",
                s.optimizer,
                m,
                b,
                s.gbps()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_optimizer_is_in_the_default_list_and_builds() {
        let list = default_optimizers();
        for &kind in OptimizerKind::ALL {
            assert!(list.iter().any(|(_, s)| s.kind == Some(kind)), "{kind}");
        }
        for (l, s) in &list {
            assert!(build(s).is_ok(), "{l}");
        }
        let labels: Vec<&str> = list.iter().map(|(l, _)| l.as_str()).collect();
        assert!(labels.contains(&"lamb (timm, clip)") && labels.contains(&"adamw (pytorch)"));
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
    }

    #[test]
    fn every_optimizer_reports_its_passes_with_the_documented_bytes() {
        let bytes = |label: &str| -> u32 {
            let (_, spec) = default_optimizers()
                .into_iter()
                .find(|(l, _)| l == label)
                .unwrap_or_else(|| panic!("{label}"));
            build(&spec)
                .unwrap()
                .memory_passes()
                .iter()
                .map(MemoryPass::bytes)
                .sum()
        };
        for (l, s) in default_optimizers() {
            assert!(!build(&s).unwrap().memory_passes().is_empty(), "{l}");
        }
        // The accounting: Adam 28 unchecked (+4 for the gradient check), LAMB 40
        // (+4 for the clipping norm), LARS and SGD 28.
        assert_eq!(bytes("adam (keras, unchecked)"), 28);
        assert_eq!(bytes("adamw (pytorch)"), 32);
        assert_eq!(bytes("lamb (tfa)"), 40);
        assert_eq!(bytes("lamb (timm, clip)"), 44);
        assert_eq!(bytes("lars (timm)"), 28);
        let (_, spec) = default_optimizers()
            .into_iter()
            .find(|(l, _)| l == "adam (keras, grad max given)")
            .unwrap();
        let set = seed_cnn_tensors();
        let given: u32 = OptimizerRun::new(&spec, &set, true)
            .unwrap()
            .passes()
            .iter()
            .map(MemoryPass::bytes)
            .sum();
        assert_eq!(given, 28);
        assert_eq!(bytes("sgd (pytorch, momentum)"), 28);
    }

    #[test]
    fn tensor_sets_have_the_documented_sizes() {
        let bert = bert_base_tensors();
        assert_eq!(bert.len(), 199);
        let n: usize = bert.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(n, 109_482_240);
        let cnn: usize = seed_cnn_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(cnn, 864 + 32 + 18432 + 64 + 23040 + 10);
    }

    #[test]
    fn small_benchmark_runs() {
        let cfg = BenchConfig {
            steps: 1,
            threads: 1,
            sets: vec![("cnn".into(), seed_cnn_tensors())],
            optimizers: default_optimizers(),
            triad_elems: 1 << 12,
        };
        let r = run_step_benchmark(&cfg);
        assert_eq!(r.steps.len(), default_optimizers().len());
        assert!(r.steps.iter().all(|s| s.median_s > 0.0));
        assert!(r.to_string().contains("STREAM triad"));
    }
}
