//! Image folders and archives laid out as `<split>/<class>/<file>.jpg|.jpeg|.png` with split
//! `train` and `test`, and `.tar.gz` / `.tar` archives (of that layout, or of the official
//! binary layout).
//!
//! Rules, chosen so that loading is deterministic and errors are specific:
//! - Images are decoded in parallel (rayon) with the `image` crate and converted to RGB 8-bit
//!   (grayscale or RGBA PNGs included); members are ordered by path (byte order), train first.
//! - All images of both splits must share one size: the size of the first image in that order
//!   (`train/<first class>/<first file>`). The model, not the reader, decides whether that size
//!   fits it; importing into the official layout additionally requires 32x32.
//! - Class order: sorted by name (byte order), which for CIFAR-10's folder names is exactly
//!   CIFAR-10's label order (airplane = 0 .. truck = 9). Train and test must hold the same
//!   classes.
//! - In an archive, images may sit under one common leading directory
//!   (`cifar10/train/cat/1.png`); a folder must hold `train/` and `test/` itself.
//! - Files and folders whose names start with `.` (e.g. macOS `._x.jpg`) and files that are not
//!   `.jpg`, `.jpeg` or `.png` are ignored; image files elsewhere than `<split>/<class>/` are an
//!   error, and so is a subfolder of a class folder.
//! - A tar stream must end with its end-of-archive marker, and a gzip stream must be whole
//!   (its checksum is verified), so truncated archives are errors, not silently smaller datasets.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use image::ImageReader;
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::DataError;
use crate::load::Splits;
use crate::official::{self, META_FILE, TEST_FILE, TRAIN_FILES};

/// Image members larger than this are refused (a 32x32 image is about 1 KB).
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// Batch-file members of an official-layout archive larger than this are refused.
const MAX_BATCH_BYTES: u64 = 1 << 30;
const SPLITS: [&str; 2] = ["train", "test"];

/// Where an image's bytes are.
enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// One image with its place in the layout.
struct Member {
    /// Path inside the container, `/`-separated (used in errors and for ordering).
    name: String,
    split: usize,
    class: String,
    source: Source,
}

/// Whether a file name is an image the readers accept (by extension; hidden files excluded).
pub fn is_image_name(file_name: &str) -> bool {
    if file_name.starts_with('.') {
        return false;
    }
    let lower = file_name.to_ascii_lowercase();
    lower.ends_with(".jpg") || lower.ends_with(".jpeg") || lower.ends_with(".png")
}

/// Reads an image folder `dir` holding `train/<class>/*` and `test/<class>/*`.
pub fn read_image_folder(dir: &Path) -> Result<Splits, DataError> {
    let mut members = Vec::new();
    let mut classes: [BTreeSet<String>; 2] = Default::default();
    for (s, split) in SPLITS.iter().enumerate() {
        let split_dir = dir.join(split);
        if !split_dir.is_dir() {
            continue;
        }
        for class_entry in sorted_entries(&split_dir)? {
            let (class, class_path) = class_entry;
            let meta = fs::metadata(&class_path)
                .map_err(|e| DataError::io("reading metadata of", &class_path, e))?;
            if !meta.is_dir() {
                if is_image_name(&class) {
                    return Err(DataError::UnexpectedMember {
                        container: dir.to_path_buf(),
                        member: format!("{split}/{class}"),
                        detail: "; images must be inside a class folder".into(),
                    });
                }
                continue;
            }
            if class.starts_with('.') {
                continue;
            }
            classes[s].insert(class.clone());
            for (file, path) in sorted_entries(&class_path)? {
                if path.is_dir() && !file.starts_with('.') {
                    return Err(DataError::UnexpectedMember {
                        container: dir.to_path_buf(),
                        member: format!("{split}/{class}/{file}/"),
                        detail: "; class folders must not hold subfolders".into(),
                    });
                }
                if is_image_name(&file) && path.is_file() {
                    members.push(Member {
                        name: format!("{split}/{class}/{file}"),
                        split: s,
                        class: class.clone(),
                        source: Source::File(path),
                    });
                }
            }
        }
    }
    build(dir, members, classes)
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let rd = fs::read_dir(dir).map_err(|e| DataError::io("listing", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io("listing", dir, e))?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    out.sort();
    Ok(out)
}

/// Keeps the last 512 bytes that passed through, to check the tar end-of-archive marker.
struct TailReader<R> {
    inner: R,
    tail: Vec<u8>,
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        if got.len() >= 512 {
            self.tail.clear();
            self.tail.extend_from_slice(&got[got.len() - 512..]);
        } else {
            self.tail.extend_from_slice(got);
            let excess = self.tail.len().saturating_sub(512);
            self.tail.drain(..excess);
        }
        Ok(n)
    }
}

