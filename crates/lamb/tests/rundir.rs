//! Run directories under hostile conditions, on synthetic data in the official layout (no
//! shared data needed): one process per directory, directories that are not runs, runs that
//! never reached a checkpoint, other data on resume, signals in every phase, endless inputs and
//! a failing disk. Every stop is triggered at a known point by the pause hook.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{fail, lamb, official, official_seeded, ok, spawn_paused};

/// A temporary directory with synthetic data in `data/` (100 training, 10 test images).
fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    official(&data, 20);
    (tmp, data)
}

/// `lamb train` on `data` into `out`: 10 steps per epoch.
fn train(tmp: &Path, data: &Path, out: &Path, epochs: &str) -> Command {
    let mut c = lamb(tmp);
    c.args(["train", "--quiet", "--threads", "1", "--batch-size", "10"])
        .args(["--epochs", epochs])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    c
}

fn resume(tmp: &Path, out: &Path) -> Command {
    let mut c = lamb(tmp);
    c.args(["train", "--quiet", "--threads", "1", "--resume"])
        .arg(out);
    c
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_second_process_on_a_run_directory_is_refused_naming_the_holder() {
    let (tmp, data) = setup();
    let out = tmp.path().join("run");
    let p = spawn_paused(&mut train(tmp.path(), &data, &out, "2"), "3");
    let pid = p.child.id();
    for mut c in [
        train(tmp.path(), &data, &out, "2"),
        resume(tmp.path(), &out),
    ] {
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(75), "{err}");
        assert!(
            err.contains(&format!("in use by another process (PID {pid})")),
            "{err}"
        );
    }
    p.signal(libc::SIGINT);
    let (status, err) = p.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    // The holder's run is intact and continues.
    ok(&mut resume(tmp.path(), &out));
    assert!(out.join("weights.safetensors").is_file());
}

#[test]
fn a_directory_that_is_not_a_run_is_refused_and_left_untouched() {
    let (tmp, data) = setup();
    let out = tmp.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("config.toml"), "title = \"my project\"\n").unwrap();
    std::fs::write(out.join("summary.md"), "my notes\n").unwrap();
    let err = fail(&mut train(tmp.path(), &data, &out, "1"));
    assert!(
        err.contains("is not empty and is not a lamb run directory"),
        "{err}"
    );
    assert!(err.contains("config.toml, summary.md"), "{err}");
    let err = fail(&mut resume(tmp.path(), &out));
    assert!(err.contains("is not a lamb run directory"), "{err}");
    assert_eq!(read(&out.join("summary.md")), b"my notes\n");
    assert_eq!(read(&out.join("config.toml")), b"title = \"my project\"\n");
    // An empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(&mut train(tmp.path(), &data, &empty, "1"));
}

#[test]
fn a_run_killed_before_its_first_checkpoint_starts_again_in_place() {
    let (tmp, data) = setup();
    let straight = tmp.path().join("straight");
    ok(&mut train(tmp.path(), &data, &straight, "2"));
    for how in ["resume", "out"] {
        let out = tmp.path().join(format!("killed-{how}"));
        let p = spawn_paused(&mut train(tmp.path(), &data, &out, "2"), "4");
        p.signal(libc::SIGKILL);
        p.finish();
        assert!(!out.join("checkpoint/checkpoint.safetensors").exists());
        // What a kill during an atomic write leaves behind.
        std::fs::write(out.join(".history.tmp-99999.csv"), "partial").unwrap();
        let o = ok(&mut match how {
            "resume" => resume(tmp.path(), &out),
            _ => train(tmp.path(), &data, &out, "2"),
        });
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("stopped before its first checkpoint")
                && err.contains("starting it again"),
            "{how}: {err}"
        );
        assert!(err.contains(".history.tmp-99999.csv"), "{how}: {err}");
        assert!(!out.join(".history.tmp-99999.csv").exists());
        assert_eq!(
            read(&straight.join("weights.safetensors")),
            read(&out.join("weights.safetensors")),
            "{how}: the restarted run equals a straight one"
        );
    }
}

