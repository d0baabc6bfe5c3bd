//! Our optimizer steps beside PyTorch's fused Adam and AdamW in the same run: blocks of torch
//! steps and blocks of ours alternate, and each of ours is reported as a ratio to the torch
//! blocks of the same pairs, with the bytes per parameter each of our passes moves.

use super::torch::{PeerError, TorchOptimizer, TorchPeer};
use super::{
    bert_base_tensors, default_optimizers, seed_cnn_tensors, stream_triad, OptimizerRun,
    TensorShape, TriadTiming,
};
use crate::{MemoryPass, OptimError, OptimizerSpec};
use std::fmt;

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Alternating pairs per optimizer (the median and range are over these).
    pub pairs: usize,
    /// Steps per block on sets of a million parameters or more.
    pub steps: usize,
    /// Steps per block on smaller sets (latency-bound: more steps per block).
    pub small_steps: usize,
    /// Our threads (a dedicated rayon pool); the peer was started with its own count.
    pub threads: usize,
    /// Tensor sets: (label, tensors). A set labelled `BERT-base` is checked against the shared
    /// `bert_shapes.py` when the peer was given its directory.
    pub sets: Vec<(String, Vec<TensorShape>)>,
    /// Our optimizers: (label, spec).
    pub optimizers: Vec<(String, OptimizerSpec)>,
    /// Elements per STREAM triad array (0: no triad).
    pub triad_elems: usize,
}

impl Default for CompareConfig {
    /// 5 pairs of 7-step blocks (100 on the seed CNN), 2 threads, the seed CNN and BERT-base
    /// sets, every default optimizer, a 64 Mi-element triad.
    fn default() -> Self {
        CompareConfig {
            pairs: 5,
            steps: 7,
            small_steps: 100,
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

/// Why a comparison stopped.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The torch peer failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// One of our optimizers refused its spec or a step.
    #[error("optimizer {label}: {error}")]
    Optimizer {
        /// The benchmark label.
        label: String,
        /// What it said.
        error: OptimError,
    },
}

/// Median and range of a few values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (the upper middle value of an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// Of `v` (not empty).
    pub fn of(v: &[f64]) -> Spread {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: s[s.len() / 2],
            min: s[0],
            max: s[s.len() - 1],
        }
    }
}

fn block_median(v: &[f64]) -> f64 {
    Spread::of(v).median
}

/// One of our optimizers beside torch on one set.
#[derive(Debug, Clone)]
pub struct ComparedRow {
    /// Our optimizer's label.
    pub optimizer: String,
    /// Our seconds per step (over the pairs' block medians).
    pub ours: Spread,
    /// Torch fused Adam's and AdamW's seconds per step, in the same pairs.
    pub torch: [Spread; 2],
    /// Ours divided by fused Adam and by fused AdamW, pair by pair.
    pub ratio: [Spread; 2],
    /// Our optimizer's passes over the parameters.
    pub passes: Vec<MemoryPass>,
    /// Minor page faults per step: ours, torch Adam's, torch AdamW's (over all blocks).
    pub faults: [Option<f64>; 3],
    /// Fastest single step over all blocks: ours, torch Adam's, torch AdamW's (on a loaded
    /// machine the figure least disturbed by the neighbours).
    pub best: [f64; 3],
}

impl ComparedRow {
    /// Bytes per parameter all passes move.
    pub fn bytes_per_param(&self) -> u32 {
        self.passes.iter().map(MemoryPass::bytes).sum()
    }
}

/// One tensor set's comparison.
#[derive(Debug, Clone)]
pub struct ComparedSet {
    /// The set's label.
    pub label: String,
    /// Tensors in the set.
    pub tensors: usize,
    /// Parameters in the set.
    pub params: usize,
    /// Steps per block.
    pub steps: usize,
    /// Whether the peer checked the shapes against `bert_shapes.py`.
    pub shapes_checked: bool,
    /// The 1-, 5- and 15-minute load averages before and after the set (Linux).
    pub load: [Option<String>; 2],
    /// One row per optimizer.
    pub rows: Vec<ComparedRow>,
}

