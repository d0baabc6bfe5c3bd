//! One training run and its directory: data loading (with the developer limits), the model and
//! optimizer, the epoch loop with a checkpoint after every epoch and at a Ctrl-C stop, resume,
//! and the files of a run (config, history, plots, weights, summary).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lamb_data::{Dataset, Splits};
use lamb_dist::{Communicator, Parallel, SingleProcess};
use lamb_nn::{classic_cnn_for, Activation, FitEvent, FitOptions, FitProgress, History, Model};
use lamb_optim::Optimizer;

use lamb_run::rundir::{self, DirState, RunMarker};
use lamb_run::RunLock;

use crate::atomic::write_atomic;
use crate::checkpoint::{self, Checkpoint};
use crate::config::{ActivationKind, RunConfig};
use crate::progress::{Mode, Progress};
use crate::report::{write_history, write_run_plots, RunStats};

/// Validation batch size (forward only; does not change results beyond summation order).
pub const VAL_BATCH: usize = 1000;

/// Training and validation data of a run, and where they came from.
pub struct RunData {
    /// The resolved data path.
    pub source: PathBuf,
    /// Training images (after `--limit-train`, without the held-out part).
    pub train: Dataset,
    /// The validation data: the test images (after `--limit-test`), or with
    /// `--validation-split` the held-out part of the training images.
    pub test: Dataset,
    /// With `--validation-split`: the test images, evaluated once at the end, and the indices
    /// (into the training split after `--limit-train`) that were held out.
    pub held_out: Option<HeldOut>,
}

/// The test split of a run that validates on part of its training data.
pub struct HeldOut {
    /// The test images (after `--limit-test`).
    pub test: Dataset,
    /// The fraction held out.
    pub fraction: f64,
    /// The held-out indices, sorted.
    pub indices: Vec<usize>,
}

/// Holds out `fraction` of `data`'s training images (seeded by `seed`, stratified by class) as
/// its validation data; the test images are kept apart for one evaluation at the end.
pub fn hold_out(data: RunData, fraction: f64, seed: u64) -> Result<RunData> {
    let (keep, held) = lamb_data::stratified_split(&data.train.labels, fraction, seed)
        .map_err(|e| anyhow::anyhow!("--validation-split {fraction}: {e}"))?;
    Ok(RunData {
        source: data.source,
        train: data.train.subset(&keep),
        test: data.train.subset(&held),
        held_out: Some(HeldOut {
            test: data.test,
            fraction,
            indices: held,
        }),
    })
}

/// The file recording a run's held-out validation indices.
pub const VALIDATION_FILE: &str = "validation_split.json";

/// The file recording a run's input pipeline (augmentation, standardization statistics).
pub const INPUT_FILE: &str = "input.json";

/// The run's input pipeline (`--augment`, `--standardize`), or `None` for the classic plain
/// 1/255 scaling. Standardization statistics come from the training images only.
pub fn input_pipeline(cfg: &RunConfig, data: &RunData) -> Option<lamb_data::InputPipeline> {
    (cfg.standardize || cfg.augment.is_active()).then(|| lamb_data::InputPipeline {
        standardize: cfg
            .standardize
            .then(|| lamb_data::Standardize::from_dataset(&data.train)),
        augment: cfg.augment,
        seed: cfg.seed,
    })
}

/// The standardization a run recorded in its [`INPUT_FILE`] beside `weights` (as an evaluation
/// pipeline), or `None` when there is no such file or the run did not standardize.
pub fn recorded_standardization(weights: &Path) -> Result<Option<lamb_data::InputPipeline>> {
    let Some(path) = weights.parent().map(|d| d.join(INPUT_FILE)) else {
        return Ok(None);
    };
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = lamb_data::read_capped(&path, 1 << 20)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let st = &v["standardize"];
    if st.is_null() {
        return Ok(None);
    }
    let floats = |k: &str| -> Result<Vec<f32>> {
        st[k]
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect())
            .with_context(|| {
                format!(
                    "{}: `standardize.{k}` is not a list of numbers",
                    path.display()
                )
            })
    };
    let (mean, std) = (floats("mean")?, floats("std")?);
    if mean.len() != std.len()
        || mean.is_empty()
        || !mean.iter().all(|m| m.is_finite())
        || !std.iter().all(|d| d.is_finite() && *d > 0.0)
    {
        bail!(
            "{}: `standardize` needs one finite mean and one positive standard deviation per \
             channel (found {} and {})",
            path.display(),
            mean.len(),
            std.len()
        );
    }
    Ok(Some(lamb_data::InputPipeline {
        standardize: Some(lamb_data::Standardize { mean, std }),
        augment: lamb_data::Augment::default(),
        seed: 0,
    }))
}

/// The file recording whether and when a run reached its `--target-accuracy`.
pub const TARGET_FILE: &str = "target.json";

