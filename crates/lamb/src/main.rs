//! The `lamb` command: train, evaluate, compare LAMB and Adam on CIFAR-10, import or download
//! data, benchmark the engine. Every run writes a directory with its config, history, plots,
//! weights, checkpoint and summary.

mod compare;
mod compare_fast;
mod config;
mod models;
mod optim;
mod plots;
mod progress;
mod report;
mod run;
mod sweep;
mod tensorboard;
mod testhooks;

/// Atomic writes and checkpoints live in the `lamb-run` library (shared with library users).
pub(crate) use lamb_run::{atomic, checkpoint};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use lamb_dist::Communicator;

use crate::compare::{CompareFile, CompareSettings};
use crate::config::{ActivationKind, RunConfig, Settings};
use crate::run::RunEnd;

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "lamb",
    version,
    about = "LAMB vs Adam on CIFAR-10: train, evaluate, compare, with reports and exact resume",
    after_help = "Start with `lamb compare --epochs 5` (the classic pair, 5 epochs) or `lamb compare` (50 epochs, as in the original experiment)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train one run (the classic CNN) and write its run directory.
    Train(Box<TrainArgs>),
    /// Test accuracy and loss of saved weights (ours or Keras-trained safetensors).
    Evaluate(EvaluateArgs),
    /// The classic pair: LAMB + ReLU vs Adam + SELU, with a report.
    Compare(CompareArgs),
    /// Import or download CIFAR-10.
    #[command(subcommand)]
    Data(DataCommand),
    /// Speed of the engine (seconds per epoch, per-layer times) on synthetic data.
    Bench(BenchArgs),
    /// The batch-size study: optimizers x batch sizes x learning rates, with a table and plots.
    Sweep(sweep::SweepArgs),
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// TOML config file; keys are the flag names (`batch-size` or `batch_size`), flags win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoint (--epochs may raise the total).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    tb: tensorboard::TbFlags,
}

