//! Image folders and archives laid out as `<split>/<class>/<file>.jpg|.jpeg|.png` with split
//! `train` and `test` (the torchvision ImageFolder convention, one folder per split), and
//! `.tar.gz` / `.tar` / `.zip` archives (of that layout, or of the official CIFAR-10 binary
//! layout).
//!
//! Rules, chosen so that loading is deterministic and errors are specific:
//! - Images are decoded in parallel (rayon) with the `image` crate to 8 bits per channel:
//!   grayscale images to 1 channel, colour images to 3 (RGB); an alpha channel is dropped.
//!   Members are ordered by path (byte order), train first.
//! - All images of both splits must share one size and channel count: those of the first image
//!   in that order (`train/<first class>/<first file>`), unless a [`Resize`] is given, which
//!   resamples every image of another size (bilinear). The model, not the reader, decides
//!   whether that shape fits it; importing into the official layout additionally requires
//!   32x32 RGB.
//! - Class names must be UTF-8 (names that would change in a lossy conversion could merge two
//!   classes); an archive must not hold one image path twice; a tar hard link to an earlier
//!   image is that image again under the link's path; symbolic links are refused.
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

use image::{DynamicImage, ImageReader};
use rayon::prelude::*;

use crate::dataset::{Dataset, Splits};
use crate::error::DataError;
use crate::fsutil::check_openable;
use crate::official::{self, META_FILE, TEST_FILE, TRAIN_FILES};
use crate::options::Resize;
use crate::resize::resize_pixels;

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

/// Reads an image folder `dir` holding `train/<class>/*` and `test/<class>/*`, every image
/// resized to `resize` when given.
pub fn read_image_folder(dir: &Path, resize: Option<Resize>) -> Result<Splits, DataError> {
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
            if class_path.file_name().is_some_and(|n| n.to_str().is_none()) {
                return Err(DataError::BadClassName {
                    container: dir.to_path_buf(),
                    name: format!("{split}/{class}"),
                    problem: "is not valid UTF-8; class folder names must be UTF-8 (a lossy \
                              conversion could make two classes one)"
                        .into(),
                });
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
    build(dir, members, classes, resize)
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
    /// Image members in archive order: (path, bytes).
    images: Vec<(String, Vec<u8>)>,
    dirs: Vec<String>,
    /// Official-layout members by file name: (member path, bytes).
    pub(crate) batches: BTreeMap<String, (String, Vec<u8>)>,
    /// Normalized paths of the images and batch files taken, with the member name first seen.
    seen: std::collections::HashMap<String, String>,
    /// Where each taken member's bytes are: an index into `images`, or a key of `batches`.
    bytes_of: std::collections::HashMap<String, Result<usize, String>>,
}

/// Reads a `.tar.gz`, `.tar` or `.zip` archive (detected by content, not name) holding either
/// the image layout or the official binary layout (`cifar-10-batches-bin/*.bin`); images are
/// resized to `resize` when given.
pub fn read_archive(path: &Path, resize: Option<Resize>) -> Result<Splits, DataError> {
    let contents = scan_archive(path)?;
    if !contents.images.is_empty() {
        return archive_images(path, contents, resize);
    }
    if !contents.batches.is_empty() {
        let s = archive_official(path, contents)?;
        return Ok(match resize {
            Some(r) => Splits {
                train: crate::resize::resize_dataset(s.train, r),
                test: crate::resize::resize_dataset(s.test, r),
            },
            None => s,
        });
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
    is_gzip(&head[..n]) || is_zip(&head[..n]) || (n >= 262 && &head[257..262] == b"ustar")
}

fn is_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06")
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
    check_openable(path)?;
    if !path.is_file() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
            what: "expected a .tar.gz or .tar archive".into(),
        });
    }
    let mut file = fs::File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match file.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(DataError::io("reading", path, e)),
        }
    }
    if is_zip(&magic[..n]) {
        return scan_zip(path);
    }
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
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            let kind = entry.header().entry_type();
            let size = entry.size();
            let kind = if kind.is_dir() {
                MemberKind::Dir
            } else if kind.is_file() {
                MemberKind::File
            } else if kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                MemberKind::HardLink(target)
            } else if kind.is_symlink() {
                MemberKind::Symlink
            } else {
                MemberKind::Other
            };
            out.add(path, &raw, name.clone(), kind, size, &mut entry)?;
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

