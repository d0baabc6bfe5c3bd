//! `lamb sweep`: the batch-size study. A grid of batch sizes x optimizers x learning rates
//! (around a square-root batch-size scaling rule, with warmup and polynomial decay) trained
//! for a fixed epoch budget, run concurrently without oversubscribing the cores, resumable,
//! summarised in one table and plots.

pub mod exec;
pub mod report;
pub mod spec;
pub mod status;
pub mod target;
pub mod target_report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::atomic::write_atomic;
use exec::{Execution, Tally};
use spec::{Preset, SweepSpec};

/// What a sweep measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// The best validation accuracy after a fixed number of epochs (a fixed grid).
    #[default]
    BestAccuracy,
    /// Steps (and seconds) to a target validation accuracy, each cell tuned, 3 seeds.
    StepsToTarget,
}

/// Flags of `lamb sweep`.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// What to measure: best-accuracy (a fixed epoch budget) or steps-to-target (steps to a
    /// target validation accuracy per batch size, Shallue et al. 2018) [default: best-accuracy].
    #[arg(long, value_enum, default_value_t = Metric::BestAccuracy)]
    pub metric: Metric,
    /// Built-in grid: small (tens of minutes on 2 cores for best-accuracy, 1-2 hours for
    /// steps-to-target; `--dry-run` estimates it for this machine) or full (for bigger
    /// machines, or many) [default: small].
    #[arg(long, value_enum, conflicts_with = "config")]
    pub preset: Option<Preset>,
    /// Sweep file (TOML with the keys of `<sweep dir>/sweep.toml`) instead of a preset.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sweep directory [default: runs/sweep-<preset or file name>]. Running the same command
    /// again continues it: finished runs are kept, interrupted ones resume.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Data for every run [default: ../shared/data or $LAMB_DATA].
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Engine threads per run [default: 1].
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Runs at the same time [default: cores / threads].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Override the grid's epochs per run.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the grid's model: seed-cnn, resnet20 or a Keras model JSON file.
    #[arg(long, value_name = "NAME|FILE")]
    pub model: Option<String>,
    /// Override the grid's training images (spread evenly over the split).
    #[arg(long, value_name = "N")]
    pub train_images: Option<usize>,
    /// Override the grid's validation images.
    #[arg(long, value_name = "N")]
    pub test_images: Option<usize>,
    /// Run again the runs that failed (diverged) before; by default they are results.
    #[arg(long)]
    pub retry_failed: bool,
    /// When no data is found, fail instead of downloading CIFAR-10 into ./data first.
    #[arg(long)]
    pub no_download: bool,
    /// Print the grid, the commands and the expected cost; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only rewrite the table and plots from the runs already there.
    #[arg(long, conflicts_with = "dry_run")]
    pub report: bool,
    #[command(flatten)]
    pub tb: crate::tensorboard::TbFlags,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `lamb sweep`; returns whether every run finished (false after Ctrl-C).
