//! Training and evaluation: single steps, `fit` with history, telemetry, stop and exact resume,
//! evaluation and predictions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lamb_data::{epoch_permutation, Dataset};
use lamb_optim::{Optimizer, ParamMut, StepOutcome, TensorTelemetry};
use serde::{Deserialize, Serialize};

use crate::kernels;
use crate::model::recycle;
use crate::{local_gradients, GradientAccumulator, Model, NnError};

/// Loss and accuracy over a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean softmax cross-entropy per sample, plus the model's regularisation losses (L2
    /// `kernel_regularizer`s), as Keras reports it.
    pub loss: f64,
    /// Fraction of samples whose predicted class is the label.
    pub accuracy: f64,
    /// Samples predicted correctly.
    pub correct: usize,
    /// Samples evaluated.
    pub count: usize,
}

/// What one training step measured (before its update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Sum of per-sample losses over the batch.
    pub loss_sum: f64,
    /// Samples of the batch predicted correctly.
    pub correct: usize,
    /// Batch size.
    pub count: usize,
    /// Whether the optimizer applied the step (false when it skipped a non-finite step).
    pub applied: bool,
}

/// Per-tensor telemetry summarised over one epoch's applied steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorStats {
    /// Tensor name.
    pub name: String,
    /// Mean trust ratio over the epoch.
    pub mean: f64,
    /// Smallest trust ratio.
    pub min: f64,
    /// Largest trust ratio.
    pub max: f64,
    /// Trust ratio of the last step.
    pub last: f64,
    /// Weight norm at the last step.
    pub weight_norm_last: f64,
    /// Update norm at the last step.
    pub update_norm_last: f64,
}

/// Running per-tensor telemetry sums inside an epoch (part of [`FitProgress`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryAccum {
    /// Tensor name.
    pub name: String,
    /// Sum of trust ratios.
    pub sum: f64,
    /// Steps accumulated.
    pub count: u64,
    /// Smallest trust ratio.
    pub min: f64,
    /// Largest trust ratio.
    pub max: f64,
    /// Last trust ratio.
    pub last: f64,
    /// Last weight norm.
    pub weight_norm_last: f64,
    /// Last update norm.
    pub update_norm_last: f64,
}

impl TelemetryAccum {
    fn stats(&self) -> TensorStats {
        TensorStats {
            name: self.name.clone(),
            mean: if self.count > 0 {
                self.sum / self.count as f64
            } else {
                f64::NAN
            },
            min: self.min,
            max: self.max,
            last: self.last,
            weight_norm_last: self.weight_norm_last,
            update_norm_last: self.update_norm_last,
        }
    }
}

impl TelemetryAccum {
    /// Adds one step's telemetry to per-tensor accumulators, (re)starting them when the tensor
    /// set differs from the one they hold.
    pub fn accumulate(acc: &mut Vec<TelemetryAccum>, tel: &[TensorTelemetry]) {
        if acc.len() != tel.len() || acc.iter().zip(tel).any(|(a, t)| a.name != t.name) {
            *acc = tel
                .iter()
                .map(|t| TelemetryAccum {
                    name: t.name.clone(),
                    sum: 0.0,
                    count: 0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                    last: f64::NAN,
                    weight_norm_last: f64::NAN,
                    update_norm_last: f64::NAN,
                })
                .collect();
        }
        for (a, t) in acc.iter_mut().zip(tel) {
            let r = t.trust_ratio as f64;
            a.sum += r;
            a.count += 1;
            a.min = a.min.min(r);
            a.max = a.max.max(r);
            a.last = r;
            a.weight_norm_last = t.weight_norm as f64;
            a.update_norm_last = t.update_norm as f64;
        }
    }
}

/// One epoch of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, 1-based.
    pub epoch: usize,
    /// Training loss: running mean over the epoch's samples, as Keras reports it.
    pub loss: f64,
    /// Training accuracy, running mean over the epoch.
    pub accuracy: f64,
    /// Validation loss at the epoch's end.
    pub val_loss: Option<f64>,
    /// Validation accuracy at the epoch's end.
    pub val_accuracy: Option<f64>,
    /// Seconds spent in training steps (including batch assembly).
    pub train_seconds: f64,
    /// Seconds spent in validation.
    pub val_seconds: f64,
    /// Per-tensor trust-ratio statistics over the epoch's applied steps.
    pub trust_ratios: Vec<TensorStats>,
}

