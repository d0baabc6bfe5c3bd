//! Data-parallel and accumulated training against plain single-process training, in the
//! default build (ranks as threads through `ThreadCommunicator`; the same loop runs over MPI).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lamb_data::Dataset;
use lamb_dist::{
    fit, sync_from_root, synthetic, Communicator, Parallel, SingleProcess, ThreadCommunicator,
};
use lamb_nn::{EpochRecord, FitEvent, FitOptions, FitProgress, History, Model};
use lamb_optim::{build, Optimizer, OptimizerKind, OptimizerSpec};

/// Tolerance on weights after training, data-parallel or accumulated vs one process and one
/// batch. The arithmetic is the same up to float summation order: per-sample gradient
/// contributions (bias sums, GEMM reductions over the batch) are summed per shard or
/// micro-batch and then across them, each f32 partial sum rounding at ~6e-8 relative; the
/// weighting b_k/B multiplies in one more rounding. LAMB's update divides by sqrt(v) and the
/// trust ratio, which keeps these differences at the same relative size. Measured: 1.5e-7 to
/// 8e-7 over 8 steps at learning rate 1e-2 while weights move by up to 4.3e-2; 1e-5 leaves
/// headroom for other CPUs' summation orders and is still 0.02% of the movement (a wrongly
/// weighted accumulation, tested in lamb-nn, differs by 8e-3).
const TOL: f32 = 1e-5;

fn model() -> Model {
    synthetic::small_cnn(7).unwrap()
}

fn lamb() -> Box<dyn Optimizer> {
    build(&OptimizerSpec {
        learning_rate: Some(1e-2),
        ..OptimizerSpec::new(OptimizerKind::Lamb)
    })
    .unwrap()
}

fn data() -> (Dataset, Dataset) {
    (
        synthetic::dataset(400, [8, 8, 3], 10, 1),
        synthetic::dataset(130, [8, 8, 3], 10, 2),
    )
}

struct Run {
    weights: Vec<f32>,
    history: History,
    steps: Vec<(usize, usize, f64)>,
    stopped: Option<FitProgress>,
}

fn run_dist(
    comm: &mut dyn Communicator,
    train: &Dataset,
    val: &Dataset,
    opts: &FitOptions,
    accumulate: usize,
) -> Run {
    let mut m = model();
    let mut opt = lamb();
    let mut steps = Vec::new();
    let mut stopped = None;
    let mut par = Parallel { comm, accumulate };
    let history = fit(
        &mut m,
        train,
        Some(val),
        opts,
        &mut par,
        opt.as_mut(),
        &mut |ev| {
            match ev {
                FitEvent::Step {
                    epoch,
                    step,
                    metrics,
                    ..
                } => steps.push((*epoch, *step, metrics.loss_sum)),
                FitEvent::Stopped { progress } => stopped = Some((*progress).clone()),
                FitEvent::EpochEnd { .. } | FitEvent::Eval { .. } => {}
                FitEvent::TargetReached { .. } => unreachable!("no target in these fits"),
            }
            Ok(())
        },
    )
    .unwrap();
    Run {
        weights: m.flat_params(),
        history,
        steps,
        stopped,
    }
}

fn run_plain(train: &Dataset, val: &Dataset, opts: &FitOptions) -> Run {
    let mut m = model();
    let mut opt = lamb();
    let mut steps = Vec::new();
    let history = m
        .fit(train, Some(val), opts, opt.as_mut(), &mut |ev| {
            if let FitEvent::Step {
                epoch,
                step,
                metrics,
                ..
            } = ev
            {
                steps.push((*epoch, *step, metrics.loss_sum));
            }
            Ok(())
        })
        .unwrap();
    Run {
        weights: m.flat_params(),
        history,
        steps,
        stopped: None,
    }
}