#[derive(Args, Debug)]
struct EvaluateArgs {
    /// Weights file (safetensors with Keras names: conv2d/kernel, ..., dense/bias).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Data: official-layout directory or image archive [default: ../shared/data or $LAMB_DATA].
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Hidden activation of the model the weights belong to [default: from the run's
    /// config.toml beside the weights, else relu].
    #[arg(long, value_enum)]
    activation: Option<ActivationKind>,
    /// Model the weights belong to: seed-cnn, resnet20 or a Keras model JSON file [default:
    /// the description stored in the weights file, else the run's config.toml beside it, else
    /// seed-cnn].
    #[arg(long, value_name = "NAME|FILE")]
    model: Option<String>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Developer option: N test images spread evenly over the split.
    #[arg(long, hide = true, value_name = "N")]
    limit_test: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// TOML config: top-level keys as the flags, optional [lamb] and [adam] tables of optimizer
    /// settings (optimizer, preset, lr, beta1, beta2, epsilon, weight-decay, activation).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Instead of the classic pair: one fixed recipe for the seed CNN that aims at the Keras
    /// reference's final test accuracy (0.6856) in as little time as possible: SGD with
    /// Nesterov momentum 0.9, lr 0.04 (warmup 0.5 epoch, then linear decay to 0), batch 128,
    /// 14 epochs, ReLU, chosen on a 10% validation split, which it holds out; the test set is
    /// evaluated once, at the end. `--seed`, `--threads` apply. Report: OUT/fast.md.
    #[arg(long, conflicts_with = "config")]
    fast: bool,
    #[command(flatten)]
    settings: CompareSettings,
    #[command(flatten)]
    tb: tensorboard::TbFlags,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Convert an image archive or folder into the official binary layout (fast to load).
    Import {
        /// The archive (.tar.gz/.tar) or folder holding train/<class>/* and test/<class>/*.
        source: PathBuf,
        /// Output directory [default: data/cifar-10-batches-bin, which the default search finds].
        #[arg(long, value_name = "DIR", default_value = "data/cifar-10-batches-bin")]
        out: PathBuf,
    },
    /// Download an official dataset (size and md5 checked, resumable) and make it loadable:
    /// cifar10 (170 MB), cifar100 (169 MB), mnist (11 MB) or fashion-mnist (30 MB).
    Download {
        /// The dataset: cifar10, cifar100, mnist or fashion-mnist.
        #[arg(default_value = "cifar10", value_parser = parse_official)]
        name: lamb_data::OfficialData,
        /// Directory to download into; the data lands in DIR/cifar-10-batches-bin,
        /// DIR/cifar-100-binary, DIR/mnist or DIR/fashion-mnist.
        #[arg(long, value_name = "DIR", default_value = "data")]
        out: PathBuf,
        /// Developer option: fetch the files from this base URL instead (a mirror holding the
        /// same file names; the published sizes and md5s still apply).
        #[arg(long, hide = true, value_name = "URL")]
        mirror: Option<String>,
        /// Developer option: another URL of an archive of the CIFAR-10 layout.
        #[arg(long, hide = true, conflicts_with = "mirror")]
        url: Option<String>,
        /// Developer option: its size in bytes (with --url).
        #[arg(long, hide = true, requires = "url")]
        size: Option<u64>,
        /// Developer option: its md5 (with --url).
        #[arg(long, hide = true, requires = "url")]
        md5: Option<String>,
        /// No progress bar.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Where the data is found and what it holds: image size, channels, images per class,
    /// per-channel mean and standard deviation (pixels scaled to [0, 1]), fingerprint.
    Info {
        /// Data path [default: the default search].
        #[arg(long, value_name = "PATH")]
        data: Option<PathBuf>,
        /// Resize every image to HEIGHTxWIDTH (bilinear) [default: all images one size].
        #[arg(long, value_name = "HxW")]
        resize: Option<lamb_data::Resize>,
        /// CIFAR-100's labels: fine (100 classes) or coarse (20).
        #[arg(long, default_value = "fine")]
        labels: lamb_data::Cifar100Labels,
    },
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Training batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100, 1000])]
    batch_sizes: Vec<usize>,
    /// Epochs measured per batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Training images per epoch (50,000 as in CIFAR-10).
    #[arg(long, default_value_t = 50_000)]
    train_images: usize,
    /// Validation images per epoch.
    #[arg(long, default_value_t = 10_000)]
    val_images: usize,
    /// Engine threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Model of the engine benchmark: seed-cnn, resnet20 or a Keras model JSON file (32x32x3
    /// inputs) [default: seed-cnn].
    #[arg(long, value_name = "NAME|FILE")]
    model: Option<String>,
    /// What to measure: the engine's epochs, the optimizers' steps, or both.
    #[arg(long, value_enum, default_value_t = BenchWhat::All)]
    what: BenchWhat,
    /// Timed optimizer steps per optimizer and tensor set (with --torch: per block on the
    /// BERT-base set).
    #[arg(long, default_value_t = 7)]
    optimizer_steps: usize,
    /// Compare the optimizer steps with PyTorch's fused Adam and AdamW, run by this Python
    /// interpreter (it needs torch): blocks of their steps alternate with ours, and each of
    /// ours is printed as a ratio to theirs, with the bytes per parameter our passes move.
    #[arg(long, value_name = "PYTHON")]
    torch: Option<PathBuf>,
    /// Alternating pairs of blocks per optimizer with --torch (at least 5).
    #[arg(long, default_value_t = 5, requires = "torch")]
    pairs: usize,
}

/// Parts of `lamb bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchWhat {
    /// Engine and optimizers.
    All,
    /// Seconds per epoch of the engine (synthetic data, the seed CNN).
    Engine,
    /// Step time of every optimizer on the seed CNN and BERT-base tensor sets.
    Optimizers,
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("configuring the thread pool")?;
    }
    Ok(())
}

/// The signals that stop a run like Ctrl-C: SIGINT, SIGTERM (`kill`) and SIGHUP (a closed
/// terminal or ssh session).
pub(crate) const STOP_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

/// True while the process only reads (data loading): a stop signal then ends it at once, since
/// there is nothing to save.
static LOADING: AtomicBool = AtomicBool::new(false);