/// What an archive holds, gathered in one pass.
#[derive(Default)]
pub(crate) struct ArchiveContents {
    images: Vec<(String, Vec<u8>)>,
    dirs: Vec<String>,
    /// Official-layout members by file name: (member path, bytes).
    pub(crate) batches: BTreeMap<String, (String, Vec<u8>)>,
}

/// Reads a `.tar.gz` or `.tar` archive (detected by content, not name) holding either the
/// image layout or the official binary layout (`cifar-10-batches-bin/*.bin`).
pub fn read_archive(path: &Path) -> Result<Splits, DataError> {
    let contents = scan_archive(path)?;
    if !contents.images.is_empty() {
        return archive_images(path, contents);
    }
    if !contents.batches.is_empty() {
        return archive_official(path, contents);
    }
    Err(DataError::UnknownLayout {
        path: path.to_path_buf(),
    })
}

/// Whether the file at `path` starts like a gzip stream or a tar archive.
pub fn looks_like_archive(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    is_gzip(&head[..n]) || (n >= 262 && &head[257..262] == b"ustar")
}

fn is_gzip(head: &[u8]) -> bool {
    head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
}

/// An archive error; `member` is (" at" or " after", member name) when known.
fn archive_err(path: &Path, member: Option<(&str, &str)>, e: impl std::fmt::Display) -> DataError {
    DataError::Archive {
        path: path.to_path_buf(),
        member_note: member
            .map(|(at, m)| format!("{at} member {m}"))
            .unwrap_or_default(),
        message: e.to_string(),
    }
}

pub(crate) fn scan_archive(path: &Path) -> Result<ArchiveContents, DataError> {
    if !path.is_file() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
            what: "expected a .tar.gz or .tar archive".into(),
        });
    }
    let mut file = fs::File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    let mut magic = [0u8; 2];
    let n = file
        .read(&mut magic)
        .map_err(|e| DataError::io("reading", path, e))?;
    let file = fs::File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    let buffered = BufReader::with_capacity(1 << 16, file);
    let reader: Box<dyn Read> = if is_gzip(&magic[..n]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    scan_tar(path, reader)
}

fn scan_tar(path: &Path, reader: Box<dyn Read>) -> Result<ArchiveContents, DataError> {
    let mut archive = tar::Archive::new(TailReader {
        inner: reader,
        tail: Vec::with_capacity(512),
    });
    let mut out = ArchiveContents::default();
    let mut last_member: Option<String> = None;
    {
        let entries = archive.entries().map_err(|e| archive_err(path, None, e))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|e| archive_err(path, last_member.as_deref().map(|m| (" after", m)), e))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            let file_name = name.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
            let size = entry.size();
            if kind.is_dir() {
                out.dirs.push(name.clone());
            } else if kind.is_file() && is_image_name(file_name) {
                if size > MAX_IMAGE_BYTES {
                    return Err(DataError::MemberTooLarge {
                        container: path.to_path_buf(),
                        member: name,
                        size,
                        limit: MAX_IMAGE_BYTES,
                    });
                }
                let bytes = read_member(path, &name, &mut entry, size)?;
                out.images.push((name.clone(), bytes));
            } else if kind.is_file()
                && (TRAIN_FILES.contains(&file_name)
                    || file_name == TEST_FILE
                    || file_name == META_FILE)
            {
                if size > MAX_BATCH_BYTES {
                    return Err(DataError::MemberTooLarge {
                        container: path.to_path_buf(),
                        member: name,
                        size,
                        limit: MAX_BATCH_BYTES,
                    });
                }
                let bytes = read_member(path, &name, &mut entry, size)?;
                out.batches
                    .insert(file_name.to_string(), (name.clone(), bytes));
            }
            last_member = Some(name);
        }
    }
    let mut inner = archive.into_inner();
    if inner.tail.len() < 512 || inner.tail.iter().any(|&b| b != 0) {
        return Err(archive_err(
            path,
            last_member.as_deref().map(|m| (" after", m)),
            "the tar stream ends without its end-of-archive marker (truncated)",
        ));
    }
    // Read the rest so that a gzip stream's length and checksum are verified.
    io::copy(&mut inner.inner, &mut io::sink()).map_err(|e| archive_err(path, None, e))?;
    Ok(out)
}

