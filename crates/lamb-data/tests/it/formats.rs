//! CIFAR-100 binary, MNIST IDX, zip archives, grayscale images and --resize, on files the tests
//! write in the exact formats.

use std::fs;
use std::io::Write;

use image::{GrayImage, ImageFormat, Luma};
use lamb_data::{
    detect, load, load_with, Cifar100Labels, DataError, Layout, LoadOptions, Resize,
    FASHION_MNIST_CLASSES,
};

use crate::common::{gzip, png, rand_image, Tree};

/// One CIFAR-100 record: coarse label, fine label, R, G, B planes.
fn c100_record(coarse: u8, fine: u8, seed: u32) -> Vec<u8> {
    let mut r = vec![coarse, fine];
    r.extend_from_slice(&crate::common::record(0, seed)[1..]);
    r
}

#[test]
fn cifar100_reads_fine_or_coarse_labels_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    fs::create_dir(&dir).unwrap();
    let train: Vec<Vec<u8>> = (0..5)
        .map(|i| c100_record(i as u8 % 20, 99 - i as u8, i))
        .collect();
    let test: Vec<Vec<u8>> = (0..2).map(|i| c100_record(19, i as u8, 50 + i)).collect();
    fs::write(dir.join("train.bin"), train.concat()).unwrap();
    fs::write(dir.join("test.bin"), test.concat()).unwrap();
    // The parent directory detects as the layout too.
    assert_eq!(detect(tmp.path()).unwrap(), Layout::Cifar100(dir.clone()));
    let fine = load(tmp.path()).unwrap();
    assert_eq!(fine.train.labels, vec![99, 98, 97, 96, 95]);
    assert_eq!(fine.test.labels, vec![0, 1]);
    assert_eq!(fine.train.class_names.len(), 100);
    assert_eq!(
        fine.train.class_names[7], "7",
        "numbers without the names file"
    );
    assert_eq!(
        (fine.train.height, fine.train.width, fine.train.channels),
        (32, 32, 3)
    );
    // Pixels: NHWC from the planes, like CIFAR-10's.
    let img = rand_image(32, 32, 3);
    assert_eq!(fine.train.image(3), img.as_raw().as_slice());
    let names: String = (0..20).map(|i| format!("super{i}\n")).collect();
    fs::write(dir.join("coarse_label_names.txt"), names).unwrap();
    let coarse = load_with(
        &dir,
        &LoadOptions {
            cifar100_labels: Cifar100Labels::Coarse,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(coarse.train.labels, vec![0, 1, 2, 3, 4]);
    assert_eq!(coarse.test.labels, vec![19, 19]);
    assert_eq!(coarse.train.class_names[19], "super19");
    assert_eq!(coarse.train.images, fine.train.images);
}

#[test]
fn cifar100_bad_records_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let good = c100_record(1, 2, 1);
    fs::write(
        tmp.path().join("train.bin"),
        [good.clone(), good.clone()].concat(),
    )
    .unwrap();
    // A test file one byte short of two records.
    let mut short = [good.clone(), good.clone()].concat();
    short.pop();
    fs::write(tmp.path().join("test.bin"), &short).unwrap();
    let err = load(tmp.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::BadFormat { .. }), "{msg}");
    assert!(
        msg.contains("test.bin") && msg.contains("3074") && msg.contains("1 whole records"),
        "{msg}"
    );
    // A CIFAR-10-length record (3073 bytes) file.
    fs::write(tmp.path().join("test.bin"), crate::common::record(1, 1)).unwrap();
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("length 3073"), "{msg}");
    // A fine label of 100 in record 1.
    let mut bad = [good.clone(), good].concat();
    bad[3074 + 1] = 100;
    fs::write(tmp.path().join("test.bin"), &bad).unwrap();
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains("record 1") && msg.contains("fine label 100") && msg.contains("0..=99"),
        "{msg}"
    );
    // A names file with the wrong count.
    fs::write(tmp.path().join("test.bin"), c100_record(0, 0, 3)).unwrap();
    fs::write(tmp.path().join("fine_label_names.txt"), "a\nb\n").unwrap();
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains("fine_label_names.txt") && msg.contains("2 class names"),
        "{msg}"
    );
}

/// An IDX image file: magic 0x803, n, rows, cols, pixels.
fn idx_images(n: u32, rows: u32, cols: u32, seed: u8) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, rows, cols] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend((0..n * rows * cols).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    b
}

/// An IDX label file: magic 0x801, n, labels.
fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

