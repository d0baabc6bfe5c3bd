//! The shared CIFAR-10 JPEG archive (skipped with a message when absent, failing under CI).
//! Decoding all 60,000 JPEGs takes about 1.6 s under the test profile.

use lamb_data::{load, Dataset};

use crate::common::shared_archive;

fn channel_means(ds: &Dataset) -> [f64; 3] {
    let mut sum = [0u64; 3];
    for px in ds.images.chunks_exact(3) {
        for c in 0..3 {
            sum[c] += px[c] as u64;
        }
    }
    let n = (ds.images.len() / 3) as f64 * 255.0;
    sum.map(|s| s as f64 / n)
}

fn per_class(ds: &Dataset) -> Vec<usize> {
    let mut counts = vec![0; ds.class_names.len()];
    for &l in &ds.labels {
        counts[l as usize] += 1;
    }
    counts
}

#[test]
fn full_shared_archive_loads() {
    let Some(path) = shared_archive() else { return };
    let s = load(&path).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (50_000, 10_000));
    assert_eq!(s.train.class_names, lamb_data::CIFAR10_CLASSES.to_vec());
    assert_eq!(per_class(&s.train), vec![5_000; 10]);
    assert_eq!(per_class(&s.test), vec![1_000; 10]);
    for ds in [&s.train, &s.test] {
        assert_eq!((ds.height, ds.width, ds.channels), (32, 32, 3));
        let means = channel_means(ds);
        eprintln!("channel means {means:?}");
        for m in means {
            assert!((0.40..0.52).contains(&m), "channel mean {m}");
        }
    }
}
