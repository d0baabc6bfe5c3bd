//! TensorBoard event files of a run, laid out as Keras's `TensorBoard` callback lays them out
//! (`<run>/tb/train`, `<run>/tb/validation`), so `tensorboard --logdir` over a run, a compare
//! or a sweep directory shows every run side by side.
//!
//! What is written (steps as Keras counts them):
//! - train, per epoch at step `epoch - 1`: `epoch_loss`, `epoch_accuracy`, `epoch_learning_rate`
//!   (the rate of the epoch's last step), and for LAMB/LARS `epoch_trust_ratio/<tensor>` (the
//!   epoch's mean, as `history.json` holds it);
//! - train, every `--tensorboard-every` steps at the global step (1-based): `batch_loss` and
//!   `batch_accuracy`, the epoch's running means as Keras reports them (the interval is kept in
//!   `tb/settings.json`, so a resumed run keeps it unless the flag is given again);
//! - train, per epoch: histograms `<tensor>/histogram` of the weights at the epoch's end and
//!   `<tensor>/epoch_change/histogram` of their change over the epoch;
//! - validation, per epoch: `epoch_loss`, `epoch_accuracy`.
//!
//! Crash safety: records are kept in memory and appended to the files only after the
//! checkpoint that covers them is saved (each epoch's end, or a stop), in one write per file.
//! A killed run therefore never has records past its checkpoint, and its resumed run writes
//! each step once. A kill in the instant between a checkpoint and the append loses that
//! checkpoint's records (a gap, never a duplicate); a kill during the append leaves a torn
//! last record, which readers skip and the resumed run cuts off before appending. A stop
//! mid-epoch keeps the epoch's starting weights in `tb/epoch_start_weights.bin` so the resumed
//! run still writes the epoch's change histograms.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lamb_nn::{EpochRecord, FitProgress, Model};
use lamb_optim::TensorTelemetry;
use lamb_tensorboard::{EventWriter, Histogram};

use crate::atomic::write_atomic;

/// Subdirectory of a run that holds its event files.
pub const DIR: &str = "tb";
/// Buckets of every histogram (as `tf.summary.histogram`'s default).
const BUCKETS: usize = 30;
/// Epoch-start weights kept at a mid-epoch stop.
const START_WEIGHTS: &str = "epoch_start_weights.bin";
const START_MAGIC: &[u8; 8] = b"LAMBTBW1";

/// The TensorBoard flags of `train`, `compare` and `sweep`.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct TbFlags {
    /// Write no TensorBoard event files (by default every run writes tb/train and
    /// tb/validation in its directory).
    #[arg(long)]
    pub no_tensorboard: bool,
    /// Write batch_loss and batch_accuracy to TensorBoard every N training steps (Keras's
    /// update_freq) [default: 100, or on resume the run's recorded interval].
    #[arg(long, value_name = "N")]
    pub tensorboard_every: Option<u64>,
}

/// `batch_*` interval of a run that never set one.
const DEFAULT_EVERY: u64 = 100;
/// Where a run records its interval (resumes keep it unless told otherwise).
const SETTINGS: &str = "settings.json";

static FLAGS: OnceLock<TbFlags> = OnceLock::new();

/// Checks the flags and makes them this process's setting (once, before any run starts).
pub fn configure(flags: &TbFlags) -> Result<()> {
    if flags.tensorboard_every == Some(0) {
        bail!(
            "--tensorboard-every 0: must be at least 1 (training steps between batch_loss records)"
        );
    }
    let _ = FLAGS.set(flags.clone());
    Ok(())
}

fn flags() -> TbFlags {
    FLAGS.get().cloned().unwrap_or_default()
}

/// The flags to pass on to a `lamb train` child (a sweep's runs) so it writes as this process.
pub fn child_args() -> Vec<String> {
    let f = flags();
    match (f.no_tensorboard, f.tensorboard_every) {
        (true, _) => vec!["--no-tensorboard".into()],
        (false, Some(n)) => vec!["--tensorboard-every".into(), n.to_string()],
        (false, None) => Vec::new(),
    }
}

/// The interval recorded in `dir`'s settings, if any.
fn recorded_every(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(SETTINGS)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("tensorboard_every")?.as_u64().filter(|&n| n > 0)
}

/// The TensorBoard writers of one run (rank 0 only), fed by the training loop's events.
pub struct TbRun {
    train: EventWriter,
    validation: EventWriter,
    dir: PathBuf,
    every: u64,
    trust_ratios: bool,
    /// `epoch_trust_ratio/<tensor>` tags, in the history's order.
    trust_tags: Vec<(String, String)>,
    /// Weights at the start of the current epoch (model order), when known.
    start: Option<Vec<Vec<f32>>>,
    hist: Histogram,
    delta: Vec<f32>,
    last_lr: f32,
    /// The epoch whose end was seen and whose records wait for the checkpoint (1-based).
    ended_epoch: Option<usize>,
    /// Time spent in this writer's hooks, and in the epochs they belong to.
    spent: Duration,
    epoch_seconds: f64,
}