pub fn run(a: &SweepArgs) -> Result<bool> {
    if a.metric == Metric::StepsToTarget {
        return run_steps_to_target(a);
    }
    let (mut spec, name) = match &a.config {
        Some(path) => (
            SweepSpec::from_file(path)?,
            path.file_stem()
                .map_or("file".into(), |s| s.to_string_lossy().into_owned()),
        ),
        None => {
            let p = a.preset.unwrap_or(Preset::Small);
            (p.spec(), p.as_str().to_string())
        }
    };
    if a.model.is_some() {
        spec.model = a.model.clone();
    }
    if let Some(e) = a.epochs {
        spec.epochs = e;
    }
    if a.train_images.is_some() {
        spec.train_images = a.train_images;
    }
    if a.test_images.is_some() {
        spec.test_images = a.test_images;
    }
    spec.validate()?;
    if a.threads == 0 || a.threads > 1024 {
        bail!("--threads {}: must be between 1 and 1024", a.threads);
    }
    let jobs = a.jobs.unwrap_or((cores() / a.threads).max(1));
    if jobs == 0 || jobs > 1024 {
        bail!("--jobs {jobs}: must be between 1 and 1024");
    }
    if jobs * a.threads > cores() {
        eprintln!(
            "warning: {jobs} jobs x {} threads = {} threads on {} cores: runs will slow each other down",
            a.threads,
            jobs * a.threads,
            cores()
        );
    }
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{name}")));
    let plans = spec.plan();
    let ex = Execution {
        dir: dir.clone(),
        data: a.data.clone(),
        threads: a.threads,
        jobs,
        retry_failed: a.retry_failed,
    };
    // Every run of the grid is checked as `lamb train` will check it, before any starts.
    for p in &plans {
        let args = exec::train_args(&spec, p, &dir.join("runs").join(&p.id), &ex);
        crate::check_train_args(&args).with_context(|| {
            format!(
                "run {} of the grid would be refused (`lamb {}`); nothing was started",
                p.id,
                args.join(" ")
            )
        })?;
    }
    if a.dry_run {
        print_dry_run(&spec, &plans, &ex)?;
        return Ok(true);
    }
    let recorded_path = dir.join("sweep.toml");
    if recorded_path.is_file() {
        let recorded = SweepSpec::from_file(&recorded_path)?;
        if let Some(why) = recorded.incompatibility(&spec) {
            bail!(
                "{} holds a sweep with another grid ({why} differ; see {}); continue it with `lamb sweep --config {} --out {}`, or choose another --out",
                dir.display(),
                recorded_path.display(),
                recorded_path.display(),
                dir.display()
            );
        }
        if recorded != spec && !a.report {
            println!(
                "The grid changed (same budget and settings): runs already there are kept, new ones added; {} records the new grid",
                recorded_path.display()
            );
            write_grid(&recorded_path, &spec)?;
        }
    } else if a.report {
        bail!("{} holds no sweep (no sweep.toml)", dir.display());
    } else {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating sweep directory {}", dir.display()))?;
        write_grid(&recorded_path, &spec)?;
    }
    let command = std::env::args()
        .map(|s| if s.contains(' ') { format!("'{s}'") } else { s })
        .collect::<Vec<_>>()
        .join(" ");
    let mut tally = Tally::default();
    if !a.report {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in crate::STOP_SIGNALS {
            signal_hook::flag::register(sig, stop.clone())
                .context("installing the Ctrl-C handler")?;
        }
        println!(
            "Sweep {}: {} runs ({} optimizers x {} batch sizes x {} learning rates), {} epochs each",
            dir.display(),
            plans.len(),
            spec.optimizers.len(),
            spec.batch_sizes.len(),
            spec.lr_multipliers.len(),
            spec.epochs
        );
        // Find (or, on first use, download) the data once, not once per run.
        let data = crate::run::locate_data(ex.data.as_deref(), !a.no_download)?;
        let ex = Execution {
            data: Some(data),
            ..ex.clone()
        };
        tally = exec::run_grid(&exec::grid_jobs(&spec, &plans, &ex), &ex, &stop)?;
        if stop.load(Ordering::SeqCst) {
            tally.interrupted = tally.interrupted.max(1);
        }
    }
    let table = report::write_all(&spec, &dir, &command)?;
    println!("\n{table}");
    println!(
        "Report: {}  (every run: {}, plots: {})",
        dir.join("sweep.md").display(),
        dir.join("sweep.csv").display(),
        dir.join("plots").display()
    );
    if a.report {
        return Ok(true);
    }
    println!(
        "This invocation: {} completed, {} failed, {} kept from before, {} not finished{}",
        tally.completed,
        tally.failed,
        tally.skipped,
        tally.interrupted,
        if tally.elsewhere > 0 {
            format!(", {} left to another process", tally.elsewhere)
        } else {
            String::new()
        }
    );
    if tally.interrupted > 0 {
        println!("Stopped. Run the same command again to continue (finished runs are kept).");
        return Ok(false);
    }
    Ok(true)
}

fn write_grid(path: &std::path::Path, spec: &SweepSpec) -> Result<()> {
    write_atomic(
        path,
        format!(
            "# The grid of this sweep (rerun with `lamb sweep --config {}`).\n{}",
            path.display(),
            spec.to_toml()?
        )
        .as_bytes(),
    )
}