#[test]
fn resume_with_other_data_is_refused_naming_both() {
    let (tmp, data) = setup();
    let other = tmp.path().join("other");
    official_seeded(&other, 20, 12345);
    let out = tmp.path().join("run");
    ok(&mut train(tmp.path(), &data, &out, "1"));
    let mut c = resume(tmp.path(), &out);
    let err = fail(c.args(["--epochs", "2", "--data"]).arg(&other));
    assert!(err.contains("was trained on other data"), "{err}");
    assert!(
        err.contains(&data.display().to_string()) && err.contains(&other.display().to_string()),
        "{err}"
    );
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        !config.contains("other"),
        "the run's record is unchanged: {config}"
    );
    // The same data at another path is the same data.
    let moved = tmp.path().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let mut c = resume(tmp.path(), &out);
    ok(c.args(["--epochs", "2", "--data"]).arg(&moved));
}

#[test]
fn a_signal_while_loading_data_exits_130_and_writes_nothing() {
    let (tmp, data) = setup();
    let out = tmp.path().join("run");
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let p = spawn_paused(&mut train(tmp.path(), &data, &out, "1"), "load");
        p.signal(sig);
        let (status, err) = p.finish();
        assert_eq!(status.code(), Some(130), "signal {sig}: {err}");
        assert!(err.contains("Interrupted while loading data"), "{err}");
        assert!(!out.exists(), "nothing written");
    }
}

#[test]
fn sighup_checkpoints_like_ctrl_c() {
    let (tmp, data) = setup();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&mut train(tmp.path(), &data, &a, "2"));
    let p = spawn_paused(&mut train(tmp.path(), &data, &b, "2"), "13");
    p.signal(libc::SIGHUP);
    let (status, err) = p.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    let summary = std::fs::read_to_string(b.join("summary.md")).unwrap();
    assert!(
        summary.contains("INTERRUPTED at epoch 2, step 3/10"),
        "{summary}"
    );
    ok(&mut resume(tmp.path(), &b));
    assert_eq!(
        read(&a.join("weights.safetensors")),
        read(&b.join("weights.safetensors"))
    );
}

#[test]
fn endless_and_non_regular_inputs_are_refused_without_reading_them() {
    let (tmp, data) = setup();
    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sparse = tmp.path().join("sparse.safetensors");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let big = tmp.path().join("big.toml");
    std::fs::write(
        &big,
        format!("lr = 0.1\nepochs = {}\n", "9".repeat(2 << 20)),
    )
    .unwrap();
    let long = tmp.path().join("long.toml");
    std::fs::write(
        &long,
        format!("lr = 0.1\nepochs = x{}\n", "x".repeat(500_000)),
    )
    .unwrap();
    let both = tmp.path().join("both.safetensors");
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (
            vec!["train".as_ref(), "--config".as_ref(), "/dev/zero".as_ref()],
            "/dev/zero is a character device; expected a regular file",
        ),
        (
            vec!["train".as_ref(), "--config".as_ref(), fifo.as_os_str()],
            "is a FIFO (named pipe); expected a regular file",
        ),
        (
            vec!["compare".as_ref(), "--config".as_ref(), fifo.as_os_str()],
            "is a FIFO (named pipe)",
        ),
        (
            vec![
                "sweep".as_ref(),
                "--dry-run".as_ref(),
                "--config".as_ref(),
                fifo.as_os_str(),
            ],
            "is a FIFO (named pipe)",
        ),
        (
            vec!["train".as_ref(), "--config".as_ref(), big.as_os_str()],
            "files larger than 1048576 bytes are refused here",
        ),
        (
            vec!["train".as_ref(), "--config".as_ref(), long.as_os_str()],
            "line 2, column 10",
        ),
        (
            vec![
                "evaluate".as_ref(),
                "--weights".as_ref(),
                "/dev/zero".as_ref(),
            ],
            "character device",
        ),
        (
            vec![
                "evaluate".as_ref(),
                "--weights".as_ref(),
                sparse.as_os_str(),
            ],
            "header of 0 bytes",
        ),
        (
            vec!["evaluate".as_ref(), "--weights".as_ref(), both.as_os_str()],
            "both `conv2d/bias` and `conv2d/bias:0` are present",
        ),
    ];
    // Weights with a tensor under both spellings of its name.
    let run = tmp.path().join("run");
    ok(&mut train(tmp.path(), &data, &run, "1"));
    let w = read(&run.join("weights.safetensors"));
    let n = u64::from_le_bytes(w[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&w[8..8 + n]).unwrap();
    let mut h = header.as_object().unwrap().clone();
    let bias = h["conv2d/bias"].clone();
    let end = h
        .values()
        .filter_map(|t| t.get("data_offsets"))
        .map(|o| o[1].as_u64().unwrap())
        .max()
        .unwrap();
    let (s, e) = (
        bias["data_offsets"][0].as_u64().unwrap(),
        bias["data_offsets"][1].as_u64().unwrap(),
    );
    let mut copy = bias.clone();
    copy["data_offsets"] = serde_json::json!([end, end + (e - s)]);
    h.insert("conv2d/bias:0".into(), copy);
    let hj = serde_json::to_vec(&h).unwrap();
    let mut out = (hj.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&hj);
    out.extend_from_slice(&w[8 + n..]);
    out.extend_from_slice(&w[8 + n + s as usize..8 + n + e as usize]);
    std::fs::write(&both, out).unwrap();
    for (args, expect) in cases {
        let err = fail(lamb(tmp.path()).args(&args).arg("--data").arg(&data));
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(
            err.len() < 2000,
            "{args:?}: a short message: {} bytes",
            err.len()
        );
    }
}