/// Where a run first reached its target validation accuracy (or that it did not).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TargetResult {
    /// The target validation accuracy.
    pub target_accuracy: f64,
    /// Whether some epoch reached it.
    pub reached: bool,
    /// The epoch (from 1) in which the validation accuracy first reached it (with
    /// `--eval-every`, possibly before the epoch's end).
    pub epoch: Option<usize>,
    /// Training steps done by then.
    pub step: Option<usize>,
    /// Training images seen by then.
    pub images_seen: Option<usize>,
    /// Epochs of training by then (images seen / training images).
    pub epochs: Option<f64>,
    /// Seconds of training and validation by then (the epochs' recorded times, so a resumed run
    /// counts the same; data loading excluded).
    pub seconds: Option<f64>,
    /// The validation accuracy of that epoch.
    pub val_accuracy: Option<f64>,
}

impl TargetResult {
    /// The first validation pass of `history` whose accuracy reaches `target` (every pass of
    /// `--eval-every` when the run recorded them, else the epoch ends), for a run of
    /// `train_len` images in batches of `batch_size`.
    pub fn find(history: &History, target: f64, train_len: usize, batch_size: usize) -> Self {
        if let Some(r) = history.evals.iter().find(|r| r.val_accuracy >= target) {
            return TargetResult {
                target_accuracy: target,
                reached: true,
                epoch: Some(r.epoch),
                step: Some(r.global_step),
                images_seen: Some(r.images_seen as usize),
                epochs: Some(r.images_seen as f64 / train_len.max(1) as f64),
                seconds: Some(r.elapsed_seconds),
                val_accuracy: Some(r.val_accuracy),
            };
        }
        let steps = train_len.div_ceil(batch_size.max(1));
        let mut seconds = 0.0;
        for r in &history.epochs {
            seconds += r.train_seconds + r.val_seconds;
            if let Some(acc) = r.val_accuracy.filter(|&a| a >= target) {
                return TargetResult {
                    target_accuracy: target,
                    reached: true,
                    epoch: Some(r.epoch),
                    step: Some(r.epoch * steps),
                    images_seen: Some(r.epoch * train_len),
                    epochs: Some(r.epoch as f64),
                    seconds: Some(seconds),
                    val_accuracy: Some(acc),
                };
            }
        }
        TargetResult {
            target_accuracy: target,
            reached: false,
            epoch: None,
            step: None,
            images_seen: None,
            epochs: None,
            seconds: None,
            val_accuracy: None,
        }
    }

    /// One line for the summary and the final message.
    pub fn describe(&self) -> String {
        match (self.epoch, self.step, self.images_seen, self.seconds) {
            (Some(e), Some(st), Some(n), Some(sec)) => format!(
                "reached the target validation accuracy {} at epoch {e} (step {st}, {n} images \
                 seen, {sec:.1} s of training and validation)",
                self.target_accuracy
            ),
            _ => format!(
                "did not reach the target validation accuracy {}",
                self.target_accuracy
            ),
        }
    }
}

/// Test accuracy and loss of a run that validated on held-out training images, evaluated once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestResult {
    /// Fraction of the test images classified correctly.
    pub accuracy: f64,
    /// Mean loss over the test images.
    pub loss: f64,
    /// Test images.
    pub images: usize,
}

impl RunData {
    /// A hash of what a run trains and validates on (shape, class names, labels and pixels of
    /// both splits, after the limits): the same data at another path has the same fingerprint.
    pub fn fingerprint(&self) -> String {
        let base = Splits::fingerprint_of(&self.train, &self.test);
        match &self.held_out {
            None => base,
            // The held-out test set is part of what the run uses too.
            Some(h) => format!("{base}+{}", h.test.fingerprint()),
        }
    }
}

/// `n` indices spread evenly over `0..len` (`i * len / n`), in order: a subset that keeps the
/// class balance of data stored class after class.
pub fn spread(len: usize, n: usize) -> Vec<usize> {
    (0..n.min(len))
        .map(|i| i * len / n.min(len).max(1))
        .collect()
}

/// Finds and loads the data (`explicit` or the default search; when nothing is found and
/// `download` is set, the official CIFAR-10 release is downloaded into `./data` first), read
/// with `load` (resize, CIFAR-100 labels) through the import cache for archives, keeping
/// `limit_train` / `limit_test` images spread evenly over each split when given (see
/// [`spread`]).
pub fn load_data(
    explicit: Option<&Path>,
    load: &lamb_data::LoadOptions,
    download: bool,
    limit_train: Option<usize>,
    limit_test: Option<usize>,
) -> Result<RunData> {
    let source = locate_data(explicit, download)?;
    let splits = match lamb_data::default_cache_dir() {
        Some(cache) => lamb_data::load_cached_with(&source, &cache, load).map(|l| l.splits),
        None => lamb_data::load_with(&source, load),
    }
    .with_context(|| format!("loading data from {}", source.display()))?;
    let Splits { train, test } = splits;
    let limit = |d: Dataset, n: Option<usize>| match n {
        Some(n) if n < d.len() => d.subset(&spread(d.len(), n)),
        _ => d,
    };
    Ok(RunData {
        source,
        train: limit(train, limit_train),
        test: limit(test, limit_test),
        held_out: None,
    })
}