/// A flag that a stop signal sets (the run then stops at the next step boundary and
/// checkpoints); a second signal exits at once, and a signal during data loading (see
/// [`loading`]) exits at once with a message. Exit status 130 in every case.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::SIGUSR1;
    let stop = Arc::new(AtomicBool::new(false));
    // SIGUSR1 asks for a graceful stop only, however often it comes: `lamb train --workers N`
    // (and `kill -USR1 <mpirun>`) stops the ranks with it through mpirun, and a sweep's child
    // gets it when the sweep dies.
    for sig in STOP_SIGNALS.into_iter().chain([SIGUSR1]) {
        // SAFETY: the action only loads an atomic, writes a constant message with write(2) and
        // calls _exit(2), all async-signal-safe.
        unsafe {
            signal_hook::low_level::register(sig, || {
                if LOADING.load(Ordering::SeqCst) {
                    let msg = b"\nInterrupted while loading data; nothing was written.\n";
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    libc::_exit(EXIT_INTERRUPTED as i32);
                }
            })
        }
        .context("installing the Ctrl-C handler")?;
        if sig != SIGUSR1 {
            signal_hook::flag::register_conditional_shutdown(
                sig,
                EXIT_INTERRUPTED as i32,
                stop.clone(),
            )
            .context("installing the Ctrl-C handler")?;
        }
        signal_hook::flag::register(sig, stop.clone()).context("installing the Ctrl-C handler")?;
    }
    Ok(stop)
}

/// Runs `load` (reading data) in the phase where a stop signal ends the process at once.
pub(crate) fn loading<T>(load: impl FnOnce() -> Result<T>) -> Result<T> {
    LOADING.store(true, Ordering::SeqCst);
    testhooks::at_load();
    let r = load();
    LOADING.store(false, Ordering::SeqCst);
    r
}

/// Checks that `lamb train ARGS` (without the program name) would accept its settings, without
/// starting anything: a sweep checks every run of its grid this way before it starts any.
pub(crate) fn check_train_args(args: &[String]) -> Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("lamb".to_string()).chain(args.iter().cloned()))
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
    let Command::Train(a) = cli.command else {
        bail!("not a `lamb train` command");
    };
    let settings = match &a.config {
        Some(file) => Settings::from_file(file)?.overridden_by(&a.settings),
        None => a.settings.clone(),
    };
    settings.resolve("train")?.check_initial_weights()
}

/// Flags that may change when resuming (they do not change the numbers).
fn resume_settings(dir: &Path, flags: &Settings) -> Result<Settings> {
    let path = dir.join("config.toml");
    match lamb_run::rundir::inspect(dir).with_context(|| format!("reading {}", dir.display()))? {
        lamb_run::DirState::Empty => bail!(
            "{} holds no run: there is nothing to resume; start one with `lamb train --out {}`",
            dir.display(),
            dir.display()
        ),
        lamb_run::DirState::NotARun(entries) => bail!(
            "{} is not a lamb run directory (it holds {}, but no checkpoint or {}); give \
             --resume a directory that `lamb train --out DIR` wrote",
            dir.display(),
            entries.join(", "),
            lamb_run::rundir::MARKER
        ),
        _ if !path.is_file() => bail!(
            "{} has no config.toml, which every run writes when it starts: the run directory \
             is damaged; start a new run with `lamb train --out DIR`",
            dir.display()
        ),
        _ => {}
    }
    let recorded = Settings::from_file(&path)?;
    let fixed = [
        ("out", flags.out.is_some()),
        ("seed", flags.seed.is_some()),
        ("batch-size", flags.batch_size.is_some()),
        ("optimizer", flags.optimizer.is_some()),
        ("preset", flags.preset.is_some()),
        ("lr", flags.lr.is_some()),
        ("beta1", flags.beta1.is_some()),
        ("beta2", flags.beta2.is_some()),
        ("epsilon", flags.epsilon.is_some()),
        ("weight-decay", flags.weight_decay.is_some()),
        ("momentum", flags.momentum.is_some()),
        ("hyper", !flags.hyper.is_empty()),
        ("activation", flags.activation.is_some()),
        ("schedule", flags.schedule.is_some()),
        ("warmup-epochs", flags.warmup_epochs.is_some()),
        ("decay-power", flags.decay_power.is_some()),
        ("limit-train", flags.limit_train.is_some()),
        ("limit-test", flags.limit_test.is_some()),
        ("resize", flags.resize.is_some()),
        ("validation-split", flags.validation_split.is_some()),
        ("target-accuracy", flags.target_accuracy.is_some()),
        ("eval-every", flags.eval_every.is_some()),
        ("augment", flags.augment.is_some()),
        ("standardize", flags.standardize.is_some()),
        ("initial-weights", flags.initial_weights.is_some()),
        ("labels", flags.labels.is_some()),
    ];
    if let Some((k, _)) = fixed.iter().find(|(_, set)| *set) {
        bail!(
            "--{k} cannot change when resuming (the run continues with {}); only --epochs, --data, --threads, --workers, --accumulate, --quiet and --json may be given",
            path.display()
        );
    }
    let mut s = recorded.overridden_by(&Settings {
        epochs: flags.epochs,
        data: flags.data.clone(),
        threads: flags.threads,
        workers: flags.workers,
        accumulate: flags.accumulate,
        quiet: flags.quiet,
        json: flags.json,
        no_download: flags.no_download,
        ..Default::default()
    });
    s.out = Some(dir.to_path_buf());
    Ok(s)
}

