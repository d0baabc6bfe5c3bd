//! Engine tests: summary, thread independence, determinism, resume, weights files, errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lamb_data::Dataset;
use lamb_optim::{Lamb, LambConfig, Optimizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kernels::{self, Mat};
use crate::*;

fn synthetic(n: usize, hw: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = vec![0u8; n * hw * hw * 3];
    rng.fill(&mut images[..]);
    // Labels that depend on the image (mean of the red channel), so there is something to learn.
    let labels = images
        .chunks(hw * hw * 3)
        .map(|im| {
            ((im.iter().step_by(3).map(|&v| v as u32).sum::<u32>() / (hw * hw) as u32) % 4) as u8
        })
        .collect();
    Dataset {
        images,
        labels,
        height: hw,
        width: hw,
        channels: 3,
        class_names: vec![],
    }
}

fn small_model(seed: u64) -> Model {
    Sequential::new([8, 8, 3])
        .conv2d(4, 3, 1, Padding::Same, Activation::Relu)
        .max_pool2d(2)
        .conv2d(6, 3, 1, Padding::Valid, Activation::Selu)
        .flatten()
        .dense(4, Activation::Softmax)
        .build(seed)
        .unwrap()
}

fn lamb() -> Lamb {
    Lamb::new(LambConfig {
        learning_rate: 1e-2,
        ..LambConfig::default()
    })
    .unwrap()
}

fn no_timings(mut h: History) -> History {
    for e in &mut h.epochs {
        e.train_seconds = 0.0;
        e.val_seconds = 0.0;
    }
    for r in &mut h.evals {
        r.elapsed_seconds = 0.0;
    }
    h
}

fn weights(m: &Model) -> Vec<Vec<u32>> {
    m.params()
        .iter()
        .map(|p| p.2.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn summary_of_classic_cnn_matches_keras() {
    let m = classic_cnn(Activation::Relu, 0).unwrap();
    assert_eq!(m.param_count(), 42_442);
    let s = m.summary();
    assert!(s.contains("Total params: 42,442"), "{s}");
    let mut last = 0;
    for (name, shape, count) in [
        ("conv2d (Conv2D)", "(None, 30, 30, 32)", "896"),
        ("max_pooling2d (MaxPooling2D)", "(None, 15, 15, 32)", "0"),
        ("conv2d_1 (Conv2D)", "(None, 13, 13, 64)", "18496"),
        ("max_pooling2d_1 (MaxPooling2D)", "(None, 6, 6, 64)", "0"),
        ("flatten (Flatten)", "(None, 2304)", "0"),
        ("dense (Dense)", "(None, 10)", "23050"),
    ] {
        let line = s
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} in\n{s}"));
        assert!(
            line.contains(shape) && line.trim_end().ends_with(count),
            "{line}"
        );
        let pos = s.find(name).unwrap();
        assert!(pos > last, "layers out of order");
        last = pos;
    }
    assert_eq!(
        m.param_names(),
        [
            "conv2d/kernel",
            "conv2d/bias",
            "conv2d_1/kernel",
            "conv2d_1/bias",
            "dense/kernel",
            "dense/bias"
        ]
    );
    let shapes: Vec<Vec<usize>> = m.params().into_iter().map(|p| p.1).collect();
    assert_eq!(
        shapes,
        vec![
            vec![3, 3, 3, 32],
            vec![32],
            vec![3, 3, 32, 64],
            vec![64],
            vec![2304, 10],
            vec![10]
        ]
    );
}

#[test]
fn glorot_init_is_seeded_and_within_limits() {
    let a = classic_cnn(Activation::Relu, 5).unwrap();
    let b = classic_cnn(Activation::Relu, 5).unwrap();
    let c = classic_cnn(Activation::Relu, 6).unwrap();
    assert_eq!(weights(&a), weights(&b));
    assert_ne!(weights(&a), weights(&c));
    for (name, shape, v) in a.params() {
        if name.ends_with("/bias") {
            assert!(v.iter().all(|&x| x == 0.0));
            continue;
        }
        let (fan_in, fan_out) = if shape.len() == 4 {
            (
                shape[0] * shape[1] * shape[2],
                shape[0] * shape[1] * shape[3],
            )
        } else {
            (shape[0], shape[1])
        };
        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
        assert!(v.iter().all(|x| x.abs() <= limit), "{name}");
        let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(max > 0.9 * limit, "{name}: max {max} vs limit {limit}");
    }
}

#[test]
fn gemm_results_do_not_depend_on_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // The conv2 forward, weight-gradient and input-gradient shapes at batch 8.
    let (m, k, n) = (8 * 169, 288, 64);
    let a: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let dy: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut fwd = vec![0.0f32; m * n];
            kernels::matmul(m, n, k, &mut fwd, Mat::rows(&a, k), Mat::rows(&b, n), false);
            let mut dw = vec![0.0f32; k * n];
            kernels::matmul(
                k,
                n,
                m,
                &mut dw,
                Mat::rows_t(&a, k),
                Mat::rows(&dy, n),
                false,
            );
            let mut dx = vec![0.0f32; m * k];
            kernels::matmul(
                m,
                k,
                n,
                &mut dx,
                Mat::rows(&dy, n),
                Mat::rows_t(&b, n),
                false,
            );
            let mut db = vec![0.0f32; n];
            kernels::dense::bias_grad(&dy, &mut db);
            [fwd, dw, dx, db].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    // And the GEMM is right: spot-check one element of each product in f64.
    let fwd = &one[0];
    let want: f64 = (0..k)
        .map(|i| a[5 * k + i] as f64 * b[i * n + 7] as f64)
        .sum();
    assert!((f32::from_bits(fwd[5 * n + 7]) as f64 - want).abs() < 1e-3);
    let want: f64 = (0..m)
        .map(|r| a[r * k + 9] as f64 * dy[r * n + 3] as f64)
        .sum();
    assert!((f32::from_bits(one[1][9 * n + 3]) as f64 - want).abs() < 1e-2);
}

fn fit_small(threads: usize, epochs: usize) -> (Vec<Vec<u32>>, History) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let train = synthetic(70, 8, 1);
        let val = synthetic(30, 8, 2);
        let mut m = small_model(3);
        let mut opt = lamb();
        let opts = FitOptions {
            val_batch_size: 16,
            ..FitOptions::new(16, epochs, 9)
        };
        let h = m
            .fit(&train, Some(&val), &opts, &mut opt, &mut |_| Ok(()))
            .unwrap();
        (weights(&m), no_timings(h))
    })
}