/// What kind of archive member an entry is.
enum MemberKind {
    Dir,
    File,
    /// A tar hard link to the named earlier member.
    HardLink(String),
    Symlink,
    Other,
}

/// `name` without empty and `.` components: the path an image is known by.
fn normalize(name: &str) -> String {
    name.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl ArchiveContents {
    /// Takes in one archive member: images and official batch files are read (refusing
    /// oversized members, duplicated paths, non-UTF-8 image paths and symbolic links to
    /// images); a hard link to an earlier image repeats its bytes; other members are skipped.
    fn add(
        &mut self,
        path: &Path,
        raw: &[u8],
        name: String,
        kind: MemberKind,
        size: u64,
        entry: &mut impl Read,
    ) -> Result<(), DataError> {
        let file_name = name.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
        let bad = |problem: String| DataError::BadMember {
            container: path.to_path_buf(),
            member: name.clone(),
            problem,
        };
        let is_batch =
            TRAIN_FILES.contains(&file_name) || file_name == TEST_FILE || file_name == META_FILE;
        let is_image = is_image_name(file_name);
        if matches!(kind, MemberKind::Dir) {
            self.dirs.push(name.clone());
            return Ok(());
        }
        if !(is_image || is_batch) || matches!(kind, MemberKind::Other) {
            return Ok(());
        }
        if std::str::from_utf8(raw).is_err() {
            return Err(bad(
                "has a path that is not valid UTF-8; image paths must be UTF-8 (a \
                            lossy conversion could merge two classes or files)"
                    .into(),
            ));
        }
        let key = normalize(&name);
        if let Some(first) = self.seen.get(&key) {
            return Err(bad(format!(
                "appears twice in the archive (first as {first}); an archive must hold each \
                 image or batch file once"
            )));
        }
        self.seen.insert(key.clone(), name.clone());
        let bytes = match kind {
            MemberKind::File => {
                let limit = if is_image {
                    MAX_IMAGE_BYTES
                } else {
                    MAX_BATCH_BYTES
                };
                if size > limit {
                    return Err(DataError::MemberTooLarge {
                        container: path.to_path_buf(),
                        member: name,
                        size,
                        limit,
                    });
                }
                read_member(path, &name, entry, size)?
            }
            MemberKind::HardLink(target) => {
                let t = normalize(&target);
                match (self.bytes_of.get(&t), is_image) {
                    (Some(Ok(k)), true) => self.images[*k].1.clone(),
                    (Some(Err(batch)), false) => self.batches[batch].1.clone(),
                    _ => {
                        return Err(bad(format!(
                            "is a hard link to {target}, which is not an earlier {} member of \
                             the archive",
                            if is_image { "image" } else { "batch-file" }
                        )))
                    }
                }
            }
            MemberKind::Symlink => {
                return Err(bad(
                    "is a symbolic link; store the image itself (links are not \
                                followed)"
                        .into(),
                ))
            }
            MemberKind::Dir | MemberKind::Other => unreachable!("returned above"),
        };
        if is_image {
            self.bytes_of.insert(key, Ok(self.images.len()));
            self.images.push((name, bytes));
        } else {
            self.bytes_of.insert(key, Err(file_name.to_string()));
            if let Some((other, _)) = self.batches.get(file_name) {
                return Err(bad(format!(
                    "is a second {file_name} (the first is {other}); an archive must hold one \
                     set of batch files"
                )));
            }
            self.batches.insert(file_name.to_string(), (name, bytes));
        }
        Ok(())
    }
}

/// Reads the members of a `.zip` archive (see [`ArchiveContents::add`]); each member's CRC-32
/// is verified as it is read.
fn scan_zip(path: &Path) -> Result<ArchiveContents, DataError> {
    let file = fs::File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::with_capacity(1 << 16, file))
        .map_err(|e| archive_err(path, None, format!("zip: {e}")))?;
    let mut out = ArchiveContents::default();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| archive_err(path, None, format!("zip member {i}: {e}")))?;
        let raw = entry.name_raw().to_vec();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = if entry.is_dir() {
            MemberKind::Dir
        } else if entry.is_symlink() {
            MemberKind::Symlink
        } else if entry.is_file() {
            MemberKind::File
        } else {
            MemberKind::Other
        };
        let size = entry.size();
        out.add(path, &raw, name, kind, size, &mut entry)?;
    }
    Ok(out)
}

