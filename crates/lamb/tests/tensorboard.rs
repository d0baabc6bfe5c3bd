//! TensorBoard event files of `lamb train`, `compare` and `sweep` on a small subset of the
//! shared CIFAR-10 archive: read back with TensorBoard's own reader (`.ci/tb_check.py`, in the
//! virtual environment `.ci/run` installs) and checked against history.json; a stop and a
//! SIGKILL, each followed by a resume, write every step exactly once and end with the same
//! records as a straight run.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use lamb_tensorboard::{read_events, ValueData};

mod common;

use common::{data, fail, lamb, ok, spawn_paused};

/// 1000 training images in batches of 10 (100 steps per epoch), 200 test images.
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

/// The one event file of `dir`.
fn event_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one event file in {}: {files:?}",
        dir.display()
    );
    files[0].clone()
}

/// Every record of a run's `tb/<sub>` as tag -> [(step, value)] (values as exact text:
/// scalars by their bits, histograms in full), in file order.
fn records(run: &Path, sub: &str) -> BTreeMap<String, Vec<(i64, String)>> {
    let f = read_events(&event_file(&run.join("tb").join(sub))).unwrap();
    assert!(!f.torn_tail, "{sub}: torn last record");
    assert_eq!(f.events[0].file_version.as_deref(), Some("brain.Event:2"));
    let mut m: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for e in &f.events {
        for v in &e.values {
            let text = match &v.data {
                ValueData::Scalar(x) => format!("{:08x}", x.to_bits()),
                other => format!("{other:?}"),
            };
            m.entry(v.tag.clone()).or_default().push((e.step, text));
        }
    }
    m
}

fn steps(m: &BTreeMap<String, Vec<(i64, String)>>, tag: &str) -> Vec<i64> {
    m.get(tag)
        .map(|v| v.iter().map(|(s, _)| *s).collect())
        .unwrap_or_default()
}

/// The Python of the virtual environment with `tensorboard` (`$LAMB_TB_PYTHON`, else the one
/// `.ci/run` creates), or `None` (skip) outside CI.
fn tb_python() -> Option<PathBuf> {
    let p = std::env::var_os("LAMB_TB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/lamb-tb-venv/bin/python"));
    let has_tb = Command::new(&p)
        .args(["-c", "import tensorboard"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if has_tb {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI: no Python with tensorboard at {} (.ci/run installs it; LAMB_TB_PYTHON overrides)",
            p.display()
        );
    }
    eprintln!(
        "skipping the TensorBoard reader check: no Python with tensorboard at {} (run \
         `python3 -m venv /tmp/lamb-tb-venv && /tmp/lamb-tb-venv/bin/pip install tensorboard`, \
         or set LAMB_TB_PYTHON)",
        p.display()
    );
    None
}

/// Checks `run` with TensorBoard's EventAccumulator against its history.json.
fn check_with_tensorboard(python: &Path, run: &Path, steps_per_epoch: usize, every: usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/tb_check.py");
    let o = Command::new(python)
        .arg(script)
        .arg(run)
        .args([steps_per_epoch.to_string(), every.to_string()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{text}");
    assert!(
        o.status.success(),
        "tb_check.py on {}:\n{text}",
        run.display()
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        5,
        "{text}"
    );
}

#[test]
fn tensorboards_reader_sees_the_history() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "3", "--tensorboard-every", "30"]);
    small(&mut c, &data, &out);
    let o = ok(&mut c);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("TensorBoard event files in"), "{text}");
    let train = records(&out, "train");
    assert_eq!(steps(&train, "epoch_loss"), vec![0, 1, 2]);
    assert_eq!(
        steps(&train, "batch_loss"),
        (1..=300).filter(|g| g % 30 == 0).collect::<Vec<_>>()
    );
    assert_eq!(
        steps(&train, "dense/kernel/epoch_change/histogram"),
        vec![0, 1, 2]
    );
    assert_eq!(
        steps(&records(&out, "validation"), "epoch_accuracy"),
        vec![0, 1, 2]
    );
    if let Some(py) = tb_python() {
        check_with_tensorboard(&py, &out, 100, 30);
    }

    // A damaged event file stops a resume before anything is written, naming the file.
    let file = event_file(&out.join("tb/validation"));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let err = fail(
        lamb(tmp.path())
            .args(["train", "--epochs", "4", "--resume"])
            .arg(&out),
    );
    assert!(
        err.contains("not a valid TensorBoard event file") && err.contains("--no-tensorboard"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    assert_eq!(
        std::fs::read_to_string(out.join("summary.md")).unwrap(),
        summary
    );

    // Off by a flag; a zero interval is refused before anything starts.
    let off = tmp.path().join("off");
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "1", "--no-tensorboard"]);
    small(&mut c, &data, &off);
    ok(&mut c);
    assert!(off.join("history.json").is_file());
    assert!(!off.join("tb").exists());
    let bad = tmp.path().join("bad");
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "1", "--tensorboard-every", "0"]);
    small(&mut c, &data, &bad);
    let err = fail(&mut c);
    assert!(
        err.contains("--tensorboard-every 0: must be at least 1"),
        "{err}"
    );
    assert!(!bad.exists());
}

