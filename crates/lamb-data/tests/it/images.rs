//! Image folders and archives.

use std::fs;

use lamb_data::{detect, load, load_cached, DataError, Layout, CIFAR10_CLASSES};

use crate::common::{gzip, jpeg, png, rand_image, smooth_image, Tree};

#[test]
fn folder_orders_classes_alphabetically_and_files_by_path() {
    let tree = Tree::pngs(&["zebra", "ant", "mole"], 3, 2);
    let tmp = tempfile::tempdir().unwrap();
    tree.write_folder(tmp.path());
    let s = load(tmp.path()).unwrap();
    assert_eq!(s.train.class_names, vec!["ant", "mole", "zebra"]);
    assert_eq!((s.train.len(), s.test.len()), (9, 6));
    assert_eq!(s.train.labels, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
    // Pixels are the PNG's exactly, in path order: train/ant/000.png first.
    let first = tree
        .files
        .iter()
        .find(|(p, _)| p == "train/ant/000.png")
        .unwrap();
    let img = image::load_from_memory(&first.1).unwrap().into_rgb8();
    assert_eq!(s.train.image(0), img.as_raw().as_slice());
    let last = tree
        .files
        .iter()
        .find(|(p, _)| p == "test/zebra/001.png")
        .unwrap();
    let img = image::load_from_memory(&last.1).unwrap().into_rgb8();
    assert_eq!(s.test.image(5), img.as_raw().as_slice());
}

#[test]
fn cifar_class_names_get_cifar_label_order() {
    let mut classes: Vec<&str> = CIFAR10_CLASSES.to_vec();
    classes.reverse();
    let tree = Tree::pngs(&classes, 1, 1);
    let tmp = tempfile::tempdir().unwrap();
    tree.write_folder(tmp.path());
    let s = load(tmp.path()).unwrap();
    assert_eq!(s.train.class_names, CIFAR10_CLASSES.to_vec());
    assert_eq!(s.test.labels, (0..10).collect::<Vec<u8>>());
    // CIFAR-10's label order is alphabetical, so sorting yields the official labels.
    let frog = tree
        .files
        .iter()
        .find(|(p, _)| p == "test/frog/000.png")
        .unwrap();
    let img = image::load_from_memory(&frog.1).unwrap().into_rgb8();
    assert_eq!(s.test.image(6), img.as_raw().as_slice());
}

#[test]
fn archives_load_like_the_folder() {
    let tree = Tree::pngs(&["b", "a"], 2, 1);
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    tree.write_folder(&folder);
    let expected = load(&folder).unwrap();
    for (name, prefix, gz) in [
        ("x.tar.gz", "", true),
        ("x.tar", "", false),
        ("prefixed.tgz", "cifar/data", true),
        ("no-extension", "", true),
    ] {
        let p = tmp.path().join(name);
        tree.write_tar(&p, prefix, gz);
        assert_eq!(detect(&p).unwrap(), Layout::Archive(p.clone()));
        assert_eq!(load(&p).unwrap(), expected, "{name}");
    }
}

#[test]
fn a_directory_holding_one_archive_means_that_archive() {
    let tree = Tree::pngs(&["b", "a"], 2, 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("README.md"), "about the data").unwrap();
    let p = dir.join("cifar.tar.gz");
    tree.write_tar(&p, "", true);
    assert_eq!(detect(&dir).unwrap(), Layout::Archive(p.clone()));
    assert_eq!(load(&dir).unwrap(), load(&p).unwrap());
    // The cached path too (it hashes and decodes the archive, not the directory).
    let cache = tmp.path().join("cache");
    assert_eq!(load_cached(&dir, &cache).unwrap(), load(&p).unwrap());
    assert_eq!(load_cached(&dir, &cache).unwrap(), load(&p).unwrap());
    // Two archives: ambiguous; the error names both.
    tree.write_tar(&dir.join("other.tar"), "", false);
    let err = detect(&dir).unwrap_err();
    assert!(
        matches!(&err, DataError::SeveralArchives { archives, .. } if archives.len() == 2),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cifar.tar.gz") && msg.contains("other.tar"),
        "{msg}"
    );
}

#[test]
fn jpeg_decodes_close_to_the_source() {
    let mut tree = Tree::default();
    let src = smooth_image(32, 32, 3);
    tree.add("train/a/1.jpg", jpeg(&src));
    tree.add("train/a/2.JPEG", jpeg(&smooth_image(32, 32, 4)));
    tree.add("test/a/1.jpeg", jpeg(&smooth_image(32, 32, 5)));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("j.tar.gz");
    tree.write_tar(&p, "", true);
    let s = load(&p).unwrap();
    assert_eq!(s.train.len(), 2);
    let diff: f64 = s
        .train
        .image(0)
        .iter()
        .zip(src.as_raw())
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .sum::<f64>()
        / 3072.0;
    assert!(diff < 3.0, "mean abs difference {diff}");
}

#[test]
fn hidden_and_non_image_files_are_ignored() {
    let mut tree = Tree::pngs(&["a"], 1, 1);
    tree.add("train/a/._000.png", b"AppleDouble junk".to_vec());
    tree.add("README.txt", b"hello".to_vec());
    tree.add("train/a/notes.txt", b"hello".to_vec());
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("t.tar.gz");
    tree.write_tar(&p, "", true);
    let s = load(&p).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (1, 1));
}

