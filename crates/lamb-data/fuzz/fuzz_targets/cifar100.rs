//! CIFAR-100 batch bytes: the first byte picks the label set, the rest is repeated to a whole
//! number of 3,074-byte records half of the time (so record parsing is reached): an error or a
//! consistent dataset, never a panic.
#![no_main]

use lamb_data::Cifar100Labels;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let labels = if first & 1 == 0 { Cifar100Labels::Fine } else { Cifar100Labels::Coarse };
    let bytes: Vec<u8> = if first & 2 == 0 || rest.is_empty() {
        rest.to_vec()
    } else {
        let records = 1 + (first as usize >> 2) % 3;
        rest.iter().copied().cycle().take(records * lamb_data::CIFAR100_RECORD_LEN).collect()
    };
    let names: Vec<String> = (0..labels.classes()).map(|i| i.to_string()).collect();
    if let Ok(ds) = lamb_data::parse_cifar100(&bytes, labels, names, std::path::Path::new("f")) {
        assert_eq!(ds.images.len(), ds.len() * 3072);
        assert!(ds.labels.iter().all(|&l| (l as usize) < labels.classes()));
    }
});