/// Training and validation images per second of one run on this machine, measured for about a
/// second with `ex.jobs` runs of `ex.threads` thread(s) side by side (as the sweep runs them, so
/// they share the cores and the memory as they will): the grid's model at batch 100 on
/// synthetic images. The medians over the runs.
fn calibrate(ex: &Execution, model: Option<&str>) -> Result<(f64, f64)> {
    let model = match model {
        None | Some(crate::config::SEED_CNN) => None,
        Some(m) => Some(lamb_nn::ModelSpec::named(m, "relu")?),
    };
    // About a second of work: fewer images for a model larger than the seed CNN.
    let (train_images, val_images) = if model.is_none() {
        (3000, 2000)
    } else {
        (300, 300)
    };
    let cfg = lamb_nn::bench::BenchConfig {
        batch_sizes: vec![100],
        train_images,
        val_images,
        epochs: 1,
        model,
        ..Default::default()
    };
    let results: Vec<Result<(f64, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..ex.jobs)
            .map(|_| {
                s.spawn(|| -> Result<(f64, f64)> {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(ex.threads)
                        .build()
                        .context("a thread pool for the calibration")?;
                    let r = pool.install(|| lamb_nn::bench::run(&cfg))?;
                    let r = r.first().context("the calibration measured nothing")?;
                    Ok((
                        r.train_images_per_second,
                        cfg.val_images as f64 / r.val_seconds.max(1e-9),
                    ))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("calibration panicked")))
            })
            .collect()
    });
    let mut train = Vec::new();
    let mut val = Vec::new();
    for r in results {
        let (t, v) = r?;
        train.push(t);
        val.push(v);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(&mut train), median(&mut val)))
}

fn print_dry_run(spec: &SweepSpec, plans: &[spec::RunPlan], ex: &Execution) -> Result<()> {
    let train = spec.train_len(50_000) as f64;
    let test = spec.test_images.unwrap_or(10_000).min(10_000) as f64;
    let (train_rate, val_rate) = calibrate(ex, spec.model.as_deref())?;
    let run_seconds = spec.epochs as f64 * (train / train_rate + test / val_rate);
    let waves = (plans.len() as f64 / ex.jobs as f64).ceil();
    let hours = waves * run_seconds / 3600.0;
    let cost = |h: f64| {
        if h < 1.0 {
            format!("{:.0} min", (h * 60.0).max(1.0))
        } else {
            format!("{h:.1} h")
        }
    };
    println!(
        "{} runs ({} optimizers x batch sizes {:?} x {} learning rates), {} epochs each, {} at a time with {} thread(s)",
        plans.len(),
        spec.optimizers.len(),
        spec.batch_sizes,
        spec.lr_multipliers.len(),
        spec.epochs,
        ex.jobs,
        ex.threads
    );
    println!(
        "Expected cost on this machine: {} to {} (calibrated just now: {:.0} training and {:.0} \
         validation images per second per run, {} run(s) of {} thread(s) side by side, the grid's \
         model at batch 100; the upper end allows 1.5x for larger batches and a busier machine)",
        cost(hours),
        cost(hours * 1.5),
        train_rate,
        val_rate,
        ex.jobs,
        ex.threads
    );
    for p in plans {
        let args = exec::train_args(spec, p, &ex.dir.join("runs").join(&p.id), ex);
        println!("  lamb {}", args.join(" "));
    }
    Ok(())
}