fn write_mnist(dir: &std::path::Path, gz: bool) {
    fs::create_dir_all(dir).unwrap();
    let files = [
        ("train-images-idx3-ubyte", idx_images(3, 4, 5, 1)),
        ("train-labels-idx1-ubyte", idx_labels(&[5, 0, 9])),
        ("t10k-images-idx3-ubyte", idx_images(2, 4, 5, 2)),
        ("t10k-labels-idx1-ubyte", idx_labels(&[1, 2])),
    ];
    for (name, bytes) in files {
        if gz {
            fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn mnist_idx_plain_and_gzipped() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("mnist");
    let gz = tmp.path().join("fashion-mnist");
    write_mnist(&plain, false);
    write_mnist(&gz, true);
    assert_eq!(detect(&plain).unwrap(), Layout::Idx(plain.clone()));
    let a = load(&plain).unwrap();
    assert_eq!((a.train.height, a.train.width, a.train.channels), (4, 5, 1));
    assert_eq!(a.train.labels, vec![5, 0, 9]);
    assert_eq!(a.test.labels, vec![1, 2]);
    assert_eq!(a.train.images, idx_images(3, 4, 5, 1)[16..].to_vec());
    assert_eq!(a.train.class_names[9], "9");
    let b = load(&gz).unwrap();
    assert_eq!(b.train.images, a.train.images);
    assert_eq!(b.train.class_names, FASHION_MNIST_CLASSES.to_vec());
}

#[test]
fn idx_bad_magic_and_counts_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_mnist(&dir, false);
    let img = dir.join("train-images-idx3-ubyte");
    // Wrong magic: a label file where images belong.
    fs::write(&img, idx_labels(&[1, 2, 3])).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("train-images-idx3-ubyte")
            && msg.contains("magic number 0x00000801")
            && msg.contains("0x00000803"),
        "{msg}"
    );
    // Counts that disagree with the length (one pixel missing).
    let mut b = idx_images(3, 4, 5, 1);
    b.pop();
    fs::write(&img, &b).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("need 60 data bytes but the file holds 59"),
        "{msg}"
    );
    // Label count differing from the image count.
    fs::write(&img, idx_images(3, 4, 5, 1)).unwrap();
    fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(&[1, 2])).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    assert!(msg.contains("2 labels for the 3 images"), "{msg}");
    // A label of 10.
    fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(&[1, 10, 2])).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 1,
                label: 10,
                ..
            }
        ),
        "{err}"
    );
    // A truncated gzip.
    fs::remove_file(dir.join("train-labels-idx1-ubyte")).unwrap();
    let gz = gzip(&idx_labels(&[1, 2, 3]));
    fs::write(dir.join("train-labels-idx1-ubyte.gz"), &gz[..gz.len() - 6]).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, DataError::Archive { .. }), "{err}");
    // A missing file is named.
    fs::remove_file(dir.join("train-labels-idx1-ubyte.gz")).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("train-labels-idx1-ubyte") && msg.contains("does not exist"),
        "{msg}"
    );
}

fn gray_png(w: u32, h: u32, v: u8) -> Vec<u8> {
    let img = GrayImage::from_fn(w, h, |x, y| Luma([v.wrapping_add((x + 3 * y) as u8)]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn grayscale_images_keep_one_channel_and_mixed_channels_are_refused() {
    let mut tree = Tree::default();
    for (split, n) in [("train", 3), ("test", 1)] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            for i in 0..n {
                tree.add(
                    &format!("{split}/{class}/{i}.png"),
                    gray_png(28, 28, (c * 100 + i) as u8),
                );
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("gray");
    tree.write_folder(&folder);
    let s = load(&folder).unwrap();
    assert_eq!(
        (s.train.height, s.train.width, s.train.channels),
        (28, 28, 1)
    );
    assert_eq!(s.train.image(0)[..3], [0, 1, 2]);
    assert_eq!(s.train.image(3)[0], 100);
    // An RGB image among grayscale ones.
    tree.add("test/b/rgb.png", png(&rand_image(28, 28, 1)));
    tree.write_folder(&folder);
    let err = load(&folder).unwrap_err();
    assert!(
        matches!(&err, DataError::WrongChannels { member, found: 3, expected: 1, first, .. }
            if member == "test/b/rgb.png" && first == "train/a/0.png"),
        "{err}"
    );
}

#[test]
fn resize_makes_mixed_sizes_one_size() {
    let mut tree = Tree::default();
    tree.add("train/a/0.png", gray_png(28, 28, 0));
    tree.add("train/a/1.png", gray_png(40, 30, 0));
    tree.add("test/a/0.png", gray_png(8, 8, 0));
    let tmp = tempfile::tempdir().unwrap();
    tree.write_folder(tmp.path());
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, DataError::WrongImageSize { .. }), "{err}");
    assert!(err.to_string().contains("--resize"), "{err}");
    let to: Resize = "16x20".parse().unwrap();
    let s = load_with(
        tmp.path(),
        &LoadOptions {
            resize: Some(to),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (s.train.height, s.train.width, s.train.channels),
        (16, 20, 1)
    );
    assert_eq!(s.train.images.len(), 2 * 16 * 20);
    assert_eq!(s.test.images.len(), 16 * 20);
    // The official binary formats resize too (CIFAR-10 to 16x16 here).
    let c10 = tmp.path().join("c10");
    crate::common::write_official_dir(&c10, [1, 1, 1, 1, 1, 2]);
    let s = load_with(
        &c10,
        &LoadOptions {
            resize: Some("16x16".parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (s.test.len(), s.test.height, s.test.width, s.test.channels),
        (2, 16, 16, 3)
    );
}

/// A zip of the image layout, written with the zip crate (stored and deflated members).
fn zip_bytes(tree: &Tree, deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (p, bytes) in &tree.files {
        w.start_file(p.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn zip_archives_load_like_the_folder() {
    let tree = Tree::pngs(&["b", "a"], 2, 1);
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    tree.write_folder(&folder);
    let expected = load(&folder).unwrap();
    for deflate in [false, true] {
        let p = tmp.path().join(format!("x{deflate}.zip"));
        fs::write(&p, zip_bytes(&tree, deflate)).unwrap();
        assert_eq!(detect(&p).unwrap(), Layout::Archive(p.clone()));
        assert_eq!(load(&p).unwrap(), expected);
    }
    // A damaged member (a byte flipped inside a stored PNG) fails its CRC or decoding.
    let mut bytes = zip_bytes(&tree, false);
    let at = bytes.windows(4).position(|w| w == b"IDAT").unwrap() + 8;
    bytes[at] ^= 0xff;
    let p = tmp.path().join("bad.zip");
    fs::write(&p, &bytes).unwrap();
    let err = load(&p).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Archive { .. } | DataError::CorruptImage { .. }
        ),
        "{err}"
    );
    // A truncated zip (no central directory).
    let good = zip_bytes(&tree, true);
    fs::write(&p, &good[..good.len() / 2]).unwrap();
    assert!(load(&p).is_err());
}