#[test]
fn out_of_range_values_are_named_plainly() {
    let (tmp, data) = setup();
    let out = tmp.path().join("run");
    for (extra, expect) in [
        (
            &["--lr", "1e-300"][..],
            "`lr` = 1e-300: outside the range of the optimizers' f32",
        ),
        (
            &["--seed", "18446744073709551615"][..],
            "`seed` = 18446744073709551615: must be between 0 and 9223372036854775807",
        ),
        (
            &["--warmup-epochs", "3"][..],
            "`warmup-epochs` = 3: longer than the run",
        ),
    ] {
        let err = fail(train(tmp.path(), &data, &out, "2").args(extra));
        assert!(err.contains(expect), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: nothing created");
    }
    for (args, expect) in [
        (
            &["bench", "--train-images", "100000000000"][..],
            "--train-images 100000000000: must be between 1 and 1000000",
        ),
        (
            &["bench", "--batch-sizes", "5000", "--train-images", "1000"][..],
            "--batch-sizes holds 5000: must be between 1 and 1000",
        ),
        (
            &["bench", "--epochs", "0"][..],
            "--epochs 0: must be between 1 and 100000",
        ),
    ] {
        let err = fail(lamb(tmp.path()).args(args));
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let grid = tmp.path().join("grid.toml");
    let mults: Vec<String> = (1..=200).map(|i| format!("{i}.0")).collect();
    let batches: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    std::fs::write(
        &grid,
        format!(
            "batch-sizes = [{}]\nbase-batch = 1\nscaling = \"sqrt\"\nlr-multipliers = [{}]\n\
             epochs = 2\nschedule = \"constant\"\nwarmup-epochs = 0.0\ndecay-power = 1.0\n\
             seed = 1\nactivation = \"relu\"\n[[optimizers]]\noptimizer = \"lamb\"\nbase-lr = 0.001\n",
            batches.join(", "),
            mults.join(", ")
        ),
    )
    .unwrap();
    let err = fail(
        lamb(tmp.path())
            .args(["sweep", "--dry-run", "--config"])
            .arg(&grid),
    );
    assert!(
        err.contains("= 12000 runs; a sweep holds at most 10000"),
        "{err}"
    );
}

#[test]
fn a_failed_checkpoint_write_marks_the_run_failed() {
    let (tmp, data) = setup();
    let out = tmp.path().join("run");
    let mut c = train(tmp.path(), &data, &out, "2");
    // Files may grow to 200 KB: config, summary and history fit; the checkpoint (weights and
    // two LAMB moments, about 510 KB) does not, as on a full disk.
    // SAFETY: setrlimit(2) and signal(2) are async-signal-safe, as pre_exec requires.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 200_000,
                rlim_max: 200_000,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let err = fail(&mut c);
    assert!(err.contains("saving the checkpoint"), "{err}");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("**Status:** FAILED"), "{summary}");
    assert!(!summary.contains("RUNNING"), "{summary}");
    assert!(!out.join("weights.safetensors").exists());
}

#[test]
fn data_options_are_recorded_and_fixed_on_resume() {
    let (tmp, data) = setup();
    let out = tmp.path().join("run");
    ok(train(tmp.path(), &data, &out, "1").args(["--resize", "16x16"]));
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("resize = \"16x16\""), "{config}");
    assert!(
        std::fs::read_to_string(out.join("summary.md"))
            .unwrap()
            .contains("(None, 14, 14, 32)"),
        "the model takes 16x16 images (a 3x3 valid convolution gives 14x14)"
    );
    let err = fail(resume(tmp.path(), &out).args(["--epochs", "2", "--resize", "20x20"]));
    assert!(err.contains("--resize cannot change"), "{err}");
    ok(resume(tmp.path(), &out).args(["--epochs", "2"]));
    let err =
        fail(train(tmp.path(), &data, &tmp.path().join("bad"), "1").args(["--resize", "0x5"]));
    assert!(err.contains("`resize` = \"0x5\""), "{err}");
}

