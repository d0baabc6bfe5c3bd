//! MNIST IDX files: the first byte picks how many of the following bytes form the image file
//! (the rest is the label file), both starting with valid magic numbers so that the fuzzer
//! reaches the count and length checks: an error or a consistent dataset, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let k = (split as usize).min(rest.len());
    let mut images = vec![0, 0, 8, 3];
    images.extend_from_slice(&rest[..k]);
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&rest[k..]);
    let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let p = std::path::Path::new("fuzz");
    if let Ok(ds) = lamb_data::parse_idx(&images, &labels, names, (p, p)) {
        assert_eq!(ds.images.len(), ds.len() * ds.image_len());
        assert!(ds.labels.iter().all(|&l| l < 10));
    }
});