/// Everything a comparison measured.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Our threads.
    pub threads: usize,
    /// Instruction-set level of our element loops.
    pub simd: crate::SimdLevel,
    /// `torch.__version__` and torch's thread count.
    pub torch: (String, usize),
    /// Alternating pairs per optimizer.
    pub pairs: usize,
    /// The triad, if measured.
    pub triad: Option<TriadTiming>,
    /// Per set.
    pub sets: Vec<ComparedSet>,
}

/// The load averages from `/proc/loadavg` (None elsewhere).
pub fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Runs the comparison in a dedicated pool of `cfg.threads` threads against `peer`.
///
/// Per set, per optimizer: our optimizer is built and stepped once, then `cfg.pairs` pairs
/// each time a block of torch Adam, of torch AdamW and of ours (ours first in every other
/// pair, so that neither side always follows the other); each block's median step is one
/// value, and each pair's ratios divide ours by the torch blocks of the same pair.
pub fn run_comparison(
    cfg: &CompareConfig,
    peer: &mut TorchPeer,
) -> Result<Comparison, CompareError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads.max(1))
        .build()
        .expect("rayon pool");
    pool.install(|| {
        let triad = (cfg.triad_elems > 0).then(|| stream_triad(cfg.triad_elems, 7));
        let mut sets = Vec::new();
        for (label, set) in &cfg.sets {
            let load_before = load_average();
            let params: usize = set.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            let steps = if params < 1_000_000 {
                cfg.small_steps
            } else {
                cfg.steps
            }
            .max(1);
            let shapes_checked = peer.set(label, set, label == "BERT-base")?;
            let mut rows = Vec::new();
            for (name, spec) in &cfg.optimizers {
                let fail = |error| CompareError::Optimizer {
                    label: name.clone(),
                    error,
                };
                let given = name.contains(super::GRAD_MAX_GIVEN);
                let mut ours = OptimizerRun::new(spec, set, given).map_err(fail)?;
                let (mut o, mut ta, mut tw) = (Vec::new(), Vec::new(), Vec::new());
                let mut faults = [Some(0u64); 3];
                let mut best = [f64::INFINITY; 3];
                let fastest = |b: &mut f64, t: &[f64]| *b = t.iter().copied().fold(*b, f64::min);
                let mut count = |k: usize, f: Option<u64>| {
                    faults[k] = faults[k].zip(f).map(|(a, b)| a + b);
                };
                for pair in 0..cfg.pairs.max(1) {
                    let mut ours_block =
                        |o: &mut Vec<f64>, b: &mut f64| -> Result<Option<u64>, CompareError> {
                            let (t, f) = ours.block_faults(steps).map_err(fail)?;
                            o.push(block_median(&t));
                            fastest(b, &t);
                            Ok(f)
                        };
                    if pair % 2 == 1 {
                        count(0, ours_block(&mut o, &mut best[0])?);
                    }
                    let (t, f) = peer.time(TorchOptimizer::FusedAdam, steps)?;
                    ta.push(block_median(&t));
                    fastest(&mut best[1], &t);
                    count(1, f);
                    let (t, f) = peer.time(TorchOptimizer::FusedAdamw, steps)?;
                    tw.push(block_median(&t));
                    fastest(&mut best[2], &t);
                    count(2, f);
                    if pair % 2 == 0 {
                        count(0, ours_block(&mut o, &mut best[0])?);
                    }
                }
                let per_step = (cfg.pairs.max(1) * steps) as f64;
                let ratio = |t: &[f64]| {
                    let r: Vec<f64> = o.iter().zip(t).map(|(a, b)| a / b).collect();
                    Spread::of(&r)
                };
                rows.push(ComparedRow {
                    optimizer: name.clone(),
                    ours: Spread::of(&o),
                    torch: [Spread::of(&ta), Spread::of(&tw)],
                    ratio: [ratio(&ta), ratio(&tw)],
                    passes: ours.passes(),
                    faults: faults.map(|f| f.map(|f| f as f64 / per_step)),
                    best,
                });
            }
            sets.push(ComparedSet {
                label: label.clone(),
                tensors: set.len(),
                params,
                steps,
                shapes_checked,
                load: [load_before, load_average()],
                rows,
            });
        }
        Ok(Comparison {
            threads: cfg.threads,
            simd: crate::simd_level(),
            torch: (peer.version.clone(), peer.threads),
            pairs: cfg.pairs.max(1),
            triad,
            sets,
        })
    })
}

