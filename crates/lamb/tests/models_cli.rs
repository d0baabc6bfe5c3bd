//! End-to-end tests of `--model` on a small subset of the shared CIFAR-10 archive: a Keras
//! JSON model with BatchNormalization, a residual Add and Dropout trains, stops and resumes
//! bit-exactly (the moving statistics travel in the checkpoint; dropout masks follow the
//! epoch and step), its weights carry the description so
//! `evaluate` needs no flag, a bad model file is refused before anything is written, and
//! ResNet-20 trains (smoke).

use std::path::Path;
use std::process::Command;

mod common;

use common::{data, fail, lamb, ok, stdout};

/// 32x32x3 -> Conv2D 8 stride 2 same -> BN -> relu -> Conv2D 8 -> Add -> Dropout -> GAP ->
/// Dense 10.
const SMALL_RESNET: &str = r#"{"class_name": "Functional", "config": {"name": "small",
 "input_layers": [["in", 0, 0]], "output_layers": [["dense", 0, 0]], "layers": [
 {"class_name": "InputLayer", "name": "in", "config": {"batch_input_shape": [null, 32, 32, 3]}, "inbound_nodes": []},
 {"class_name": "Conv2D", "name": "conv2d", "config": {"filters": 8, "kernel_size": [3, 3], "strides": [2, 2], "padding": "same"}, "inbound_nodes": [[["in", 0, 0, {}]]]},
 {"class_name": "BatchNormalization", "name": "batch_normalization", "config": {}, "inbound_nodes": [[["conv2d", 0, 0, {}]]]},
 {"class_name": "Activation", "name": "activation", "config": {"activation": "relu"}, "inbound_nodes": [[["batch_normalization", 0, 0, {}]]]},
 {"class_name": "Conv2D", "name": "conv2d_1", "config": {"filters": 8, "kernel_size": [3, 3], "padding": "same", "activation": "relu"}, "inbound_nodes": [[["activation", 0, 0, {}]]]},
 {"class_name": "Add", "name": "add", "config": {}, "inbound_nodes": [[["activation", 0, 0, {}], ["conv2d_1", 0, 0, {}]]]},
 {"class_name": "Dropout", "name": "dropout", "config": {"rate": 0.25}, "inbound_nodes": [[["add", 0, 0, {}]]]},
 {"class_name": "GlobalAveragePooling2D", "name": "gap", "config": {}, "inbound_nodes": [[["dropout", 0, 0, {}]]]},
 {"class_name": "Dense", "name": "dense", "config": {"units": 10, "activation": "softmax"}, "inbound_nodes": [[["gap", 0, 0, {}]]]}
]}}"#;

fn small(c: &mut Command, data: &Path, out: &Path, model: &Path) {
    c.arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .arg("--model")
        .arg(model)
        .args([
            "--limit-train",
            "500",
            "--limit-test",
            "100",
            "--batch-size",
            "25",
            "--threads",
            "2",
            "--optimizer",
            "adam",
        ]);
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_keras_json_model_trains_resumes_exactly_and_evaluates_without_flags() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("small.json");
    std::fs::write(&model, SMALL_RESNET).unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "2", "--quiet"]);
    small(&mut c, &data, &a, &model);
    ok(&mut c);
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "1", "--quiet"]);
    small(&mut c, &data, &b, &model);
    ok(&mut c);
    ok(lamb(tmp.path())
        .args(["train", "--epochs", "2", "--quiet", "--resume"])
        .arg(&b));
    assert_eq!(
        read(&a.join("weights.safetensors")),
        read(&b.join("weights.safetensors")),
        "straight and resumed runs end with the same weights and BN statistics"
    );
    // The weights carry the description and the BN statistics: no --model needed, and the
    // accuracy is the run's last validation accuracy (same images, moving statistics).
    let o = ok(lamb(tmp.path())
        .args(["evaluate", "--json", "--limit-test", "100", "--data"])
        .arg(&data)
        .arg("--weights")
        .arg(a.join("weights.safetensors")));
    let ev: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let history = std::fs::read_to_string(a.join("history.csv")).unwrap();
    let header: Vec<&str> = history.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = history.lines().last().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "val_accuracy").unwrap();
    let val: f64 = last[col].parse().unwrap();
    assert!(
        (ev["accuracy"].as_f64().unwrap() - val).abs() < 1e-9,
        "evaluate {} vs the run's validation {val}",
        ev["accuracy"]
    );
}

