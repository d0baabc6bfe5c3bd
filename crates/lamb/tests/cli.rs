//! End-to-end tests of the `lamb` binary on a small, class-balanced subset of the shared
//! CIFAR-10 archive (`../shared/data`): run directories, resume (straight vs stopped and
//! resumed, Ctrl-C mid-epoch, SIGKILL), hostile inputs, `compare` and `evaluate`.

use std::path::Path;
use std::process::Command;

mod common;

use common::{data, fail, lamb, ok, spawn_paused, stdout};

/// Small runs: 1000 training images in batches of 10 (100 steps per epoch), 200 test images.
fn small(c: &mut Command, data: &Path, out: &Path) {
    c.arg("--data").arg(data).arg("--out").arg(out).args([
        "--limit-train",
        "1000",
        "--limit-test",
        "200",
        "--batch-size",
        "10",
        "--threads",
        "2",
    ]);
}

/// history.csv without the timing columns.
fn metrics(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("history.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn train_writes_a_complete_run_directory_and_evaluate_agrees() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut c = lamb(tmp.path());
    c.arg("train").arg("--epochs").arg("2").arg("--json");
    small(&mut c, &data, &out);
    let o = ok(&mut c);
    let stdout = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["event"], "epoch");
    assert_eq!(lines[1]["epoch"], 2);
    assert_eq!(lines[2]["event"], "summary");
    for f in [
        "config.toml",
        "history.csv",
        "history.json",
        "summary.md",
        "weights.safetensors",
        "checkpoint/checkpoint.safetensors",
        "plots/accuracy.png",
        "plots/accuracy.svg",
        "plots/loss.png",
        "plots/loss.svg",
        "plots/trust_ratio.png",
        "plots/trust_ratio.svg",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    assert_eq!(&read(&out.join("plots/accuracy.png"))[..4], b"\x89PNG");
    assert!(String::from_utf8(read(&out.join("plots/loss.svg")))
        .unwrap()
        .contains("<svg"));
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        config.contains("seed = 42") && config.contains("optimizer = \"lamb\""),
        "{config}"
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("**Status:** completed"), "{summary}");
    assert!(summary.contains("Total params: 42,442"), "{summary}");
    let m = metrics(&out);
    assert_eq!(m.len(), 3);
    let last_val_acc: f64 = m[2].split(',').nth(4).unwrap().parse().unwrap();
    assert_eq!(lines[1]["val_accuracy"].as_f64().unwrap(), last_val_acc);
    // A second train into the same directory is refused.
    let mut again = lamb(tmp.path());
    again.arg("train").arg("--epochs").arg("1");
    small(&mut again, &data, &out);
    assert!(fail(&mut again).contains("already holds a run"));
    // evaluate on the same 200 test images gives the last epoch's validation accuracy.
    let o = ok(lamb(tmp.path())
        .arg("evaluate")
        .arg("--weights")
        .arg(out.join("weights.safetensors"))
        .arg("--data")
        .arg(&data)
        .args(["--limit-test", "200", "--json"]));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["images"], 200);
    assert_eq!(ev["accuracy"].as_f64().unwrap(), last_val_acc);
    assert_eq!(ev["activation"], "relu");
}

#[test]
fn stop_and_resume_is_bit_identical_to_a_straight_run() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "4"]);
    small(&mut c, &data, &a);
    ok(&mut c);
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "2", "--quiet"]);
    small(&mut c, &data, &b);
    ok(&mut c);
    assert_eq!(metrics(&b).len(), 3);
    ok(lamb(tmp.path())
        .args(["train", "--epochs", "4", "--resume"])
        .arg(&b));
    assert_eq!(metrics(&a), metrics(&b));
    assert_eq!(
        read(&a.join("weights.safetensors")),
        read(&b.join("weights.safetensors"))
    );
    // Changing a setting that decides the numbers is refused on resume.
    let e = fail(
        lamb(tmp.path())
            .args(["train", "--epochs", "5", "--lr", "0.1", "--resume"])
            .arg(&b),
    );
    assert!(e.contains("--lr cannot change"), "{e}");
}

#[test]
fn ctrl_c_mid_epoch_checkpoints_and_resume_matches_a_straight_run() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("interrupted"));
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "3"]);
    small(&mut c, &data, &a);
    ok(&mut c);
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "3"]);
    small(&mut c, &data, &b);
    // 100 steps per epoch: global step 137 is step 37 of epoch 2.
    let p = spawn_paused(&mut c, "137");
    p.signal(libc::SIGINT);
    let (status, err) = p.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("Resume with: lamb train --resume"), "{err}");
    let summary = std::fs::read_to_string(b.join("summary.md")).unwrap();
    assert!(
        summary.contains("INTERRUPTED at epoch 2, step 37/100"),
        "{summary}"
    );
    assert!(
        !b.join("weights.safetensors").exists(),
        "no final weights for an interrupted run"
    );
    ok(lamb(tmp.path())
        .args(["train", "--quiet", "--resume"])
        .arg(&b));
    assert_eq!(metrics(&a), metrics(&b));
    assert_eq!(
        read(&a.join("weights.safetensors")),
        read(&b.join("weights.safetensors"))
    );
}