fn weights(model: &Model) -> Vec<Vec<f32>> {
    model
        .params()
        .into_iter()
        .map(|(_, _, v)| v.to_vec())
        .collect()
}

impl TbRun {
    /// The writers of the run in `run_dir` (`None` under `--no-tensorboard`), appending to its
    /// existing event files on resume. `progress` is where training starts, `steps_per_epoch`
    /// sizes the buffers, `trust_ratios` whether the optimizer has them.
    pub fn open(
        run_dir: &Path,
        model: &Model,
        progress: &FitProgress,
        steps_per_epoch: usize,
        trust_ratios: bool,
    ) -> Result<Option<TbRun>> {
        let f = flags();
        if f.no_tensorboard {
            return Ok(None);
        }
        let dir = run_dir.join(DIR);
        let recorded = recorded_every(&dir);
        let every = f.tensorboard_every.or(recorded).unwrap_or(DEFAULT_EVERY);
        let batch_records = (steps_per_epoch as u64 / every + 1) as usize;
        let capacity = 64 * 1024 + batch_records * 2 * 64;
        let open = |sub: &str| {
            EventWriter::open(&dir.join(sub), capacity)
                .map(|(w, _)| w)
                .with_context(|| {
                    format!(
                        "opening the TensorBoard event files in {} (move the damaged file away, \
                         or run with --no-tensorboard)",
                        dir.display()
                    )
                })
        };
        let (train, validation) = (open("train")?, open("validation")?);
        if recorded != Some(every) {
            let text = serde_json::json!({ "tensorboard_every": every }).to_string();
            write_atomic(&dir.join(SETTINGS), text.as_bytes())?;
        }
        let mut run = TbRun {
            train,
            validation,
            dir,
            every,
            trust_ratios,
            trust_tags: Vec::new(),
            start: None,
            hist: Histogram::default(),
            delta: Vec::new(),
            last_lr: f32::NAN,
            ended_epoch: None,
            spent: Duration::ZERO,
            epoch_seconds: 0.0,
        };
        run.start = if progress.step == 0 {
            Some(weights(model))
        } else {
            run.read_start_weights(model, progress.epoch)
        };
        Ok(Some(run))
    }

    /// After training step `step` (1-based) of epoch `epoch` (1-based): buffers `batch_loss`
    /// and `batch_accuracy` (the running means) when the global step is a multiple of the
    /// interval. Allocates nothing while the buffer has room.
    pub fn step(
        &mut self,
        epoch: usize,
        step: usize,
        steps_per_epoch: usize,
        running: (f64, f64),
        telemetry: &[TensorTelemetry],
    ) {
        let t = Instant::now();
        let global = ((epoch - 1) * steps_per_epoch + step) as u64;
        if let Some(tel) = telemetry.first() {
            self.last_lr = tel.learning_rate;
        }
        if global.is_multiple_of(self.every) {
            self.train
                .scalar("batch_loss", global as i64, running.0 as f32);
            self.train
                .scalar("batch_accuracy", global as i64, running.1 as f32);
        }
        self.spent += t.elapsed();
    }

    /// A validation pass of `--eval-every` within an epoch: buffers `step_loss` and
    /// `step_accuracy` of the validation run at the global step.
    pub fn eval(&mut self, r: &lamb_nn::EvalRecord) {
        let t = Instant::now();
        let step = r.global_step as i64;
        self.validation.scalar("step_loss", step, r.val_loss as f32);
        self.validation
            .scalar("step_accuracy", step, r.val_accuracy as f32);
        self.spent += t.elapsed();
    }