/// `lamb sweep --metric steps-to-target`.
fn run_steps_to_target(a: &SweepArgs) -> Result<bool> {
    use target::TargetSpec;
    for (flag, set) in [
        ("--epochs", a.epochs.is_some()),
        ("--test-images", a.test_images.is_some()),
    ] {
        if set {
            bail!(
                "{flag} does not apply to --metric steps-to-target (runs validate on a held-out \
                 part of the training data and have a budget per batch size: `budget-epochs` in \
                 a --config file)"
            );
        }
    }
    let (mut spec, name) = match &a.config {
        Some(path) => (
            TargetSpec::from_file(path)?,
            path.file_stem()
                .map_or("file".into(), |s| s.to_string_lossy().into_owned()),
        ),
        None => {
            let p = a.preset.unwrap_or(Preset::Small);
            (TargetSpec::preset(p), p.as_str().to_string())
        }
    };
    if a.model.is_some() {
        spec.model = a.model.clone();
    }
    if a.train_images.is_some() {
        spec.train_images = a.train_images;
    }
    spec.validate()?;
    if a.threads == 0 || a.threads > 1024 {
        bail!("--threads {}: must be between 1 and 1024", a.threads);
    }
    let jobs = a.jobs.unwrap_or((cores() / a.threads).max(1));
    if jobs == 0 || jobs > 1024 {
        bail!("--jobs {jobs}: must be between 1 and 1024");
    }
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("steps-{name}")));
    let ex = Execution {
        dir: dir.clone(),
        data: a.data.clone(),
        threads: a.threads,
        jobs,
        retry_failed: false,
    };
    let first = spec.plan(&|_| target::Outcome::Pending);
    for r in first.iter().flat_map(|c| c.runs.iter()) {
        let args = spec.train_args(r, &dir.join("runs").join(&r.id), &ex);
        crate::check_train_args(&args).with_context(|| {
            format!(
                "run {} of the grid would be refused (`lamb {}`); nothing was started",
                r.id,
                args.join(" ")
            )
        })?;
    }
    let first_runs: usize = first.iter().map(|c| c.runs.len()).sum();
    if a.dry_run {
        let (train_rate, val_rate) = calibrate(&ex, spec.model.as_deref())?;
        let n = spec.train_images.unwrap_or(50_000).min(50_000) as f64;
        let (train, val) = (n * (1.0 - spec.validation_split), n * spec.validation_split);
        // Seconds of one epoch: training, and a validation pass every `eval-every-images`.
        let passes = (train / spec.eval_every_images as f64).ceil();
        let epoch = train / train_rate + passes * val / val_rate;
        let worst: f64 = first
            .iter()
            .map(|c| c.runs.len() as f64 * epoch * spec.budget(c.batch) as f64)
            .sum::<f64>()
            / jobs as f64;
        println!(
            "{} cells ({} optimizers x batch sizes {:?}); first round {first_runs} runs at seed {}, \
             then up to {} growths of the rate grid per cell and {} seed runs per cell",
            first.len(),
            spec.optimizers.len(),
            spec.batch_sizes,
            spec.seeds[0],
            spec.max_refinements,
            spec.seeds.len() - 1
        );
        println!(
            "First round on this machine: at most {:.0} min if every run used its whole budget \
             ({jobs} at a time, {} thread(s) each; calibrated just now: {train_rate:.0} training, \
             {val_rate:.0} validation images/s per run); runs stop at the target, so expect a \
             fraction of that",
            worst / 60.0,
            a.threads
        );
        for r in first.iter().flat_map(|c| c.runs.iter()) {
            let args = spec.train_args(r, &dir.join("runs").join(&r.id), &ex);
            println!("  lamb {}", args.join(" "));
        }
        return Ok(true);
    }
    let recorded_path = dir.join(target::SPEC_FILE);
    if recorded_path.is_file() {
        let recorded = TargetSpec::from_file(&recorded_path)?;
        if let Some(why) = recorded.incompatibility(&spec) {
            bail!(
                "{} holds a steps-to-target sweep with other settings ({why} differ; see {}); \
                 continue it with `lamb sweep --metric steps-to-target --config {} --out {}`, or \
                 choose another --out",
                dir.display(),
                recorded_path.display(),
                recorded_path.display(),
                dir.display()
            );
        }
        if recorded != spec && !a.report {
            write_target_grid(&recorded_path, &spec)?;
        }
    } else if a.report {
        bail!(
            "{} holds no steps-to-target sweep (no {})",
            dir.display(),
            target::SPEC_FILE
        );
    } else {
        if dir.join("sweep.toml").is_file() {
            bail!(
                "{} holds a best-accuracy sweep (sweep.toml); choose another --out",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating sweep directory {}", dir.display()))?;
        write_target_grid(&recorded_path, &spec)?;
    }
    let command = std::env::args()
        .map(|s| if s.contains(' ') { format!("'{s}'") } else { s })
        .collect::<Vec<_>>()
        .join(" ");
    let mut done = true;
    if !a.report {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in crate::STOP_SIGNALS {
            signal_hook::flag::register(sig, stop.clone())
                .context("installing the Ctrl-C handler")?;
        }
        println!(
            "Steps-to-target sweep {}: {} cells, target {} validation accuracy; first round {first_runs} runs",
            dir.display(),
            first.len(),
            spec.target_accuracy
        );
        let data = crate::run::locate_data(ex.data.as_deref(), !a.no_download)?;
        let ex = Execution {
            data: Some(data),
            ..ex.clone()
        };
        done = target::run_sweep(&spec, &ex, &stop)?;
    }
    let table = target_report::write_all(&spec, &dir, &command)?;
    println!("\n{table}");
    println!(
        "Report: {}  (every cell: {}, plots: {})",
        dir.join("steps_to_target.md").display(),
        dir.join("steps_to_target.csv").display(),
        dir.join("plots").display()
    );
    if !done {
        println!("Stopped. Run the same command again to continue (finished runs are kept).");
    }
    Ok(done)
}

fn write_target_grid(path: &std::path::Path, spec: &target::TargetSpec) -> Result<()> {
    write_atomic(
        path,
        format!(
            "# The grid of this steps-to-target sweep (rerun with `lamb sweep --metric steps-to-target --config {}`).\n{}",
            path.display(),
            spec.to_toml()?
        )
        .as_bytes(),
    )
}
