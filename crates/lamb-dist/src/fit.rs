//! The data-parallel training loop: `lamb_nn::Model::fit_spread` (the one epoch loop: shuffle,
//! Keras-style running metrics, events, history, exact resume, gradient accumulation) with the
//! sums done by a [`Communicator`], plus the checks and broadcasts around it.

use lamb_data::Dataset;
use lamb_nn::{Evaluation, FitEvent, FitOptions, FitProgress, History, Model, NnError, Reducer};
use lamb_optim::Optimizer;

pub use lamb_nn::{local_gradients, shard};

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

/// The engine's [`Reducer`] over a [`Communicator`]: sums are all-reduces.
struct CommReducer<'a>(&'a mut dyn Communicator);

impl Reducer for CommReducer<'_> {
    type Error = DistError;
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<(), DistError> {
        self.0.all_reduce_sum_f64(buf)
    }
    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        self.0.all_reduce_sum_f32(buf)
    }
    fn out_of_sync(&self, message: String) -> DistError {
        DistError::OutOfSync(message)
    }
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
    model.evaluate_spread(data, batch_size, &mut CommReducer(comm))
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
/// the engine's one epoch loop ([`Model::fit_spread`]) with the gradient, metric and stop-flag
/// sums done by all-reduce. Same shuffle (`epoch_permutation(opts.seed, epoch, n)`), same
/// global batches, same events, history and resume semantics. Every rank must call it with the
/// same data, options and identical model and optimizer (same seed, or [`sync_from_root`]).
///
/// Each step: global batch `b` is split into contiguous per-rank shards (sizes differ by at
/// most one), each rank sums `(b_k / b) * grad_k` over its micro-batches, the flat gradient is
/// all-reduced (sum), then every rank applies the same optimizer step, so weights stay
/// identical and per-tensor norms (LAMB's trust ratios) are global. Loss, accuracy and the stop
/// flag are all-reduced too: events report global metrics on every rank, and a stop seen by
/// any rank stops all of them at the same step. Validation is sharded and reduced. With one
/// process and `accumulate == 1` the result is bit-identical to `Model::fit` (the same loop).
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
    model.fit_spread(
        train,
        val,
        opts,
        &mut CommReducer(&mut *par.comm),
        par.accumulate,
        opt,
        on_event,
    )
}
