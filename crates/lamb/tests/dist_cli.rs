//! `lamb train --accumulate K` and `--workers N` end to end, on a small class-balanced slice of
//! the shared CIFAR-10 archive (`../shared/data`): accumulation against one big batch, the
//! error of `--workers` in a build without MPI, and (feature `mpi`, needs Open MPI's `mpirun`)
//! two ranks against one process, rank 0 alone writing the run directory, and resume.
//!
//! Tolerance: the runs differ only in float summation order (per micro-batch or per shard
//! sums of the batch reductions, then summed across shards). After 20 steps the weights must
//! agree to `LAMB_W_TOL` = 5e-5 absolute with LAMB (measured 4e-6: its Adam-style
//! `m / (sqrt(v) + eps)` magnifies relative gradient differences of near-zero gradients; the
//! weights move by up to ~2e-2) and `SGD_W_TOL` = 1e-6 with SGD (measured 1.5e-8), and the final
//! losses to `LOSS_TOL` = 1e-4 (measured 1e-8). Accuracies are counts over 100 test images, so
//! a prediction sitting on a decision boundary may flip: they may differ by at most one image
//! (`ACC_TOL` = 0.01 + rounding; measured equal).

use std::path::Path;

use safetensors::SafeTensors;

mod common;

use common::{data, lamb, ok, run};
const LAMB_W_TOL: f32 = 5e-5;
const SGD_W_TOL: f32 = 1e-6;
const LOSS_TOL: f64 = 1e-4;
const ACC_TOL: f64 = 0.0101;

