//! Gradients without the optimizer: compute the gradients of one (micro-)batch, read and write
//! them as one flat buffer in parameter order, accumulate several micro-batches, and apply an
//! optimizer step to whatever gradients the model holds. These are the pieces gradient
//! accumulation and data-parallel training (`lamb-dist`) are built from.

use lamb_data::Dataset;
use lamb_optim::{Optimizer, ParamMut, StepOutcome};

use crate::{Model, NnError, StepMetrics};

/// Flat f32 sum of weighted gradients, in model parameter order (`Model::param_names`).
///
/// Accumulating micro-batch `k` of `b_k` samples with weight `b_k / B` (where `B` is the sum of
/// the `b_k`) gives the gradient of the mean loss over all `B` samples, as one batch would.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientAccumulator {
    sum: Vec<f32>,
}

impl GradientAccumulator {
    /// A zeroed accumulator sized for `model`'s parameters.
    pub fn new(model: &Model) -> Self {
        GradientAccumulator {
            sum: vec![0.0; model.param_count()],
        }
    }

    /// Sets every accumulated value to zero.
    pub fn zero(&mut self) {
        self.sum.iter_mut().for_each(|v| *v = 0.0);
    }

    /// Adds `weight` times the gradients the model holds now.
    pub fn add_scaled(&mut self, model: &Model, weight: f32) -> Result<(), NnError> {
        model.add_gradients_to(&mut self.sum, weight)
    }

    /// Copies the accumulated gradients into the model's gradient buffers.
    pub fn write_into(&self, model: &mut Model) -> Result<(), NnError> {
        model.set_flat_gradients(&self.sum)
    }

    /// The accumulated values (e.g. to all-reduce them across processes).
    pub fn as_slice(&self) -> &[f32] {
        &self.sum
    }

    /// The accumulated values, mutable (e.g. as the buffer of an in-place all-reduce).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.sum
    }
}

fn length(what: &str, found: usize, expected: usize) -> Result<(), NnError> {
    if found != expected {
        return Err(NnError::ParameterLength {
            name: what.to_string(),
            found,
            expected,
        });
    }
    Ok(())
}

impl Model {
    /// Forward, loss and backward on a batch already in f32 NHWC (`x` holds `y.len()` images):
    /// afterwards every parameter's gradient buffer holds the gradient of the MEAN loss over
    /// this batch. No parameter changes. The returned `loss_sum` may be non-finite (the caller
    /// decides; gradients are then meaningless); `applied` is false.
    pub fn compute_gradients(&mut self, x: &[f32], y: &[u8]) -> Result<StepMetrics, NnError> {
        let batch = self.load_batch(x, y)?;
        Ok(self.gradients_of_loaded(batch))
    }