/// Where the data is (`explicit` or the default search); when nothing is found and `download`
/// is set, the official CIFAR-10 release is downloaded into `./data` first.
pub fn locate_data(explicit: Option<&Path>, download: bool) -> Result<PathBuf> {
    let auto = download.then(|| lamb_data::AutoDownload::official("data"));
    lamb_data::locate_or_download(explicit, auto.as_ref()).map_err(|e| match e {
        lamb_data::DataError::NoData { searched } => {
            anyhow::anyhow!("{}", lamb_data::no_data_help(&searched))
        }
        other => anyhow::Error::new(other),
    })
}

/// The engine activation of a config activation.
pub fn activation(a: ActivationKind) -> Activation {
    match a {
        ActivationKind::Relu => Activation::Relu,
        ActivationKind::Selu => Activation::Selu,
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Every epoch ran.
    Completed,
    /// Stopped by Ctrl-C at this position (epoch index 0-based, steps done in it).
    Interrupted {
        /// Completed epochs.
        epoch: usize,
        /// Steps done in the interrupted epoch.
        step: usize,
    },
}

/// The result of [`train`].
pub struct RunResult {
    /// How it ended.
    pub end: RunEnd,
    /// Completed epochs.
    pub history: History,
    /// The run directory.
    pub dir: PathBuf,
    /// With `--validation-split`, the test set's result (evaluated once, when the run completes).
    pub test: Option<TestResult>,
    /// With `--target-accuracy`, where it was reached.
    pub target: Option<TargetResult>,
}

/// Display name of a run (`LAMB + ReLU`).
pub fn display_name(cfg: &RunConfig) -> String {
    format!(
        "{} + {}",
        cfg.optimizer
            .as_str()
            .to_uppercase()
            .replace("ADAMW", "AdamW")
            .replace("ADAM", "Adam"),
        match (cfg.model.as_str(), cfg.activation) {
            (crate::config::SEED_CNN, ActivationKind::Relu) => "ReLU".to_string(),
            (crate::config::SEED_CNN, ActivationKind::Selu) => "SELU".to_string(),
            // A model file by its name without the directory and `.json`.
            (m, _) => Path::new(m)
                .file_stem()
                .map_or(m.to_string(), |s| s.to_string_lossy().into_owned()),
        }
    )
}

/// Whether `dir` holds a run that can be resumed (it has a checkpoint).
pub fn holds_run(dir: &Path) -> bool {
    matches!(rundir::inspect(dir), Ok(DirState::Resumable))
}

/// Status line of `summary.md`.
enum Status<'a> {
    Running,
    Completed,
    Interrupted(usize, usize, usize),
    Failed(&'a str),
}

struct SummaryInput<'a> {
    cfg: &'a RunConfig,
    name: &'a str,
    data: &'a RunData,
    model: &'a Model,
    history: &'a History,
    status: Status<'a>,
    /// Ranks x threads and accumulation, in words.
    parallel: &'a str,
    wall_seconds: f64,
    /// The test set's result when the run validated on held-out training images.
    test: Option<TestResult>,
    /// Where the target accuracy was reached.
    target: Option<TargetResult>,
}