    /// At an epoch's end: buffers its scalars (train and validation).
    pub fn epoch_end(&mut self, r: &EpochRecord) {
        let t = Instant::now();
        let step = r.epoch as i64 - 1;
        self.train.scalar("epoch_loss", step, r.loss as f32);
        self.train.scalar("epoch_accuracy", step, r.accuracy as f32);
        if self.last_lr.is_finite() {
            self.train.scalar("epoch_learning_rate", step, self.last_lr);
        }
        if self.trust_ratios {
            if self.trust_tags.len() != r.trust_ratios.len()
                || self
                    .trust_tags
                    .iter()
                    .zip(&r.trust_ratios)
                    .any(|(t, s)| t.0 != s.name)
            {
                self.trust_tags = r
                    .trust_ratios
                    .iter()
                    .map(|s| (s.name.clone(), format!("epoch_trust_ratio/{}", s.name)))
                    .collect();
            }
            for (s, (_, tag)) in r.trust_ratios.iter().zip(&self.trust_tags) {
                self.train.scalar(tag, step, s.mean as f32);
            }
        }
        if let Some(v) = r.val_loss {
            self.validation.scalar("epoch_loss", step, v as f32);
        }
        if let Some(v) = r.val_accuracy {
            self.validation.scalar("epoch_accuracy", step, v as f32);
        }
        self.ended_epoch = Some(r.epoch);
        self.epoch_seconds += r.train_seconds + r.val_seconds;
        self.spent += t.elapsed();
    }

    /// After the checkpoint at `progress` is saved: buffers the weight histograms of an epoch
    /// that ended, keeps the epoch's starting weights at a mid-epoch stop, and appends every
    /// buffered record to the files.
    pub fn checkpointed(&mut self, model: &Model, progress: &FitProgress) -> Result<()> {
        let t = Instant::now();
        if let Some(epoch) = self.ended_epoch.take() {
            let step = epoch as i64 - 1;
            for (i, (name, _, w)) in model.params().into_iter().enumerate() {
                self.hist.fill(w, BUCKETS);
                self.train
                    .histogram(&format!("{name}/histogram"), step, &self.hist);
                if let Some(start) = &mut self.start {
                    self.delta.clear();
                    self.delta
                        .extend(w.iter().zip(&start[i]).map(|(a, b)| a - b));
                    self.hist.fill(&self.delta, BUCKETS);
                    self.train.histogram(
                        &format!("{name}/epoch_change/histogram"),
                        step,
                        &self.hist,
                    );
                    start[i].copy_from_slice(w);
                }
            }
            if self.start.is_none() {
                self.start = Some(weights(model));
            }
            // A stop's copy of this epoch's starting weights has served.
            let _ = std::fs::remove_file(self.start_path());
        }
        if progress.step > 0 {
            self.write_start_weights(progress.epoch)?;
        }
        self.train.flush()?;
        self.validation.flush()?;
        self.spent += t.elapsed();
        Ok(())
    }

    /// One line on the files and the writer's share of the epochs it wrote (measured here).
    pub fn report(&self) -> String {
        let ms = self.spent.as_secs_f64() * 1e3;
        let share = if self.epoch_seconds > 0.0 {
            format!(
                " ({:.3}% of {:.1} s of training and validation)",
                100.0 * self.spent.as_secs_f64() / self.epoch_seconds,
                self.epoch_seconds
            )
        } else {
            String::new()
        };
        format!(
            "TensorBoard event files in {} (`tensorboard --logdir {}`); writing them took {ms:.1} ms{share}",
            self.dir.display(),
            self.dir.display()
        )
    }

    fn start_path(&self) -> PathBuf {
        self.dir.join(START_WEIGHTS)
    }

    fn write_start_weights(&self, epoch: usize) -> Result<()> {
        let Some(start) = &self.start else {
            return Ok(());
        };
        let n: usize = start.iter().map(Vec::len).sum();
        let mut b = Vec::with_capacity(24 + 4 * n);
        b.extend_from_slice(START_MAGIC);
        b.extend_from_slice(&(epoch as u64).to_le_bytes());
        b.extend_from_slice(&(n as u64).to_le_bytes());
        for v in start.iter().flatten() {
            b.extend_from_slice(&v.to_le_bytes());
        }
        write_atomic(&self.start_path(), &b)
    }

    /// The starting weights of epoch `epoch` (0-based) kept at a stop, if they fit `model`.
    fn read_start_weights(&self, model: &Model, epoch: usize) -> Option<Vec<Vec<f32>>> {
        let b = std::fs::read(self.start_path()).ok()?;
        let n: usize = model.param_count();
        if b.len() != 24 + 4 * n
            || &b[..8] != START_MAGIC
            || b[8..16] != (epoch as u64).to_le_bytes()
            || b[16..24] != (n as u64).to_le_bytes()
        {
            return None;
        }
        let mut vals = b[24..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
        Some(
            model
                .params()
                .iter()
                .map(|(_, _, w)| vals.by_ref().take(w.len()).collect())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_interval_is_refused_and_unset_flags_pass_nothing_on() {
        assert!(configure(&TbFlags {
            no_tensorboard: false,
            tensorboard_every: Some(0)
        })
        .unwrap_err()
        .to_string()
        .contains("--tensorboard-every 0"));
        assert!(
            child_args().is_empty(),
            "no flags given: the runs' own settings"
        );
    }
}
