//! The data-parallel training loop: `Model::fit` semantics (shuffle, Keras-style running
//! metrics, events, history, exact resume) with gradient accumulation and a gradient
//! all-reduce across ranks.

use std::sync::atomic::Ordering;
use std::time::Instant;

use lamb_data::{epoch_permutation, Dataset};
use lamb_nn::{
    split_even, EpochRecord, Evaluation, FitEvent, FitOptions, FitProgress, GradientAccumulator,
    History, Model, NnError, StepMetrics, TelemetryAccum, TensorStats,
};
use lamb_optim::{Optimizer, StepOutcome};

use crate::{Communicator, DistError};

/// How a fit is spread: over the ranks of `comm`, each rank's share of a global batch computed
/// in `accumulate` micro-batches.
pub struct Parallel<'a> {
    /// The ranks (use [`crate::SingleProcess`] for one process).
    pub comm: &'a mut dyn Communicator,
    /// Micro-batches per rank and step (gradient accumulation); 1 computes each rank's share
    /// at once.
    pub accumulate: usize,
}

/// The slice of `global` (one global batch's indices) that `rank` of `size` computes:
/// contiguous, sizes differing by at most one, empty when the batch has fewer samples than
/// ranks.
pub fn shard(global: &[usize], rank: usize, size: usize) -> &[usize] {
    let n = global.len();
    let size = size.max(1);
    let rank = rank.min(size - 1);
    &global[rank * n / size..(rank + 1) * n / size]
}

/// Leaves in the model's gradient buffers this rank's weighted share of the gradient of the
/// mean loss over a global batch of `global_count` samples: `sum_k (b_k / global_count) *
/// grad_k` over `parts` micro-batches of `indices`. Returns the local metrics. With one part
/// covering the whole global batch (one process, no accumulation) the engine's gradients are
/// left untouched (bit-identical to `Model::fit`).
pub fn local_gradients(
    model: &mut Model,
    data: &Dataset,
    indices: &[usize],
    global_count: usize,
    parts: usize,
    acc: &mut GradientAccumulator,
) -> Result<StepMetrics, NnError> {
    if parts == 1 && indices.len() == global_count && global_count > 0 {
        return model.compute_gradients_on(data, indices);
    }
    acc.zero();
    let mut m = StepMetrics {
        loss_sum: 0.0,
        correct: 0,
        count: 0,
        applied: false,
    };
    for part in split_even(indices, parts) {
        if part.is_empty() {
            continue;
        }
        let pm = model.compute_gradients_on(data, part)?;
        acc.add_scaled(model, part.len() as f32 / global_count as f32)?;
        m.loss_sum += pm.loss_sum;
        m.correct += pm.correct;
        m.count += pm.count;
    }
    acc.write_into(model)?;
    Ok(m)
}

fn stats(a: &TelemetryAccum) -> TensorStats {
    TensorStats {
        name: a.name.clone(),
        mean: if a.count > 0 {
            a.sum / a.count as f64
        } else {
            f64::NAN
        },
        min: a.min,
        max: a.max,
        last: a.last,
        weight_norm_last: a.weight_norm_last,
        update_norm_last: a.update_norm_last,
    }
}

fn positive(name: &'static str, v: usize) -> Result<(), DistError> {
    if v == 0 {
        return Err(DistError::InvalidArgument {
            name,
            value: "0".into(),
            valid: "at least 1".into(),
        });
    }
    Ok(())
}

/// Loss and accuracy over `data`, each rank evaluating its contiguous share (forward only,
/// batches of `batch_size`) and the sums all-reduced: every rank gets the same result. Every
/// rank must call it with the same data.
pub fn evaluate(
    model: &mut Model,
    data: &Dataset,
    batch_size: usize,
    comm: &mut dyn Communicator,
) -> Result<Evaluation, DistError> {
    if comm.size() == 1 {
        return Ok(model.evaluate(data, batch_size)?);
    }
    let all: Vec<usize> = (0..data.len()).collect();
    let mine = shard(&all, comm.rank(), comm.size());
    let local = if mine.is_empty() {
        None
    } else {
        Some(data.subset(mine))
    };
    evaluate_shard(model, local.as_ref(), data.len(), batch_size, comm)
}