    /// Like [`Model::compute_gradients`] on the images of `data` at `indices` (scaled by 1/255,
    /// as `fit` does), without an intermediate copy.
    pub fn compute_gradients_on(
        &mut self,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<StepMetrics, NnError> {
        let batch = indices.len();
        if batch == 0 {
            return Err(NnError::InvalidArgument {
                name: "batch size",
                value: "0".into(),
                valid: "at least 1".into(),
            });
        }
        let [h, w, c] = self.input_shape;
        if (data.height, data.width, data.channels) != (h, w, c) {
            return Err(NnError::DataMismatch(format!(
                "images are {}x{}x{}, the model expects {h}x{w}x{c}",
                data.height, data.width, data.channels
            )));
        }
        if data.images.len() != data.len() * data.image_len() {
            return Err(NnError::DataMismatch(format!(
                "{} pixel bytes for {} images of {} bytes",
                data.images.len(),
                data.len(),
                data.image_len()
            )));
        }
        for &i in indices {
            match data.labels.get(i) {
                None => {
                    return Err(NnError::DataMismatch(format!(
                        "index {i} is outside the {} images",
                        data.len()
                    )))
                }
                Some(&l) if l as usize >= self.classes => {
                    return Err(NnError::DataMismatch(format!(
                        "label {l} at index {i} is not below the {} classes",
                        self.classes
                    )))
                }
                Some(_) => {}
            }
        }
        self.ensure_backward(batch);
        self.fill_train(data, indices);
        Ok(self.gradients_of_loaded(batch))
    }

    fn gradients_of_loaded(&mut self, batch: usize) -> StepMetrics {
        self.forward(batch, true);
        let (loss_sum, correct) = self.loss_and_grad(batch);
        self.backward(batch);
        StepMetrics {
            loss_sum,
            correct,
            count: batch,
            applied: false,
        }
    }

    /// Writes all gradients, in parameter order, into `out` (`param_count()` values).
    pub fn flat_gradients_into(&self, out: &mut [f32]) -> Result<(), NnError> {
        length("flat gradient buffer", out.len(), self.param_count())?;
        let mut off = 0;
        for p in self.param_iter() {
            out[off..off + p.grad.len()].copy_from_slice(&p.grad);
            off += p.grad.len();
        }
        Ok(())
    }

    /// All gradients, in parameter order, as one vector.
    pub fn flat_gradients(&self) -> Vec<f32> {
        self.param_iter()
            .flat_map(|p| p.grad.iter().copied())
            .collect()
    }

    /// Replaces all gradients from one flat buffer in parameter order (`param_count()` values).
    pub fn set_flat_gradients(&mut self, flat: &[f32]) -> Result<(), NnError> {
        length("flat gradient buffer", flat.len(), self.param_count())?;
        let mut off = 0;
        for p in self.param_iter_mut() {
            let n = p.grad.len();
            p.grad.copy_from_slice(&flat[off..off + n]);
            off += n;
        }
        Ok(())
    }

    /// Adds `weight` times every gradient to `out` (flat, parameter order, `param_count()` values).
    pub fn add_gradients_to(&self, out: &mut [f32], weight: f32) -> Result<(), NnError> {
        length("flat gradient buffer", out.len(), self.param_count())?;
        let mut off = 0;
        for p in self.param_iter() {
            for (o, g) in out[off..off + p.grad.len()].iter_mut().zip(&p.grad) {
                *o += weight * g;
            }
            off += p.grad.len();
        }
        Ok(())
    }

    /// All parameter values, in parameter order, as one vector.
    pub fn flat_params(&self) -> Vec<f32> {
        self.param_iter()
            .flat_map(|p| p.value.iter().copied())
            .collect()
    }

    /// Replaces all parameter values from one flat buffer in parameter order.
    pub fn set_flat_params(&mut self, flat: &[f32]) -> Result<(), NnError> {
        length("flat parameter buffer", flat.len(), self.param_count())?;
        let mut off = 0;
        for p in self.param_iter_mut() {
            let n = p.value.len();
            p.value.copy_from_slice(&flat[off..off + n]);
            off += n;
        }
        Ok(())
    }

    /// One optimizer step with the gradients the model holds now (every tensor, parameter
    /// order). `epoch` and `step` (1-based; 0 outside a loop) only label errors.
    pub fn apply_gradients(
        &mut self,
        opt: &mut dyn Optimizer,
        epoch: usize,
        step: usize,
    ) -> Result<StepOutcome, NnError> {
        let mut views: Vec<ParamMut<'_>> = self
            .param_iter_mut()
            .map(|p| ParamMut::new(&p.name, &p.shape, &mut p.value, &p.grad))
            .collect();
        opt.step(&mut views)
            .map_err(|cause| NnError::Optimizer { epoch, step, cause })
    }

    /// One optimizer step on the gradient of the mean loss over `indices` of `data`, computed
    /// in `micro_batches` parts (gradient accumulation: part `k` of `b_k` samples weighs
    /// `b_k / indices.len()`; part sizes differ by at most one). Memory is that of the largest
    /// part. With one part this is exactly a plain training step. Errors on a non-finite loss
    /// before changing any parameter.
    #[allow(clippy::too_many_arguments)]
    pub fn accumulated_step(
        &mut self,
        data: &Dataset,
        indices: &[usize],
        micro_batches: usize,
        acc: &mut GradientAccumulator,
        opt: &mut dyn Optimizer,
        epoch: usize,
        step: usize,
    ) -> Result<StepMetrics, NnError> {
        let m = self.accumulate_gradients(data, indices, micro_batches, acc)?;
        if !m.loss_sum.is_finite() {
            return Err(NnError::NonFiniteLoss {
                epoch,
                step,
                value: m.loss_sum / m.count.max(1) as f64,
            });
        }
        let outcome = self.apply_gradients(opt, epoch, step)?;
        Ok(StepMetrics {
            applied: outcome == StepOutcome::Applied,
            ..m
        })
    }

    /// Leaves in the model's gradient buffers `sum_k (b_k / B) * grad_k` over `micro_batches`
    /// contiguous parts of `indices` (`B = indices.len()`; empty parts are skipped), i.e. the
    /// gradient of the mean loss over all of `indices`, and returns the summed metrics. With
    /// one part no accumulator arithmetic happens (bit-identical to one batch). Empty
    /// `indices` leave zero gradients and zero metrics.
    pub fn accumulate_gradients(
        &mut self,
        data: &Dataset,
        indices: &[usize],
        micro_batches: usize,
        acc: &mut GradientAccumulator,
    ) -> Result<StepMetrics, NnError> {
        if micro_batches == 0 {
            return Err(NnError::InvalidArgument {
                name: "micro_batches",
                value: "0".into(),
                valid: "at least 1".into(),
            });
        }
        length("gradient accumulator", acc.sum.len(), self.param_count())?;
        local_gradients(self, data, indices, indices.len(), micro_batches, acc)
    }
}

/// Leaves in the model's gradient buffers this process's weighted share of the gradient of the
/// mean loss over a global batch of `global_count` samples: `sum_k (b_k / global_count) *
/// grad_k` over `parts` micro-batches of `indices` (this process's shard of the batch; empty
/// parts are skipped). Returns the local metrics. With one part covering the whole global
/// batch the engine's gradients are left untouched (no accumulator arithmetic).
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

/// Splits `items` into `parts` contiguous slices whose lengths differ by at most one (part `k`
/// is `items[k*n/parts..(k+1)*n/parts]`); some are empty when `parts > len`.
pub fn split_even<T>(items: &[T], parts: usize) -> Vec<&[T]> {
    let parts = parts.max(1);
    let n = items.len();
    (0..parts)
        .map(|k| &items[k * n / parts..(k + 1) * n / parts])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activation, Padding, Sequential};
    use lamb_optim::{build, OptimizerKind, OptimizerSpec};
    use rand::{Rng, SeedableRng};

