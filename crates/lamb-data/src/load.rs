//! Loading with layout auto-detection, importing into the official layout, and the import cache.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::dataset::Dataset;
use crate::error::DataError;
use crate::images::{looks_like_archive, read_archive, read_image_folder};
use crate::official::{
    official_dir, read_official, sync_dir, write_official, ImportSummary, TEST_FILE, TRAIN_FILES,
};

/// A dataset's training and test splits (the test split is the classic experiment's validation
/// data). Both share image size and class names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// The training images.
    pub train: Dataset,
    /// The test images.
    pub test: Dataset,
}

/// The layouts [`load`] recognises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A directory of official binary batch files (the path is that directory).
    Official(PathBuf),
    /// A directory holding `train/<class>/*` and `test/<class>/*` images.
    ImageFolder(PathBuf),
    /// A `.tar.gz` or `.tar` archive of either layout.
    Archive(PathBuf),
}

/// Detects the layout at `path`: a directory in the official layout (or holding
/// `cifar-10-batches-bin/`), a directory with `train/` or `test/`, a gzip/tar file
/// (recognised by content), or one of the official batch files (meaning its directory).
pub fn detect(path: &Path) -> Result<Layout, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
            what: "expected a CIFAR-10 directory or archive".into(),
        });
    }
    if path.is_dir() {
        if let Some(dir) = official_dir(path) {
            return Ok(Layout::Official(dir));
        }
        if path.join("train").is_dir() || path.join("test").is_dir() {
            return Ok(Layout::ImageFolder(path.to_path_buf()));
        }
        // A directory holding exactly one archive (as ../shared/data does): that archive.
        let archives: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|e| DataError::io("listing", path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && looks_like_archive(p))
            .collect();
        if let [only] = archives.as_slice() {
            return Ok(Layout::Archive(only.clone()));
        }
    } else if looks_like_archive(path) {
        return Ok(Layout::Archive(path.to_path_buf()));
    } else if let (Some(name), Some(parent)) = (path.file_name(), path.parent()) {
        // One of the official files: the layout is its directory.
        let name = name.to_string_lossy();
        if TRAIN_FILES.contains(&name.as_ref()) || name == TEST_FILE {
            return Ok(Layout::Official(parent.to_path_buf()));
        }
    }
    Err(DataError::UnknownLayout {
        path: path.to_path_buf(),
    })
}

/// Loads train and test splits from `path`, whatever its layout (see [`detect`]).
pub fn load(path: &Path) -> Result<Splits, DataError> {
    match detect(path)? {
        Layout::Official(dir) => read_official(&dir),
        Layout::ImageFolder(dir) => read_image_folder(&dir),
        Layout::Archive(file) => read_archive(&file),
    }
}

/// Loads `source` (an archive or image folder; an official-layout directory works too) and
/// writes it to `out_dir` in the official binary layout (32x32 RGB images only), atomically per
/// file: see [`write_official`]. Nothing is ever written next to `source` unless `out_dir` is
/// there.
pub fn import_archive(source: &Path, out_dir: &Path) -> Result<ImportSummary, DataError> {
    let splits = load(source)?;
    write_official(&splits, out_dir)
}

/// Version of the cache's layout and decoding; part of each cache entry's name, so that a change
/// of decoder never reuses stale pixels.
pub const CACHE_VERSION: u32 = 1;

/// The cache entry directory for `archive` under `cache_dir`:
/// `cache_dir/<file stem>-<first 16 hex digits of the archive's sha256>-v<CACHE_VERSION>`.
/// Hashes the whole archive (about 0.1 s for the 19 MB JPEG archive).
pub fn cache_entry_dir(archive: &Path, cache_dir: &Path) -> Result<PathBuf, DataError> {
    let mut f = fs::File::open(archive).map_err(|e| DataError::io("opening", archive, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| DataError::io("reading", archive, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let stem = name
        .trim_end_matches(".gz")
        .trim_end_matches(".tgz")
        .trim_end_matches(".tar");
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
    Ok(cache_dir.join(format!("{stem}-{hex}-v{CACHE_VERSION}")))
}

/// Loads `archive` through a cache: the first call imports it into
/// [`cache_entry_dir`]`(archive, cache_dir)` in the official binary layout (written to a
/// temporary directory, then renamed into place as a whole, so concurrent or interrupted
/// imports never leave a partial entry); later calls read the binary files. An entry that
/// fails to read is replaced. The cache is best effort: when it cannot be written (a read-only
/// or invalid `cache_dir`, or images that are not 32x32 and so do not fit the binary layout),
/// the data read from the archive is returned all the same. Paths that are not archives
/// (directories) are loaded directly, without caching. Never writes next to `archive`.
pub fn load_cached(archive: &Path, cache_dir: &Path) -> Result<Splits, DataError> {
    // The archive file itself (a directory holding one archive detects as that file).
    let archive = match detect(archive)? {
        Layout::Archive(file) => file,
        _ => return load(archive),
    };
    let archive = archive.as_path();
    let entry = cache_entry_dir(archive, cache_dir)?;
    if entry.is_dir() {
        if let Ok(s) = read_official(&entry) {
            return Ok(s);
        }
        let _ = fs::remove_dir_all(&entry);
    }
    let splits = read_archive(archive)?;
    // Best effort, see above.
    let _ = store_in_cache(&splits, cache_dir, &entry);
    Ok(splits)
}

/// Writes `splits` to the cache entry `entry` inside `cache_dir` via a temporary directory.
fn store_in_cache(splits: &Splits, cache_dir: &Path, entry: &Path) -> Result<(), DataError> {
    fs::create_dir_all(cache_dir)
        .map_err(|e| DataError::io("creating cache directory", cache_dir, e))?;
    let tmp = cache_dir.join(format!(
        ".{}.tmp-{}",
        entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let written = write_official(splits, &tmp).and_then(|_| {
        fs::rename(&tmp, entry).or_else(|e| {
            // Another process may have finished the same import first: use its entry.
            if entry.is_dir() {
                Ok(())
            } else {
                Err(DataError::io("renaming cache entry into place", entry, e))
            }
        })
    });
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    written?;
    sync_dir(cache_dir);
    Ok(())
}

/// The default cache directory: `$LAMB_CACHE` if set, else `$XDG_CACHE_HOME/lamb`, else
/// `$HOME/.cache/lamb`; `None` when none of these variables is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("LAMB_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("lamb")))
        .or_else(|| var("HOME").map(|p| p.join(".cache").join("lamb")))
}