fn evaluate_shard(
    model: &mut Model,
    local: Option<&Dataset>,
    total: usize,
    batch_size: usize,
    comm: &mut dyn Communicator,
) -> Result<Evaluation, DistError> {
    let mut sums = [0.0f64; 3];
    let mut err = None;
    if let Some(d) = local {
        match model.evaluate(d, batch_size) {
            Ok(e) => sums = [e.loss * e.count as f64, e.correct as f64, e.count as f64],
            // Keep the collective calls in step: report after the all-reduce.
            Err(e) => {
                sums = [f64::NAN, 0.0, 0.0];
                err = Some(e);
            }
        }
    }
    comm.all_reduce_sum_f64(&mut sums)?;
    if let Some(e) = err {
        return Err(e.into());
    }
    if sums[2] as usize != total {
        return Err(DistError::OutOfSync(format!(
            "evaluation covered {} samples over {} ranks, the data set has {total}",
            sums[2],
            comm.size()
        )));
    }
    let count = total;
    Ok(Evaluation {
        loss: sums[0] / count as f64,
        accuracy: sums[1] / count as f64,
        correct: sums[1] as usize,
        count,
    })
}

/// Checks that every rank holds bit-identical weights (rank 0's are broadcast and compared).
pub fn check_in_sync(model: &Model, comm: &mut dyn Communicator) -> Result<(), DistError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mine = model.flat_params();
    let mut root = mine.clone();
    comm.broadcast_f32(&mut root, 0)?;
    let differing = mine
        .iter()
        .zip(&root)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let mut counts = [differing as f64, (differing > 0) as u8 as f64];
    comm.all_reduce_sum_f64(&mut counts)?;
    if counts[0] > 0.0 {
        return Err(DistError::OutOfSync(format!(
            "{} rank(s) hold weights different from rank 0's ({} values differ in all)",
            counts[1], counts[0]
        )));
    }
    Ok(())
}

/// Copies rank 0's weights, optimizer state (when given) and fit progress to every rank, e.g.
/// after only rank 0 read a checkpoint.
pub fn sync_from_root(
    model: &mut Model,
    opt: Option<&mut dyn Optimizer>,
    progress: &mut FitProgress,
    comm: &mut dyn Communicator,
) -> Result<(), DistError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut w = model.flat_params();
    comm.broadcast_f32(&mut w, 0)?;
    model.set_flat_params(&w)?;
    let mut bytes = if comm.rank() == 0 {
        serde_json::to_vec(progress).map_err(|e| DistError::State(e.to_string()))?
    } else {
        Vec::new()
    };
    comm.broadcast_bytes(&mut bytes, 0)?;
    *progress = serde_json::from_slice(&bytes)
        .map_err(|e| DistError::State(format!("fit progress: {e}")))?;
    if let Some(opt) = opt {
        let mut bytes = if comm.rank() == 0 {
            serde_json::to_vec(&opt.state()).map_err(|e| DistError::State(e.to_string()))?
        } else {
            Vec::new()
        };
        comm.broadcast_bytes(&mut bytes, 0)?;
        let st = serde_json::from_slice(&bytes)
            .map_err(|e| DistError::State(format!("optimizer state: {e}")))?;
        opt.load_state(&st)
            .map_err(|e| DistError::State(e.to_string()))?;
    }
    Ok(())
}