/// Seconds as `12.3 ms` or `45.6 us`.
fn time(s: f64, small: bool) -> String {
    if small {
        format!("{:.1} us", s * 1e6)
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

fn ratio(r: &Spread) -> String {
    format!("{:.2} [{:.2}-{:.2}]", r.median, r.min, r.max)
}

fn passes(p: &[MemoryPass]) -> String {
    p.iter()
        .map(|p| {
            format!(
                "{} {}+{}{}",
                p.name,
                p.read,
                p.written,
                if p.streamed { "nt" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "optimizer steps beside PyTorch {} fused Adam/AdamW (lr 1e-3; AdamW weight decay 0.01): \
             ours {} threads, element loops {:?}; torch {} threads",
            self.torch.0, self.threads, self.simd, self.torch.1
        )?;
        writeln!(
            f,
            "each figure: median [min-max] over {} alternating pairs of blocks (torch Adam, torch \
             AdamW, ours; ours first every other pair), a block's figure its median step; ratios \
             pair by pair",
            self.pairs
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
        writeln!(
            f,
            "passes: name read+written bytes per parameter (nt: non-temporal stores to lines not \
             read); B/p their sum; GB/s at B/p and our median; /triad that over the triad's median; \
             pf: minor page faults per step, ours/torch Adam/torch AdamW; best: fastest single steps, \
             ours/torch Adam and ours/torch AdamW"
        )?;
        for s in &self.sets {
            let small = s.params < 1_000_000;
            let na = "?".to_string();
            writeln!(
                f,
                "\n{} ({} tensors, {} parameters{}), blocks of {} steps; load average {} before, {} after",
                s.label,
                s.tensors,
                s.params,
                if s.shapes_checked {
                    "; shapes checked against bert_shapes.py"
                } else {
                    ""
                },
                s.steps,
                s.load[0].as_ref().unwrap_or(&na),
                s.load[1].as_ref().unwrap_or(&na),
            )?;
            writeln!(
                f,
                "  {:<26} {:>9}  {:>10} {:<18}  {:>10} {:<18}  {:<11}  {:>3} {:>6} {:>6}  {:<12} passes",
                "optimizer", "ours", "torch Adam", "  ours/Adam", "AdamW", "  ours/AdamW", "best", "B/p", "GB/s", "/triad", "pf"
            )?;
            for r in &s.rows {
                let bytes = r.bytes_per_param();
                let gbps = s.params as f64 * bytes as f64 / r.ours.median / 1e9;
                let of_triad = self
                    .triad
                    .as_ref()
                    .map_or("?".into(), |t| format!("{:.2}", gbps / t.gbps()));
                let pf = r
                    .faults
                    .map(|x| x.map_or("?".into(), |x| format!("{x:.0}")))
                    .join("/");
                writeln!(
                    f,
                    "  {:<26} {:>9}  {:>10}   {:<18} {:>10}   {:<18} {:<11}  {:>3} {:>6.1} {:>6}  {:<12} {}",
                    r.optimizer,
                    time(r.ours.median, small),
                    time(r.torch[0].median, small),
                    ratio(&r.ratio[0]),
                    time(r.torch[1].median, small),
                    ratio(&r.ratio[1]),
                    format!("{:.2}/{:.2}", r.best[0] / r.best[1], r.best[0] / r.best[2]),
                    bytes,
                    gbps,
                    of_triad,
                    pf,
                    passes(&r.passes)
                )?;
            }
        }
        Ok(())
    }
}
