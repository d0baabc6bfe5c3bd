//! Property tests: arbitrary bytes give an error or valid data, never a panic.

use std::fs;

use lamb_data::{load, parse_batch, read_archive, read_official};
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
}