/// One validation pass of a fit run with [`FitOptions::eval_every`]: within an epoch or at
/// its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Epoch in progress (1-based); at an epoch's end, that epoch.
    pub epoch: usize,
    /// Steps done in that epoch.
    pub step: usize,
    /// Steps done since the start of training.
    pub global_step: usize,
    /// Training samples seen since the start of training.
    pub images_seen: u64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Seconds of training and validation since the start of training, this pass included.
    pub elapsed_seconds: f64,
}

/// Per-epoch records of a fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct History {
    /// Completed epochs, in order.
    pub epochs: Vec<EpochRecord>,
    /// Every validation pass, in order, when the fit validated every few steps
    /// ([`FitOptions::eval_every`]); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evals: Vec<EvalRecord>,
}

impl History {
    /// Seconds of training and validation of the completed epochs.
    pub fn seconds(&self) -> f64 {
        self.epochs
            .iter()
            .map(|r| r.train_seconds + r.val_seconds)
            .sum()
    }
}

/// Position and running sums inside `fit`: with the optimizer state (saved by the caller via
/// `Optimizer::state`) and the weights, enough to resume mid-epoch with identical results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FitProgress {
    /// Epochs completed (0-based index of the current epoch).
    pub epoch: usize,
    /// Steps completed in the current epoch.
    pub step: usize,
    /// Sum of per-sample training losses so far in this epoch.
    pub loss_sum: f64,
    /// Correct training predictions so far in this epoch.
    pub correct: u64,
    /// Training samples seen so far in this epoch.
    pub seen: u64,
    /// Completed epochs.
    pub history: History,
    /// Per-tensor telemetry sums so far in this epoch.
    #[serde(default)]
    pub telemetry: Vec<TelemetryAccum>,
    /// Training seconds so far in this epoch.
    #[serde(default)]
    pub train_seconds: f64,
    /// Validation seconds so far in this epoch (passes within the epoch).
    #[serde(default)]
    pub val_seconds: f64,
}

/// Settings of [`Model::fit`].
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Training batch size (the last batch of an epoch may be smaller, as in Keras).
    pub batch_size: usize,
    /// Total epochs (including those already in `start`).
    pub epochs: usize,
    /// Shuffle seed: epoch `e` visits `lamb_data::epoch_permutation(seed, e, n)`.
    pub seed: u64,
    /// Batch size of validation (forward only).
    pub val_batch_size: usize,
    /// Where to start or resume (default: epoch 0, step 0).
    pub start: FitProgress,
    /// Checked before every step; when set, `fit` sends [`FitEvent::Stopped`] and returns the
    /// history of completed epochs.
    pub stop: Option<Arc<AtomicBool>>,
    /// Also validate after every this many steps (counted from the start of training), not
    /// only at epoch ends, recording each pass in [`History::evals`]. Validation changes no
    /// weight: the trained weights are the same with or without it.
    pub eval_every: Option<usize>,
    /// Stop after the first validation pass whose accuracy reaches this: within an epoch with
    /// [`FitEvent::TargetReached`], at an epoch's end after [`FitEvent::EpochEnd`].
    pub target_accuracy: Option<f64>,
}

impl FitOptions {
    /// Options for a fresh fit with validation batches of 1000 and no stop flag.
    pub fn new(batch_size: usize, epochs: usize, seed: u64) -> Self {
        FitOptions {
            batch_size,
            epochs,
            seed,
            val_batch_size: 1000,
            start: FitProgress::default(),
            stop: None,
            eval_every: None,
            target_accuracy: None,
        }
    }
}

/// What `fit` reports while it runs.
#[derive(Debug)]
pub enum FitEvent<'a> {
    /// A training step finished (epoch and step 1-based).
    Step {
        /// Epoch, 1-based.
        epoch: usize,
        /// Step within the epoch, 1-based.
        step: usize,
        /// Steps per epoch.
        steps_per_epoch: usize,
        /// The step's metrics.
        metrics: &'a StepMetrics,
        /// The optimizer's telemetry of this step.
        telemetry: &'a [TensorTelemetry],
        /// Running training loss and accuracy of the epoch so far.
        running: (f64, f64),
    },
    /// An epoch ended, validation included: a good moment to checkpoint.
    EpochEnd {
        /// The epoch's record.
        record: &'a EpochRecord,
        /// Progress positioned at the start of the next epoch.
        progress: &'a FitProgress,
    },
    /// A validation pass within an epoch ([`FitOptions::eval_every`]).
    Eval {
        /// The pass.
        record: &'a EvalRecord,
    },
    /// A validation pass within an epoch reached [`FitOptions::target_accuracy`]; the fit
    /// returns after this event.
    TargetReached {
        /// Progress at that point (mid-epoch), to checkpoint.
        progress: &'a FitProgress,
    },
    /// The stop flag was seen between steps.
    Stopped {
        /// Progress to resume from.
        progress: &'a FitProgress,
    },
}