fn read_member(
    path: &Path,
    name: &str,
    entry: &mut impl Read,
    size: u64,
) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::with_capacity(size.min(1 << 20) as usize);
    // At most one byte more than declared, so a member that decompresses to more than its
    // header says cannot grow memory beyond the size limits checked on the header.
    entry
        .take(size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| archive_err(path, Some((" at", name)), e))?;
    if bytes.len() as u64 != size {
        let what = if bytes.len() as u64 > size {
            "more than".to_string()
        } else {
            bytes.len().to_string()
        };
        return Err(archive_err(
            path,
            Some((" at", name)),
            format!("member holds {what} of its {size} bytes (truncated or corrupt)"),
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

fn archive_images(
    path: &Path,
    c: ArchiveContents,
    resize: Option<Resize>,
) -> Result<Splits, DataError> {
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
    build(path, members, classes, resize)
}

/// Checks the layout, orders classes and members, and decodes everything in parallel.
fn build(
    container: &Path,
    mut members: Vec<Member>,
    classes: [BTreeSet<String>; 2],
    resize: Option<Resize>,
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

    // The first image sets the channel count, and the size unless resizing.
    let first = &members[0];
    let (fw, fh, channels, _) = decode(container, first)?;
    let (w, h) = resize.map_or((fw, fh), |r| (r.width, r.height));
    let first_name = first.name.clone();
    let image_len = (w as usize) * (h as usize) * channels;
    let mut images = vec![0u8; members.len() * image_len];
    let results: Vec<Result<(), DataError>> = members
        .par_iter()
        .zip(images.par_chunks_mut(image_len))
        .map(|(m, out)| {
            let (mw, mh, mc, pixels) = decode(container, m)?;
            if mc != channels {
                return Err(DataError::WrongChannels {
                    container: container.to_path_buf(),
                    member: m.name.clone(),
                    found: mc,
                    expected: channels,
                    first: first_name.clone(),
                });
            }
            if let Some(r) = resize {
                if (mw, mh) != (w, h) {
                    out.copy_from_slice(&resize_pixels(&pixels, mw, mh, mc, r));
                    return Ok(());
                }
            }
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
        channels,
        class_names: names.clone(),
    };
    Ok(Splits {
        train: make(images, train_labels),
        test: make(test_images, test_labels),
    })
}

/// Decodes one member to 8-bit grayscale (1 channel) or RGB (3), alpha dropped, returning
/// (width, height, channels, pixels).
fn decode(container: &Path, m: &Member) -> Result<(u32, u32, usize, Vec<u8>), DataError> {
    let corrupt = |message: String| DataError::CorruptImage {
        container: container.to_path_buf(),
        member: m.name.clone(),
        message,
    };
    let owned;
    let bytes: &[u8] = match &m.source {
        Source::Bytes(b) => b,
        Source::File(p) => {
            check_openable(p)?;
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
    let img: DynamicImage = reader.decode().map_err(|e| corrupt(e.to_string()))?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(corrupt(format!("image has no pixels ({w}x{h})")));
    }
    if img.color().has_color() {
        Ok((w, h, 3, img.into_rgb8().into_raw()))
    } else {
        Ok((w, h, 1, img.into_luma8().into_raw()))
    }
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