#[test]
fn sigkill_mid_epoch_loses_at_most_that_epoch() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("killed"));
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "4", "--seed", "7"]);
    small(&mut c, &data, &a);
    ok(&mut c);
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "4", "--seed", "7"]);
    small(&mut c, &data, &b);
    // Killed at step 50 of epoch 3: epochs 1 and 2 are checkpointed, epoch 3 is lost.
    let p = spawn_paused(&mut c, "250");
    p.signal(libc::SIGKILL);
    let (status, _) = p.finish();
    assert_eq!(status.code(), None, "killed by a signal");
    let summary = std::fs::read_to_string(b.join("summary.md")).unwrap();
    assert!(
        summary.contains("RUNNING"),
        "a killed run must not look complete: {summary}"
    );
    assert!(!b.join("weights.safetensors").exists());
    assert_eq!(metrics(&b).len() - 1, 2, "epochs 1 and 2 are recorded");
    ok(lamb(tmp.path())
        .args(["train", "--quiet", "--resume"])
        .arg(&b));
    assert_eq!(metrics(&a), metrics(&b));
    assert_eq!(
        read(&a.join("weights.safetensors")),
        read(&b.join("weights.safetensors"))
    );
}

#[test]
fn hostile_inputs_fail_cleanly() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Config files: unknown key, wrong type.
    std::fs::write(t.join("bad.toml"), "epochs = 2\nlearning_rat = 0.1\n").unwrap();
    let e = fail(lamb(t).args(["train", "--config", "bad.toml"]));
    assert!(e.contains("learning_rat") && e.contains("bad.toml"), "{e}");
    std::fs::write(t.join("type.toml"), "epochs = \"two\"\n").unwrap();
    let e = fail(lamb(t).args(["train", "--config", "type.toml"]));
    assert!(e.contains("epochs"), "{e}");
    // Out-of-range hyperparameters.
    let e = fail(lamb(t).args(["train", "--beta1", "1.5"]));
    assert!(e.contains("beta1"), "{e}");
    let e = fail(lamb(t).args(["train", "--epochs", "0"]));
    assert!(e.contains("epochs"), "{e}");
    // Missing data.
    let e = fail(lamb(t).args(["train", "--data", "/nonexistent/cifar"]));
    assert!(e.contains("/nonexistent/cifar"), "{e}");
    // A diverging run (lr 1e6): stops naming epoch and step, keeps the last good checkpoint.
    let div = t.join("diverge");
    let mut c = lamb(t);
    c.args(["train", "--epochs", "2", "--lr", "1e6"]);
    small(&mut c, &data, &div);
    let e = fail(&mut c);
    assert!(
        e.contains("epoch") && e.contains("step") && e.contains("non-finite"),
        "{e}"
    );
    let summary = std::fs::read_to_string(div.join("summary.md")).unwrap();
    assert!(summary.contains("FAILED"), "{summary}");
    assert!(!div.join("weights.safetensors").exists());
    // Corrupt and truncated checkpoints are refused on resume.
    let good = t.join("good");
    let mut c = lamb(t);
    c.args(["train", "--epochs", "1", "--quiet"]);
    small(&mut c, &data, &good);
    ok(&mut c);
    let ck = good.join("checkpoint/checkpoint.safetensors");
    let bytes = read(&ck);
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    let e = fail(
        lamb(t)
            .args(["train", "--epochs", "2", "--resume"])
            .arg(&good),
    );
    assert!(e.contains("corrupt or truncated"), "{e}");
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 3] ^= 1;
    std::fs::write(&ck, &flipped).unwrap();
    let e = fail(
        lamb(t)
            .args(["train", "--epochs", "2", "--resume"])
            .arg(&good),
    );
    assert!(e.contains("checksum"), "{e}");
    // Another optimizer's checkpoint in this run directory.
    let adam = t.join("adam");
    let mut c = lamb(t);
    c.args(["train", "--epochs", "1", "--quiet", "--optimizer", "adam"]);
    small(&mut c, &data, &adam);
    ok(&mut c);
    std::fs::copy(adam.join("checkpoint/checkpoint.safetensors"), &ck).unwrap();
    let e = fail(
        lamb(t)
            .args(["train", "--epochs", "2", "--resume"])
            .arg(&good),
    );
    assert!(e.contains("does not match"), "{e}");
    // Not a run directory.
    let e = fail(lamb(t).args(["train", "--resume"]).arg(t));
    assert!(e.contains("is not a lamb run directory"), "{e}");
}