/// What the training loop needs from the processes a fit is spread over (data parallelism):
/// this process's place among them and element-wise sums across them. Every process must make
/// the same calls in the same order with buffers of the same length. [`OneProcess`] is the
/// single-process case; `lamb-dist` supplies one over its communicators (MPI).
pub trait Reducer {
    /// The error of a failed reduction; engine errors convert into it.
    type Error: From<NnError>;
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Replaces `buf` on every process by the element-wise sum over all processes.
    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<(), Self::Error>;
    /// Replaces `buf` on every process by the element-wise sum over all processes.
    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<(), Self::Error>;
    /// The error for processes that disagree on what must be identical (data sizes, counts).
    fn out_of_sync(&self, message: String) -> Self::Error {
        NnError::DataMismatch(format!("processes out of sync: {message}")).into()
    }
}

/// The [`Reducer`] of one process: rank 0 of 1, every sum is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct OneProcess;

impl Reducer for OneProcess {
    type Error = NnError;
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f64(&mut self, _buf: &mut [f64]) -> Result<(), NnError> {
        Ok(())
    }
    fn sum_f32(&mut self, _buf: &mut [f32]) -> Result<(), NnError> {
        Ok(())
    }
}

/// The slice of `global` (one global batch's indices) that `rank` of `size` computes:
/// contiguous, sizes differing by at most one, empty when the batch has fewer samples than
/// processes.
pub fn shard(global: &[usize], rank: usize, size: usize) -> &[usize] {
    let n = global.len();
    let size = size.max(1);
    let rank = rank.min(size - 1);
    &global[rank * n / size..(rank + 1) * n / size]
}

/// This process's contiguous share of `data` (`None` when it has none).
fn data_shard(data: &Dataset, rank: usize, size: usize) -> Option<Dataset> {
    let all: Vec<usize> = (0..data.len()).collect();
    let mine = shard(&all, rank, size);
    (!mine.is_empty()).then(|| data.subset(mine))
}

fn check_data(model: &Model, data: &Dataset, what: &str) -> Result<(), NnError> {
    let [h, w, c] = model.input_shape;
    if (data.height, data.width, data.channels) != (h, w, c) {
        return Err(NnError::DataMismatch(format!(
            "{what} images are {}x{}x{}, the model expects {h}x{w}x{c}",
            data.height, data.width, data.channels
        )));
    }
    if data.images.len() != data.len() * data.image_len() {
        return Err(NnError::DataMismatch(format!(
            "{what}: {} pixel bytes for {} images of {} bytes",
            data.images.len(),
            data.len(),
            data.image_len()
        )));
    }
    if let Some((i, &l)) = data
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= model.classes)
    {
        return Err(NnError::DataMismatch(format!(
            "{what} label {l} at index {i} is not below the {} classes",
            model.classes
        )));
    }
    if data.is_empty() {
        return Err(NnError::DataMismatch(format!("{what} data set is empty")));
    }
    Ok(())
}

fn positive(name: &'static str, v: usize) -> Result<(), NnError> {
    if v == 0 {
        return Err(NnError::InvalidArgument {
            name,
            value: "0".into(),
            valid: "at least 1".into(),
        });
    }
    Ok(())
}