/// Runs `f` on `size` thread ranks and returns the results in rank order.
fn on_ranks<T: Send>(size: usize, f: impl Fn(&mut dyn Communicator) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let hs: Vec<_> = ThreadCommunicator::group(size)
            .into_iter()
            .map(|mut c| {
                let f = &f;
                s.spawn(move || f(&mut c))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn without_times(h: &History) -> Vec<EpochRecord> {
    h.epochs
        .iter()
        .map(|r| EpochRecord {
            train_seconds: 0.0,
            val_seconds: 0.0,
            ..r.clone()
        })
        .collect()
}

fn assert_close_history(a: &History, b: &History) {
    assert_eq!(a.epochs.len(), b.epochs.len());
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert!(
            (x.loss - y.loss).abs() < 1e-5,
            "loss {} vs {}",
            x.loss,
            y.loss
        );
        assert!(
            (x.accuracy - y.accuracy).abs() < 1e-9 + 2.0 / 400.0,
            "accuracy {} vs {}",
            x.accuracy,
            y.accuracy
        );
        assert!((x.val_loss.unwrap() - y.val_loss.unwrap()).abs() < 1e-5);
    }
}

#[test]
fn single_process_without_accumulation_is_model_fit_bit_for_bit() {
    let (train, val) = data();
    let opts = FitOptions::new(100, 2, 3);
    let plain = run_plain(&train, &val, &opts);
    let dist = run_dist(&mut SingleProcess::new(), &train, &val, &opts, 1);
    assert_eq!(plain.weights, dist.weights);
    assert_eq!(without_times(&plain.history), without_times(&dist.history));
    assert_eq!(plain.steps, dist.steps);
}

#[test]
fn accumulation_matches_one_big_batch() {
    let (train, val) = data();
    let opts = FitOptions::new(100, 2, 3);
    let plain = run_plain(&train, &val, &opts);
    let start = model().flat_params();
    let moved = max_abs_diff(&plain.weights, &start);
    assert!(
        moved > 1e-2,
        "training must move the weights (moved {moved})"
    );
    for k in [2, 3] {
        let acc = run_dist(&mut SingleProcess::new(), &train, &val, &opts, k);
        let d = max_abs_diff(&plain.weights, &acc.weights);
        eprintln!("accumulate {k}: max |w diff| {d:e}, weights moved {moved:e}");
        assert!(d <= TOL, "accumulate {k}: {d} > {TOL}");
        assert_close_history(&plain.history, &acc.history);
    }
}

#[test]
fn two_ranks_at_batch_100_match_one_process() {
    let (train, val) = data();
    let opts = FitOptions::new(100, 2, 3);
    let plain = run_plain(&train, &val, &opts);
    for accumulate in [1, 2] {
        let runs = on_ranks(2, |c| run_dist(c, &train, &val, &opts, accumulate));
        assert_eq!(
            runs[0].weights, runs[1].weights,
            "ranks must hold identical weights"
        );
        assert_eq!(
            without_times(&runs[0].history),
            without_times(&runs[1].history)
        );
        let d = max_abs_diff(&plain.weights, &runs[0].weights);
        eprintln!("2 ranks x accumulate {accumulate}: max |w diff| {d:e}");
        assert!(d <= TOL, "2 ranks, accumulate {accumulate}: {d} > {TOL}");
        assert_close_history(&plain.history, &runs[0].history);
        assert_eq!(runs[0].steps.len(), plain.steps.len());
    }
}

#[test]
fn three_ranks_with_a_last_batch_smaller_than_the_ranks() {
    // 61 images at batch 20: the last global batch has 1 image, so two ranks get none.
    let train = synthetic::dataset(61, [8, 8, 3], 10, 5);
    let val = synthetic::dataset(2, [8, 8, 3], 10, 6);
    let opts = FitOptions::new(20, 2, 9);
    let plain = run_plain(&train, &val, &opts);
    let runs = on_ranks(3, |c| run_dist(c, &train, &val, &opts, 2));
    for r in &runs[1..] {
        assert_eq!(runs[0].weights, r.weights);
    }
    let d = max_abs_diff(&plain.weights, &runs[0].weights);
    assert!(d <= TOL, "3 ranks: {d} > {TOL}");
    assert_close_history(&plain.history, &runs[0].history);
}

#[test]
fn a_stop_on_one_rank_stops_every_rank_at_the_same_step_and_resumes_exactly() {
    let (train, val) = data();
    let full_opts = FitOptions::new(100, 2, 3);
    let full = on_ranks(2, |c| run_dist(c, &train, &val, &full_opts, 1));
    let halves = on_ranks(2, |c| {
        let flag = Arc::new(AtomicBool::new(false));
        let mut opts = full_opts.clone();
        opts.stop = Some(flag.clone());
        let mut m = model();
        let mut opt = lamb();
        let rank = c.rank();
        let mut stopped = None;
        let mut par = Parallel {
            comm: c,
            accumulate: 1,
        };
        fit(
            &mut m,
            &train,
            Some(&val),
            &opts,
            &mut par,
            opt.as_mut(),
            &mut |ev| {
                match ev {
                    // Only rank 1 sees the stop request, after step 3 of epoch 1.
                    FitEvent::Step {
                        epoch: 1, step: 3, ..
                    } if rank == 1 => flag.store(true, Ordering::SeqCst),
                    FitEvent::Stopped { progress } => stopped = Some((*progress).clone()),
                    _ => {}
                }
                Ok(())
            },
        )
        .unwrap();
        let p = stopped.expect("every rank must see the stop");
        assert_eq!((p.epoch, p.step), (0, 3));
        // Resume from the stop point with the same model and optimizer state.
        let mut opts = full_opts.clone();
        opts.start = p;
        let mut par = Parallel {
            comm: par.comm,
            accumulate: 1,
        };
        fit(
            &mut m,
            &train,
            Some(&val),
            &opts,
            &mut par,
            opt.as_mut(),
            &mut |_| Ok(()),
        )
        .unwrap();
        m.flat_params()
    });
    assert_eq!(halves[0], full[0].weights);
    assert_eq!(halves[1], full[1].weights);
    assert!(full[0].stopped.is_none());
}

#[test]
fn sync_from_root_copies_weights_optimizer_state_and_progress() {
    let (train, _) = data();
    let out = on_ranks(2, |c| {
        let mut m = model();
        let mut opt = lamb();
        let mut progress = FitProgress::default();
        if c.rank() == 0 {
            // Rank 0 alone trains a step (as if it had read a checkpoint).
            let idx: Vec<usize> = (0..50).collect();
            m.compute_gradients_on(&train, &idx).unwrap();
            m.apply_gradients(opt.as_mut(), 0, 0).unwrap();
            progress.step = 7;
        }
        sync_from_root(&mut m, Some(opt.as_mut()), &mut progress, c).unwrap();
        lamb_dist::check_in_sync(&m, c).unwrap();
        (
            m.flat_params(),
            serde_json::to_string(&opt.state()).unwrap(),
            progress.step,
        )
    });
    assert_eq!(out[0], out[1]);
    assert_eq!(out[1].2, 7);
}

#[test]
fn ranks_with_different_weights_are_detected() {
    let out = on_ranks(2, |c| {
        let mut m = model();
        if c.rank() == 1 {
            let mut w = m.flat_params();
            w[3] += 1.0;
            m.set_flat_params(&w).unwrap();
        }
        lamb_dist::check_in_sync(&m, c).is_err()
    });
    assert_eq!(out, vec![true, true]);
}

#[test]
fn bad_arguments_are_errors() {
    let (train, val) = data();
    let mut m = model();
    let mut opt = lamb();
    let mut comm = SingleProcess::new();
    let mut par = Parallel {
        comm: &mut comm,
        accumulate: 0,
    };
    let opts = FitOptions::new(100, 1, 3);
    let e = fit(
        &mut m,
        &train,
        Some(&val),
        &opts,
        &mut par,
        opt.as_mut(),
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("accumulate"), "{e}");
    par.accumulate = 1;
    let e = fit(
        &mut m,
        &train,
        Some(&val),
        &FitOptions::new(0, 1, 3),
        &mut par,
        opt.as_mut(),
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
}