#[test]
fn a_bad_model_file_is_refused_naming_the_layer_and_writes_nothing() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bad.json");
    std::fs::write(&model, SMALL_RESNET.replace("\"Add\"", "\"Multiply\"")).unwrap();
    let out = tmp.path().join("run");
    let mut c = lamb(tmp.path());
    c.args(["train", "--epochs", "1"]);
    small(&mut c, &data, &out, &model);
    let e = fail(&mut c);
    assert!(
        e.contains("`add` (Multiply)") && e.contains("unknown layer"),
        "{e}"
    );
    assert!(!out.exists(), "no run directory for a refused model");
    let e = fail(lamb(tmp.path()).args(["train", "--model", "no-such-model"]));
    assert!(e.contains("resnet20"), "{e}");
}

#[test]
fn resnet20_trains_a_few_steps() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = ok(lamb(tmp.path())
        .args([
            "train",
            "--model",
            "resnet20",
            "--epochs",
            "1",
            "--batch-size",
            "32",
        ])
        .args([
            "--limit-train",
            "64",
            "--limit-test",
            "32",
            "--threads",
            "2",
            "--json",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out));
    assert!(stdout(&o).contains("val_accuracy"), "{}", stdout(&o));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap_or_default();
    let _ = summary;
    assert!(out.join("weights.safetensors").is_file());
}

#[test]
fn initial_weights_are_where_training_starts_and_a_mismatch_is_refused() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut c = lamb(tmp.path());
        c.args(["train", "--quiet", "--epochs", "1", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args([
                "--limit-train",
                "300",
                "--limit-test",
                "100",
                "--threads",
                "2",
            ])
            .args(extra);
        c
    };
    let a = tmp.path().join("a");
    ok(&mut run(&a, &["--seed", "1"]));
    let start = tmp.path().join("init.safetensors");
    std::fs::copy(a.join("weights.safetensors"), &start).unwrap();
    // Another seed, but a learning rate so small (1e-30) that no weight moves by half an ulp:
    // the run ends where it started, so its weights are exactly the file it was given (a
    // seeded initialisation would differ).
    let b = tmp.path().join("b");
    let mut c = run(&b, &["--seed", "2", "--optimizer", "sgd", "--lr", "1e-30"]);
    ok(c.arg("--initial-weights").arg(&start));
    assert_eq!(read(&b.join("weights.safetensors")), read(&start));
    let text = std::fs::read_to_string(b.join("config.toml")).unwrap();
    assert!(text.contains("initial-weights"), "{text}");
    // A resumed run takes its weights from the checkpoint: the file may be gone by then.
    std::fs::remove_file(&start).unwrap();
    ok(lamb(tmp.path())
        .args(["train", "--quiet", "--epochs", "2", "--resume"])
        .arg(&b));
    std::fs::copy(a.join("weights.safetensors"), &start).unwrap();
    // The seed CNN's weights do not fit ResNet-20: refused naming the file, nothing written.
    let r = tmp.path().join("r");
    let mut c = run(&r, &["--model", "resnet20"]);
    let e = fail(c.arg("--initial-weights").arg(&start));
    assert!(
        e.contains("--initial-weights") && e.contains("init.safetensors"),
        "{e}"
    );
    assert!(!r.exists(), "no run directory for refused weights");
    let e = fail(&mut run(&r, &["--initial-weights", "no-such.safetensors"]));
    assert!(
        e.contains("no-such.safetensors") && e.contains("no such file"),
        "{e}"
    );
}
