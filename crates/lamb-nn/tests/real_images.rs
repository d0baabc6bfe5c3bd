//! A few hundred real CIFAR-10 images from the shared archive, trained for a few epochs: the
//! training loss must fall. Skips (or fails under CI) when the archive is missing.

use std::io::Read;
use std::path::PathBuf;

use lamb_data::{Dataset, CIFAR10_CLASSES};
use lamb_nn::{classic_cnn, Activation, FitOptions};
use lamb_optim::{Lamb, LambConfig};

const PER_CLASS: usize = 30;

fn archive() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar10-jpeg.tar.gz");
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI: the shared archive is missing at {}", p.display());
    }
    eprintln!(
        "skipping: the CIFAR-10 archive is expected at {}",
        p.display()
    );
    None
}

/// The first `PER_CLASS` training images of every class, decoded.
fn read_subset(path: &PathBuf) -> Dataset {
    let f = std::fs::File::open(path).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut counts = [0usize; 10];
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.trim_start_matches("./").split('/').collect();
        if parts.len() != 3 || parts[0] != "train" || !parts[2].ends_with(".jpg") {
            continue;
        }
        let Some(label) = CIFAR10_CLASSES.iter().position(|c| *c == parts[1]) else {
            continue;
        };
        if counts[label] == PER_CLASS {
            if counts.iter().all(|&c| c == PER_CLASS) {
                break;
            }
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        images.extend_from_slice(img.as_raw());
        labels.push(label as u8);
        counts[label] += 1;
    }
    assert_eq!(labels.len(), 10 * PER_CLASS, "class counts {counts:?}");
    Dataset {
        images,
        labels,
        height: 32,
        width: 32,
        channels: 3,
        class_names: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn classic_cnn_loss_falls_on_real_images() {
    let Some(path) = archive() else { return };
    let data = read_subset(&path);
    let mut model = classic_cnn(Activation::Relu, 0).unwrap();
    let mut opt = Lamb::new(LambConfig {
        learning_rate: 1e-2,
        ..LambConfig::default()
    })
    .unwrap();
    let before = model.evaluate(&data, 100).unwrap();
    let hist = model
        .fit(
            &data,
            Some(&data),
            &FitOptions::new(32, 4, 0),
            &mut opt,
            &mut |_| Ok(()),
        )
        .unwrap();
    let losses: Vec<f64> = hist.epochs.iter().map(|e| e.loss).collect();
    let after = model.evaluate(&data, 100).unwrap();
    assert!(
        losses[3] < losses[0],
        "training loss did not fall: {losses:?}"
    );
    assert!(
        after.loss < before.loss,
        "evaluation loss {} -> {}",
        before.loss,
        after.loss
    );
    assert!(
        after.accuracy > 0.15,
        "accuracy {} on the training images after 4 epochs",
        after.accuracy
    );
}
