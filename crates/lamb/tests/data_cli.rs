//! `lamb data info` and `lamb data download` on data the tests write (no shared data needed).

mod common;

use std::fs;
use std::path::Path;

use common::{command, BIN};

/// A folder of grayscale 6x5 PNGs: classes "dark" and "light", 3 + 2 training and 1 + 1 test
/// images, pixel values known.
fn gray_folder(root: &Path) {
    for (split, counts) in [("train", [3, 2]), ("test", [1, 1])] {
        for (class, (n, value)) in ["dark", "light"].iter().zip(counts.iter().zip([10u8, 200])) {
            let dir = root.join(split).join(class);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..*n {
                let img = image::GrayImage::from_pixel(6, 5, image::Luma([value]));
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn data_info_reports_shape_counts_statistics_and_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gray");
    gray_folder(&data);
    let out = command(BIN, tmp.path())
        .args(["data", "info", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("5 training and 2 test images of 5x6 pixels, 1 channel(s), 2 classes"),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.first().is_some_and(|f| *f == "dark" || *f == "light"))
        .collect();
    assert_eq!(
        rows,
        vec![vec!["dark", "3", "1"], vec!["light", "2", "1"]],
        "{text}"
    );
    // Train mean = (3*10 + 2*200) / 5 / 255; std from the two values.
    let mean = (3.0 * 10.0 + 2.0 * 200.0) / 5.0 / 255.0;
    let var = (3.0 * (10.0f64 / 255.0 - mean).powi(2) + 2.0 * (200.0 / 255.0 - mean).powi(2)) / 5.0;
    let want = format!(
        "train per-channel mean [{mean:.4}], std [{:.4}]",
        var.sqrt()
    );
    assert!(text.contains(&want), "{want}\n{text}");
    let fp = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("fingerprint "))
        .unwrap();
    assert_eq!(fp.len(), 64);
    // --resize changes the shape and so the fingerprint.
    let out = command(BIN, tmp.path())
        .args(["data", "info", "--resize", "8x4", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let resized = String::from_utf8_lossy(&out.stdout);
    assert!(resized.contains("of 8x4 pixels"), "{resized}");
    assert!(!resized.contains(fp), "{resized}");
    let out = command(BIN, tmp.path())
        .args(["data", "info", "--resize", "8by4", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HEIGHTxWIDTH"));
}

#[test]
fn data_download_refuses_unknown_names() {
    let tmp = tempfile::tempdir().unwrap();
    let out = command(BIN, tmp.path())
        .args(["data", "download", "imagenet", "--out"])
        .arg(tmp.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cifar10, cifar100, mnist, fashion-mnist"),
        "{err}"
    );
    assert!(!tmp.path().join("d").exists());
}

#[cfg(unix)]
#[test]
fn a_fifo_as_data_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("pipe");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    // Opening the FIFO would block forever (no writer): the command must return by itself.
    let out = command(BIN, tmp.path())
        .args(["data", "info", "--data"])
        .arg(&fifo)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FIFO") && err.contains("regular file or a directory"),
        "{err}"
    );
}

/// A noisy 28x28 grayscale picture of class 0 (horizontal bar), 1 (vertical bar) or 2
/// (square), position and noise varying with `seed`.
fn picture(class: usize, seed: u32) -> image::GrayImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let off = (rnd() % 10) as i32 - 5;
    let noise: Vec<u8> = (0..784).map(|_| (rnd() % 60) as u8).collect();
    image::GrayImage::from_fn(28, 28, |x, y| {
        let (x, y) = (x as i32, y as i32);
        let on = match class {
            0 => (y - 14 - off).abs() <= 2 && (4..24).contains(&x),
            1 => (x - 14 - off).abs() <= 2 && (4..24).contains(&y),
            _ => (x - 14 - off).abs() <= 6 && (y - 14 + off).abs() <= 6,
        };
        image::Luma([if on { 200 } else { 20 } + noise[(y * 28 + x) as usize] / 2])
    })
}

/// `lamb train` on a PNG folder the test writes (grayscale 28x28, three classes): the seed
/// CNN is built for 28x28x1 and 3 classes and learns them (chance is 1/3).
#[test]
fn train_on_a_grayscale_png_folder_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    let mut seed = 0;
    for (split, n) in [("train", 60), ("test", 30)] {
        for (c, name) in ["bar-h", "bar-v", "square"].iter().enumerate() {
            let dir = data.join(split).join(name);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                seed += 1;
                picture(c, seed)
                    .save(dir.join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
    }
    let out = command(BIN, tmp.path())
        .args([
            "train",
            "--epochs",
            "5",
            "--batch-size",
            "20",
            "--lr",
            "0.01",
        ])
        .args(["--threads", "2", "--json", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accs: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["val_accuracy"].as_f64())
        .collect();
    assert_eq!(accs.len(), 5, "{text}");
    eprintln!("validation accuracy per epoch: {accs:?} (chance 0.333)");
    assert!(*accs.last().unwrap() >= 0.8, "{accs:?}");
    let summary = fs::read_to_string(tmp.path().join("run/summary.md")).unwrap();
    assert!(summary.contains("**Status:** completed"), "{summary}");
}
