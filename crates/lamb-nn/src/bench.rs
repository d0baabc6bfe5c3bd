//! Speed benchmark of the engine on the seed CNN with synthetic data, counted as Keras counts an
//! epoch: every training step of 50,000 images plus validation on 10,000.

use std::time::Instant;

use lamb_data::Dataset;
use lamb_optim::{Lamb, LambConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{classic_cnn, Activation, FitOptions, ModelSpec, NnError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Training batch sizes to measure, each in its own run.
    pub batch_sizes: Vec<usize>,
    /// Training images per epoch (50,000 for CIFAR-10).
    pub train_images: usize,
    /// Validation images (10,000 for CIFAR-10).
    pub val_images: usize,
    /// Validation batch size.
    pub val_batch_size: usize,
    /// Epochs measured per batch size (the median is reported).
    pub epochs: usize,
    /// Hidden activation of the seed CNN.
    pub hidden: Activation,
    /// The model to measure instead of the seed CNN (its input must be 32x32x3).
    pub model: Option<ModelSpec>,
    /// Seed of the weights and the synthetic data.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            batch_sizes: vec![100, 1000],
            train_images: 50_000,
            val_images: 10_000,
            val_batch_size: 1000,
            epochs: 3,
            hidden: Activation::Relu,
            model: None,
            seed: 0,
        }
    }
}

/// Measured figures for one batch size (medians over the measured epochs).
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Training batch size.
    pub batch_size: usize,
    /// Seconds per epoch, training plus validation.
    pub epoch_seconds: f64,
    /// Seconds of training steps per epoch.
    pub train_seconds: f64,
    /// Seconds of validation per epoch.
    pub val_seconds: f64,
    /// Training images per second.
    pub train_images_per_second: f64,
    /// Per layer: name, forward seconds per epoch, backward seconds per epoch (training steps
    /// only, averaged over the measured epochs).
    pub layers: Vec<(String, f64, f64)>,
    /// Training seconds per epoch outside the layers' passes (loss, optimizer, batch assembly).
    pub other_train_seconds: f64,
    /// Rayon threads used.
    pub threads: usize,
    /// CPU seconds (user + system, all threads) the process spent per epoch, training plus
    /// validation (median), where the platform reports it (Linux `/proc/self/stat`). On a
    /// shared machine this is steadier than wall time.
    pub cpu_seconds: Option<f64>,
    /// The 1-minute load average when this batch size's measurement started (Linux), to judge
    /// whether other processes competed for the cores.
    pub load_average: Option<f64>,
}

