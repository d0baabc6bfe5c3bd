//! Hostile inputs found by the hostile-case survey (/work/notes/hostile.md), on synthetic data in
//! the official binary layout (no shared data needed): each must fail with a message that says
//! what is wrong, and leave nothing that looks like a complete result.

use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::official;

use common::BIN;

fn lamb(dir: &Path, args: &[&str]) -> Output {
    let o = Command::new(BIN)
        .current_dir(dir)
        .env_remove("LAMB_DATA")
        .env("LAMB_CACHE", dir.join("cache"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "lamb panicked:\n{err}");
    o
}

fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        "data",
        "--out",
        "run",
        "--quiet",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    lamb(dir, &args)
}

fn failure(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "lamb should have failed:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn resume_with_fewer_epochs_than_completed_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    official(&t.join("data"), 4);
    let o = train(t, &["--epochs", "2", "--batch-size", "10"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = t.join("run");
    std::fs::remove_file(run.join("weights.safetensors")).unwrap();
    let e = failure(&lamb(
        t,
        &["train", "--resume", "run", "--epochs", "1", "--quiet"],
    ));
    assert!(e.contains("--epochs 1 is below the 2 epochs"), "{e}");
    assert!(!run.join("weights.safetensors").exists());
    // The same number of epochs is accepted (it only finishes the run).
    let o = lamb(t, &["train", "--resume", "run", "--epochs", "2", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn resume_without_a_checkpoint_says_there_is_nothing_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    official(&t.join("data"), 2);
    let o = train(t, &["--epochs", "1", "--batch-size", "10"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(t.join("run/checkpoint/checkpoint.safetensors")).unwrap();
    let e = failure(&lamb(t, &["train", "--resume", "run", "--epochs", "2"]));
    assert!(
        e.contains("no checkpoint at") && e.contains("nothing to resume"),
        "{e}"
    );
    assert_eq!(e.matches("os error").count(), 0, "{e}");
}

#[test]
fn divergence_before_the_first_checkpoint_does_not_claim_one() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    official(&t.join("data"), 8);
    let e = failure(&train(
        t,
        &["--epochs", "1", "--batch-size", "2", "--lr", "1e30"],
    ));
    assert!(
        e.contains("non-finite") && e.contains("epoch 1, step"),
        "{e}"
    );
    assert!(e.contains("before its first checkpoint"), "{e}");
    let run = t.join("run");
    assert!(!run.join("checkpoint/checkpoint.safetensors").exists());
    assert!(!run.join("weights.safetensors").exists());
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(
        summary.contains("FAILED") && summary.contains("nothing to resume"),
        "{summary}"
    );
    assert!(!summary.contains("checkpoint is kept"), "{summary}");
}

#[test]
fn an_emptied_batch_file_is_refused_before_any_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    official(&t.join("data"), 3);
    std::fs::write(t.join("data/data_batch_3.bin"), b"").unwrap();
    let e = failure(&train(t, &["--epochs", "1"]));
    assert!(
        e.contains("data_batch_3.bin: empty (0 records)") && e.contains("truncated"),
        "{e}"
    );
    assert!(!t.join("run").exists());
}