#[test]
fn compare_writes_both_runs_and_a_report() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let mut c = lamb(tmp.path());
    c.args(["compare", "--epochs", "2", "--quiet"]);
    small(&mut c, &data, &out);
    let o = ok(&mut c);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("Conclusion:"), "{stdout}");
    for f in [
        "report.md",
        "compare_accuracy.png",
        "compare_accuracy.svg",
        "compare_loss.png",
        "compare_loss.svg",
        "lamb/weights.safetensors",
        "adam/weights.safetensors",
        "lamb/plots/trust_ratio.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    assert!(!out.join("adam/plots/trust_ratio.png").exists());
    let adam_cfg = std::fs::read_to_string(out.join("adam/config.toml")).unwrap();
    let adam_cfg: toml::Table = toml::from_str(&adam_cfg).unwrap();
    assert_eq!(adam_cfg["activation"].as_str(), Some("selu"));
    assert_eq!(adam_cfg["epsilon"].as_float(), Some(1e-7));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| final val accuracy |") && report.contains("## Conclusion"),
        "{report}"
    );
    assert!(report.contains("orientation only"), "{report}");
}

#[test]
fn target_accuracy_stops_at_the_first_epoch_that_reaches_it() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t");
    let mut c = lamb(tmp.path());
    c.args([
        "train",
        "--quiet",
        "--epochs",
        "10",
        "--target-accuracy",
        "0.2",
    ]);
    small(&mut c, &data, &out);
    let o = ok(&mut c);
    let t: serde_json::Value = serde_json::from_slice(&read(&out.join("target.json"))).unwrap();
    assert_eq!(t["reached"], true, "{t}");
    let epoch = t["epoch"].as_u64().unwrap() as usize;
    let history = metrics(&out);
    assert_eq!(history.len() - 1, epoch, "training stopped at that epoch");
    assert!(epoch < 10, "{t}");
    assert_eq!(t["step"].as_u64().unwrap() as usize, epoch * 100);
    assert_eq!(t["images_seen"].as_u64().unwrap() as usize, epoch * 1000);
    let acc: f64 = history[epoch].split(',').nth(4).unwrap().parse().unwrap();
    assert!(acc >= 0.2, "{acc}");
    if epoch > 1 {
        let before: f64 = history[epoch - 1]
            .split(',')
            .nth(4)
            .unwrap()
            .parse()
            .unwrap();
        assert!(before < 0.2, "the first epoch that reached it: {history:?}");
    }
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("reached the target validation accuracy 0.2")
    );
    assert!(out.join("weights.safetensors").is_file());
    // An unreachable target runs every epoch and says so.
    let out = tmp.path().join("u");
    let mut c = lamb(tmp.path());
    c.args([
        "train",
        "--quiet",
        "--epochs",
        "2",
        "--target-accuracy",
        "0.99",
    ]);
    small(&mut c, &data, &out);
    ok(&mut c);
    let t: serde_json::Value = serde_json::from_slice(&read(&out.join("target.json"))).unwrap();
    assert_eq!(t["reached"], false, "{t}");
    assert_eq!(metrics(&out).len() - 1, 2);
    // Validating every 30 steps finds the crossing within the epoch and stops there.
    let out = tmp.path().join("e");
    let mut c = lamb(tmp.path());
    c.args([
        "train",
        "--quiet",
        "--epochs",
        "10",
        "--target-accuracy",
        "0.2",
        "--eval-every",
        "30",
    ]);
    small(&mut c, &data, &out);
    ok(&mut c);
    let te: serde_json::Value = serde_json::from_slice(&read(&out.join("target.json"))).unwrap();
    assert_eq!(te["reached"], true, "{te}");
    let step = te["step"].as_u64().unwrap() as usize;
    assert!(step <= epoch * 100, "{te} vs {t}");
    assert!(step.is_multiple_of(30) || step.is_multiple_of(100), "{te}");
    assert_eq!(te["images_seen"].as_u64().unwrap() as usize, step * 10);
    let evals = std::fs::read_to_string(out.join("evals.csv")).unwrap();
    let last = evals.lines().last().unwrap();
    assert!(last.starts_with(&format!("{step},")), "{evals}");
    let passes: Vec<f64> = evals
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse().unwrap())
        .collect();
    assert!(
        passes[..passes.len() - 1].iter().all(|&a| a < 0.2),
        "{evals}"
    );
    assert!(out.join("weights.safetensors").is_file());
}

#[test]
fn compare_fast_runs_its_recipe_and_evaluates_the_test_set_once() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fast");
    let mut c = lamb(tmp.path());
    c.args([
        "compare",
        "--fast",
        "--quiet",
        "--limit-train",
        "1000",
        "--limit-test",
        "200",
    ])
    .arg("--data")
    .arg(&data)
    .arg("--out")
    .arg(&out);
    let o = stdout(&ok(&mut c));
    assert!(o.contains("Fast recipe: test accuracy"), "{o}");
    let md = std::fs::read_to_string(out.join("fast.md")).unwrap();
    assert!(md.contains("| test accuracy (once, at the end) |"), "{md}");
    // Trained with a held-out validation split; the test set only at the end.
    assert!(out.join("validation_split.json").is_file());
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("test"), "{summary}");
    // The recipe is fixed.
    let mut c = lamb(tmp.path());
    c.args(["compare", "--fast", "--epochs", "3"]);
    let e = fail(&mut c);
    assert!(e.contains("--fast runs a fixed recipe"), "{e}");
}
