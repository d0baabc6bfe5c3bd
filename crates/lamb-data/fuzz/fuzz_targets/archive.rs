//! Arbitrary bytes as a .tar.gz / .tar archive: an error or a consistent dataset, never a panic.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_path();
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(s) = lamb_data::read_archive(&path, None) {
        for ds in [&s.train, &s.test] {
            assert_eq!(ds.images.len(), ds.len() * ds.image_len());
            assert!(ds.labels.iter().all(|&l| (l as usize) < ds.class_names.len()));
        }
    }
    let _ = std::fs::remove_file(&path);
});

/// A per-process scratch file (in /dev/shm when it exists, else the temp directory).
fn scratch_path() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("lamb-data-fuzz-{}.bin", std::process::id()))
}