/// `lamb train --workers N` outside `mpirun`: runs this same command as N ranks under `mpirun`
/// (without `--workers`) and waits for them. Ctrl-C stops the ranks gracefully (SIGUSR1 through
/// mpirun: they checkpoint); a second Ctrl-C ends them at once.
fn launch_workers(a: &TrainArgs, cfg: &RunConfig) -> Result<ExitCode> {
    let n = cfg.workers;
    if !lamb_dist::MPI_ENABLED {
        bail!(
            "--workers {n} needs MPI, which this build of lamb lacks: rebuild it with \
             `cargo build --release -p lamb --features mpi` (needs Open MPI and libclang, e.g. \
             apt-get install libopenmpi-dev openmpi-bin libclang-dev), or train in one process \
             with --workers 1"
        );
    }
    if a.resume.is_none() && run::holds_run(&cfg.out) {
        bail!(
            "{} already holds a run; continue it with `lamb train --resume {}` or choose another --out",
            cfg.out.display(),
            cfg.out.display()
        );
    }
    let all: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut args = lamb_dist::strip_option(&all, "--workers");
    if a.resume.is_none() && a.settings.out.is_none() {
        // The default directory name holds the time: give every rank the same one.
        args.push("--out".into());
        args.push(cfg.out.clone().into_os_string());
    }
    let mut launch = lamb_dist::Launch::new(n);
    launch.threads_per_worker = cfg.threads;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in STOP_SIGNALS {
        signal_hook::flag::register(sig, stop.clone()).context("installing the Ctrl-C handler")?;
    }
    let status = launch.run_current_exe(&args, Some(&stop))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

fn cmd_train(a: &TrainArgs) -> Result<ExitCode> {
    tensorboard::configure(&a.tb)?;
    let settings = match (&a.resume, &a.config) {
        (Some(dir), _) => resume_settings(dir, &a.settings)?,
        (None, Some(file)) => Settings::from_file(file)?.overridden_by(&a.settings),
        (None, None) => a.settings.clone(),
    };
    let mut cfg = settings.resolve("train")?;
    if a.resume.is_none() {
        cfg.check_initial_weights()?;
    }
    let launched = lamb_dist::launched_by_mpirun();
    if cfg.workers > 1 && !launched {
        return launch_workers(a, &cfg);
    }
    let mut comm = lamb_dist::communicator_from_env(false)?;
    if launched {
        if let Some(w) = a.settings.workers.filter(|&w| w != comm.size()) {
            bail!(
                "--workers {w} differs from the {} rank(s) the MPI launcher started: start \
                 `mpirun -np {w} lamb train ...` or leave --workers out",
                comm.size()
            );
        }
        cfg.workers = comm.size();
        cfg.validate()?;
    }
    let result = train_ranks(a, &cfg, comm.as_mut());
    match result {
        Err(e) if comm.size() > 1 && run::is_start_failure(&e) && comm.rank() > 0 => {
            // Rank 0 prints why.
            Ok(ExitCode::FAILURE)
        }
        Err(e) if comm.size() > 1 && !run::is_start_failure(&e) => {
            // Only this rank failed: the others would wait for it forever.
            eprintln!("error (rank {} of {}): {e:#}", comm.rank(), comm.size());
            comm.abort(1);
            Err(e)
        }
        other => other,
    }
}

/// `lamb train` on this rank of `comm` (the only one in a single process).
fn train_ranks(a: &TrainArgs, cfg: &RunConfig, comm: &mut dyn Communicator) -> Result<ExitCode> {
    set_threads(cfg.threads)?;
    let stop = stop_flag()?;
    let data = loading(|| {
        run::load_data(
            cfg.data.as_deref(),
            &cfg.load,
            cfg.download,
            cfg.limit_train,
            cfg.limit_test,
        )
    })?;
    let data = match cfg.validation_split {
        Some(f) => run::hold_out(data, f, cfg.seed)?,
        None => data,
    };
    let r = run::train_with(cfg, &data, a.resume.is_some(), "", stop, comm)?;
    if comm.rank() > 0 {
        return Ok(match r.end {
            RunEnd::Completed => ExitCode::SUCCESS,
            RunEnd::Interrupted { .. } => ExitCode::from(EXIT_INTERRUPTED),
        });
    }
    match r.end {
        RunEnd::Completed => {
            let name = run::display_name(cfg);
            if cfg.json {
                let s = report::RunStats::from_history(&r.history);
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "summary",
                        "run_dir": r.dir,
                        "epochs": r.history.epochs.len(),
                        "final_val_accuracy": s.as_ref().map(|s| s.final_val_accuracy),
                        "last5_val_accuracy": s.as_ref().map(|s| s.last5_val_accuracy),
                        "final_val_loss": s.as_ref().map(|s| s.final_val_loss),
                        "target": r.target,
                        "test_accuracy": r.test.map(|t| t.accuracy),
                        "test_loss": r.test.map(|t| t.loss),
                    })
                );
            } else {
                println!("{}", run::final_summary(&name, &r));
            }
            Ok(ExitCode::SUCCESS)
        }
        RunEnd::Interrupted { .. } => Ok(ExitCode::from(EXIT_INTERRUPTED)),
    }
}