#[test]
fn stop_and_kill_then_resume_write_each_step_once() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("broken"));
    let train = |out: &Path| {
        let mut c = lamb(tmp.path());
        c.args([
            "train",
            "--quiet",
            "--epochs",
            "3",
            "--tensorboard-every",
            "10",
        ]);
        small(&mut c, &data, out);
        c
    };
    ok(&mut train(&a));

    // A stop (as Ctrl-C) after global step 150: the middle of epoch 2.
    let p = spawn_paused(&mut train(&b), "150");
    p.signal(libc::SIGINT);
    let (status, err) = p.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    let t = records(&b, "train");
    assert_eq!(
        steps(&t, "batch_loss"),
        (1..=15).map(|k| k * 10).collect::<Vec<_>>()
    );
    assert_eq!(steps(&t, "epoch_loss"), vec![0]);
    assert!(b.join("tb/epoch_start_weights.bin").is_file());

    // Resumed (the interval is the run's, recorded in tb/), then killed (SIGKILL) after step
    // 250: the checkpoint is epoch 2's end (step
    // 200), and no record past it reached the files.
    let resume = || {
        let mut c = lamb(tmp.path());
        c.args(["train", "--quiet", "--resume"]).arg(&b);
        c
    };
    let p = spawn_paused(&mut resume(), "250");
    p.signal(libc::SIGKILL);
    let (status, _) = p.finish();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let t = records(&b, "train");
    assert_eq!(
        steps(&t, "batch_loss"),
        (1..=20).map(|k| k * 10).collect::<Vec<_>>()
    );
    assert_eq!(steps(&t, "epoch_loss"), vec![0, 1]);
    assert_eq!(
        steps(&t, "conv2d/kernel/epoch_change/histogram"),
        vec![0, 1]
    );
    assert!(
        !b.join("tb/epoch_start_weights.bin").exists(),
        "the stop's copy of epoch 2's starting weights is kept past that epoch"
    );

    // As if the kill had also cut a write short: a torn record at the end of the file, which
    // the resumed run cuts off before appending.
    let file = event_file(&b.join("tb/train"));
    let whole = std::fs::metadata(&file).unwrap().len();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&[40, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9]);
    std::fs::write(&file, &bytes).unwrap();
    assert!(read_events(&file).unwrap().torn_tail);
    ok(&mut resume());
    assert!(std::fs::metadata(&file).unwrap().len() > whole);

    // Every tag, step and value as in the straight run (training is bit-identical across
    // resumes, so the values are too), each step once.
    for sub in ["train", "validation"] {
        let (x, y) = (records(&a, sub), records(&b, sub));
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            y.keys().collect::<Vec<_>>(),
            "{sub} tags"
        );
        for (tag, want) in &x {
            assert_eq!(&y[tag], want, "{sub} {tag}");
        }
    }
    assert_eq!(records(&b, "train")["batch_loss"].len(), 30);
    if let Some(py) = tb_python() {
        check_with_tensorboard(&py, &b, 100, 10);
    }
}

#[test]
fn compare_and_sweep_runs_open_under_one_logdir() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let mut c = lamb(tmp.path());
    c.args([
        "compare",
        "--epochs",
        "1",
        "--quiet",
        "--tensorboard-every",
        "50",
    ]);
    small(&mut c, &data, &out);
    ok(&mut c);
    for r in ["lamb", "adam"] {
        let t = records(&out.join(r), "train");
        assert_eq!(steps(&t, "batch_loss"), vec![50, 100], "{r}");
        assert_eq!(
            steps(&records(&out.join(r), "validation"), "epoch_loss"),
            vec![0]
        );
    }
    assert!(records(&out.join("lamb"), "train").contains_key("epoch_trust_ratio/dense/kernel"));
    assert!(!records(&out.join("adam"), "train")
        .keys()
        .any(|k| k.contains("trust_ratio")));

    // A sweep passes the flags on to its runs.
    let grid = tmp.path().join("grid.toml");
    std::fs::write(
        &grid,
        "batch-sizes = [20]\nbase-batch = 20\nscaling = \"sqrt\"\nlr-multipliers = [1.0]\n\
         epochs = 1\nschedule = \"constant\"\nwarmup-epochs = 0.0\ndecay-power = 1.0\nseed = 3\n\
         activation = \"relu\"\ntrain-images = 400\ntest-images = 100\n[[optimizers]]\n\
         optimizer = \"lamb\"\nbase-lr = 0.002\n",
    )
    .unwrap();
    let sw = tmp.path().join("sw");
    ok(lamb(tmp.path())
        .arg("sweep")
        .arg("--config")
        .arg(&grid)
        .arg("--out")
        .arg(&sw)
        .arg("--data")
        .arg(&data)
        .args(["--jobs", "1", "--threads", "2", "--tensorboard-every", "7"]));
    let runs: Vec<PathBuf> = std::fs::read_dir(sw.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let t = records(&runs[0], "train");
    assert_eq!(steps(&t, "batch_loss"), vec![7, 14]);
}