    /// A small model with every layer kind, on 8x8x3 inputs.
    fn small_model(seed: u64) -> Model {
        Sequential::new([8, 8, 3])
            .conv2d(6, 3, 1, Padding::Same, Activation::Relu)
            .max_pool2d(2)
            .conv2d(8, 3, 1, Padding::Valid, Activation::Relu)
            .flatten()
            .dense(16, Activation::Relu)
            .dense(10, Activation::Softmax)
            .build(seed)
            .unwrap()
    }

    fn synthetic(n: usize, seed: u64) -> Dataset {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let labels: Vec<u8> = (0..n).map(|_| rng.gen_range(0..10)).collect();
        // Class-dependent brightness plus noise, so that training makes progress.
        let mut images = Vec::with_capacity(n * 192);
        for &l in &labels {
            for k in 0..192usize {
                images.push((l as usize * 20 + k % 7) as u8 + rng.gen_range(0..40u8));
            }
        }
        Dataset {
            images,
            labels,
            height: 8,
            width: 8,
            channels: 3,
            class_names: (0..10).map(|c| c.to_string()).collect(),
        }
    }

    fn lamb() -> Box<dyn Optimizer> {
        let spec = OptimizerSpec {
            learning_rate: Some(1e-2),
            ..OptimizerSpec::new(OptimizerKind::Lamb)
        };
        build(&spec).unwrap()
    }

