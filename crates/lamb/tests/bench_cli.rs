//! `lamb bench` argument checking that needs no data and no torch: the `--torch` peer is
//! validated (interpreter runs, torch imports) before anything is measured.

use std::process::Command;

mod common;

use common::{fail, lamb};

#[test]
fn torch_flag_errors_are_clear_and_come_before_any_measurement() {
    let tmp = tempfile::tempdir().unwrap();
    let optimizers = ["bench", "--what", "optimizers", "--torch"];
    let err = fail(
        lamb(tmp.path())
            .args(optimizers)
            .arg("/nonexistent/bin/python"),
    );
    assert!(
        err.contains("--torch")
            && err.contains("cannot run the Python interpreter /nonexistent/bin/python"),
        "{err}"
    );
    assert!(!err.contains("STREAM"), "nothing measured: {err}");
    let err = fail(lamb(tmp.path()).args(["bench", "--what", "engine", "--torch", "python3"]));
    assert!(err.contains("--torch compares optimizer steps"), "{err}");
    let err = fail(
        lamb(tmp.path())
            .args(optimizers)
            .args(["python3", "--pairs", "2"]),
    );
    assert!(
        err.contains("--pairs 2: must be between 5 and 1000"),
        "{err}"
    );
}

#[test]
fn torch_flag_with_an_interpreter_without_torch_names_the_module() {
    let has = |code: &str| {
        Command::new("python3")
            .args(["-c", code])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has("pass") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: python3 is missing from PATH"
        );
        eprintln!("skipping: no python3 on PATH");
        return;
    }
    if has("import torch") {
        eprintln!("skipping: python3 on PATH has torch");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let err = fail(lamb(tmp.path()).args(["bench", "--what", "optimizers", "--torch", "python3"]));
    assert!(
        err.contains("python3 cannot import the Python module 'torch'"),
        "{err}"
    );
    assert!(!err.contains("STREAM"), "nothing measured: {err}");
}
