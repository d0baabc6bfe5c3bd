//! Arbitrary bytes as an official-layout batch file: an error or valid records, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (classes, bytes) = match data.split_first() {
        Some((&c, rest)) => (c as usize + 1, rest),
        None => (10, data),
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let origin = std::path::Path::new("fuzz.bin");
    if lamb_data::parse_batch(bytes, classes, origin, &mut images, &mut labels).is_ok() {
        assert_eq!(images.len(), labels.len() * 3072);
        assert!(labels.iter().all(|&l| (l as usize) < classes));
    }
});