fn read_member(
    path: &Path,
    name: &str,
    entry: &mut impl Read,
    size: u64,
) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::with_capacity(size.min(1 << 20) as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| archive_err(path, Some((" at", name)), e))?;
    if bytes.len() as u64 != size {
        return Err(archive_err(
            path,
            Some((" at", name)),
            format!(
                "member holds {} of its {size} bytes (truncated)",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn archive_official(path: &Path, mut c: ArchiveContents) -> Result<Splits, DataError> {
    let label = |member: &str| PathBuf::from(format!("{}!{member}", path.display()));
    let mut files = Vec::new();
    for name in TRAIN_FILES.iter().copied().chain([TEST_FILE]) {
        let (member, bytes) = c
            .batches
            .remove(name)
            .ok_or_else(|| DataError::MissingFile {
                dir: path.to_path_buf(),
                name: name.to_string(),
            })?;
        files.push((label(&member), bytes));
    }
    let meta = c
        .batches
        .remove(META_FILE)
        .map(|(member, bytes)| (label(&member), bytes));
    official::assemble(&files, meta, path)
}

fn archive_images(path: &Path, c: ArchiveContents) -> Result<Splits, DataError> {
    // Find the common prefix: everything before <split>/<class>/<file>.
    let mut prefix: Option<(String, String)> = None; // (prefix, member that set it)
    let mut members = Vec::with_capacity(c.images.len());
    let mut classes: [BTreeSet<String>; 2] = Default::default();
    for (name, bytes) in c.images {
        let comps: Vec<&str> = name
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        let bad = |detail: String| DataError::UnexpectedMember {
            container: path.to_path_buf(),
            member: name.clone(),
            detail,
        };
        if comps.len() < 3 {
            return Err(bad(String::new()));
        }
        let k = comps.len();
        let Some(split) = SPLITS.iter().position(|s| *s == comps[k - 3]) else {
            return Err(bad(String::new()));
        };
        let this_prefix = comps[..k - 3].join("/");
        match &prefix {
            None => prefix = Some((this_prefix, name.clone())),
            Some((p, first)) if *p != this_prefix => {
                return Err(bad(format!(
                    "; all images must share one leading directory, and {first} is under \
                     \"{p}\""
                )));
            }
            Some(_) => {}
        }
        let class = comps[k - 2].to_string();
        classes[split].insert(class.clone());
        members.push(Member {
            name: comps.join("/"),
            split,
            class,
            source: Source::Bytes(bytes),
        });
    }
    let prefix = prefix.map(|p| p.0).unwrap_or_default();
    let depth = prefix.split('/').filter(|s| !s.is_empty()).count();
    for d in &c.dirs {
        let comps: Vec<&str> = d
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        if comps.len() == depth + 2 && comps[..depth].join("/") == prefix {
            if let Some(s) = SPLITS.iter().position(|s| *s == comps[depth]) {
                if !comps[depth + 1].starts_with('.') {
                    classes[s].insert(comps[depth + 1].to_string());
                }
            }
        }
    }
    build(path, members, classes)
}

/// Checks the layout, orders classes and members, and decodes everything in parallel.
fn build(
    container: &Path,
    mut members: Vec<Member>,
    classes: [BTreeSet<String>; 2],
) -> Result<Splits, DataError> {
    // Splits present?
    for s in 0..2 {
        if classes[s].is_empty() {
            let found: Vec<&str> = (0..2)
                .filter(|&t| !classes[t].is_empty())
                .map(|t| SPLITS[t])
                .collect();
            return Err(DataError::MissingSplit {
                container: container.to_path_buf(),
                split: SPLITS[s].to_string(),
                found: if found.is_empty() {
                    "no split folder with class folders".into()
                } else {
                    found.join(", ")
                },
            });
        }
    }
    // Same classes in both?
    for (s, other) in [(1usize, 0usize), (0, 1)] {
        if let Some(class) = classes[other].difference(&classes[s]).next() {
            return Err(DataError::MissingClass {
                container: container.to_path_buf(),
                split: SPLITS[s].to_string(),
                class: class.clone(),
                other: SPLITS[other].to_string(),
            });
        }
    }
    // Sorted; CIFAR-10's label order is alphabetical (checked by a unit test).
    let names: Vec<String> = classes[0].iter().cloned().collect();
    if names.len() > 256 {
        return Err(DataError::TooManyClasses {
            container: container.to_path_buf(),
            count: names.len(),
            max: 256,
        });
    }
    // Empty classes?
    let mut counts: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for m in &members {
        *counts.entry((m.split, m.class.as_str())).or_default() += 1;
    }
    for (s, split) in SPLITS.iter().enumerate() {
        for class in &names {
            if !counts.contains_key(&(s, class.as_str())) {
                return Err(DataError::EmptyClass {
                    container: container.to_path_buf(),
                    split: split.to_string(),
                    class: class.clone(),
                });
            }
        }
    }
    drop(counts);
    let label_of: BTreeMap<&str, u8> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u8))
        .collect();
    members.sort_by(|a, b| (a.split, &a.name).cmp(&(b.split, &b.name)));
    let labels: Vec<u8> = members.iter().map(|m| label_of[m.class.as_str()]).collect();

    // The first image sets the size.
    let first = &members[0];
    let (w, h, _) = decode(container, first)?;
    let first_name = first.name.clone();
    let image_len = (w as usize) * (h as usize) * 3;
    let mut images = vec![0u8; members.len() * image_len];
    let results: Vec<Result<(), DataError>> = members
        .par_iter()
        .zip(images.par_chunks_mut(image_len))
        .map(|(m, out)| {
            let (mw, mh, pixels) = decode(container, m)?;
            if (mw, mh) != (w, h) {
                return Err(DataError::WrongImageSize {
                    container: container.to_path_buf(),
                    member: m.name.clone(),
                    found_w: mw,
                    found_h: mh,
                    expected_w: w,
                    expected_h: h,
                    first: first_name.clone(),
                });
            }
            out.copy_from_slice(&pixels);
            Ok(())
        })
        .collect();
    if let Some(err) = results.into_iter().find_map(Result::err) {
        return Err(err);
    }
    let n_train = members.iter().filter(|m| m.split == 0).count();
    drop(members);
    let test_images = images.split_off(n_train * image_len);
    let mut train_labels = labels;
    let test_labels = train_labels.split_off(n_train);
    let make = |images: Vec<u8>, labels: Vec<u8>| Dataset {
        images,
        labels,
        height: h as usize,
        width: w as usize,
        channels: 3,
        class_names: names.clone(),
    };
    Ok(Splits {
        train: make(images, train_labels),
        test: make(test_images, test_labels),
    })
}

/// Decodes one member to RGB8, returning (width, height, pixels).
fn decode(container: &Path, m: &Member) -> Result<(u32, u32, Vec<u8>), DataError> {
    let corrupt = |message: String| DataError::CorruptImage {
        container: container.to_path_buf(),
        member: m.name.clone(),
        message,
    };
    let owned;
    let bytes: &[u8] = match &m.source {
        Source::Bytes(b) => b,
        Source::File(p) => {
            let len = fs::metadata(p)
                .map_err(|e| DataError::io("reading metadata of", p, e))?
                .len();
            if len > MAX_IMAGE_BYTES {
                return Err(DataError::MemberTooLarge {
                    container: container.to_path_buf(),
                    member: m.name.clone(),
                    size: len,
                    limit: MAX_IMAGE_BYTES,
                });
            }
            owned = fs::read(p).map_err(|e| DataError::io("reading", p, e))?;
            &owned
        }
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(corrupt(
            "content is neither JPEG nor PNG (unrecognised signature)".into(),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(1 << 14);
    limits.max_image_height = Some(1 << 14);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| corrupt(e.to_string()))?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(corrupt(format!("image has no pixels ({w}x{h})")));
    }
    Ok((w, h, rgb.into_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::CIFAR10_CLASSES;

    #[test]
    fn cifar10_label_order_is_sorted_order() {
        let mut sorted = CIFAR10_CLASSES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, CIFAR10_CLASSES.to_vec());
    }

    #[test]
    fn image_names_by_extension() {
        assert!(is_image_name("a.JPG") && is_image_name("b.jpeg") && is_image_name("c.png"));
        assert!(!is_image_name("._a.jpg") && !is_image_name("a.gif") && !is_image_name("png"));
    }

    #[test]
    fn tail_reader_keeps_the_last_512_bytes() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let mut r = TailReader {
            inner: &data[..],
            tail: Vec::new(),
        };
        let mut buf = [0u8; 100];
        while r.read(&mut buf).unwrap() > 0 {}
        assert_eq!(r.tail, data[data.len() - 512..].to_vec());
    }
}