/// Loads `tree` as a folder and as a .tar.gz, expecting the same error from both.
fn both_errors(tree: &Tree) -> Vec<DataError> {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    fs::create_dir_all(&folder).unwrap();
    tree.write_folder(&folder);
    let archive = tmp.path().join("a.tar.gz");
    tree.write_tar(&archive, "", true);
    vec![load(&folder).unwrap_err(), load(&archive).unwrap_err()]
}

#[test]
fn corrupt_image_names_container_member_and_decoder_message() {
    let mut tree = Tree::pngs(&["a"], 2, 1);
    let mut broken = png(&rand_image(32, 32, 1));
    broken.truncate(60);
    tree.add("train/a/bad.png", broken);
    tree.add("test/a/garbage.jpg", b"not an image at all".to_vec());
    for err in both_errors(&tree) {
        let msg = err.to_string();
        // Members are decoded in path order, train first: train/a/bad.png is reported.
        assert!(
            matches!(&err, DataError::CorruptImage { member, .. } if member == "train/a/bad.png"),
            "{msg}"
        );
    }
    let mut tree = Tree::pngs(&["a"], 1, 1);
    tree.add("test/a/garbage.jpg", b"not an image at all".to_vec());
    for err in both_errors(&tree) {
        assert!(
            matches!(&err, DataError::CorruptImage { member, message, .. }
                if member == "test/a/garbage.jpg" && !message.is_empty()),
            "{err}"
        );
    }
}

#[test]
fn wrong_image_size_names_member_found_and_expected() {
    let mut tree = Tree::pngs(&["a", "b"], 2, 1);
    tree.add("test/b/odd.png", png(&rand_image(16, 8, 9)));
    for err in both_errors(&tree) {
        assert!(
            matches!(&err, DataError::WrongImageSize { member, found_w: 16, found_h: 8, expected_w: 32, expected_h: 32, first, .. }
                if member == "test/b/odd.png" && first == "train/a/000.png"),
            "{err}"
        );
    }
}

#[test]
fn images_of_another_common_size_are_accepted() {
    let mut tree = Tree::default();
    tree.add("train/a/0.png", png(&rand_image(8, 4, 1)));
    tree.add("test/a/0.png", png(&rand_image(8, 4, 2)));
    let tmp = tempfile::tempdir().unwrap();
    tree.write_folder(tmp.path());
    let s = load(tmp.path()).unwrap();
    assert_eq!(
        (s.train.width, s.train.height, s.train.images.len()),
        (8, 4, 96)
    );
}

#[test]
fn missing_split_is_named() {
    let mut tree = Tree::pngs(&["a"], 1, 1);
    tree.files.retain(|(p, _)| p.starts_with("train/"));
    for err in both_errors(&tree) {
        assert!(
            matches!(&err, DataError::MissingSplit { split, .. } if split == "test"),
            "{err}"
        );
    }
}