/// CPU seconds (user + system) used by this process so far, from `/proc/self/stat` (assumes
/// the usual 100 clock ticks per second); `None` where unavailable.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The 1-minute load average from `/proc/loadavg`; `None` where unavailable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = vec![0u8; n * 32 * 32 * 3];
    rng.fill(&mut images[..]);
    let labels = (0..n).map(|_| rng.gen_range(0..10u8)).collect();
    Dataset {
        images,
        labels,
        height: 32,
        width: 32,
        channels: 3,
        class_names: Vec::new(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark: for each batch size, `epochs` real epochs of `fit` with LAMB (default
/// settings) on synthetic random images.
pub fn run(cfg: &BenchConfig) -> Result<Vec<BenchResult>, NnError> {
    if cfg.epochs == 0 {
        return Err(NnError::InvalidArgument {
            name: "epochs",
            value: "0".into(),
            valid: "at least 1".into(),
        });
    }
    let train = synthetic(cfg.train_images, cfg.seed);
    let val = synthetic(cfg.val_images, cfg.seed + 1);
    let mut results = Vec::new();
    for &bs in &cfg.batch_sizes {
        let mut model = match &cfg.model {
            Some(spec) => spec.build(cfg.seed)?,
            None => classic_cnn(cfg.hidden, cfg.seed)?,
        };
        let mut opt = Lamb::new(LambConfig::default()).map_err(|cause| NnError::Optimizer {
            epoch: 0,
            step: 0,
            cause,
        })?;
        let (mut tr, mut va, mut ep) = (Vec::new(), Vec::new(), Vec::new());
        let mut cpu = Vec::new();
        let load = load_average();
        let mut layer_sum: Vec<(String, f64, f64)> = Vec::new();
        for e in 0..cfg.epochs {
            let mut opts = FitOptions::new(bs, e + 1, cfg.seed);
            opts.val_batch_size = cfg.val_batch_size;
            opts.start.epoch = e;
            model.reset_timers();
            let t = Instant::now();
            let cpu0 = process_cpu_seconds();
            let hist = model.fit(&train, Some(&val), &opts, &mut opt, &mut |_| Ok(()))?;
            let wall = t.elapsed().as_secs_f64();
            if let (Some(a), Some(b)) = (cpu0, process_cpu_seconds()) {
                cpu.push(b - a);
            }
            let rec = hist
                .epochs
                .last()
                .cloned()
                .ok_or_else(|| NnError::Callback("bench: no epoch recorded".into()))?;
            // The forward timers include validation's forward passes: time one validation alone
            // and subtract it.
            let with_val = model.layer_timers();
            model.reset_timers();
            model.evaluate(&val, cfg.val_batch_size)?;
            let val_only = model.layer_timers();
            if layer_sum.is_empty() {
                layer_sum = with_val
                    .iter()
                    .map(|(n, _, _)| (n.clone(), 0.0, 0.0))
                    .collect();
            }
            for ((acc, a), b) in layer_sum.iter_mut().zip(&with_val).zip(&val_only) {
                acc.1 += (a.1 - b.1).max(0.0) / cfg.epochs as f64;
                acc.2 += a.2 / cfg.epochs as f64;
            }
            tr.push(rec.train_seconds);
            va.push(rec.val_seconds);
            ep.push(wall);
        }
        let train_seconds = median(&mut tr);
        let layer_total: f64 = layer_sum.iter().map(|l| l.1 + l.2).sum();
        results.push(BenchResult {
            batch_size: bs,
            epoch_seconds: median(&mut ep),
            train_seconds,
            val_seconds: median(&mut va),
            train_images_per_second: cfg.train_images as f64 / train_seconds,
            other_train_seconds: (train_seconds - layer_total).max(0.0),
            layers: layer_sum,
            threads: rayon::current_num_threads(),
            cpu_seconds: (!cpu.is_empty()).then(|| median(&mut cpu)),
            load_average: load,
        });
    }
    Ok(results)
}

/// Human-readable report of [`run`]'s results.
pub fn format_report(cfg: &BenchConfig, results: &[BenchResult]) -> String {
    let what = match &cfg.model {
        Some(m) => format!("model `{}`", m.name),
        None => format!("seed CNN ({:?})", cfg.hidden),
    };
    let mut s = format!(
        "{what}, synthetic random images: {} training + {} validation per epoch (batch {} for validation), LAMB, median of {} epochs\n\
         (per layer: training steps only; the convolution and pooling layers run chunk by chunk together, their wall time shared out by CPU time; \
         a pooling fused with the convolution below it shows 0, its time counted in that convolution)\n",
        cfg.train_images, cfg.val_images, cfg.val_batch_size, cfg.epochs
    );
    for r in results {
        s += &format!(
            "batch {:>5}: {:.2} s/epoch = {:.2} train + {:.2} validation; {:.0} training images/s; {} threads\n",
            r.batch_size, r.epoch_seconds, r.train_seconds, r.val_seconds, r.train_images_per_second, r.threads
        );
        if let Some(c) = r.cpu_seconds {
            s += &format!("    CPU time {c:.2} s/epoch (all threads)");
            if let Some(l) = r.load_average {
                s += &format!("; load average {l:.2} at start");
            }
            s += "\n";
        }
        for (name, f, b) in &r.layers {
            s += &format!("    {name:<32} forward {f:>6.3} s  backward {b:>6.3} s\n");
        }
        s += &format!(
            "    {:<32} {:.3} s\n",
            "loss + optimizer + batching", r.other_train_seconds
        );
    }
    s
}