#[test]
fn a_validation_split_holds_out_training_images_and_tests_once_at_the_end() {
    let (tmp, data) = setup();
    let out = tmp.path().join("run");
    let o = ok(train(tmp.path(), &data, &out, "2").args(["--validation-split", "0.2"]));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("test set (once, at the end): accuracy"),
        "{printed}"
    );
    let split: serde_json::Value =
        serde_json::from_slice(&read(&out.join("validation_split.json"))).unwrap();
    let held = split["validation_indices"].as_array().unwrap();
    // 100 training images, 10 per class: 2 per class held out.
    assert_eq!(held.len(), 20, "{split}");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("80 training images; 20 held out"),
        "{summary}"
    );
    assert!(
        summary.contains("Test set (evaluated once, after the last epoch)"),
        "{summary}"
    );
    assert!(summary.contains("on 10 images"), "{summary}");
    let err = fail(resume(tmp.path(), &out).args(["--epochs", "3", "--validation-split", "0.3"]));
    assert!(err.contains("--validation-split cannot change"), "{err}");
    for bad in ["0", "1", "1.5"] {
        let err = fail(
            train(tmp.path(), &data, &tmp.path().join("bad"), "1")
                .args(["--validation-split", bad]),
        );
        assert!(err.contains("`validation-split`"), "{bad}: {err}");
    }
}

#[test]
fn augmented_runs_resume_bit_identically_and_do_not_depend_on_threads() {
    let (tmp, data) = setup();
    let run = |out: &Path, threads: &str| {
        let mut c = lamb(tmp.path());
        c.args(["train", "--quiet", "--batch-size", "10", "--epochs", "2"])
            .args([
                "--augment",
                "crop=4,flip",
                "--standardize",
                "--threads",
                threads,
            ])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(out);
        c
    };
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    ok(&mut run(&a, "1"));
    ok(&mut run(&c, "2"));
    let p = spawn_paused(&mut run(&b, "2"), "13");
    p.signal(libc::SIGINT);
    assert_eq!(p.finish().0.code(), Some(130));
    ok(&mut resume(tmp.path(), &b));
    let wa = read(&a.join("weights.safetensors"));
    assert_eq!(wa, read(&b.join("weights.safetensors")), "resume");
    assert_eq!(wa, read(&c.join("weights.safetensors")), "threads");
    // The augmentation changes training (it is not a no-op).
    let plain = tmp.path().join("plain");
    ok(train(tmp.path(), &data, &plain, "2").args(["--standardize"]));
    assert_ne!(wa, read(&plain.join("weights.safetensors")));
    let input: serde_json::Value = serde_json::from_slice(&read(&a.join("input.json"))).unwrap();
    assert_eq!(input["augment"], "crop=4,flip", "{input}");
    assert_eq!(input["standardize"]["mean"].as_array().unwrap().len(), 3);
    // evaluate applies the recorded standardization: the run's last validation accuracy.
    let o = ok(lamb(tmp.path())
        .args(["evaluate", "--json", "--weights"])
        .arg(a.join("weights.safetensors"))
        .arg("--data")
        .arg(&data));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let history: serde_json::Value =
        serde_json::from_slice(&read(&a.join("history.json"))).unwrap();
    let last = history["epochs"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        ev["accuracy"].as_f64(),
        last["val_accuracy"].as_f64(),
        "{ev} {last}"
    );
    let err = fail(
        train(tmp.path(), &data, &tmp.path().join("bad"), "1").args(["--augment", "rotate=5"]),
    );
    assert!(err.contains("`augment` = \"rotate=5\""), "{err}");
}