#[test]
fn missing_class_folder_is_named() {
    let mut tree = Tree::pngs(&["ant", "cat"], 1, 1);
    tree.files.retain(|(p, _)| !p.starts_with("test/cat/"));
    for err in both_errors(&tree) {
        assert!(
            matches!(&err, DataError::MissingClass { split, class, .. } if split == "test" && class == "cat"),
            "{err}"
        );
    }
}

#[test]
fn empty_class_folder_is_an_error() {
    let mut tree = Tree::pngs(&["ant", "cat"], 1, 1);
    tree.files.retain(|(p, _)| !p.starts_with("train/cat/"));
    tree.dirs.push("train/cat".into());
    for err in both_errors(&tree) {
        assert!(
            matches!(&err, DataError::EmptyClass { split, class, .. } if split == "train" && class == "cat"),
            "{err}"
        );
    }
}

#[test]
fn image_outside_the_layout_is_an_error() {
    let mut tree = Tree::pngs(&["a"], 1, 1);
    tree.add("valid/a/0.png", png(&rand_image(32, 32, 1)));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("t.tar.gz");
    tree.write_tar(&p, "", true);
    let err = load(&p).unwrap_err();
    assert!(
        matches!(&err, DataError::UnexpectedMember { member, .. } if member == "valid/a/0.png"),
        "{err}"
    );
    let mut tree = Tree::pngs(&["a"], 1, 1);
    tree.add("train/a/deeper/x.png", png(&rand_image(32, 32, 1)));
    let errs = both_errors(&tree);
    assert!(
        matches!(&errs[0], DataError::UnexpectedMember { member, .. } if member == "train/a/deeper/"),
        "{}",
        errs[0]
    );
    assert!(
        matches!(&errs[1], DataError::UnexpectedMember { member, .. } if member == "train/a/deeper/x.png"),
        "{}",
        errs[1]
    );
    let mut tree = Tree::pngs(&["a"], 1, 1);
    tree.add("train/loose.png", png(&rand_image(32, 32, 1)));
    for err in both_errors(&tree) {
        assert!(
            matches!(&err, DataError::UnexpectedMember { member, .. } if member == "train/loose.png"),
            "{err}"
        );
    }
}

#[test]
fn truncated_archives_are_errors() {
    let tree = Tree::pngs(&["a", "b"], 3, 2);
    let tar = tree.tar_bytes("");
    let gz = gzip(&tar);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("t");
    // A gzip stream cut anywhere.
    for cut in [10, gz.len() / 2, gz.len() - 4] {
        fs::write(&p, &gz[..cut]).unwrap();
        let err = load(&p).unwrap_err();
        assert!(matches!(err, DataError::Archive { .. }), "cut {cut}: {err}");
    }
    // A plain tar cut inside a member, and exactly at a member boundary (no end marker).
    for cut in [tar.len() / 2 + 7, tar.len() - 1024 - 100, tar.len() - 1024] {
        fs::write(&p, &tar[..cut]).unwrap();
        let err = load(&p).unwrap_err();
        assert!(matches!(err, DataError::Archive { .. }), "cut {cut}: {err}");
    }
}

#[test]
fn official_layout_inside_an_archive_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    crate::common::write_official_dir(&dir, [1, 2, 1, 1, 1, 3]);
    let expected = load(&dir).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all("cifar-10-batches-bin", &dir).unwrap();
    let p = tmp.path().join("cifar-10-binary.tar.gz");
    fs::write(&p, gzip(&b.into_inner().unwrap())).unwrap();
    assert_eq!(load(&p).unwrap(), expected);
}

#[test]
fn unknown_and_missing_paths_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, DataError::UnknownLayout { .. }));
    assert!(err.to_string().contains("data_batch_1.bin"), "{err}");
    let f = tmp.path().join("x.txt");
    fs::write(&f, "hello").unwrap();
    assert!(matches!(
        load(&f).unwrap_err(),
        DataError::UnknownLayout { .. }
    ));
    let err = load(&tmp.path().join("nope")).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    // An archive with neither images nor batch files.
    let mut tree = Tree::default();
    tree.add("readme.txt", b"x".to_vec());
    let p = tmp.path().join("e.tar.gz");
    tree.write_tar(&p, "", true);
    assert!(matches!(
        load(&p).unwrap_err(),
        DataError::UnknownLayout { .. }
    ));
}