impl Model {
    /// One training step on the first `batch` samples already in the work buffers.
    fn step_inner(
        &mut self,
        batch: usize,
        opt: &mut dyn Optimizer,
        epoch: usize,
        step: usize,
    ) -> Result<StepMetrics, NnError> {
        self.forward(batch, true);
        let (loss_sum, correct) = self.loss_and_grad(batch);
        if !loss_sum.is_finite() {
            return Err(NnError::NonFiniteLoss {
                epoch,
                step,
                value: loss_sum / batch as f64,
            });
        }
        self.backward(batch);
        let mut views: Vec<ParamMut<'_>> = recycle(std::mem::take(&mut self.ws.views));
        views.extend(
            self.param_iter_mut()
                .map(|p| ParamMut::new(&p.name, &p.shape, &mut p.value, &p.grad)),
        );
        let outcome = opt.step(&mut views);
        self.ws.views = recycle(views);
        let outcome = outcome.map_err(|cause| NnError::Optimizer { epoch, step, cause })?;
        Ok(StepMetrics {
            loss_sum,
            correct,
            count: batch,
            applied: outcome == StepOutcome::Applied,
        })
    }

    /// Checks a caller-supplied batch (`x` holds `y.len()` images in f32 NHWC, labels below the
    /// class count) and copies it into the work buffers, sized for a backward pass. Returns the
    /// batch size.
    pub(crate) fn load_batch(&mut self, x: &[f32], y: &[u8]) -> Result<usize, NnError> {
        let batch = y.len();
        positive("batch size", batch)?;
        let in_len = self.in_len();
        if x.len() != batch * in_len {
            return Err(NnError::DataMismatch(format!(
                "{} input values for {batch} labels of {in_len} values each",
                x.len()
            )));
        }
        if let Some(&l) = y.iter().find(|&&l| l as usize >= self.classes) {
            return Err(NnError::DataMismatch(format!(
                "label {l} is not below the {} classes",
                self.classes
            )));
        }
        self.ensure_backward(batch);
        self.ws.x[..x.len()].copy_from_slice(x);
        self.ws.y[..batch].copy_from_slice(y);
        Ok(batch)
    }

    /// One training step on a batch already in f32 NHWC (`x` holds `y.len()` images): forward,
    /// loss, backward, optimizer step.
    pub fn train_step(
        &mut self,
        x: &[f32],
        y: &[u8],
        opt: &mut dyn Optimizer,
    ) -> Result<StepMetrics, NnError> {
        let batch = self.load_batch(x, y)?;
        self.step_inner(batch, opt, 0, 0)
    }