fn summary_markdown(s: &SummaryInput<'_>) -> String {
    let cfg = s.cfg;
    let mut md = String::new();
    let _ = writeln!(md, "# {} on CIFAR-10\n", s.name);
    let dir = cfg.out.display();
    let status = match s.status {
        Status::Running => "RUNNING (or stopped abruptly): results below are partial".to_string(),
        Status::Completed => "completed".to_string(),
        Status::Interrupted(e, st, steps) => format!(
            "INTERRUPTED at epoch {}, step {st}/{steps}: results below are partial. Resume with \
             `lamb train --resume {dir}`",
            e + 1
        ),
        Status::Failed(msg) if !cfg.out.join(checkpoint::FILE).is_file() => format!(
            "FAILED: {msg}. It failed before its first checkpoint: there is nothing to resume"
        ),
        Status::Failed(msg) => format!(
            "FAILED: {msg}. Results below are partial; the last good checkpoint is kept in \
             {dir}/checkpoint"
        ),
    };
    let _ = writeln!(md, "**Status:** {status}\n");
    let opt_line = cfg.optimizer_line();
    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(md, "- optimizer: {opt_line}");
    if cfg.model == crate::config::SEED_CNN {
        let _ = writeln!(md, "- hidden activation: {}", cfg.activation);
    } else {
        let _ = writeln!(md, "- model: {}", cfg.model);
    }
    let _ = writeln!(
        md,
        "- epochs: {}, batch size: {}, seed: {}",
        cfg.epochs, cfg.batch_size, cfg.seed
    );
    let limited = if cfg.limit_train.is_some() || cfg.limit_test.is_some() {
        "; limited with --limit-train/--limit-test"
    } else {
        ""
    };
    let validation = match &s.data.held_out {
        None => {
            let _ = writeln!(
                md,
                "- data: {} ({} training images, {} test images used as validation data{limited})",
                s.data.source.display(),
                s.data.train.len(),
                s.data.test.len(),
            );
            "test set".to_string()
        }
        Some(h) => {
            let _ = writeln!(
                md,
                "- data: {} ({} training images; {} held out as validation data ({}, seeded and \
                 stratified: `{VALIDATION_FILE}`); {} test images evaluated once at the end{limited})",
                s.data.source.display(),
                s.data.train.len(),
                s.data.test.len(),
                h.fraction,
                h.test.len(),
            );
            format!("{} of the training images, held out", h.fraction)
        }
    };
    let _ = writeln!(md, "- ranks x threads: {}", s.parallel);
    let _ = writeln!(md, "- full configuration: `config.toml`\n");
    let _ = writeln!(md, "## Results (validation = {validation})\n");
    if let Some(t) = s.target {
        let _ = writeln!(md, "Target: {} (`{TARGET_FILE}`)\n", t.describe());
    }
    if let Some(t) = s.test {
        let _ = writeln!(
            md,
            "Test set (evaluated once, after the last epoch): accuracy {:.4}, loss {:.4} on {} \
             images\n",
            t.accuracy, t.loss, t.images
        );
    }
    match RunStats::from_history(s.history) {
        Some(st) => {
            let _ = writeln!(md, "| | value |\n|---|---|");
            let _ = writeln!(md, "| epochs completed | {} |", st.epochs);
            let _ = writeln!(md, "| final val accuracy | {:.4} |", st.final_val_accuracy);
            let _ = writeln!(
                md,
                "| best val accuracy (epoch) | {:.4} ({}) |",
                st.best_val_accuracy.0, st.best_val_accuracy.1
            );
            let _ = writeln!(
                md,
                "| mean val accuracy, last 5 epochs | {:.4} |",
                st.last5_val_accuracy
            );
            let _ = writeln!(md, "| final val loss | {:.4} |", st.final_val_loss);
            let _ = writeln!(
                md,
                "| min val loss (epoch) | {:.4} ({}) |",
                st.min_val_loss.0, st.min_val_loss.1
            );
            let _ = writeln!(
                md,
                "| final train accuracy | {:.4} |",
                st.final_train_accuracy
            );
            let _ = writeln!(md, "| final train loss | {:.4} |", st.final_train_loss);
            let _ = writeln!(
                md,
                "| median seconds per epoch | {:.2} |",
                st.median_epoch_seconds
            );
            let _ = writeln!(
                md,
                "| wall-clock seconds (this process) | {:.1} |",
                s.wall_seconds
            );
        }
        None => {
            let _ = writeln!(md, "No epoch completed.");
        }
    }
    let _ = writeln!(md, "\n## Files\n");
    let _ = writeln!(
        md,
        "- `history.csv`, `history.json`: per-epoch metrics (JSON adds per-tensor trust ratios)"
    );
    let _ = writeln!(md, "- `plots/accuracy.{{png,svg}}`, `plots/loss.{{png,svg}}`: train (dashed) and test (solid) curves");
    if cfg.optimizer.has_trust_ratio() {
        let _ = writeln!(
            md,
            "- `plots/trust_ratio.{{png,svg}}`: mean trust ratio per tensor and epoch"
        );
    }
    if matches!(s.status, Status::Completed) {
        let _ = writeln!(
            md,
            "- `weights.safetensors`: the trained weights (Keras names and layouts)"
        );
    }
    let _ = writeln!(
        md,
        "- `checkpoint/checkpoint.safetensors`: everything needed to resume"
    );
    let _ = writeln!(
        md,
        "\n## Model\n\n```\n{}\n```",
        s.model.summary().trim_end()
    );
    md
}

fn write_summary(s: &SummaryInput<'_>) -> Result<()> {
    write_atomic(
        &s.cfg.out.join("summary.md"),
        summary_markdown(s).as_bytes(),
    )
}

/// An error that every rank of a multi-rank run reached together (rank 0 could not start the
/// run: the directory already holds one, the checkpoint does not fit, ...): the ranks can exit
/// normally instead of aborting the job.
#[derive(Debug, thiserror::Error)]
#[error("rank 0 could not start the run")]
pub struct StartFailed;