fn cmd_evaluate(a: &EvaluateArgs) -> Result<ExitCode> {
    if a.batch_size == 0 {
        bail!("--batch-size 0: must be at least 1");
    }
    let activation = match a.activation {
        Some(x) => x,
        None => {
            let beside = a.weights.parent().map(|p| p.join("config.toml"));
            match beside.filter(|p| p.is_file()) {
                Some(p) => Settings::from_file(&p)?
                    .activation
                    .unwrap_or(ActivationKind::Relu),
                None => ActivationKind::Relu,
            }
        }
    };
    let (mut model, what) = models::for_weights(&a.weights, a.model.as_deref(), activation)?;
    model
        .load_safetensors(&a.weights)
        .with_context(|| format!("loading weights {} into {what}", a.weights.display()))?;
    let data = run::load_data(
        a.data.as_deref(),
        &lamb_data::LoadOptions::default(),
        false,
        Some(1),
        a.limit_test,
    )?;
    // A run trained with --standardize recorded its statistics beside its weights.
    if let Some(p) = run::recorded_standardization(&a.weights)? {
        let n = p.standardize.as_ref().map_or(0, |s| s.mean.len());
        if n != data.test.channels {
            bail!(
                "the run's standardization (input.json beside the weights) has {n} channels; \
                 the data has {}",
                data.test.channels
            );
        }
        model.set_input_pipeline(Some(p));
    }
    let ev = model.evaluate(&data.test, a.batch_size)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"weights": a.weights, "activation": activation.as_str(), "data": data.source,
                "images": ev.count, "correct": ev.correct, "accuracy": ev.accuracy, "loss": ev.loss})
        );
    } else {
        println!(
            "{} ({} hidden layers) on {} test images of {}: accuracy {:.4} ({} correct), loss {:.4}",
            a.weights.display(),
            activation,
            ev.count,
            data.source.display(),
            ev.accuracy,
            ev.correct,
            ev.loss
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_compare(a: &CompareArgs) -> Result<ExitCode> {
    tensorboard::configure(&a.tb)?;
    let file = match &a.config {
        Some(p) => CompareFile::from_file(p)?,
        None => CompareFile::default(),
    };
    let threads = a.settings.threads.or(file.common.threads);
    if let Some(0) = threads {
        bail!("`threads` = 0: must be between 1 and 1024");
    }
    set_threads(threads)?;
    let stop = stop_flag()?;
    let done = if a.fast {
        compare_fast::run_fast(&a.settings, stop)?
    } else {
        compare::compare(&file, &a.settings, stop)?
    };
    if done {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(EXIT_INTERRUPTED))
    }
}

fn cmd_data(c: &DataCommand) -> Result<ExitCode> {
    match c {
        DataCommand::Import { source, out } => {
            let s = lamb_data::import_archive(source, out)
                .with_context(|| format!("importing {}", source.display()))?;
            println!(
                "Imported {} training and {} test images ({} classes) into {}",
                s.train,
                s.test,
                s.class_names.len(),
                s.out_dir.display()
            );
        }
        DataCommand::Download {
            name,
            out,
            mirror,
            url,
            size,
            md5,
            quiet,
        } => {
            let dir = if let Some(u) = url {
                let mut spec = lamb_data::DownloadSpec::official();
                spec.url = u.clone();
                match (size, md5) {
                    (Some(s), Some(m)) => {
                        spec.size = *s;
                        spec.md5 = m.clone();
                    }
                    _ => bail!("--url needs --size and --md5 to verify the download"),
                }
                lamb_data::download_official(out, &spec, !quiet)
                    .with_context(|| format!("downloading {}", spec.url))?
            } else {
                lamb_data::download_dataset(*name, out, mirror.as_deref(), !quiet)
                    .with_context(|| format!("downloading {}", name.name()))?
            };
            println!("{} is ready in {}", name.name(), dir.display());
        }
        DataCommand::Info {
            data,
            resize,
            labels,
        } => {
            let source = lamb_data::locate_data(data.as_deref())?;
            let opts = lamb_data::LoadOptions {
                resize: *resize,
                cifar100_labels: *labels,
            };
            let splits = match lamb_data::default_cache_dir() {
                Some(cache) => lamb_data::load_cached_with(&source, &cache, &opts)?.splits,
                None => lamb_data::load_with(&source, &opts)?,
            };
            print!("{}", data_info(&source, &splits));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lamb data download`'s dataset argument.
fn parse_official(s: &str) -> Result<lamb_data::OfficialData, String> {
    s.parse()
}

/// The text of `lamb data info`: shape, classes with counts per split, per-channel statistics
/// of each split, and the fingerprint.
fn data_info(source: &Path, s: &lamb_data::Splits) -> String {
    use std::fmt::Write as _;
    let t = &s.train;
    let mut out = format!(
        "{}: {} training and {} test images of {}x{} pixels, {} channel(s), {} classes\n",
        source.display(),
        t.len(),
        s.test.len(),
        t.height,
        t.width,
        t.channels,
        t.class_names.len()
    );
    let (train_counts, test_counts) = (t.class_counts(), s.test.class_counts());
    let width = t
        .class_names
        .iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(out, "  {:<width$}  {:>8}  {:>8}", "class", "train", "test");
    for (k, name) in t.class_names.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<width$}  {:>8}  {:>8}",
            format!("{name:?}").trim_matches('"'),
            train_counts[k],
            test_counts[k]
        );
    }
    for (split, ds) in [("train", t), ("test", &s.test)] {
        let (mean, std) = ds.channel_stats();
        let f = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  {split} per-channel mean [{}], std [{}]",
            f(&mean),
            f(&std)
        );
    }
    let _ = writeln!(out, "  fingerprint {}", s.fingerprint());
    out
}

fn cmd_bench(a: &BenchArgs) -> Result<ExitCode> {
    // The same limits as `lamb train`, and images held in memory bounded (3 GB at 1,000,000).
    let range = |flag: &str, v: usize, max: usize| {
        if v == 0 || v > max {
            bail!("{flag} {v}: must be between 1 and {max}");
        }
        Ok(())
    };
    if a.batch_sizes.is_empty() {
        bail!("--batch-sizes: give at least one batch size");
    }
    range("--train-images", a.train_images, 1_000_000)?;
    range("--val-images", a.val_images, 1_000_000)?;
    for &b in &a.batch_sizes {
        range("--batch-sizes holds", b, a.train_images)
            .context("a batch is at most the training images (--train-images)")?;
    }
    range("--epochs", a.epochs, 100_000)?;
    range("--optimizer-steps", a.optimizer_steps, 100_000)?;
    if let Some(t) = a.threads {
        range("--threads", t, 1024)?;
    }
    if a.torch.is_some() && a.what == BenchWhat::Engine {
        bail!("--torch compares optimizer steps: use it with --what optimizers or --what all");
    }
    if !(5..=1000).contains(&a.pairs) {
        bail!("--pairs {}: must be between 5 and 1000", a.pairs);
    }
    set_threads(a.threads)?;
    // The torch peer starts (and proves it has torch) before anything is measured.
    let mut peer = match &a.torch {
        Some(python) => {
            let tools = Path::new("../shared/tools");
            let tools = tools.join("bert_shapes.py").is_file().then_some(tools);
            let peer = lamb_optim::bench::torch::TorchPeer::start(
                python,
                rayon::current_num_threads(),
                tools,
            )
            .context("--torch")?;
            Some(peer)
        }
        None => None,
    };
    if a.what != BenchWhat::Optimizers {
        let cfg = lamb_nn::bench::BenchConfig {
            batch_sizes: a.batch_sizes.clone(),
            epochs: a.epochs,
            train_images: a.train_images,
            val_images: a.val_images,
            model: match a.model.as_deref() {
                None | Some(config::SEED_CNN) => None,
                Some(m) => Some(lamb_nn::ModelSpec::named(m, "relu")?),
            },
            ..Default::default()
        };
        let results = lamb_nn::bench::run(&cfg)?;
        println!("{}", lamb_nn::bench::format_report(&cfg, &results));
    }
    if let Some(peer) = peer.as_mut() {
        let cfg = lamb_optim::bench::CompareConfig {
            pairs: a.pairs,
            steps: a.optimizer_steps,
            threads: rayon::current_num_threads(),
            ..Default::default()
        };
        println!("{}", lamb_optim::bench::run_comparison(&cfg, peer)?);
    } else if a.what != BenchWhat::Engine {
        let cfg = lamb_optim::bench::BenchConfig {
            steps: a.optimizer_steps,
            threads: rayon::current_num_threads(),
            ..Default::default()
        };
        println!("{}", lamb_optim::bench::run_step_benchmark(&cfg));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`lamb sweep --dry-run | head`) as Unix tools do, instead of
    // panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Evaluate(a) => cmd_evaluate(a),
        Command::Compare(a) => cmd_compare(a),
        Command::Data(c) => cmd_data(c),
        Command::Bench(a) => cmd_bench(a),
        Command::Sweep(a) => tensorboard::configure(&a.tb)
            .and_then(|()| sweep::run(a))
            .map(|done| {
                if done {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_INTERRUPTED)
                }
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let locked = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<lamb_run::LockError>(),
                    Some(lamb_run::LockError::Held { .. })
                )
            });
            if locked {
                ExitCode::from(lamb_run::lock::EXIT_LOCKED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