    /// Trains for `opts.epochs` epochs (from `opts.start`), validating on `val` at each epoch's
    /// end, reporting through `on_event`. Returns the history of all completed epochs. The
    /// single-process case of [`Model::fit_spread`].
    pub fn fit(
        &mut self,
        train: &Dataset,
        val: Option<&Dataset>,
        opts: &FitOptions,
        opt: &mut dyn Optimizer,
        on_event: &mut dyn FnMut(&FitEvent<'_>) -> Result<(), NnError>,
    ) -> Result<History, NnError> {
        self.fit_spread(train, val, opts, &mut OneProcess, 1, opt, on_event)
    }

    /// [`Model::fit`] spread over the processes of `reduce`, each process's share of every
    /// batch computed in `micro_batches` parts (gradient accumulation): same shuffle
    /// (`epoch_permutation(opts.seed, epoch, n)`), same global batches, events, history and
    /// resume semantics. Every process must call it with the same data and options and an
    /// identical model and optimizer.
    ///
    /// Each step: the global batch of `b` samples is split into contiguous per-process shards
    /// (sizes differ by at most one), each process leaves `sum_k (b_k / b) * grad_k` over its
    /// micro-batches in the gradient buffers, the gradients are summed across processes, and
    /// every process applies the same optimizer step, so weights stay identical and
    /// per-tensor norms (LAMB's trust ratios) are global. Loss, accuracy and the stop flag are
    /// summed too: events report global metrics on every process, and a stop seen by any
    /// process stops all of them at the same step. Validation is sharded and summed. With one
    /// process and one micro-batch no reduction arithmetic happens.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_spread<E: From<NnError>>(
        &mut self,
        train: &Dataset,
        val: Option<&Dataset>,
        opts: &FitOptions,
        reduce: &mut dyn Reducer<Error = E>,
        micro_batches: usize,
        opt: &mut dyn Optimizer,
        on_event: &mut dyn FnMut(&FitEvent<'_>) -> Result<(), NnError>,
    ) -> Result<History, E> {
        check_data(self, train, "training")?;
        if let Some(v) = val {
            check_data(self, v, "validation")?;
        }
        positive("batch_size", opts.batch_size)?;
        positive("val_batch_size", opts.val_batch_size)?;
        positive("accumulate", micro_batches)?;
        let (rank, size) = (reduce.rank(), reduce.size());
        let n = train.len();
        let bs = opts.batch_size;
        let steps = n.div_ceil(bs);
        let mut p = opts.start.clone();
        if p.step > steps || (p.step > 0 && p.epoch >= opts.epochs) {
            return Err(NnError::InvalidArgument {
                name: "start",
                value: format!("epoch {} step {}", p.epoch, p.step),
                valid: format!(
                    "a step of at most {steps} in an epoch below {}",
                    opts.epochs
                ),
            }
            .into());
        }
        let val_len = val.map_or(0, |v| v.len());
        let mut val_shard = None;
        let mut acc = None;
        if size > 1 {
            // Every process must see the same data: compare sizes (cheap) before the first
            // collective that would otherwise hang or mix up shards.
            let mut sizes = [n as f64, val_len as f64];
            reduce.sum_f64(&mut sizes)?;
            if sizes != [(n * size) as f64, (val_len * size) as f64] {
                return Err(reduce.out_of_sync(format!(
                    "ranks have different data sets (rank {rank}: {n} training, {val_len} validation images)"
                )));
            }
            val_shard = val.and_then(|v| data_shard(v, rank, size));
        }
        if size > 1 || micro_batches > 1 {
            acc = Some(GradientAccumulator::new(self));
        }
        let stopped = || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        while p.epoch < opts.epochs {
            let e = p.epoch;
            let order = epoch_permutation(opts.seed, e as u64, n);
            while p.step < steps {
                if size == 1 && stopped() {
                    on_event(&FitEvent::Stopped { progress: &p })?;
                    return Ok(p.history);
                }
                let s = p.step;
                let t = Instant::now();
                let global = &order[s * bs..((s + 1) * bs).min(n)];
                let b = global.len();
                let mine = shard(global, rank, size);
                // Training passes (dropout masks) numbered by epoch, step, rank and
                // micro-batch: the same after a resume.
                self.set_pass_counter((((e * steps + s) * size + rank) * micro_batches) as u64);
                self.input_epoch = e as u64;
                let mut m = match acc.as_mut() {
                    None => self.compute_gradients_on(train, mine)?,
                    Some(acc) => local_gradients(self, train, mine, b, micro_batches, acc)?,
                };
                if size > 1 {
                    // Metrics and the stop flag first (small), so that every process agrees
                    // on stopping or failing before the large sum.
                    let mut sums = [
                        m.loss_sum,
                        m.correct as f64,
                        m.count as f64,
                        f64::from(u8::from(stopped())),
                    ];
                    reduce.sum_f64(&mut sums)?;
                    m = StepMetrics {
                        loss_sum: sums[0],
                        correct: sums[1] as usize,
                        count: sums[2] as usize,
                        applied: false,
                    };
                    if sums[3] > 0.0 {
                        on_event(&FitEvent::Stopped { progress: &p })?;
                        return Ok(p.history);
                    }
                    if m.count != b {
                        return Err(reduce.out_of_sync(format!(
                            "epoch {} step {}: ranks computed {} samples of a global batch of {b}",
                            e + 1,
                            s + 1,
                            m.count
                        )));
                    }
                }
                if !m.loss_sum.is_finite() {
                    return Err(NnError::NonFiniteLoss {
                        epoch: e + 1,
                        step: s + 1,
                        value: m.loss_sum / b as f64,
                    }
                    .into());
                }
                if let (true, Some(acc)) = (size > 1, acc.as_mut()) {
                    // The model holds this process's weighted share; sum the shares.
                    self.flat_gradients_into(acc.as_mut_slice())?;
                    reduce.sum_f32(acc.as_mut_slice())?;
                    acc.write_into(self)?;
                }
                let outcome = self.apply_gradients(opt, e + 1, s + 1)?;
                m.applied = outcome == StepOutcome::Applied;
                p.train_seconds += t.elapsed().as_secs_f64();
                p.loss_sum += m.loss_sum;
                p.correct += m.correct as u64;
                p.seen += b as u64;
                if m.applied {
                    TelemetryAccum::accumulate(&mut p.telemetry, opt.telemetry());
                }
                p.step += 1;
                let running = (p.loss_sum / p.seen as f64, p.correct as f64 / p.seen as f64);
                on_event(&FitEvent::Step {
                    epoch: e + 1,
                    step: s + 1,
                    steps_per_epoch: steps,
                    metrics: &m,
                    telemetry: opt.telemetry(),
                    running,
                })?;
                let global = e * steps + p.step;
                let due = opts
                    .eval_every
                    .is_some_and(|k| k > 0 && global.is_multiple_of(k));
                if due && p.step < steps && val.is_some() {
                    let t = Instant::now();
                    let ev = self.validate(val, val_shard.as_ref(), opts, reduce)?;
                    p.val_seconds += t.elapsed().as_secs_f64();
                    if let Some(ev) = ev {
                        let record = EvalRecord {
                            epoch: e + 1,
                            step: p.step,
                            global_step: global,
                            images_seen: (e * n) as u64 + p.seen,
                            val_loss: ev.loss,
                            val_accuracy: ev.accuracy,
                            elapsed_seconds: p.history.seconds() + p.train_seconds + p.val_seconds,
                        };
                        p.history.evals.push(record.clone());
                        on_event(&FitEvent::Eval { record: &record })?;
                        if opts.target_accuracy.is_some_and(|a| ev.accuracy >= a) {
                            on_event(&FitEvent::TargetReached { progress: &p })?;
                            return Ok(p.history);
                        }
                    }
                }
            }
            let t = Instant::now();
            let ev = self.validate(val, val_shard.as_ref(), opts, reduce)?;
            let val_seconds = t.elapsed().as_secs_f64() + p.val_seconds;
            let record = EpochRecord {
                epoch: e + 1,
                loss: p.loss_sum / p.seen.max(1) as f64,
                accuracy: p.correct as f64 / p.seen.max(1) as f64,
                val_loss: ev.as_ref().map(|v| v.loss),
                val_accuracy: ev.as_ref().map(|v| v.accuracy),
                train_seconds: p.train_seconds,
                val_seconds,
                trust_ratios: p.telemetry.iter().map(TelemetryAccum::stats).collect(),
            };
            p.history.epochs.push(record.clone());
            if let (Some(_), Some(ev)) = (opts.eval_every, ev.as_ref()) {
                p.history.evals.push(EvalRecord {
                    epoch: e + 1,
                    step: steps,
                    global_step: (e + 1) * steps,
                    images_seen: ((e + 1) * n) as u64,
                    val_loss: ev.loss,
                    val_accuracy: ev.accuracy,
                    elapsed_seconds: p.history.seconds(),
                });
            }
            p = FitProgress {
                epoch: e + 1,
                history: p.history,
                ..FitProgress::default()
            };
            on_event(&FitEvent::EpochEnd {
                record: &record,
                progress: &p,
            })?;
            let reached = |a| ev.as_ref().is_some_and(|v| v.accuracy >= a);
            if opts.target_accuracy.is_some_and(reached) {
                return Ok(p.history);
            }
        }
        Ok(p.history)
    }

    /// The validation pass of `fit_spread`: the whole of `val` on one process, this process's
    /// shard `val_shard` summed over the processes otherwise; `None` without validation data.
    fn validate<E: From<NnError>>(
        &mut self,
        val: Option<&Dataset>,
        val_shard: Option<&Dataset>,
        opts: &FitOptions,
        reduce: &mut dyn Reducer<Error = E>,
    ) -> Result<Option<Evaluation>, E> {
        Ok(match val {
            Some(v) if reduce.size() == 1 => Some(self.evaluate(v, opts.val_batch_size)?),
            Some(v) => {
                Some(self.evaluate_shard(val_shard, v.len(), opts.val_batch_size, reduce)?)
            }
            None => None,
        })
    }

    /// Loss and accuracy over `data` spread over the processes of `reduce`: each evaluates its
    /// contiguous share (forward only, batches of `batch_size`) and the sums are reduced, so
    /// every process gets the same result. Every process must call it with the same data.
    pub fn evaluate_spread<E: From<NnError>>(
        &mut self,
        data: &Dataset,
        batch_size: usize,
        reduce: &mut dyn Reducer<Error = E>,
    ) -> Result<Evaluation, E> {
        if reduce.size() == 1 {
            return Ok(self.evaluate(data, batch_size)?);
        }
        let local = data_shard(data, reduce.rank(), reduce.size());
        self.evaluate_shard(local.as_ref(), data.len(), batch_size, reduce)
    }

    /// Evaluates this process's share `local` of a data set of `total` samples and sums the
    /// results over the processes.
    fn evaluate_shard<E: From<NnError>>(
        &mut self,
        local: Option<&Dataset>,
        total: usize,
        batch_size: usize,
        reduce: &mut dyn Reducer<Error = E>,
    ) -> Result<Evaluation, E> {
        let mut sums = [0.0f64; 3];
        let mut err = None;
        if let Some(d) = local {
            match self.evaluate(d, batch_size) {
                Ok(e) => sums = [e.loss * e.count as f64, e.correct as f64, e.count as f64],
                // Keep the collective calls in step: report after the sum.
                Err(e) => {
                    sums = [f64::NAN, 0.0, 0.0];
                    err = Some(e);
                }
            }
        }
        reduce.sum_f64(&mut sums)?;
        if let Some(e) = err {
            return Err(e.into());
        }
        if sums[2] as usize != total {
            return Err(reduce.out_of_sync(format!(
                "evaluation covered {} samples over {} ranks, the data set has {total}",
                sums[2],
                reduce.size()
            )));
        }
        Ok(Evaluation {
            loss: sums[0] / total as f64,
            accuracy: sums[1] / total as f64,
            correct: sums[1] as usize,
            count: total,
        })
    }

    /// Runs the forward pass over `data` in batches of `batch_size`, calling `each` with the
    /// logits of every batch and the batch's first index.
    fn for_each_batch(
        &mut self,
        data: &Dataset,
        batch_size: usize,
        mut each: impl FnMut(&[f32], &[u8], usize),
    ) -> Result<(), NnError> {
        check_data(self, data, "evaluation")?;
        positive("batch_size", batch_size)?;
        let bs = batch_size.min(data.len());
        self.ensure_forward(bs);
        let all: Vec<usize> = (0..data.len()).collect();
        for (k, idx) in all.chunks(bs).enumerate() {
            let b = idx.len();
            self.fill_eval(data, idx);
            self.forward(b, false);
            each(self.logits(b), &self.ws.y[..b], k * bs);
        }
        Ok(())
    }

    /// Mean loss and accuracy over `data`, forward only, in batches of `batch_size`. The loss
    /// is the mean cross-entropy plus the model's regularisation losses, as Keras's
    /// `evaluate` reports it.
    pub fn evaluate(&mut self, data: &Dataset, batch_size: usize) -> Result<Evaluation, NnError> {
        let c = self.classes;
        let mut p = vec![0.0f32; c];
        let (mut loss, mut correct) = (0.0f64, 0usize);
        self.for_each_batch(data, batch_size, |logits, y, _| {
            for (z, &l) in logits.chunks_exact(c).zip(y) {
                let (lse, arg) = kernels::softmax_row(z, &mut p);
                loss += lse - z[l as usize] as f64;
                correct += (arg == l as usize) as usize;
            }
        })?;
        let count = data.len();
        Ok(Evaluation {
            loss: loss / count as f64 + self.regularization_loss(),
            accuracy: correct as f64 / count as f64,
            correct,
            count,
        })
    }

    /// Predicted class (first arg-max of the output) of every image of `data`.
    pub fn predict_classes(
        &mut self,
        data: &Dataset,
        batch_size: usize,
    ) -> Result<Vec<u8>, NnError> {
        let c = self.classes;
        let mut p = vec![0.0f32; c];
        let mut out = Vec::with_capacity(data.len());
        self.for_each_batch(data, batch_size, |logits, _, _| {
            for z in logits.chunks_exact(c) {
                out.push(kernels::softmax_row(z, &mut p).1 as u8);
            }
        })?;
        Ok(out)
    }

    /// Class probabilities (softmax of the output), `data.len() * classes` values, row-major.
    pub fn predict_proba(
        &mut self,
        data: &Dataset,
        batch_size: usize,
    ) -> Result<Vec<f32>, NnError> {
        let c = self.classes;
        let mut out = vec![0.0f32; data.len() * c];
        self.for_each_batch(data, batch_size, |logits, _, first| {
            for (k, z) in logits.chunks_exact(c).enumerate() {
                kernels::softmax_row(z, &mut out[(first + k) * c..][..c]);
            }
        })?;
        Ok(out)
    }
}

/// Fraction of positions where `pred` equals `truth` (0 for empty input; lengths must match,
/// extra elements of the longer slice are ignored).
pub fn accuracy_score(pred: &[u8], truth: &[u8]) -> f64 {
    let n = pred.len().min(truth.len());
    if n == 0 {
        return 0.0;
    }
    pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / n as f64
}

/// Confusion matrix `[truth][pred]` over `classes` classes; pairs with a label outside the
/// range are ignored.
pub fn confusion_matrix(pred: &[u8], truth: &[u8], classes: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; classes]; classes];
    for (&p, &t) in pred.iter().zip(truth) {
        if (p as usize) < classes && (t as usize) < classes {
            m[t as usize][p as usize] += 1;
        }
    }
    m
}