/// Whether `e` is a [`StartFailed`] error (every rank knows of it).
pub fn is_start_failure(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StartFailed>().is_some()
}

/// Trains one run into `cfg.out` in this process (see [`train_with`]).
pub fn train(
    cfg: &RunConfig,
    data: &RunData,
    resume: bool,
    tag: &str,
    stop: Arc<AtomicBool>,
) -> Result<RunResult> {
    train_with(cfg, data, resume, tag, stop, &mut SingleProcess::new())
}

/// Rank 0's part of starting a run: lock the directory (held until the run ends), check what
/// it holds, remove temporary files a kill left, record or check the data, and on `resume`
/// read the checkpoint into `model`, `opt` and `progress`. A run that stopped before its first
/// checkpoint starts again from the beginning, whether asked to resume or to start.
#[allow(clippy::too_many_arguments)]
fn start_run(
    dir: &Path,
    ck_path: &Path,
    key: &str,
    resume: bool,
    data: &RunData,
    model: &mut Model,
    opt: &mut dyn Optimizer,
    progress: &mut FitProgress,
    out: &Progress,
    name: &str,
) -> Result<(RunLock, bool)> {
    let lock = RunLock::acquire(dir)?;
    let state = rundir::inspect(dir).with_context(|| format!("reading {}", dir.display()))?;
    let resume = match state {
        DirState::Empty if resume => bail!(
            "{} holds no run: there is nothing to resume; start one with `lamb train --out {}`",
            dir.display(),
            dir.display()
        ),
        DirState::Empty => false,
        DirState::NotARun(entries) => bail!(
            "{} is not empty and is not a lamb run directory (it holds {}); give --out a new or \
             empty directory",
            dir.display(),
            entries.join(", ")
        ),
        DirState::NotCheckpointed => {
            out.warn(&format!(
                "{} holds a run that stopped before its first checkpoint (nothing to resume): \
                 starting it again from the beginning",
                dir.display()
            ));
            false
        }
        DirState::Resumable if !resume => bail!(
            "{} already holds a run; continue it with `lamb train --resume {}` or choose another --out",
            dir.display(),
            dir.display()
        ),
        DirState::Resumable => true,
    };
    let removed = rundir::remove_stale_temporaries(dir)
        .with_context(|| format!("removing temporary files in {}", dir.display()))?;
    if !removed.is_empty() {
        out.warn(&format!(
            "Removed {} temporary file(s) left by an earlier stop: {}",
            removed.len(),
            removed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let fingerprint = data.fingerprint();
    if resume {
        if let Some(m) = RunMarker::read(dir)? {
            if m.data_fingerprint != fingerprint {
                bail!(
                    "{} was trained on other data: it recorded {} (fingerprint {}), this command \
                     loaded {} (fingerprint {}); resume it with the data it started with \
                     (--data {})",
                    dir.display(),
                    m.data_source.display(),
                    m.data_fingerprint,
                    data.source.display(),
                    fingerprint,
                    m.data_source.display()
                );
            }
        }
        let ck = Checkpoint::load(ck_path)?;
        ck.restore(ck_path, model, opt, key)?;
        *progress = ck.progress;
        out.info(&format!(
            "Resuming {} from {} (epoch {}, step {})",
            name,
            ck_path.display(),
            progress.epoch + 1,
            progress.step
        ));
    }
    RunMarker::new(&data.source, &fingerprint).write(dir)?;
    Ok((lock, resume))
}

/// Trains one run into `cfg.out` over the ranks of `comm` (every rank calls it with the same
/// config and data; [`lamb_dist::SingleProcess`] for one process), each rank computing its
/// share of every batch in `cfg.accumulate` micro-batches. Only rank 0 checks and writes the
/// run directory and prints progress; the others only compute. With `resume`, rank 0 reads the
/// directory's checkpoint (the config must be the one the directory recorded, except `epochs`,
/// `threads`, `workers` and `accumulate`) and broadcasts weights, optimizer state and position
/// to the others. Stops between steps when `stop` becomes true on any rank, writing a
/// checkpoint of that point.
pub fn train_with(
    cfg: &RunConfig,
    data: &RunData,
    resume: bool,
    tag: &str,
    stop: Arc<AtomicBool>,
    comm: &mut dyn Communicator,
) -> Result<RunResult> {
    let started = Instant::now();
    let dir = cfg.out.clone();
    let name = display_name(cfg);
    let key = cfg.training_key();
    let root = comm.rank() == 0;
    let mode = if root {
        Mode::from_flags(cfg.quiet, cfg.json)
    } else {
        Mode::Quiet
    };
    let mut out = Progress::new(mode, tag, cfg.epochs);
    // The seed CNN for the data's image shape and class count (32x32x3 and 10 for CIFAR-10);
    // another model as described (its input and classes must fit the data).
    let t = &data.train;
    let mut model = if cfg.model == crate::config::SEED_CNN {
        classic_cnn_for(
            [t.height, t.width, t.channels],
            t.class_names.len(),
            activation(cfg.activation),
            cfg.seed,
        )
        .with_context(|| {
            format!(
                "building the seed CNN for {}x{}x{} images and {} classes",
                t.height,
                t.width,
                t.channels,
                t.class_names.len()
            )
        })?
    } else {
        crate::models::build(&cfg.model, cfg.activation, cfg.seed)?
    };
    if let (Some(p), false) = (&cfg.initial_weights, resume) {
        // Before anything is created: a file that does not fit the model is refused here. A
        // resumed run takes every weight from its checkpoint instead.
        model
            .load_safetensors(p)
            .with_context(|| format!("loading --initial-weights {}", p.display()))?;
    }
    let input = input_pipeline(cfg, data);
    model.set_input_pipeline(input.clone());
    let mut opt = cfg.build_optimizer(data.train.len())?;
    let ck_path = dir.join(checkpoint::FILE);
    let mut progress = FitProgress::default();
    let mut tb = None;
    let setup = if root {
        start_run(
            &dir,
            &ck_path,
            &key,
            resume,
            data,
            &mut model,
            opt.as_mut(),
            &mut progress,
            &out,
            &name,
        )
        .and_then(|(lock, resumed)| {
            if progress.epoch > cfg.epochs {
                bail!(
                    "--epochs {} is below the {} epochs {} has already completed; give --epochs {} \
                     or more to continue it",
                    cfg.epochs,
                    progress.epoch,
                    dir.display(),
                    progress.epoch
                );
            }
            Ok((Some(lock), resumed))
        })
        .and_then(|started| {
            // TensorBoard event files (rank 0; `None` under --no-tensorboard).
            let steps = data.train.len().div_ceil(cfg.batch_size);
            let trust = cfg.optimizer.has_trust_ratio();
            tb = crate::tensorboard::TbRun::open(&dir, &model, &progress, steps, trust)?;
            Ok(started)
        })
    } else {
        Ok((None, resume))
    };
    if comm.size() > 1 {
        // Every rank learns whether rank 0 could start, then gets its weights, optimizer
        // state and position (no shared file system needed).
        let mut failed = [f64::from(u8::from(setup.is_err()))];
        comm.all_reduce_sum_f64(&mut failed)?;
        if failed[0] > 0.0 {
            return Err(match setup {
                Err(e) => e.context(StartFailed),
                Ok(_) => anyhow::Error::new(StartFailed),
            });
        }
        if resume {
            lamb_dist::sync_from_root(&mut model, Some(opt.as_mut()), &mut progress, comm)?;
        }
    }
    // The lock is held until the run ends; a run that never reached a checkpoint starts fresh.
    let (_lock, resume) = setup?;
    let parallel = format!(
        "{} x {} ({}); accumulate: {} micro-batch{} per rank and step",
        comm.size(),
        rayon::current_num_threads(),
        comm.describe(),
        cfg.accumulate,
        if cfg.accumulate == 1 { "" } else { "es" }
    );
    let steps = data.train.len().div_ceil(cfg.batch_size);
    let test_result: std::cell::Cell<Option<TestResult>> = std::cell::Cell::new(None);
    let target_result: std::cell::Cell<Option<TargetResult>> = std::cell::Cell::new(None);
    let summary = |status: Status<'_>, model: &Model, history: &History| {
        write_summary(&SummaryInput {
            cfg,
            name: &name,
            data,
            model,
            history,
            status,
            parallel: &parallel,
            wall_seconds: started.elapsed().as_secs_f64(),
            test: test_result.get(),
            target: target_result.get(),
        })
    };
    if root {
        if let Some(h) = &data.held_out {
            let record = serde_json::json!({
                "fraction": h.fraction,
                "seed": cfg.seed,
                "stratified_by_class": true,
                "indices_into": "the training split (after --limit-train)",
                "validation_indices": h.indices,
            });
            write_atomic(
                &dir.join(VALIDATION_FILE),
                serde_json::to_string(&record)?.as_bytes(),
            )?;
        }
        if let Some(p) = &input {
            let record = serde_json::json!({
                "augment": p.augment.to_string(),
                "standardize": p.standardize.as_ref().map(|st| serde_json::json!({
                    "computed_on": "the training images (after --limit-train and --validation-split)",
                    "mean": st.mean,
                    "std": st.std,
                })),
                "seed": p.seed,
            });
            write_atomic(
                &dir.join(INPUT_FILE),
                serde_json::to_string_pretty(&record)?.as_bytes(),
            )?;
        }
        let mut recorded = cfg.clone();
        recorded.data = Some(data.source.clone());
        recorded.workers = comm.size();
        write_atomic(&dir.join("config.toml"), recorded.to_toml()?.as_bytes())?;
        summary(Status::Running, &model, &progress.history)?;
    }
    if !resume {
        out.info(&format!(
            "{}: {} epochs, batch {}, seed {}; {} training images, {} test images (validation) from {}; run directory {}",
            name,
            cfg.epochs,
            cfg.batch_size,
            cfg.seed,
            data.train.len(),
            data.test.len(),
            data.source.display(),
            dir.display()
        ));
        if comm.size() > 1 || cfg.accumulate > 1 {
            out.info(&format!("Ranks x threads: {parallel}"));
        }
    }
    let reached = |history: &History| {
        cfg.target_accuracy
            .map(|a| TargetResult::find(history, a, data.train.len(), cfg.batch_size))
            .filter(|t| t.reached)
    };
    while progress.epoch < cfg.epochs && reached(&progress.history).is_none() {
        let mut opts = FitOptions::new(cfg.batch_size, progress.epoch + 1, cfg.seed);
        opts.val_batch_size = VAL_BATCH;
        opts.start = progress.clone();
        opts.stop = Some(stop.clone());
        opts.eval_every = cfg.eval_every;
        opts.target_accuracy = cfg.target_accuracy;
        let mut next: Option<FitProgress> = None;
        let mut stopped = false;
        let result = lamb_dist::fit(
            &mut model,
            &data.train,
            Some(&data.test),
            &opts,
            &mut Parallel {
                comm: &mut *comm,
                accumulate: cfg.accumulate,
            },
            opt.as_mut(),
            &mut |ev| {
                match ev {
                    FitEvent::Step {
                        epoch,
                        step,
                        steps_per_epoch,
                        running,
                        telemetry,
                        ..
                    } => {
                        if let Some(tb) = tb.as_mut() {
                            tb.step(*epoch, *step, *steps_per_epoch, *running, telemetry);
                        }
                        out.step(*epoch, *step, *steps_per_epoch, *running);
                        let global = (*epoch as u64 - 1) * *steps_per_epoch as u64 + *step as u64;
                        crate::testhooks::at_step(global, &stop);
                    }
                    FitEvent::EpochEnd { record, progress } => {
                        if let Some(tb) = tb.as_mut() {
                            tb.epoch_end(record);
                        }
                        out.epoch_end(record, steps);
                        next = Some((*progress).clone());
                    }
                    FitEvent::Eval { record } => {
                        if let Some(tb) = tb.as_mut() {
                            tb.eval(record);
                        }
                        out.clear_bar();
                        out.eval(record, steps);
                    }
                    FitEvent::TargetReached { progress } => {
                        // Checkpointed below; the loop then ends: the target is in the history.
                        next = Some((*progress).clone());
                    }
                    FitEvent::Stopped { progress } => {
                        next = Some((*progress).clone());
                        stopped = true;
                    }
                }
                Ok(())
            },
        );
        out.clear_bar();
        if let Err(e) = result {
            let msg = e.to_string();
            if root {
                let _ = write_history(&dir, &progress.history);
                let _ = write_run_plots(
                    &dir,
                    &name,
                    &progress.history,
                    cfg.optimizer.has_trust_ratio(),
                );
                let _ = summary(Status::Failed(&msg), &model, &progress.history);
            }
            if !ck_path.is_file() {
                return Err(anyhow::Error::new(e).context(format!(
                    "training {name} failed before its first checkpoint (written at the end of \
                     epoch 1): there is nothing to resume"
                )));
            }
            return Err(anyhow::Error::new(e).context(format!(
                "training {} failed; the last good checkpoint (epoch {}, step {}) is kept in {}",
                name,
                progress.epoch + usize::from(progress.step > 0),
                progress.step,
                ck_path.display()
            )));
        }
        let p = next.context("the engine returned without reporting an epoch end or a stop")?;
        // Rank 0's checkpoint stands for every rank: check that they all hold its weights.
        lamb_dist::check_in_sync(&model, comm)?;
        if root {
            let saved = Checkpoint::capture(&model, opt.as_ref(), &p, &key)
                .save(&ck_path)
                .map_err(anyhow::Error::new)
                .and_then(|()| write_history(&dir, &p.history));
            if let Err(e) = saved {
                mark_failed(&dir, &format!("{e:#}"), |m| {
                    summary(Status::Failed(m), &model, &progress.history)
                });
                return Err(e.context(format!(
                    "saving the checkpoint of {name} failed (disk full?); the run stopped"
                )));
            }
            if let Some(tb) = tb.as_mut() {
                tb.checkpointed(&model, &p)?;
            }
        }
        progress = p;
        if stopped {
            if root {
                write_run_plots(
                    &dir,
                    &name,
                    &progress.history,
                    cfg.optimizer.has_trust_ratio(),
                )?;
                summary(
                    Status::Interrupted(progress.epoch, progress.step, steps),
                    &model,
                    &progress.history,
                )?;
                if let Some(tb) = &tb {
                    out.info(&tb.report());
                }
                out.warn(&format!(
                    "Stopped at epoch {}, step {}/{}; checkpoint written to {}.\nResume with: lamb train --resume {}",
                    progress.epoch + 1,
                    progress.step,
                    steps,
                    ck_path.display(),
                    dir.display()
                ));
            }
            return Ok(RunResult {
                end: RunEnd::Interrupted {
                    epoch: progress.epoch,
                    step: progress.step,
                },
                history: progress.history,
                dir,
                test: None,
                target: None,
            });
        }
    }
    if let Some(a) = cfg.target_accuracy {
        let t = TargetResult::find(&progress.history, a, data.train.len(), cfg.batch_size);
        target_result.set(Some(t));
        if root {
            write_atomic(
                &dir.join(TARGET_FILE),
                serde_json::to_string_pretty(&t)?.as_bytes(),
            )?;
        }
    }
    if root {
        if let Some(h) = &data.held_out {
            // The test set, once, after every choice was made on the validation data.
            let ev = model.evaluate(&h.test, VAL_BATCH)?;
            test_result.set(Some(TestResult {
                accuracy: ev.accuracy,
                loss: ev.loss,
                images: ev.count,
            }));
        }
        let written = model
            .save_safetensors(&dir.join("weights.safetensors"))
            .map_err(anyhow::Error::new)
            .and_then(|()| write_history(&dir, &progress.history))
            .and_then(|()| {
                write_run_plots(
                    &dir,
                    &name,
                    &progress.history,
                    cfg.optimizer.has_trust_ratio(),
                )
            })
            .and_then(|()| summary(Status::Completed, &model, &progress.history));
        if let Err(e) = written {
            let _ = std::fs::remove_file(dir.join("weights.safetensors"));
            mark_failed(&dir, &format!("{e:#}"), |m| {
                summary(Status::Failed(m), &model, &progress.history)
            });
            return Err(e.context(format!(
                "writing the results of {name} failed (disk full?); its checkpoint is kept in {}",
                ck_path.display()
            )));
        }
        if let Some(tb) = &tb {
            out.info(&tb.report());
        }
    }
    Ok(RunResult {
        end: RunEnd::Completed,
        history: progress.history,
        dir,
        test: test_result.get(),
        target: target_result.get(),
    })
}

/// Marks a run FAILED in its `summary.md` after a write failed: through `write` (the full
/// summary, written atomically), else, when even that fails (a full disk has no room for the
/// temporary file), by overwriting the file in place with one status line, so the run never
/// stays marked RUNNING.
fn mark_failed(dir: &Path, msg: &str, write: impl FnOnce(&str) -> Result<()>) {
    if write(msg).is_ok() {
        return;
    }
    let _ = std::fs::write(
        dir.join("summary.md"),
        format!("# Run\n\n**Status:** FAILED: {msg}\n"),
    );
}

/// A one-paragraph final summary of a completed run (printed in every mode).
pub fn final_summary(name: &str, r: &RunResult) -> String {
    match RunStats::from_history(&r.history) {
        Some(s) => format!(
            "{name}: {} epochs, final val_accuracy {:.4} (best {:.4} at epoch {}, last-5 mean {:.4}), \
             final val_loss {:.4} (min {:.4} at epoch {}), median {:.1}s/epoch{}. Results in {}",
            s.epochs,
            s.final_val_accuracy,
            s.best_val_accuracy.0,
            s.best_val_accuracy.1,
            s.last5_val_accuracy,
            s.final_val_loss,
            s.min_val_loss.0,
            s.min_val_loss.1,
            s.median_epoch_seconds,
            r.target.map_or(String::new(), |t| format!("; {}", t.describe())) + &r.test.map_or(String::new(), |t| format!(
                "; test set (once, at the end): accuracy {:.4}, loss {:.4}",
                t.accuracy, t.loss
            )),
            r.dir.display()
        ),
        None => format!("{name}: no epoch completed. Run directory {}", r.dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_subset_is_even_and_in_range() {
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
        let s = spread(60_000, 1000);
        assert_eq!(s.len(), 1000);
        assert!(s.windows(2).all(|w| w[1] - w[0] == 60));
    }

    #[test]
    fn display_names() {
        let mut c = crate::config::Settings::default().resolve("t").unwrap();
        assert_eq!(display_name(&c), "LAMB + ReLU");
        c.optimizer = crate::config::OptimizerKind::Adam;
        c.activation = ActivationKind::Selu;
        assert_eq!(display_name(&c), "Adam + SELU");
        c.model = "resnet20".into();
        assert_eq!(display_name(&c), "Adam + resnet20");
        c.model = "/some/where/my_net.json".into();
        assert_eq!(display_name(&c), "Adam + my_net");
    }
}