/// `Model::fit` across the ranks of `par.comm` with `par.accumulate` micro-batches per rank:
/// same shuffle (`epoch_permutation(opts.seed, epoch, n)`), same global batches, same events,
/// history and resume semantics. Every rank must call it with the same data, options and
/// identical model and optimizer (same seed, or [`sync_from_root`]).
///
/// Each step: global batch `b` is split into contiguous per-rank shards (sizes differ by at
/// most one), each rank sums `(b_k / b) * grad_k` over its micro-batches, the flat gradient is
/// all-reduced (sum), then every rank applies the same optimizer step, so weights stay
/// identical and per-tensor norms (LAMB's trust ratios) are global. Loss, accuracy and the stop
/// flag are all-reduced too: events report global metrics on every rank, and a stop seen by
/// any rank stops all of them at the same step. Validation is sharded and reduced. With one
/// process and `accumulate == 1` the result is bit-identical to `Model::fit`.
///
/// Only rank 0 should write files in `on_event`.
pub fn fit(
    model: &mut Model,
    train: &Dataset,
    val: Option<&Dataset>,
    opts: &FitOptions,
    par: &mut Parallel<'_>,
    opt: &mut dyn Optimizer,
    on_event: &mut dyn FnMut(&FitEvent<'_>) -> Result<(), NnError>,
) -> Result<History, DistError> {
    positive("batch_size", opts.batch_size)?;
    positive("val_batch_size", opts.val_batch_size)?;
    positive("accumulate", par.accumulate)?;
    if train.is_empty() {
        return Err(NnError::DataMismatch("training data set is empty".into()).into());
    }
    let comm = &mut *par.comm;
    let (rank, size) = (comm.rank(), comm.size());
    let n = train.len();
    let bs = opts.batch_size;
    let steps = n.div_ceil(bs);
    let mut p = opts.start.clone();
    if p.step > steps || (p.step > 0 && p.epoch >= opts.epochs) {
        return Err(DistError::InvalidArgument {
            name: "start",
            value: format!("epoch {} step {}", p.epoch, p.step),
            valid: format!(
                "a step of at most {steps} in an epoch below {}",
                opts.epochs
            ),
        });
    }
    // Every rank must see the same data: compare sizes (cheap) before the first collective
    // that would otherwise hang or mix up shards.
    let mut sizes = [n as f64, val.map_or(0, |v| v.len()) as f64, 1.0];
    comm.all_reduce_sum_f64(&mut sizes)?;
    if sizes[0] != (n * size) as f64 || sizes[1] != (val.map_or(0, |v| v.len()) * size) as f64 {
        return Err(DistError::OutOfSync(format!(
            "ranks have different data sets (rank {rank}: {n} training, {} validation images)",
            val.map_or(0, |v| v.len())
        )));
    }
    let val_shard: Option<Dataset> = match val {
        Some(v) if size > 1 => {
            let all: Vec<usize> = (0..v.len()).collect();
            let mine = shard(&all, rank, size);
            (!mine.is_empty()).then(|| v.subset(mine))
        }
        _ => None,
    };
    let mut acc = GradientAccumulator::new(model);
    let stop_flag = opts.stop.clone();
    let stopped = || stop_flag.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
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
            let local = local_gradients(model, train, mine, b, par.accumulate, &mut acc)?;
            let mut m = local.clone();
            if size > 1 {
                // Metrics and the stop flag first (small), so that every rank agrees on
                // stopping or failing before the large all-reduce.
                let mut sums = [
                    local.loss_sum,
                    local.correct as f64,
                    local.count as f64,
                    stopped() as u8 as f64,
                ];
                comm.all_reduce_sum_f64(&mut sums)?;
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
                    return Err(DistError::OutOfSync(format!(
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
            if size > 1 {
                // The model holds this rank's weighted share; sum the shares.
                model.flat_gradients_into(acc.as_mut_slice())?;
                comm.all_reduce_sum_f32(acc.as_mut_slice())?;
                acc.write_into(model)?;
            }
            let outcome = model.apply_gradients(opt, e + 1, s + 1)?;
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
        }
        let t = Instant::now();
        let ev = match val {
            Some(v) if size == 1 => Some(model.evaluate(v, opts.val_batch_size)?),
            Some(v) => Some(evaluate_shard(
                model,
                val_shard.as_ref(),
                v.len(),
                opts.val_batch_size,
                comm,
            )?),
            None => None,
        };
        let val_seconds = t.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: e + 1,
            loss: p.loss_sum / p.seen.max(1) as f64,
            accuracy: p.correct as f64 / p.seen.max(1) as f64,
            val_loss: ev.as_ref().map(|v| v.loss),
            val_accuracy: ev.as_ref().map(|v| v.accuracy),
            train_seconds: p.train_seconds,
            val_seconds,
            trust_ratios: p.telemetry.iter().map(stats).collect(),
        };
        p.history.epochs.push(record.clone());
        p = FitProgress {
            epoch: e + 1,
            history: p.history,
            ..FitProgress::default()
        };
        on_event(&FitEvent::EpochEnd {
            record: &record,
            progress: &p,
        })?;
    }
    Ok(p.history)
}
