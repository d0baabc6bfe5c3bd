//! End-to-end tests of `lamb sweep` on a tiny grid: the table, the CSV and the plots are
//! written, a second invocation keeps finished runs, a changed grid is refused, a run that
//! cannot start stops the sweep, and Ctrl-C leaves resumable runs.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{data, fail, lamb, ok, stdout};

const GRID: &str = r#"
batch-sizes = [20, 100]
base-batch = 20
scaling = "sqrt"
lr-multipliers = [1.0]
epochs = 2
schedule = "poly"
warmup-epochs = 0.5
decay-power = 1.0
seed = 3
activation = "relu"
train-images = 400
test-images = 100

[[optimizers]]
optimizer = "lamb"
base-lr = 0.002

[[optimizers]]
optimizer = "sgd"
base-lr = 0.01
momentum = 0.9
"#;

fn sweep(dir: &Path, data: &Path, grid: &Path, out: &Path) -> std::process::Command {
    let mut c = lamb(dir);
    c.arg("sweep")
        .arg("--config")
        .arg(grid)
        .arg("--out")
        .arg(out)
        .arg("--data")
        .arg(data)
        .args(["--jobs", "2", "--threads", "1"]);
    c
}

#[test]
fn tiny_grid_writes_table_and_plots_and_keeps_finished_runs() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.toml");
    std::fs::write(&grid, GRID).unwrap();
    let out = tmp.path().join("sw");
    let first = stdout(&ok(&mut sweep(tmp.path(), &data, &grid, &out)));
    assert!(
        first.contains("| lamb |") && first.contains("| sgd |"),
        "{first}"
    );
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows.iter().all(|r| r.contains(",completed,2,")), "{csv}");
    // sqrt scaling: batch 100 is 5x batch 20, so the rate is sqrt(5) x the base.
    assert!(
        csv.contains("lamb-b100-lr4.472e-3,lamb,100,0.004472,"),
        "{csv}"
    );
    for f in [
        "sweep.md",
        "sweep.toml",
        "plots/accuracy_vs_batch.png",
        "plots/accuracy_vs_batch.svg",
        "plots/trust_ratio_lamb_b20.png",
        "plots/trust_ratio_lamb_b100.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Each run is a full run directory, with the poly schedule recorded.
    let cfg = std::fs::read_to_string(out.join("runs/lamb-b100-lr4.472e-3/config.toml")).unwrap();
    assert!(cfg.contains("schedule = \"poly\""), "{cfg}");
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(md.contains("What this can and cannot support"), "{md}");

    let again = stdout(&ok(&mut sweep(tmp.path(), &data, &grid, &out)));
    assert!(again.contains("4 of 4 runs already finished"), "{again}");
    assert!(again.contains("0 completed, 0 failed, 4 kept"), "{again}");

    let other = tmp.path().join("other.toml");
    std::fs::write(&other, GRID.replace("epochs = 2", "epochs = 3")).unwrap();
    let err = fail(&mut sweep(tmp.path(), &data, &other, &out));
    assert!(err.contains("holds a sweep with another grid"), "{err}");
}

#[test]
fn a_run_that_cannot_start_stops_the_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.toml");
    std::fs::write(&grid, GRID).unwrap();
    let out = tmp.path().join("sw");
    let missing = tmp.path().join("no-such-data");
    let err = fail(&mut sweep(tmp.path(), &missing, &grid, &out));
    assert!(
        err.contains("could not start") && err.contains("no-such-data"),
        "{err}"
    );
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap_or_default();
    assert!(
        !csv.contains(",failed,"),
        "a setup error is not a result:\n{csv}"
    );
}

#[test]
fn bad_grids_are_refused_with_the_key_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, key) in [
        (
            "batch-sizes = [20, 100]",
            "batch-sizes = [0]",
            "batch-sizes",
        ),
        (
            "lr-multipliers = [1.0]",
            "lr-multipliers = [-1.0]",
            "lr-multipliers",
        ),
        ("epochs = 2", "epochs = 2\nbogus = 1", "bogus"),
        ("base-lr = 0.002", "base-lr = 0.0", "base-lr"),
    ] {
        let grid = tmp.path().join("bad.toml");
        std::fs::write(&grid, GRID.replace(from, to)).unwrap();
        let err = fail(
            lamb(tmp.path())
                .args(["sweep", "--dry-run", "--config"])
                .arg(&grid),
        );
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn ctrl_c_stops_the_runs_resumably_and_the_same_command_finishes_them() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.toml");
    // One longer run: 3000 images in batches of 20 (150 steps per epoch), 30 epochs: a few
    // seconds even where the engine is fast (2 epochs took 0.3 s, shorter than the wait
    // below), so the interrupt lands mid-run.
    let long = GRID
        .replace("\nepochs = 2\n", "\nepochs = 30\n")
        .replace("batch-sizes = [20, 100]", "batch-sizes = [20]")
        .replace("train-images = 400", "train-images = 3000")
        .replace(
            "[[optimizers]]\noptimizer = \"sgd\"\nbase-lr = 0.01\nmomentum = 0.9\n",
            "",
        );
    std::fs::write(&grid, &long).unwrap();
    let out = tmp.path().join("sw");
    let mut child = sweep(tmp.path(), &data, &grid, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = out.join("runs/lamb-b20-lr2.000e-3");
    let t0 = Instant::now();
    // Wait until the run has trained a while (its config is written when training starts).
    while !run.join("config.toml").is_file() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted sweep exits 130");
    assert!(
        run.join("checkpoint/checkpoint.safetensors").is_file(),
        "the stopped run left a checkpoint"
    );
    assert!(
        !run.join("sweep-status.json").is_file(),
        "not recorded as finished"
    );
    let again = stdout(&ok(&mut sweep(tmp.path(), &data, &grid, &out)));
    assert!(
        again.contains("resume") && again.contains("1 completed"),
        "{again}"
    );
}