#[test]
fn fit_is_deterministic_and_thread_count_independent() {
    let (w1, h1) = fit_small(1, 2);
    let (w1b, h1b) = fit_small(1, 2);
    let (w2, h2) = fit_small(2, 2);
    assert_eq!(w1, w1b);
    assert_eq!(h1, h1b);
    assert_eq!(w1, w2);
    assert_eq!(h1, h2);
    assert_eq!(h1.epochs.len(), 2);
    assert!(h1
        .epochs
        .iter()
        .all(|e| e.val_loss.is_some() && e.trust_ratios.len() == 6));
    assert_ne!(w1, weights(&small_model(3)), "training changed nothing");
}

#[test]
fn classic_cnn_steps_are_thread_count_independent() {
    let data = synthetic(24, 32, 4);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut m = classic_cnn(Activation::Selu, 1).unwrap();
            let mut opt = lamb();
            let opts = FitOptions::new(12, 1, 2);
            let h = m
                .fit(&data, Some(&data), &opts, &mut opt, &mut |_| Ok(()))
                .unwrap();
            (weights(&m), no_timings(h))
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn resume_mid_epoch_matches_a_straight_run() {
    let train = synthetic(70, 8, 1);
    let val = synthetic(30, 8, 2);
    let (w_straight, h_straight) = fit_small(1, 2);

    // First leg: stop after step 2 of epoch 2 (5 steps per epoch).
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut m = small_model(3);
    let mut opt = lamb();
    let opts = FitOptions {
        val_batch_size: 16,
        stop: Some(stop.clone()),
        ..FitOptions::new(16, 2, 9)
    };
    let mut saved: Option<String> = None;
    let h = m
        .fit(&train, Some(&val), &opts, &mut opt, &mut |ev| {
            match ev {
                FitEvent::Step {
                    epoch: 2, step: 2, ..
                } => stop.store(true, Ordering::SeqCst),
                FitEvent::Stopped { progress } => {
                    saved = Some(serde_json::to_string(progress).unwrap())
                }
                _ => {}
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(h.epochs.len(), 1);
    let progress: FitProgress = serde_json::from_str(&saved.expect("no Stopped event")).unwrap();
    assert_eq!((progress.epoch, progress.step), (1, 2));
    let path = dir.path().join("w.safetensors");
    m.save_safetensors(&path).unwrap();
    let state = serde_json::to_string(&opt.state()).unwrap();

    // Second leg: fresh model and optimizer restored from files.
    let mut m2 = small_model(77);
    m2.load_safetensors(&path).unwrap();
    let mut opt2 = lamb();
    opt2.load_state(&serde_json::from_str(&state).unwrap())
        .unwrap();
    let opts2 = FitOptions {
        val_batch_size: 16,
        start: progress,
        ..FitOptions::new(16, 2, 9)
    };
    let h2 = m2
        .fit(&train, Some(&val), &opts2, &mut opt2, &mut |_| Ok(()))
        .unwrap();
    assert_eq!(weights(&m2), w_straight);
    assert_eq!(no_timings(h2), h_straight);
}

#[test]
fn eval_every_validates_within_epochs_changes_no_weight_and_stops_at_the_target() {
    let train = synthetic(70, 8, 1);
    let val = synthetic(30, 8, 2);
    let (w_plain, h_plain) = fit_small(1, 2);
    let fit = |eval_every, target| {
        let mut m = small_model(3);
        let mut opt = lamb();
        let opts = FitOptions {
            val_batch_size: 16,
            eval_every: Some(eval_every),
            target_accuracy: target,
            ..FitOptions::new(16, 2, 9)
        };
        let mut events = Vec::new();
        let h = m
            .fit(&train, Some(&val), &opts, &mut opt, &mut |ev| {
                match ev {
                    FitEvent::Eval { record } => events.push(("eval", record.global_step)),
                    FitEvent::TargetReached { progress } => {
                        events.push(("target", progress.epoch * 5 + progress.step))
                    }
                    FitEvent::EpochEnd { progress, .. } => events.push(("end", progress.epoch * 5)),
                    _ => {}
                }
                Ok(())
            })
            .unwrap();
        (weights(&m), no_timings(h), events)
    };
    // 5 steps per epoch; a pass every 2 steps: at global steps 2, 4, (5: epoch end), 6, 8, (10).
    let (w, h, events) = fit(2, None);
    assert_eq!(w, w_plain, "validation changed the weights");
    assert_eq!(h.epochs, h_plain.epochs);
    let steps: Vec<usize> = h.evals.iter().map(|r| r.global_step).collect();
    assert_eq!(steps, [2, 4, 5, 6, 8, 10]);
    assert_eq!(
        events,
        [
            ("eval", 2),
            ("eval", 4),
            ("end", 5),
            ("eval", 6),
            ("eval", 8),
            ("end", 10)
        ]
    );
    let r = &h.evals[3];
    assert_eq!((r.epoch, r.step, r.images_seen), (2, 1, 70 + 16));
    // Epoch-end passes repeat the epoch's own validation.
    assert_eq!(h.evals[2].val_accuracy, h.epochs[0].val_accuracy.unwrap());
    assert_eq!(h.evals[5].val_loss, h.epochs[1].val_loss.unwrap());
    // A target the third pass reaches stops the fit right there, mid-epoch.
    let target = h.evals[3].val_accuracy;
    let first = h
        .evals
        .iter()
        .position(|r| r.val_accuracy >= target)
        .unwrap();
    let (_, h_t, events_t) = fit(2, Some(target));
    assert_eq!(h_t.evals.len(), first + 1);
    assert_eq!(h_t.evals[..], h.evals[..=first]);
    let last = events_t.last().unwrap();
    if h.evals[first].step == 5 {
        assert_eq!(last.0, "end");
    } else {
        assert_eq!(*last, ("target", h.evals[first].global_step));
    }
}

#[test]
fn loss_falls_and_keras_running_mean_is_reported() {
    let train = synthetic(64, 8, 5);
    let mut m = small_model(1);
    let mut opt = lamb();
    let mut step_losses = Vec::new();
    let h = m
        .fit(
            &train,
            None,
            &FitOptions::new(10, 6, 1),
            &mut opt,
            &mut |ev| {
                if let FitEvent::Step {
                    metrics, epoch: 1, ..
                } = ev
                {
                    step_losses.push((metrics.loss_sum, metrics.count));
                }
                Ok(())
            },
        )
        .unwrap();
    // 64 images at batch 10: 7 steps, the last of 4 images.
    assert_eq!(step_losses.len(), 7);
    assert_eq!(step_losses[6].1, 4);
    let mean = step_losses.iter().map(|s| s.0).sum::<f64>() / 64.0;
    assert!((h.epochs[0].loss - mean).abs() < 1e-12);
    assert!(
        h.epochs[5].loss < h.epochs[0].loss,
        "{:?}",
        h.epochs.iter().map(|e| e.loss).collect::<Vec<_>>()
    );
    let ev = m.evaluate(&train, 7).unwrap();
    let pred = m.predict_classes(&train, 64).unwrap();
    assert_eq!(
        ev.correct,
        pred.iter()
            .zip(&train.labels)
            .filter(|(a, b)| a == b)
            .count()
    );
    assert!((accuracy_score(&pred, &train.labels) - ev.accuracy).abs() < 1e-12);
    let cm = confusion_matrix(&pred, &train.labels, 4);
    assert_eq!(cm.iter().flatten().sum::<u64>(), 64);
    assert_eq!((0..4).map(|i| cm[i][i]).sum::<u64>() as usize, ev.correct);
    let proba = m.predict_proba(&train, 5).unwrap();
    for (row, &p) in proba.chunks(4).zip(&pred) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let arg = (0..4).fold(0, |a, i| if row[i] > row[a] { i } else { a });
        assert_eq!(arg, p as usize);
    }
    // Evaluation does not depend on its batch size beyond rounding.
    let ev2 = m.evaluate(&train, 64).unwrap();
    assert_eq!(ev.correct, ev2.correct);
    assert!((ev.loss - ev2.loss).abs() < 1e-5);
}

#[test]
fn safetensors_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let a = classic_cnn(Activation::Relu, 1).unwrap();
    a.save_safetensors(&path).unwrap();
    let mut b = classic_cnn(Activation::Relu, 2).unwrap();
    assert_ne!(weights(&a), weights(&b));
    b.load_safetensors(&path).unwrap();
    assert_eq!(weights(&a), weights(&b));
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Wrong shape: a different architecture.
    let other = Sequential::new([32, 32, 3])
        .conv2d(16, 3, 1, Padding::Valid, Activation::Relu)
        .max_pool2d(2)
        .conv2d(64, 3, 1, Padding::Valid, Activation::Relu)
        .max_pool2d(2)
        .flatten()
        .dense(10, Activation::Softmax)
        .build(0)
        .unwrap();
    let p2 = dir.path().join("other.safetensors");
    other.save_safetensors(&p2).unwrap();
    let before = weights(&b);
    let e = b.load_safetensors(&p2).unwrap_err().to_string();
    assert!(
        e.contains("conv2d/kernel") && e.contains("[3, 3, 3, 16]") && e.contains("[3, 3, 3, 32]"),
        "{e}"
    );
    assert_eq!(
        weights(&b),
        before,
        "a failed load must not change the model"
    );

    // Missing tensor: a model with an extra Dense layer expects dense_1.
    let mut bigger = Sequential::new([32, 32, 3])
        .conv2d(32, 3, 1, Padding::Valid, Activation::Relu)
        .max_pool2d(2)
        .conv2d(64, 3, 1, Padding::Valid, Activation::Relu)
        .max_pool2d(2)
        .flatten()
        .dense(10, Activation::Relu)
        .dense(10, Activation::Softmax)
        .build(0)
        .unwrap();
    let e = bigger.load_safetensors(&path).unwrap_err().to_string();
    assert!(e.contains("missing tensor `dense_1/kernel`"), "{e}");

    // Extra tensor: the smaller model finds dense_1 unexpected.
    let p3 = dir.path().join("bigger.safetensors");
    bigger.save_safetensors(&p3).unwrap();
    let e = b.load_safetensors(&p3).unwrap_err().to_string();
    assert!(
        e.contains("dense/kernel") || e.contains("unexpected"),
        "{e}"
    );

    // NaN weights are rejected.
    let mut nan = classic_cnn(Activation::Relu, 1).unwrap();
    let mut bias = vec![0.0f32; 10];
    bias[3] = f32::NAN;
    nan.set_param("dense/bias", &bias).unwrap();
    let p4 = dir.path().join("nan.safetensors");
    nan.save_safetensors(&p4).unwrap();
    let e = b.load_safetensors(&p4).unwrap_err().to_string();
    assert!(
        e.contains("dense/bias") && e.contains("non-finite") && e.contains("element 3"),
        "{e}"
    );

    // Garbage and missing files.
    let p5 = dir.path().join("garbage.safetensors");
    std::fs::write(&p5, b"not a safetensors file").unwrap();
    assert!(b
        .load_safetensors(&p5)
        .unwrap_err()
        .to_string()
        .contains("garbage.safetensors"));
    assert!(b.load_safetensors(&dir.path().join("absent")).is_err());
}

#[test]
fn non_finite_loss_is_an_error_before_any_change() {
    let train = synthetic(20, 8, 1);
    let mut m = small_model(1);
    let mut bias = vec![0.0f32; 4];
    bias[0] = f32::INFINITY;
    m.set_param("dense/bias", &bias).unwrap();
    let before = weights(&m);
    let mut opt = lamb();
    let e = m
        .fit(
            &train,
            None,
            &FitOptions::new(10, 1, 1),
            &mut opt,
            &mut |_| Ok(()),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            NnError::NonFiniteLoss {
                epoch: 1,
                step: 1,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(weights(&m), before);
    assert_eq!(opt.steps(), 0);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let m = Sequential::new([8, 8, 3])
        .conv2d(4, 3, 1, Padding::Valid, Activation::Relu)
        .dense(3, Activation::Softmax)
        .build(0);
    assert!(matches!(m, Err(NnError::InvalidModel { layer: 1, .. })));
    let m = Sequential::new([8, 8, 3])
        .flatten()
        .dense(3, Activation::Relu)
        .build(0);
    assert!(matches!(m, Err(NnError::InvalidModel { .. })));
    let m = Sequential::new([8, 8, 3])
        .conv2d(4, 9, 1, Padding::Valid, Activation::Relu)
        .flatten()
        .dense(3, Activation::Softmax)
        .build(0);
    assert!(matches!(m, Err(NnError::InvalidModel { layer: 0, .. })));
    let m = Sequential::new([8, 8, 3])
        .flatten()
        .dense(3, Activation::Softmax)
        .conv2d(1, 1, 1, Padding::Same, Activation::Relu)
        .build(0);
    assert!(m.is_err());
    let mut m = small_model(0);
    let wrong = synthetic(5, 9, 0);
    let mut opt = lamb();
    assert!(matches!(
        m.evaluate(&wrong, 4),
        Err(NnError::DataMismatch(_))
    ));
    let mut bad_label = synthetic(5, 8, 0);
    bad_label.labels[2] = 7;
    let e = m
        .fit(
            &bad_label,
            None,
            &FitOptions::new(2, 1, 0),
            &mut opt,
            &mut |_| Ok(()),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 7 at index 2"), "{e}");
    assert!(matches!(
        m.set_param("nope", &[]),
        Err(NnError::UnknownParameter { .. })
    ));
    assert!(matches!(
        m.set_param("dense/bias", &[1.0]),
        Err(NnError::ParameterLength { expected: 4, .. })
    ));
    assert!(m.train_step(&[0.0; 10], &[1], &mut opt).is_err());
    let good = synthetic(4, 8, 0);
    assert!(m
        .fit(
            &good,
            None,
            &FitOptions::new(0, 1, 0),
            &mut opt,
            &mut |_| Ok(())
        )
        .is_err());
}

#[test]
fn train_step_matches_fit_order_and_updates() {
    let data = synthetic(8, 8, 3);
    let mut m = small_model(2);
    let mut opt = lamb();
    let mut x = vec![0.0f32; 8 * 192];
    let mut y = vec![0u8; 8];
    data.fill_batch(&(0..8).collect::<Vec<_>>(), &mut x, &mut y);
    let s = m.train_step(&x, &y, &mut opt).unwrap();
    assert_eq!(s.count, 8);
    assert!(s.applied && s.loss_sum.is_finite());
    assert_eq!(opt.steps(), 1);
    assert!(
        m.grads().iter().all(|g| g.1.iter().any(|v| *v != 0.0)),
        "every tensor gets a gradient"
    );
}