/// The arguments of a tiny run: 300 training images in batches of 30 (10 steps per epoch),
/// 100 test images, one thread per process.
fn tiny(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    [
        "train",
        "--data",
        &data.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--limit-train",
        "300",
        "--limit-test",
        "100",
        "--batch-size",
        "30",
        "--epochs",
        &epochs.to_string(),
        "--threads",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The last epoch's (loss, accuracy, val_loss, val_accuracy) from a run's history.json.
fn final_metrics(dir: &Path) -> [f64; 4] {
    let text = std::fs::read_to_string(dir.join("history.json")).unwrap();
    let h: serde_json::Value = serde_json::from_str(&text).unwrap();
    let last = h["epochs"].as_array().unwrap().last().unwrap().clone();
    ["loss", "accuracy", "val_loss", "val_accuracy"].map(|k| last[k].as_f64().unwrap())
}

/// All weights of a run's weights.safetensors, by tensor name.
fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("weights.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Largest absolute weight difference between two runs (same tensors required).
fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    let mut worst = 0.0f32;
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert_eq!(va.len(), vb.len(), "{na}");
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

/// Asserts that two runs ended with the same weights (to `w_tol`) and metrics within the
/// tolerances.
fn assert_equivalent(a: &Path, b: &Path, w_tol: f32, what: &str) {
    let d = max_weight_diff(a, b);
    let (ma, mb) = (final_metrics(a), final_metrics(b));
    eprintln!("{what}: max |w diff| {d:e}; metrics {ma:?} vs {mb:?}");
    assert!(d <= w_tol, "{what}: weights differ by {d} > {w_tol}");
    for (i, k) in ["loss", "accuracy", "val_loss", "val_accuracy"]
        .iter()
        .enumerate()
    {
        let tol = if k.contains("loss") {
            LOSS_TOL
        } else {
            ACC_TOL
        };
        assert!(
            (ma[i] - mb[i]).abs() <= tol,
            "{what}: final {k} {} vs {} (tolerance {tol})",
            ma[i],
            mb[i]
        );
    }
}

/// LAMB (the default) and SGD: LAMB's update hardly changes when every gradient is scaled by
/// the same factor (a forgotten `1/K`), SGD's does. SGD at lr 0.01 (momentum 0.9): at lr 0.05
/// a summation-order difference of 1e-8 sometimes flips a ReLU or a pooling winner and the
/// trajectories part (weights 6e-5..2e-3 apart after 20 steps on 5 of 7 seeds without
/// momentum; 1e-4..1e-2 on seeds 1-4 with it, where seed 42 happened to pass). At 0.01 the
/// 7 seeds tried (42, 1-6) stay within 1.5e-8..4.3e-7, and the loss still moves (>= 0.011).
const OPTIMIZERS: [(&str, &[&str], f32); 2] = [
    ("lamb", &[], LAMB_W_TOL),
    (
        "sgd",
        &["--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9"],
        SGD_W_TOL,
    ),
];

#[test]
fn accumulating_two_micro_batches_matches_one_batch() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for (name, extra, w_tol) in OPTIMIZERS {
        let one = tmp.path().join(format!("{name}-one"));
        let two = tmp.path().join(format!("{name}-two"));
        ok(lamb(tmp.path()).args(tiny(&data, &one, 2)).args(extra));
        ok(lamb(tmp.path())
            .args(tiny(&data, &two, 2))
            .args(extra)
            .args(["--accumulate", "2"]));
        assert_equivalent(&one, &two, w_tol, &format!("{name}: --accumulate 2 vs 1"));
        let cfg = std::fs::read_to_string(two.join("config.toml")).unwrap();
        assert!(cfg.contains("accumulate = 2"), "{cfg}");
        let summary = std::fs::read_to_string(two.join("summary.md")).unwrap();
        assert!(summary.contains("accumulate: 2 micro-batches"), "{summary}");
        // Training moved: the comparison is not between two models that barely changed.
        let text = std::fs::read_to_string(one.join("history.json")).unwrap();
        let h: serde_json::Value = serde_json::from_str(&text).unwrap();
        let loss = |e: usize| h["epochs"][e]["loss"].as_f64().unwrap();
        assert!(
            (loss(0) - loss(1)).abs() > 100.0 * LOSS_TOL,
            "{name}: {text}"
        );
    }
}

#[test]
fn batch_too_small_for_workers_and_micro_batches_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = run(lamb(tmp.path()).args([
        "train",
        "--out",
        &out.to_string_lossy(),
        "--batch-size",
        "10",
        "--workers",
        "4",
        "--accumulate",
        "3",
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("batch-size") && err.contains("4 x 3 = 12"),
        "{err}"
    );
    assert!(!out.exists());
}

#[cfg(not(feature = "mpi"))]
#[test]
fn workers_without_mpi_fail_clearly_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = run(lamb(tmp.path()).args([
        "train",
        "--out",
        &out.to_string_lossy(),
        "--workers",
        "2",
        "--epochs",
        "1",
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--workers 2 needs MPI")
            && err.contains("cargo build --release -p lamb --features mpi"),
        "{err}"
    );
    assert!(!out.exists(), "a run directory was created");
    assert!(!tmp.path().join("runs").exists());
}

#[cfg(feature = "mpi")]
mod mpi {
    use super::common::{command, BIN};
    use super::*;

    #[test]
    fn two_workers_match_one_process_and_resume() {
        let Some(data) = data() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let one = tmp.path().join("one");
        let two = tmp.path().join("two");
        ok(lamb(tmp.path()).args(tiny(&data, &one, 2)));
        // Two ranks with two micro-batches each (7 or 8 images per micro-batch).
        let o = ok(lamb(tmp.path()).args(tiny(&data, &two, 2)).args([
            "--workers",
            "2",
            "--accumulate",
            "2",
        ]));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            stdout.matches("final val_accuracy").count(),
            1,
            "only rank 0 prints the summary:\n{stdout}"
        );
        assert_equivalent(&one, &two, LAMB_W_TOL, "2 workers vs 1");
        let cfg = std::fs::read_to_string(two.join("config.toml")).unwrap();
        assert!(cfg.contains("workers = 2"), "{cfg}");
        let summary = std::fs::read_to_string(two.join("summary.md")).unwrap();
        assert!(summary.contains("ranks x threads: 2 x 1 (MPI"), "{summary}");

        // One epoch on two ranks, then resumed for the second: rank 0 reads the checkpoint
        // and broadcasts it. `--workers` and `--accumulate` are inherited from config.toml,
        // and the result is the straight two-rank run's, bit for bit.
        let resumed = tmp.path().join("resumed");
        ok(lamb(tmp.path()).args(tiny(&data, &resumed, 1)).args([
            "--workers",
            "2",
            "--accumulate",
            "2",
        ]));
        ok(lamb(tmp.path()).args([
            "train",
            "--resume",
            &resumed.to_string_lossy(),
            "--epochs",
            "2",
            "--quiet",
        ]));
        let cfg = std::fs::read_to_string(resumed.join("config.toml")).unwrap();
        assert!(
            cfg.contains("workers = 2") && cfg.contains("epochs = 2"),
            "{cfg}"
        );
        assert_eq!(
            std::fs::read(resumed.join("weights.safetensors")).unwrap(),
            std::fs::read(two.join("weights.safetensors")).unwrap(),
            "resumed two-rank run differs from the straight one"
        );
        assert_eq!(final_metrics(&resumed), final_metrics(&two));
        let text = std::fs::read_to_string(resumed.join("history.json")).unwrap();
        let h: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(h["epochs"].as_array().unwrap().len(), 2);
    }

    /// Started by `mpirun` itself, each rank in its own working directory and a relative
    /// `--out`: only rank 0's directory gets a run.
    #[test]
    fn under_mpirun_only_rank_0_writes() {
        let Some(data) = data() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let (d0, d1) = (tmp.path().join("rank0"), tmp.path().join("rank1"));
        std::fs::create_dir_all(&d0).unwrap();
        std::fs::create_dir_all(&d1).unwrap();
        let args = tiny(&data, Path::new("run"), 1);
        let mut cmd = command("mpirun", tmp.path());
        cmd.args(["--oversubscribe", "--bind-to", "none"]);
        if lamb_dist::running_as_root() {
            cmd.arg("--allow-run-as-root");
        }
        for (k, d) in [&d0, &d1].iter().enumerate() {
            if k > 0 {
                cmd.arg(":");
            }
            cmd.args(["-np", "1", "-wdir"]).arg(d).arg(BIN).args(&args);
        }
        let o = ok(&mut cmd);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.matches("final val_accuracy").count(), 1, "{stdout}");
        for f in [
            "config.toml",
            "summary.md",
            "history.json",
            "weights.safetensors",
        ] {
            assert!(d0.join("run").join(f).is_file(), "rank 0 did not write {f}");
        }
        for d in ["tb/train", "tb/validation"] {
            assert!(d0.join("run").join(d).is_dir(), "rank 0 did not write {d}");
        }
        assert!(
            std::fs::read_dir(&d1).unwrap().next().is_none(),
            "rank 1 wrote into its working directory"
        );
        let cfg = std::fs::read_to_string(d0.join("run/config.toml")).unwrap();
        assert!(cfg.contains("workers = 2"), "{cfg}");
    }
}
