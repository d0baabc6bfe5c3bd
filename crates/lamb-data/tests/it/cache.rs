//! Importing into the official layout and the import cache.

use std::fs;

use lamb_data::{cache_entry_dir, import_archive, load, load_cached, read_official, DataError};

use crate::common::{names_in, Tree};

#[test]
fn import_then_load_equals_loading_the_archive() {
    let tree = Tree::pngs(&["b", "a", "c"], 4, 2);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("imgs.tar.gz");
    tree.write_tar(&archive, "", true);
    let out = tmp.path().join("out");
    let summary = import_archive(&archive, &out).unwrap();
    assert_eq!((summary.train, summary.test), (12, 6));
    assert_eq!(summary.class_names, vec!["a", "b", "c"]);
    assert_eq!(summary.files.len(), 7);
    assert!(
        names_in(&out).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        names_in(&out)
    );
    assert_eq!(
        fs::read_to_string(out.join("batches.meta.txt")).unwrap(),
        "a\nb\nc\n"
    );
    assert_eq!(read_official(&out).unwrap(), load(&archive).unwrap());
}

#[test]
fn import_of_a_non_32x32_archive_fails_without_writing() {
    let mut tree = Tree::default();
    let img = crate::common::png(&crate::common::rand_image(8, 8, 1));
    tree.add("train/a/0.png", img.clone());
    tree.add("test/a/0.png", img);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("small.tar");
    tree.write_tar(&archive, "", false);
    let out = tmp.path().join("out");
    let err = import_archive(&archive, &out).unwrap_err();
    assert!(
        matches!(err, DataError::WrongImageSize { found_w: 8, .. }),
        "{err}"
    );
    assert!(!out.exists() || names_in(&out).is_empty());
}

#[test]
fn load_cached_imports_once_then_reads_the_entry() {
    let tree = Tree::pngs(&["x", "y"], 3, 1);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("imgs.tar.gz");
    tree.write_tar(&archive, "", true);
    let cache = tmp.path().join("cache");
    let expected = load(&archive).unwrap();
    assert_eq!(load_cached(&archive, &cache).unwrap(), expected);
    let entry = cache_entry_dir(&archive, &cache).unwrap();
    assert!(entry.is_dir());
    assert_eq!(names_in(&cache).len(), 1, "no temporary directory left");
    // The second call reads the entry: prove it by altering the entry's meta file.
    fs::write(entry.join("batches.meta.txt"), "p\nq\n").unwrap();
    let again = load_cached(&archive, &cache).unwrap();
    assert_eq!(again.train.class_names, vec!["p", "q"]);
    assert_eq!(again.train.images, expected.train.images);
    // A damaged entry is re-imported.
    fs::write(entry.join("data_batch_2.bin"), b"short").unwrap();
    assert_eq!(load_cached(&archive, &cache).unwrap(), expected);
    // Other contents get another entry.
    let other = Tree::pngs(&["x", "y"], 2, 1);
    other.write_tar(&archive, "", true);
    assert_ne!(cache_entry_dir(&archive, &cache).unwrap(), entry);
    assert_eq!(load_cached(&archive, &cache).unwrap().train.len(), 4);
    assert_eq!(names_in(&cache).len(), 2);
}

#[test]
fn load_cached_loads_directories_directly() {
    let tree = Tree::pngs(&["x"], 1, 1);
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("f");
    tree.write_folder(&folder);
    let cache = tmp.path().join("cache");
    assert_eq!(load_cached(&folder, &cache).unwrap().train.len(), 1);
    assert!(!cache.exists());
}

#[test]
fn load_cached_falls_back_when_the_cache_cannot_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    // Images that do not fit the binary layout.
    let mut tree = Tree::default();
    let img = crate::common::png(&crate::common::rand_image(8, 8, 1));
    tree.add("train/a/0.png", img.clone());
    tree.add("test/a/0.png", img);
    let archive = tmp.path().join("small.tar.gz");
    tree.write_tar(&archive, "", true);
    let cache = tmp.path().join("cache");
    assert_eq!(
        load_cached(&archive, &cache).unwrap(),
        load(&archive).unwrap()
    );
    assert!(names_in(&cache).is_empty(), "{:?}", names_in(&cache));
    // A cache path that cannot be a directory.
    let archive = tmp.path().join("ok.tar.gz");
    Tree::pngs(&["a"], 1, 1).write_tar(&archive, "", true);
    let not_a_dir = tmp.path().join("file");
    fs::write(&not_a_dir, b"x").unwrap();
    assert_eq!(load_cached(&archive, &not_a_dir).unwrap().train.len(), 1);
}
