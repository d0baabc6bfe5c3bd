//! Property tests: arbitrary bytes give an error or valid data, never a panic.

use std::fs;

use lamb_data::{
    load, parse_batch, parse_cifar100, parse_idx, read_archive, read_cache_entry, read_official,
    write_cache_entry, Cifar100Labels,
};
use proptest::prelude::*;

use crate::common::{gzip, write_official_dir, Tree};

fn check_valid(s: &lamb_data::Splits) {
    for ds in [&s.train, &s.test] {
        assert_eq!(ds.images.len(), ds.len() * ds.image_len());
        assert!(ds
            .labels
            .iter()
            .all(|&l| (l as usize) < ds.class_names.len()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn batch_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8000), classes in 1usize..12) {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        let origin = std::path::Path::new("x.bin");
        match parse_batch(&bytes, classes, origin, &mut images, &mut labels) {
            Ok(()) => {
                prop_assert_eq!(bytes.len() % 3073, 0);
                prop_assert_eq!(images.len(), labels.len() * 3072);
                prop_assert!(labels.iter().all(|&l| (l as usize) < classes));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn official_dir_with_arbitrary_file_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..7000),
        which in 0usize..7,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        write_official_dir(tmp.path(), [1; 6]);
        let names = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
            "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"];
        fs::write(tmp.path().join(names[which]), &bytes).unwrap();
        if let Ok(s) = read_official(tmp.path()) { check_valid(&s) }
    }

    #[test]
    fn arbitrary_archive_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4000), gz in any::<bool>()) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.tar.gz");
        fs::write(&p, if gz { gzip(&bytes) } else { bytes }).unwrap();
        if let Ok(s) = read_archive(&p, None) { check_valid(&s) }
        if let Ok(s) = load(&p) { check_valid(&s) }
    }

    #[test]
    fn mutated_valid_archive_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let tree = Tree::pngs(&["a", "b"], 2, 1);
        let mut tar = tree.tar_bytes("");
        for (i, v) in &edits {
            let k = i.index(tar.len());
            tar[k] = *v;
        }
        if do_cut {
            tar.truncate(cut.index(tar.len()));
        }
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.tar");
        fs::write(&p, &tar).unwrap();
        if let Ok(s) = read_archive(&p, None) { check_valid(&s) }
    }

    #[test]
    fn cifar100_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000), coarse in any::<bool>()) {
        let labels = if coarse { Cifar100Labels::Coarse } else { Cifar100Labels::Fine };
        let names: Vec<String> = (0..labels.classes()).map(|i| i.to_string()).collect();
        match parse_cifar100(&bytes, labels, names, std::path::Path::new("t.bin")) {
            Ok(ds) => {
                prop_assert_eq!(bytes.len() % 3074, 0);
                prop_assert_eq!(ds.images.len(), ds.len() * 3072);
                prop_assert!(ds.labels.iter().all(|&l| (l as usize) < labels.classes()));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// IDX files with plausible headers (small counts) and arbitrary bodies, or arbitrary bytes.
    #[test]
    fn idx_bytes_never_panic(
        n in 0u32..5, rows in 0u32..6, cols in 0u32..6, extra in -3i64..3,
        body in proptest::collection::vec(any::<u8>(), 0..200),
        raw in proptest::collection::vec(any::<u8>(), 0..40),
        use_raw in any::<bool>(),
    ) {
        let mut img = vec![0, 0, 8, 3];
        for v in [n, rows, cols] {
            img.extend_from_slice(&v.to_be_bytes());
        }
        let want = (n * rows * cols) as i64 + extra;
        img.extend(body.iter().cycle().take(want.max(0) as usize));
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&n.to_be_bytes());
        lab.extend(body.iter().take(n as usize));
        let img = if use_raw { raw.clone() } else { img };
        let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let p = std::path::Path::new("i");
        if let Ok(ds) = parse_idx(&img, &lab, names, (p, p)) {
            prop_assert_eq!(ds.images.len(), ds.len() * ds.image_len());
            prop_assert!(ds.labels.iter().all(|&l| l < 10));
        }
    }

    /// A valid cache entry with bytes changed or cut: always refused (the checksum), never a
    /// panic or a wrong dataset.
    #[test]
    fn mutated_cache_entries_are_refused(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("e.lamb-data");
        let folder = tmp.path().join("f");
        Tree::pngs(&["a", "b"], 1, 1).write_folder(&folder);
        let splits = load(&folder).unwrap();
        write_cache_entry(&splits, &p).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        if do_cut {
            bytes.truncate(cut.index(bytes.len()));
        } else {
            for (i, x) in &edits {
                let k = i.index(bytes.len());
                bytes[k] ^= *x;
            }
        }
        fs::write(&p, &bytes).unwrap();
        prop_assert!(read_cache_entry(&p).is_err());
    }

    #[test]
    fn arbitrary_zip_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.zip");
        let mut b = b"PK\x03\x04".to_vec();
        b.extend_from_slice(&bytes);
        fs::write(&p, &b).unwrap();
        if let Ok(s) = read_archive(&p, None) { check_valid(&s) }
    }
}
