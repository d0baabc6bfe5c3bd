//! Inputs that used to be reinterpreted silently or to block: FIFOs, tar hard links and
//! duplicated members, symbolic links, class names that do not survive a conversion.

use std::fs;

use lamb_data::{detect, import_archive, load, locate_data, DataError};

use crate::common::{png, rand_image, Tree};

/// Appends a regular member to a tar builder.
fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, path, bytes).unwrap();
}

/// Appends a link member (hard or symbolic) to a tar builder.
fn add_link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_link(&mut h, path, target).unwrap();
}

fn base_members(b: &mut tar::Builder<Vec<u8>>) -> Vec<u8> {
    let img = png(&rand_image(32, 32, 1));
    add_file(b, "train/a/0.png", &img);
    add_file(b, "train/b/0.png", &png(&rand_image(32, 32, 2)));
    add_file(b, "test/a/0.png", &png(&rand_image(32, 32, 3)));
    add_file(b, "test/b/0.png", &png(&rand_image(32, 32, 4)));
    img
}

#[test]
fn tar_hard_links_are_the_linked_image_again() {
    let mut b = tar::Builder::new(Vec::new());
    base_members(&mut b);
    add_link(
        &mut b,
        tar::EntryType::Link,
        "train/b/1.png",
        "train/a/0.png",
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("l.tar");
    fs::write(&p, b.into_inner().unwrap()).unwrap();
    let s = load(&p).unwrap();
    assert_eq!(
        s.train.labels,
        vec![0, 1, 1],
        "the link counts as an image of class b"
    );
    assert_eq!(s.train.image(2), s.train.image(0));
    // A link to a member that is not an earlier image is refused, naming both.
    let mut b = tar::Builder::new(Vec::new());
    base_members(&mut b);
    add_link(
        &mut b,
        tar::EntryType::Link,
        "train/b/1.png",
        "train/a/later.png",
    );
    fs::write(&p, b.into_inner().unwrap()).unwrap();
    let err = load(&p).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, DataError::BadMember { member, .. } if member == "train/b/1.png"),
        "{msg}"
    );
    assert!(msg.contains("train/a/later.png"), "{msg}");
}

#[test]
fn duplicated_members_and_symlinks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("d.tar");
    for dup in ["train/a/0.png", "./train/a/0.png", "train//a/0.png"] {
        let mut b = tar::Builder::new(Vec::new());
        let img = base_members(&mut b);
        add_file(&mut b, dup, &img);
        fs::write(&p, b.into_inner().unwrap()).unwrap();
        let err = load(&p).unwrap_err();
        assert!(
            matches!(&err, DataError::BadMember { member, problem, .. }
                if member.ends_with("a/0.png") && problem.contains("appears twice")),
            "{dup}: {err}"
        );
    }
    let mut b = tar::Builder::new(Vec::new());
    base_members(&mut b);
    add_link(
        &mut b,
        tar::EntryType::Symlink,
        "train/b/1.png",
        "../a/0.png",
    );
    fs::write(&p, b.into_inner().unwrap()).unwrap();
    let err = load(&p).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // Two sets of official batch files in one archive.
    let mut b = tar::Builder::new(Vec::new());
    let rec = crate::common::record(1, 1);
    for dir in ["one", "two"] {
        add_file(&mut b, &format!("{dir}/test_batch.bin"), &rec);
    }
    fs::write(&p, b.into_inner().unwrap()).unwrap();
    let msg = load(&p).unwrap_err().to_string();
    assert!(
        msg.contains("two/test_batch.bin") && msg.contains("one/test_batch.bin"),
        "{msg}"
    );
}

#[cfg(unix)]
#[test]
fn non_utf8_class_folders_are_refused_not_merged() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // "caf\xE9" and "caf\xE8" both become "caf\u{FFFD}" in a lossy conversion.
    for split in ["train", "test"] {
        for raw in [&b"caf\xe9"[..], &b"caf\xe8"[..]] {
            let d = root.join(split).join(OsStr::from_bytes(raw));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("0.png"), png(&rand_image(32, 32, raw[3] as u32))).unwrap();
        }
    }
    let err = load(root).unwrap_err();
    assert!(matches!(err, DataError::BadClassName { .. }), "{err}");
    assert!(err.to_string().contains("UTF-8"), "{err}");
    // The same in a tar archive.
    let mut b = tar::Builder::new(Vec::new());
    let img = png(&rand_image(32, 32, 1));
    for p in [
        &b"train/caf\xe9/0.png"[..],
        b"train/caf\xe8/0.png",
        b"test/caf\xe9/0.png",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(img.len() as u64);
        h.set_mode(0o644);
        h.set_path(OsStr::from_bytes(p)).unwrap();
        h.set_cksum();
        b.append(&h, &img[..]).unwrap();
    }
    let p = root.join("x.tar");
    fs::write(&p, b.into_inner().unwrap()).unwrap();
    let err = load(&p).unwrap_err();
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
}

#[test]
fn class_names_with_line_breaks_are_not_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::pngs(&["a\nb", "c"], 1, 1);
    let folder = tmp.path().join("f");
    tree.write_folder(&folder);
    // Loading keeps the name exactly (it is a valid folder name) ...
    let s = load(&folder).unwrap();
    assert_eq!(s.train.class_names, vec!["a\nb", "c"]);
    // ... but batches.meta.txt cannot hold it: the import is refused before writing.
    let out = tmp.path().join("out");
    let err = import_archive(&folder, &out).unwrap_err();
    assert!(matches!(err, DataError::BadClassName { .. }), "{err}");
    assert!(err.to_string().contains("\"a\\nb\""), "{err}");
    assert!(!out.exists());
    let tree = Tree::pngs(&[" padded", "c"], 1, 1);
    let folder = tmp.path().join("g");
    tree.write_folder(&folder);
    assert!(import_archive(&folder, &out).is_err());
}

#[cfg(unix)]
#[test]
fn fifos_are_refused_before_opening() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("data.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o600) }, 0);
    // Opening the FIFO for reading would block forever: each of these must return at once.
    for err in [
        locate_data(Some(&fifo)).unwrap_err(),
        detect(&fifo).unwrap_err(),
        load(&fifo).unwrap_err(),
    ] {
        assert!(matches!(err, DataError::NotRegular { .. }), "{err}");
        assert!(err.to_string().contains("FIFO"), "{err}");
    }
    // A FIFO in place of an official batch file, and of an image in a folder.
    let dir = tmp.path().join("c10");
    crate::common::write_official_dir(&dir, [1; 6]);
    fs::remove_file(dir.join("test_batch.bin")).unwrap();
    let c = std::ffi::CString::new(dir.join("test_batch.bin").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(load(&dir).is_err());
}

extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}

#[test]
fn importing_grayscale_images_names_the_channels() {
    let tmp = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        let d = tmp.path().join("f").join(split).join("a");
        fs::create_dir_all(&d).unwrap();
        image::GrayImage::from_pixel(32, 32, image::Luma([9]))
            .save(d.join("0.png"))
            .unwrap();
    }
    let out = tmp.path().join("out");
    let err = import_archive(&tmp.path().join("f"), &out).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("1 channel(s)") && msg.contains("RGB"), "{msg}");
    assert!(!out.exists());
}