#[cfg(test)]
mod loop_tests {
    use super::*;
    use crate::{Activation, Padding, Sequential};
    use lamb_optim::{Lamb, LambConfig};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn data(n: usize, seed: u64) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut images = vec![0u8; n * 8 * 8 * 3];
        rng.fill(&mut images[..]);
        let labels = images.chunks(192).map(|im| im[0] % 4).collect();
        Dataset {
            images,
            labels,
            height: 8,
            width: 8,
            channels: 3,
            class_names: (0..4).map(|c| c.to_string()).collect(),
        }
    }

    fn model() -> Model {
        Sequential::new([8, 8, 3])
            .conv2d(4, 3, 1, Padding::Same, Activation::Relu)
            .max_pool2d(2)
            .flatten()
            .dense(4, Activation::Softmax)
            .build(5)
            .unwrap()
    }

    fn lamb() -> Lamb {
        Lamb::new(LambConfig {
            learning_rate: 1e-2,
            ..LambConfig::default()
        })
        .unwrap()
    }

    fn bits(m: &Model) -> Vec<u32> {
        m.flat_params().iter().map(|v| v.to_bits()).collect()
    }

    /// `fit` (the single-process case of `fit_spread`) is, bit for bit, a loop of plain
    /// training steps (forward, loss, backward, optimizer step) over the shuffled batches.
    #[test]
    fn fit_is_a_loop_of_plain_training_steps() {
        let train = data(70, 1);
        let (bs, epochs, seed) = (16, 2, 9);
        let mut fitted = model();
        let mut opt = lamb();
        let mut losses = Vec::new();
        fitted
            .fit(
                &train,
                None,
                &FitOptions::new(bs, epochs, seed),
                &mut opt,
                &mut |ev| {
                    if let FitEvent::Step { metrics, .. } = ev {
                        losses.push(metrics.loss_sum.to_bits());
                    }
                    Ok(())
                },
            )
            .unwrap();
        let mut stepped = model();
        let mut opt2 = lamb();
        let mut losses2 = Vec::new();
        let in_len = train.image_len();
        for e in 0..epochs {
            for idx in epoch_permutation(seed, e as u64, train.len()).chunks(bs) {
                let mut x = vec![0.0f32; idx.len() * in_len];
                let mut y = vec![0u8; idx.len()];
                train.fill_batch(idx, &mut x, &mut y);
                let m = stepped.train_step(&x, &y, &mut opt2).unwrap();
                losses2.push(m.loss_sum.to_bits());
            }
        }
        assert_eq!(losses.len(), 10);
        assert_eq!(losses, losses2);
        assert_eq!(bits(&fitted), bits(&stepped));
        assert_ne!(bits(&fitted), bits(&model()), "training changed nothing");
    }

    /// One process with micro-batches: the gradient of the mean over the batch, as one batch
    /// (up to float summation order).
    #[test]
    fn fit_spread_with_micro_batches_matches_one_batch() {
        let train = data(64, 2);
        let opts = FitOptions::new(32, 2, 3);
        let run = |parts: usize| {
            let mut m = model();
            let mut opt = lamb();
            m.fit_spread(
                &train,
                None,
                &opts,
                &mut OneProcess,
                parts,
                &mut opt,
                &mut |_| Ok(()),
            )
            .unwrap();
            m.flat_params()
        };
        let (one, three) = (run(1), run(3));
        let d = one
            .iter()
            .zip(&three)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d <= 1e-5, "max |w diff| {d}");
        let e = model()
            .fit_spread(
                &train,
                None,
                &opts,
                &mut OneProcess,
                0,
                &mut lamb(),
                &mut |_| Ok(()),
            )
            .unwrap_err();
        assert!(e.to_string().contains("accumulate"), "{e}");
    }
}
