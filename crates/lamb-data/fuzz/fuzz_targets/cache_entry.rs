//! The decoded-data cache reader on arbitrary files: an error (checksum, truncation, header)
//! or a consistent dataset, never a panic or an unbounded allocation. Start from a valid entry
//! in `corpus/cache_entry/` (see README.md) so that mutations reach the split headers.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("lamb-data-fuzz-cache-{}.lamb-data", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(s) = lamb_data::read_cache_entry(&path) {
        for ds in [&s.train, &s.test] {
            assert_eq!(ds.images.len(), ds.len() * ds.image_len());
            assert!(ds.labels.iter().all(|&l| (l as usize) < ds.class_names.len()));
        }
    }
    let _ = std::fs::remove_file(&path);
});
