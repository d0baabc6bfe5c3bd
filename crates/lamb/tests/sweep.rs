//! End-to-end tests of `lamb sweep` on a tiny grid: the table, the CSV and the plots are
//! written, a second invocation keeps finished runs, a changed grid is refused, a run that
//! cannot start stops the sweep, and Ctrl-C leaves resumable runs.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{data, fail, lamb, ok, spawn_watched, stdout, wait_exit, PauseFifo};

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
    sweep_jobs(dir, data, grid, out, 2)
}

/// [`sweep`] running `jobs` runs at a time.
fn sweep_jobs(
    dir: &Path,
    data: &Path,
    grid: &Path,
    out: &Path,
    jobs: usize,
) -> std::process::Command {
    let mut c = lamb(dir);
    c.arg("sweep")
        .arg("--config")
        .arg(grid)
        .arg("--out")
        .arg(out)
        .arg("--data")
        .arg(data)
        .args(["--jobs", &jobs.to_string(), "--threads", "1"]);
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
    assert!(err.contains("no-such-data"), "{err}");
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

/// The grid with only its LAMB run (batch 20: 20 steps per epoch).
fn one_run_grid(tmp: &Path) -> (std::path::PathBuf, &'static str) {
    let grid = tmp.join("grid.toml");
    let one = GRID
        .replace("batch-sizes = [20, 100]", "batch-sizes = [20]")
        .replace(
            "[[optimizers]]\noptimizer = \"sgd\"\nbase-lr = 0.01\nmomentum = 0.9\n",
            "",
        );
    std::fs::write(&grid, one).unwrap();
    (grid, "lamb-b20-lr2.000e-3")
}

/// The PID of the process holding run directory `run` (its lock file's content).
fn holder(run: &Path) -> i32 {
    std::fs::read_to_string(run.join(".lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether run directory `run` is locked by some process.
fn held(run: &Path) -> bool {
    std::fs::File::open(run.join(".lock"))
        .map(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
        .unwrap_or(false)
}

/// Stops a sweep with `sig` while its run is held at step 5 of 20, then checks that the run
/// stopped at a checkpoint, its trainer is gone, and the same command finishes it.
fn stop_sweep_and_finish(sig: i32, expect_exit: Option<i32>) {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (grid, id) = one_run_grid(tmp.path());
    let out = tmp.path().join("sw");
    let mut fifo = PauseFifo::new(tmp.path());
    let sweep_proc = spawn_watched(
        sweep(tmp.path(), &data, &grid, &out)
            .env("LAMB_TEST_PAUSE_AT", "5")
            .env("LAMB_TEST_PAUSE_NOTIFY", &fifo.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        &fifo.path,
    );
    fifo.next();
    let run = out.join("runs").join(id);
    let trainer = holder(&run);
    sweep_proc.signal(sig);
    assert_eq!(sweep_proc.wait().code(), expect_exit, "the sweep's exit");
    // The trainer checkpoints and exits whether the sweep asked it (SIGINT, SIGHUP) or died
    // (SIGKILL: the parent-death signal). Without that it would stay paused: this blocks.
    wait_exit(trainer);
    assert!(!held(&run), "the run directory is free");
    assert!(
        run.join("checkpoint/checkpoint.safetensors").is_file(),
        "the stopped run left a checkpoint"
    );
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(
        summary.contains("INTERRUPTED at epoch 1, step 5/20"),
        "{summary}"
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

#[test]
fn ctrl_c_stops_the_runs_resumably_and_the_same_command_finishes_them() {
    stop_sweep_and_finish(libc::SIGINT, Some(130));
}

#[test]
fn sighup_stops_a_sweep_like_ctrl_c() {
    stop_sweep_and_finish(libc::SIGHUP, Some(130));
}

#[test]
fn a_killed_sweep_takes_its_trainers_with_it() {
    stop_sweep_and_finish(libc::SIGKILL, None);
}

#[test]
fn two_sweeps_on_one_directory_never_run_the_same_run() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.toml");
    std::fs::write(
        &grid,
        GRID.replace("batch-sizes = [20, 100]", "batch-sizes = [20]"),
    )
    .unwrap();
    let out = tmp.path().join("sw");
    // The first worker runs one run at a time and is held inside its first run.
    let mut fifo = PauseFifo::new(tmp.path());
    let first = spawn_watched(
        sweep_jobs(tmp.path(), &data, &grid, &out, 1)
            .env("LAMB_TEST_PAUSE_AT", "5")
            .env("LAMB_TEST_PAUSE_NOTIFY", &fifo.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        &fifo.path,
    );
    fifo.next();
    let runs = ["lamb-b20-lr2.000e-3", "sgd-b20-lr1.000e-2"].map(|id| out.join("runs").join(id));
    let paused: Vec<&std::path::PathBuf> = runs.iter().filter(|r| held(r)).collect();
    assert_eq!(paused.len(), 1, "one run is held");
    let held_run = paused[0].clone();
    let other = runs.iter().find(|r| **r != held_run).unwrap();
    // A second worker on the same directory leaves the held run alone and does the other.
    let second = stdout(&ok(&mut sweep_jobs(tmp.path(), &data, &grid, &out, 1)));
    assert!(
        second.contains("1 run(s) are held by another process"),
        "{second}"
    );
    assert!(second.contains("1 completed"), "{second}");
    assert!(other.join("sweep-status.json").is_file());
    assert!(!held_run.join("sweep-status.json").is_file());
    first.signal(libc::SIGINT);
    assert_eq!(first.wait().code(), Some(130));
    let last = stdout(&ok(&mut sweep(tmp.path(), &data, &grid, &out)));
    assert!(
        last.contains("1 completed") && last.contains("1 kept"),
        "{last}"
    );
}

#[test]
fn every_run_of_a_grid_is_checked_before_any_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sw");
    // The small preset warms up for one epoch: with --epochs 1 no run could start.
    let err = fail(
        lamb(tmp.path())
            .args(["sweep", "--epochs", "1", "--out"])
            .arg(&out),
    );
    assert!(
        err.contains("of the grid would be refused") && err.contains("`warmup-epochs` = 1"),
        "{err}"
    );
    assert!(err.contains("nothing was started"), "{err}");
    assert!(!out.exists(), "nothing created");
}

const TARGET_GRID: &str = r#"
target-accuracy = 0.15
validation-split = 0.2
eval-every-images = 100
batch-sizes = [20, 80]
budget-epochs = [2, 3]
base-batch = 20
scaling = "sqrt"
lr-multipliers = [1.0]
warmup-epochs = [0.0]
refine-factor = 2.0
max-refinements = 1
schedule = "poly"
decay-power = 1.0
seeds = [1, 2]
activation = "relu"
train-images = 600

[[optimizers]]
optimizer = "lamb"
base-lr = 0.004
"#;

#[test]
fn steps_to_target_sweep_tunes_each_cell_repeats_the_best_and_reports() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("target.toml");
    std::fs::write(&grid, TARGET_GRID).unwrap();
    let out = tmp.path().join("st");
    let mut c = sweep(tmp.path(), &data, &grid, &out);
    // As one worker per host under mpirun: the trainers must not take the launcher's rank
    // variables for their own.
    c.args(["--metric", "steps-to-target"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0");
    let first = stdout(&ok(&mut c));
    for f in [
        "target-sweep.toml",
        "steps_to_target.md",
        "steps_to_target.csv",
        "plots/steps_to_target.png",
        "plots/seconds_to_target.svg",
    ] {
        assert!(out.join(f).is_file(), "missing {f}\n{first}");
    }
    let csv = std::fs::read_to_string(out.join("steps_to_target.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 2, "{csv}");
    let runs: Vec<String> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut expected_runs = 0;
    let mut reached_somewhere = false;
    for (row, batch) in rows.iter().zip(["20", "80"]) {
        assert_eq!(row[1], batch, "{csv}");
        if row[2].is_empty() {
            // No rate reached the target: the one rate of the grid, no growth, no seeds.
            expected_runs += 1;
            continue;
        }
        reached_somewhere = true;
        // The single rate is at both edges: the grid grew once (x2), then seed 2 repeated
        // the best of the two.
        expected_runs += 3;
        let lr: f64 = row[2].parse().unwrap();
        let seed2 = format!("lamb-b{batch}-lr{lr:.3e}-w0-s2");
        assert!(runs.contains(&seed2), "{seed2} not in {runs:?}");
        assert_eq!(
            row[4], "true",
            "a best rate with one growth left is at an edge: {csv}"
        );
        // Steps to target: at a validation pass (every ceil(100 / batch) steps or an epoch end).
        let best = format!("lamb-b{batch}-lr{lr:.3e}-w0-s1");
        let t: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("runs").join(&best).join("target.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(t["reached"], true, "{t}");
        let every = 100usize.div_ceil(batch.parse().unwrap());
        let step = t["step"].as_u64().unwrap() as usize;
        let per_epoch = 480usize.div_ceil(batch.parse().unwrap());
        assert!(
            step.is_multiple_of(every) || step.is_multiple_of(per_epoch),
            "{t}"
        );
    }
    assert!(
        reached_somewhere,
        "the tiny grid should reach 0.15 somewhere: {csv}"
    );
    assert_eq!(runs.len(), expected_runs, "{runs:?}\n{csv}");
    let md = std::fs::read_to_string(out.join("steps_to_target.md")).unwrap();
    assert!(
        md.contains("## What the cells show") && md.contains("| lamb | 20 |"),
        "{md}"
    );
    // Everything finished: the same command runs nothing and rewrites the same table.
    let mut again = sweep(tmp.path(), &data, &grid, &out);
    again.args(["--metric", "steps-to-target"]);
    let second = stdout(&ok(&mut again));
    assert!(!second.contains("start "), "{second}");
    assert_eq!(
        std::fs::read_to_string(out.join("steps_to_target.csv")).unwrap(),
        csv
    );
    // A grid whose budget changed cannot continue this directory.
    std::fs::write(&grid, TARGET_GRID.replace("[2, 3]", "[2, 4]")).unwrap();
    let mut changed = sweep(tmp.path(), &data, &grid, &out);
    changed.args(["--metric", "steps-to-target"]);
    let e = fail(&mut changed);
    assert!(e.contains("budget-epochs of batch 80"), "{e}");
}
