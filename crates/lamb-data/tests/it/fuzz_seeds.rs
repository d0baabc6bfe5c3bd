//! Seed inputs for the fuzz targets in `fuzz/` (see its README): one small valid input per
//! target, in the target's own input format, so that mutations start inside record parsing
//! instead of at the length checks. The test checks that every seed is accepted by the reader
//! its target calls; with `LAMB_FUZZ_CORPUS=DIR` set it also writes them to `DIR/<target>/`.

use std::fs;
use std::path::Path;

use lamb_data::{
    parse_batch, parse_cifar100, parse_idx, read_archive, read_cache_entry, write_cache_entry,
    Cifar100Labels, CIFAR100_RECORD_LEN, RECORD_LEN,
};

use crate::common::{record, Tree};

/// `(target, file name, bytes)` of every seed.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    // official_batch: first byte = classes - 1, then whole 3,073-byte records.
    let mut batch = vec![9u8];
    for (i, label) in [3u8, 0, 9].iter().enumerate() {
        batch.extend(record(*label, 7 + i as u32));
    }
    // cifar100: first byte 0 = fine labels, given as is; two 3,074-byte records.
    let mut c100 = vec![0u8];
    for (i, (coarse, fine)) in [(4u8, 72u8), (19, 0)].iter().enumerate() {
        c100.extend([*coarse, *fine]);
        c100.extend(&record(0, 40 + i as u32)[1..]);
    }
    // idx: first byte = length of the image body (magic numbers are supplied by the target):
    // 2 images of 3x3 (dims then pixels), then the label body (count then labels).
    let mut images = Vec::new();
    for d in [2u32, 3, 3] {
        images.extend(d.to_be_bytes());
    }
    images.extend((0..18u8).map(|i| i * 13));
    let mut idx = vec![images.len() as u8];
    idx.extend(&images);
    idx.extend(2u32.to_be_bytes());
    idx.extend([7u8, 1]);
    // archive: a small .tar of PNGs, 2 classes, one train and one test image each.
    let tar = Tree::pngs(&["cat", "dog"], 1, 1).tar_bytes("");
    vec![
        ("official_batch", "three-records", batch),
        ("cifar100", "two-fine-records", c100),
        ("idx", "two-3x3-images", idx),
        ("archive", "two-classes.tar", tar),
    ]
}

#[test]
fn fuzz_seeds_are_valid_inputs_of_their_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = seeds();
    for (target, name, bytes) in &all {
        match *target {
            "official_batch" => {
                assert_eq!((bytes.len() - 1) % RECORD_LEN, 0);
                let (mut images, mut labels) = (Vec::new(), Vec::new());
                let classes = bytes[0] as usize + 1;
                parse_batch(
                    &bytes[1..],
                    classes,
                    Path::new(name),
                    &mut images,
                    &mut labels,
                )
                .unwrap();
                assert_eq!(labels, vec![3, 0, 9]);
            }
            "cifar100" => {
                assert_eq!((bytes.len() - 1) % CIFAR100_RECORD_LEN, 0);
                let names = (0..100).map(|i| i.to_string()).collect();
                let ds = parse_cifar100(&bytes[1..], Cifar100Labels::Fine, names, Path::new(name))
                    .unwrap();
                assert_eq!(ds.labels, vec![72, 0]);
            }
            "idx" => {
                let k = bytes[0] as usize;
                let images = [&[0u8, 0, 8, 3][..], &bytes[1..1 + k]].concat();
                let labels = [&[0u8, 0, 8, 1][..], &bytes[1 + k..]].concat();
                let names = (0..10).map(|i| i.to_string()).collect();
                let p = Path::new(name);
                let ds = parse_idx(&images, &labels, names, (p, p)).unwrap();
                assert_eq!(ds.labels, vec![7, 1]);
            }
            "archive" => {
                let p = tmp.path().join(name);
                fs::write(&p, bytes).unwrap();
                let s = read_archive(&p, None).unwrap();
                assert_eq!((s.train.len(), s.test.len()), (2, 2));
            }
            other => panic!("no check for target {other}"),
        }
    }
    // cache_entry: the cache file of the archive's splits, as `lamb data` writes it.
    let splits = read_archive(&tmp.path().join("two-classes.tar"), None).unwrap();
    let entry = tmp.path().join("entry.lamb-data");
    write_cache_entry(&splits, &entry).unwrap();
    let back = read_cache_entry(&entry).unwrap();
    assert_eq!(back.train.labels, splits.train.labels);
    all.push(("cache_entry", "two-classes", fs::read(&entry).unwrap()));
    if let Some(dir) = std::env::var_os("LAMB_FUZZ_CORPUS") {
        for (target, name, bytes) in &all {
            let d = Path::new(&dir).join(target);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(name), bytes).unwrap();
        }
    }
}
