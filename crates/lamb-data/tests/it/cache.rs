//! Importing into the official layout and the import cache.

use std::fs;

use lamb_data::{
    cache_entry_path, import_archive, load, load_cached, load_cached_with, load_with,
    read_cache_entry, read_official, write_cache_entry, CacheUse, DataError, LoadOptions,
};

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
fn load_cached_imports_once_then_reads_the_verified_entry() {
    let tree = Tree::pngs(&["x", "y"], 3, 1);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("imgs.tar.gz");
    tree.write_tar(&archive, "", true);
    let cache = tmp.path().join("cache");
    let opts = LoadOptions::default();
    let expected = load(&archive).unwrap();
    let first = load_cached_with(&archive, &cache, &opts).unwrap();
    assert_eq!(first.splits, expected);
    let entry = cache_entry_path(&archive, &cache, &opts).unwrap();
    assert_eq!(first.cache, CacheUse::Stored(entry.clone()));
    assert!(entry.is_file());
    assert_eq!(names_in(&cache).len(), 1, "no temporary file left");
    let second = load_cached_with(&archive, &cache, &opts).unwrap();
    assert_eq!(second.cache, CacheUse::Hit(entry.clone()));
    assert_eq!(second.splits, expected);
    // The second call reads the entry: prove it with an entry of other (validly checksummed)
    // data written in its place.
    let mut other = expected.clone();
    other.train.class_names = vec!["p".into(), "q".into()];
    other.test.class_names = other.train.class_names.clone();
    write_cache_entry(&other, &entry).unwrap();
    assert_eq!(load_cached(&archive, &cache).unwrap(), other);
    // Other contents get another entry.
    let other_tree = Tree::pngs(&["x", "y"], 2, 1);
    other_tree.write_tar(&archive, "", true);
    assert_ne!(cache_entry_path(&archive, &cache, &opts).unwrap(), entry);
    assert_eq!(load_cached(&archive, &cache).unwrap().train.len(), 4);
    assert_eq!(names_in(&cache).len(), 2);
}

/// Edits of a cache entry (a pixel zeroed, a label changed within range, a byte appended, the
/// file cut short) fail its checksum: the entry is rebuilt from the archive, with the reason.
#[test]
fn edited_cache_entries_are_detected_and_rebuilt() {
    let tree = Tree::pngs(&["x", "y"], 3, 2);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("imgs.tar");
    tree.write_tar(&archive, "", false);
    let cache = tmp.path().join("cache");
    let opts = LoadOptions::default();
    let expected = load(&archive).unwrap();
    load_cached_with(&archive, &cache, &opts).unwrap();
    let entry = cache_entry_path(&archive, &cache, &opts).unwrap();
    let good = fs::read(&entry).unwrap();
    let len = good.len();
    // Offsets: the last pixel byte of the test split sits just before the 32-byte checksum;
    // the first train label follows the magic and version (12 bytes), the five u64 sizes and
    // the two length-prefixed one-byte class names.
    let header = 12 + 5 * 8 + 2 * (8 + 1);
    let edits: Vec<(&str, Vec<u8>)> = vec![
        ("pixel zeroed", {
            let mut b = good.clone();
            b[len - 33] = if b[len - 33] == 0 { 1 } else { 0 };
            b
        }),
        ("label changed within range", {
            let mut b = good.clone();
            assert_eq!(b[header], 0, "first train label");
            b[header] = 1;
            b
        }),
        ("byte appended", {
            let mut b = good.clone();
            b.push(0);
            b
        }),
        ("truncated", good[..len / 2].to_vec()),
    ];
    for (what, bytes) in edits {
        fs::write(&entry, &bytes).unwrap();
        let err = read_cache_entry(&entry).unwrap_err();
        assert!(matches!(err, DataError::BadFormat { .. }), "{what}: {err}");
        assert!(
            err.to_string().contains(&entry.display().to_string()),
            "{err}"
        );
        let loaded = load_cached_with(&archive, &cache, &opts).unwrap();
        assert_eq!(loaded.splits, expected, "{what}");
        assert!(
            matches!(&loaded.cache, CacheUse::Rebuilt(p, why) if *p == entry && !why.is_empty()),
            "{what}: {:?}",
            loaded.cache
        );
        assert_eq!(fs::read(&entry).unwrap(), good, "{what}: entry rewritten");
    }
}

/// Options that change the data (resize) get their own entry.
#[test]
fn options_get_their_own_cache_entry() {
    let tree = Tree::pngs(&["x", "y"], 2, 1);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("imgs.tar.gz");
    tree.write_tar(&archive, "", true);
    let cache = tmp.path().join("cache");
    let small = LoadOptions {
        resize: Some("8x8".parse().unwrap()),
        ..Default::default()
    };
    let a = load_cached_with(&archive, &cache, &small).unwrap();
    assert_eq!((a.splits.train.height, a.splits.train.width), (8, 8));
    assert_eq!(a.splits, load_with(&archive, &small).unwrap());
    let b = load_cached_with(&archive, &cache, &LoadOptions::default()).unwrap();
    assert_eq!(b.splits.train.height, 32);
    assert_eq!(names_in(&cache).len(), 2);
}

/// A failed read caches nothing.
#[test]
fn nothing_is_cached_from_a_failed_read() {
    let mut tree = Tree::pngs(&["x", "y"], 2, 1);
    tree.add("train/x/zzz.png", b"not a png".to_vec());
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("bad.tar.gz");
    tree.write_tar(&archive, "", true);
    let cache = tmp.path().join("cache");
    let err = load_cached(&archive, &cache).unwrap_err();
    assert!(matches!(err, DataError::CorruptImage { .. }), "{err}");
    assert!(!cache.exists() || names_in(&cache).is_empty());
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
    // Images of any size are cached (the cache is not the 32x32 binary layout).
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
    assert_eq!(names_in(&cache).len(), 1, "{:?}", names_in(&cache));
    // A cache path that cannot be a directory.
    let archive = tmp.path().join("ok.tar.gz");
    Tree::pngs(&["a"], 1, 1).write_tar(&archive, "", true);
    let not_a_dir = tmp.path().join("file");
    fs::write(&not_a_dir, b"x").unwrap();
    assert_eq!(load_cached(&archive, &not_a_dir).unwrap().train.len(), 1);
}