    /// Trains `steps` steps over consecutive global batches of `batch` with `k` micro-batches.
    /// `uniform` weighs every micro-batch 1/k instead of b_k/B (wrong for uneven splits; used
    /// to show the test can tell).
    fn train(k: usize, steps: usize, batch: usize, uniform: bool) -> Vec<f32> {
        let data = synthetic(steps * batch, 3);
        let mut model = small_model(11);
        let mut opt = lamb();
        let mut acc = GradientAccumulator::new(&model);
        let all: Vec<usize> = (0..data.len()).collect();
        for (s, idx) in all.chunks(batch).enumerate() {
            if uniform {
                acc.zero();
                for part in split_even(idx, k) {
                    model.compute_gradients_on(&data, part).unwrap();
                    acc.add_scaled(&model, 1.0 / k as f32).unwrap();
                }
                acc.write_into(&mut model).unwrap();
                model.apply_gradients(opt.as_mut(), 1, s + 1).unwrap();
            } else {
                let m = model
                    .accumulated_step(&data, idx, k, &mut acc, opt.as_mut(), 1, s + 1)
                    .unwrap();
                assert_eq!(m.count, idx.len());
                assert!(m.applied);
            }
        }
        model.flat_params()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Tolerance of the accumulation and data-parallel equivalence tests: the same arithmetic
    /// up to float summation order (bias gradients and GEMM reductions over the batch are
    /// summed over different partitions; each partial sum rounds at ~6e-8 relative). Over a few
    /// LAMB steps at learning rate 1e-2 the weights move by ~2e-2; the measured differences are
    /// ~6e-8 (one f32 ulp at these magnitudes), so 1e-5 (0.05% of the movement) leaves headroom
    /// while a wrongly weighted accumulation (checked below) differs by ~8e-3.
    const TOL: f32 = 1e-5;

    #[test]
    fn one_part_is_exactly_train_step() {
        let data = synthetic(40, 5);
        let mut a = small_model(1);
        let mut b = small_model(1);
        let (mut oa, mut ob) = (lamb(), lamb());
        let mut acc = GradientAccumulator::new(&b);
        let idx: Vec<usize> = (0..40).collect();
        let mut x = vec![0.0; 40 * 192];
        let mut y = vec![0u8; 40];
        data.fill_batch(&idx, &mut x, &mut y);
        for s in 0..3 {
            let ma = a.train_step(&x, &y, oa.as_mut()).unwrap();
            let mb = b
                .accumulated_step(&data, &idx, 1, &mut acc, ob.as_mut(), 1, s + 1)
                .unwrap();
            assert_eq!(ma, mb);
        }
        assert_eq!(a.flat_params(), b.flat_params());
    }

    #[test]
    fn accumulation_matches_one_big_batch() {
        let (steps, batch) = (5, 60);
        let one = train(1, steps, batch, false);
        let start = small_model(11).flat_params();
        let moved = max_abs_diff(&one, &start);
        assert!(
            moved > 1e-3,
            "training must move the weights (moved {moved})"
        );
        for k in [2, 3, 7] {
            let acc = train(k, steps, batch, false);
            let d = max_abs_diff(&one, &acc);
            eprintln!("accumulate {k}: max |w diff| {d:e} (weights moved {moved:e})");
            assert!(d <= TOL, "accumulate {k}: max |w diff| {d} > {TOL}");
        }
        // 7 parts of 60 are uneven (8 or 9 samples): equal weights are wrong, and visibly so.
        let wrong = train(7, steps, batch, true);
        let d = max_abs_diff(&one, &wrong);
        eprintln!("accumulate 7 with equal weights: max |w diff| {d:e}");
        assert!(
            d > 10.0 * TOL,
            "a wrongly weighted accumulation should differ (got {d})"
        );
    }

    #[test]
    fn gradients_of_parts_sum_to_gradient_of_whole() {
        let data = synthetic(30, 9);
        let mut model = small_model(4);
        let idx: Vec<usize> = (0..30).collect();
        model.compute_gradients_on(&data, &idx).unwrap();
        let whole = model.flat_gradients();
        let mut acc = GradientAccumulator::new(&model);
        let m = model
            .accumulate_gradients(&data, &idx, 4, &mut acc)
            .unwrap();
        assert_eq!(m.count, 30);
        let parts = model.flat_gradients();
        let scale = whole.iter().fold(0.0f32, |a, g| a.max(g.abs()));
        assert!(scale > 0.0);
        assert!(max_abs_diff(&whole, &parts) <= 1e-5 * scale);
        // Round trip and length checks.
        let mut buf = vec![0.0; model.param_count()];
        model.flat_gradients_into(&mut buf).unwrap();
        assert_eq!(buf, parts);
        assert!(model.set_flat_gradients(&buf[1..]).is_err());
        assert!(model.flat_gradients_into(&mut buf[1..]).is_err());
        let w = model.flat_params();
        model.set_flat_params(&w).unwrap();
        assert_eq!(model.flat_params(), w);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let data = synthetic(10, 1);
        let mut model = small_model(2);
        let mut acc = GradientAccumulator::new(&model);
        assert!(model.compute_gradients_on(&data, &[]).is_err());
        assert!(model.compute_gradients_on(&data, &[10]).is_err());
        assert!(model
            .accumulate_gradients(&data, &[0, 1], 0, &mut acc)
            .is_err());
        assert!(model.compute_gradients(&[0.0; 10], &[1]).is_err());
        assert!(model.compute_gradients(&[0.0; 192], &[10]).is_err());
        let m = model.accumulate_gradients(&data, &[], 3, &mut acc).unwrap();
        assert_eq!((m.count, m.correct), (0, 0));
        assert!(model.flat_gradients().iter().all(|&g| g == 0.0));
    }

    #[test]
    fn split_even_sizes() {
        let v: Vec<usize> = (0..10).collect();
        let s: Vec<usize> = split_even(&v, 3).iter().map(|p| p.len()).collect();
        assert_eq!(s, vec![3, 3, 4]);
        assert_eq!(split_even(&v, 3).concat(), v);
        let s: Vec<usize> = split_even(&v[..2], 4).iter().map(|p| p.len()).collect();
        assert_eq!(s, vec![0, 1, 0, 1]);
    }
}
