//! The decoded-data cache: an archive's decoded splits stored in one file that carries a
//! BLAKE3 checksum of its whole content, verified on every load.
//!
//! File layout (all integers little-endian): the magic `LAMBDATA`, `u32` format version; then
//! for the train and then the test split: `u64` height, width, channels, image count, class
//! count, each class name as `u64` length + UTF-8 bytes, the labels (one byte each), the pixels
//! (NHWC); finally the 32-byte BLAKE3 hash of everything before it.

use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Splits};
use crate::error::DataError;
use crate::fsutil::{hex, sync_dir};
use crate::options::LoadOptions;

/// Version of the cache's layout and decoding; part of each entry's name, so that a change of
/// decoder never reuses stale pixels.
pub const CACHE_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"LAMBDATA";
/// Largest image dimension or count a cache entry may declare (guards allocations).
const MAX_DIM: u64 = 1 << 32;

/// The cache entry file for `archive` loaded with `opts` under `cache_dir`:
/// `cache_dir/<file stem>-<first 16 hex digits of the archive's BLAKE3><options tag>-v<CACHE_VERSION>.lamb-data`.
/// Hashes the whole archive.
pub fn cache_entry_path(
    archive: &Path,
    cache_dir: &Path,
    opts: &LoadOptions,
) -> Result<PathBuf, DataError> {
    let f = fs::File::open(archive).map_err(|e| DataError::io("opening", archive, e))?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut BufReader::with_capacity(1 << 20, f), &mut hasher)
        .map_err(|e| DataError::io("reading", archive, e))?;
    let digest = hasher.finalize();
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let stem = name
        .trim_end_matches(".gz")
        .trim_end_matches(".tgz")
        .trim_end_matches(".tar")
        .trim_end_matches(".zip");
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(cache_dir.join(format!(
        "{stem}-{}{}-v{CACHE_VERSION}.lamb-data",
        hex(&digest.as_bytes()[..8]),
        opts.tag()
    )))
}

