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