fn put(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The header bytes of one split (everything but the pixels).
fn split_header(ds: &Dataset) -> Vec<u8> {
    let mut h = Vec::new();
    for v in [
        ds.height,
        ds.width,
        ds.channels,
        ds.len(),
        ds.class_names.len(),
    ] {
        put(&mut h, v as u64);
    }
    for name in &ds.class_names {
        put(&mut h, name.len() as u64);
        h.extend_from_slice(name.as_bytes());
    }
    h.extend_from_slice(&ds.labels);
    h
}

/// Writes `splits` to `path` in the cache format (via a temporary file renamed into place, so
/// no reader ever sees a partial entry).
pub fn write_cache_entry(splits: &Splits, path: &Path) -> Result<(), DataError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| DataError::io("creating cache directory", dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let f = fs::File::create(&tmp).map_err(|e| DataError::io("creating", &tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut hasher = blake3::Hasher::new();
        let mut emit = |bytes: &[u8]| -> Result<(), DataError> {
            hasher.update_rayon(bytes);
            w.write_all(bytes)
                .map_err(|e| DataError::io("writing", &tmp, e))
        };
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&CACHE_VERSION.to_le_bytes());
        emit(&head)?;
        for ds in [&splits.train, &splits.test] {
            emit(&split_header(ds))?;
            emit(&ds.images)?;
        }
        let digest = hasher.finalize();
        w.write_all(digest.as_bytes())
            .map_err(|e| DataError::io("writing", &tmp, e))?;
        let f = w
            .into_inner()
            .map_err(|e| DataError::io("writing", &tmp, e.into_error()))?;
        f.sync_all()
            .map_err(|e| DataError::io("syncing", &tmp, e))?;
        fs::rename(&tmp, path)
            .map_err(|e| DataError::io("renaming cache entry into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir);
    Ok(())
}

/// Reads a cache entry written by [`write_cache_entry`], verifying its checksum; any mismatch,
/// truncation or inconsistency is a [`DataError::BadFormat`] naming the entry.
pub fn read_cache_entry(path: &Path) -> Result<Splits, DataError> {
    let f = fs::File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    let file_len = f
        .metadata()
        .map_err(|e| DataError::io("reading metadata of", path, e))?
        .len();
    let mut r = HashingReader {
        inner: BufReader::with_capacity(1 << 20, f),
        hasher: blake3::Hasher::new(),
        path,
        read: 0,
        len: file_len,
    };
    let bad = |problem: String| DataError::BadFormat {
        path: path.to_path_buf(),
        problem,
        expected: format!("a lamb-data cache entry (format {CACHE_VERSION}) with a valid checksum"),
    };
    let mut head = [0u8; 12];
    r.fill(&mut head)?;
    if &head[..8] != MAGIC || head[8..12] != CACHE_VERSION.to_le_bytes() {
        return Err(bad("unknown magic or version".into()));
    }
    let read_split = |r: &mut HashingReader| -> Result<Dataset, DataError> {
        let mut dims = [0u64; 5];
        for d in &mut dims {
            *d = r.u64()?;
        }
        let [h, w, c, n, k] = dims;
        if dims.iter().any(|&d| d > MAX_DIM) || k > 256 {
            return Err(bad(format!("implausible header {dims:?}")));
        }
        let mut class_names = Vec::with_capacity(k as usize);
        for _ in 0..k {
            let len = r.u64()?;
            if len > 1 << 16 {
                return Err(bad(format!("class name of {len} bytes")));
            }
            let mut b = vec![0u8; len as usize];
            r.fill(&mut b)?;
            class_names.push(String::from_utf8(b).map_err(|_| bad("class name not UTF-8".into()))?);
        }
        let image_len = h
            .checked_mul(w)
            .and_then(|v| v.checked_mul(c))
            .and_then(|v| v.checked_mul(n))
            .filter(|&v| {
                v.checked_add(n)
                    .is_some_and(|t| t <= r.len.saturating_sub(r.read))
            })
            .ok_or_else(|| {
                bad(format!(
                    "header {dims:?} needs more bytes than the file holds"
                ))
            })?;
        let mut labels = vec![0u8; n as usize];
        r.fill(&mut labels)?;
        let mut images = vec![0u8; image_len as usize];
        r.fill(&mut images)?;
        if let Some(&l) = labels.iter().find(|&&l| l as u64 >= k) {
            return Err(bad(format!("label {l} with {k} classes")));
        }
        Ok(Dataset {
            images,
            labels,
            height: h as usize,
            width: w as usize,
            channels: c as usize,
            class_names,
        })
    };
    let train = read_split(&mut r)?;
    let test = read_split(&mut r)?;
    let computed = r.hasher.finalize();
    let mut stored = [0u8; 32];
    r.inner
        .read_exact(&mut stored)
        .map_err(|_| bad("truncated before its checksum".into()))?;
    if r.read + 32 != file_len {
        return Err(bad(format!(
            "{} bytes after the checksum",
            file_len - r.read - 32
        )));
    }
    if computed.as_bytes() != &stored {
        return Err(bad(format!(
            "checksum mismatch (stored {}, content hashes to {}): the entry was modified or \
             damaged",
            hex(&stored[..8]),
            hex(&computed.as_bytes()[..8])
        )));
    }
    Ok(Splits { train, test })
}

/// Reads exactly, hashing what it reads and counting bytes.
struct HashingReader<'a> {
    inner: BufReader<fs::File>,
    hasher: blake3::Hasher,
    path: &'a Path,
    read: u64,
    len: u64,
}

impl HashingReader<'_> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DataError::BadFormat {
                    path: self.path.to_path_buf(),
                    problem: format!("truncated at byte {} of {}", self.read, self.len),
                    expected: "a complete lamb-data cache entry".into(),
                }
            } else {
                DataError::io("reading", self.path, e)
            }
        })?;
        if buf.len() >= 1 << 16 {
            self.hasher.update_rayon(buf);
        } else {
            self.hasher.update(buf);
        }
        self.read += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, DataError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}
