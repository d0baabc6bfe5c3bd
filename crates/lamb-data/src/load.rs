//! Loading with layout auto-detection, importing into the official layout, and the cache.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cache::{cache_entry_path, read_cache_entry, write_cache_entry};
use crate::cifar100::{cifar100_dir, read_cifar100};
use crate::dataset::Splits;
use crate::error::DataError;
use crate::fsutil::check_openable;
use crate::idx::{is_idx_dir, read_idx};
use crate::images::{looks_like_archive, read_archive, read_image_folder};
use crate::official::{
    official_dir, read_official, write_official, ImportSummary, TEST_FILE, TRAIN_FILES,
};
use crate::options::LoadOptions;
use crate::resize::resize_dataset;

/// The layouts [`load`] recognises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A directory of official CIFAR-10 binary batch files (the path is that directory).
    Official(PathBuf),
    /// A directory holding CIFAR-100's `train.bin` and `test.bin`.
    Cifar100(PathBuf),
    /// A directory holding MNIST-style IDX files.
    Idx(PathBuf),
    /// A directory holding `train/<class>/*` and `test/<class>/*` images.
    ImageFolder(PathBuf),
    /// A `.tar.gz`, `.tar` or `.zip` archive of images or of the CIFAR-10 batches.
    Archive(PathBuf),
}

/// Detects the layout at `path`: a directory in the CIFAR-10 layout (or holding
/// `cifar-10-batches-bin/`), in the CIFAR-100 layout (or holding `cifar-100-binary/`), holding
/// IDX files, holding `train/` or `test/`, or holding exactly one archive; a gzip/tar/zip file
/// (recognised by content); or one of the official CIFAR-10 batch files (meaning its
/// directory). Paths that are FIFOs, sockets or devices are refused before opening.
pub fn detect(path: &Path) -> Result<Layout, DataError> {
    check_openable(path)?;
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
            what: "expected a dataset directory or archive".into(),
        });
    }
    if path.is_dir() {
        if let Some(dir) = official_dir(path) {
            return Ok(Layout::Official(dir));
        }
        if let Some(dir) = cifar100_dir(path) {
            return Ok(Layout::Cifar100(dir));
        }
        if is_idx_dir(path) {
            return Ok(Layout::Idx(path.to_path_buf()));
        }
        if path.join("train").is_dir() || path.join("test").is_dir() {
            return Ok(Layout::ImageFolder(path.to_path_buf()));
        }
        // A directory holding exactly one archive (as ../shared/data does): that archive.
        let mut archives: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|e| DataError::io("listing", path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && looks_like_archive(p))
            .collect();
        archives.sort();
        match archives.len() {
            0 => {}
            1 => return Ok(Layout::Archive(archives.remove(0))),
            _ => {
                return Err(DataError::SeveralArchives {
                    path: path.to_path_buf(),
                    archives,
                })
            }
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

/// Loads train and test splits from `path`, whatever its layout (see [`detect`]), with the
/// default options.
pub fn load(path: &Path) -> Result<Splits, DataError> {
    load_with(path, &LoadOptions::default())
}

/// Loads train and test splits from `path` (see [`detect`]) with `opts`.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Splits, DataError> {
    let resized = |s: Splits| match opts.resize {
        Some(r) => Splits {
            train: resize_dataset(s.train, r),
            test: resize_dataset(s.test, r),
        },
        None => s,
    };
    match detect(path)? {
        Layout::Official(dir) => read_official(&dir).map(resized),
        Layout::Cifar100(dir) => read_cifar100(&dir, opts.cifar100_labels).map(resized),
        Layout::Idx(dir) => read_idx(&dir).map(resized),
        Layout::ImageFolder(dir) => read_image_folder(&dir, opts.resize),
        Layout::Archive(file) => read_archive(&file, opts.resize),
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

/// How [`load_cached_with`] used the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// The path is not an archive: loaded directly, no cache involved.
    NotAnArchive,
    /// Read from a verified cache entry.
    Hit(PathBuf),
    /// Decoded from the archive and stored in the cache.
    Stored(PathBuf),
    /// The entry failed its checks (the message says why); decoded again and stored anew.
    Rebuilt(PathBuf, String),
    /// Decoded from the archive; the cache could not be written (the message says why).
    NotStored(PathBuf, String),
}

/// The loaded data and how the cache was used.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The data.
    pub splits: Splits,
    /// What happened with the cache.
    pub cache: CacheUse,
}

/// Loads `archive` through a cache (see [`load_cached_with`]) with the default options,
/// printing a line to stderr when a damaged entry is rebuilt.
pub fn load_cached(archive: &Path, cache_dir: &Path) -> Result<Splits, DataError> {
    let loaded = load_cached_with(archive, cache_dir, &LoadOptions::default())?;
    if let CacheUse::Rebuilt(entry, why) = &loaded.cache {
        eprintln!(
            "note: rebuilt the data cache entry {}: {why}",
            entry.display()
        );
    }
    Ok(loaded.splits)
}

/// Loads `archive` with `opts` through a cache: the first call decodes it and stores the result
/// in [`cache_entry_path`] (written to a temporary file, then renamed into place, so concurrent
/// or interrupted imports never leave a partial entry); later calls read the entry, verifying
/// its checksum. An entry that fails any check is replaced (reported as
/// [`CacheUse::Rebuilt`]). Nothing is cached from a failed read. The cache is best effort: when
/// it cannot be written the data read from the archive is returned all the same. Paths that
/// are not archives (directories) are loaded directly. Never writes next to `archive`.
pub fn load_cached_with(
    archive: &Path,
    cache_dir: &Path,
    opts: &LoadOptions,
) -> Result<Loaded, DataError> {
    // The archive file itself (a directory holding one archive detects as that file).
    let archive = match detect(archive)? {
        Layout::Archive(file) => file,
        _ => {
            return Ok(Loaded {
                splits: load_with(archive, opts)?,
                cache: CacheUse::NotAnArchive,
            })
        }
    };
    let entry = cache_entry_path(&archive, cache_dir, opts)?;
    let mut rebuilt = None;
    if entry.is_file() {
        match read_cache_entry(&entry) {
            Ok(splits) => {
                return Ok(Loaded {
                    splits,
                    cache: CacheUse::Hit(entry),
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&entry);
                rebuilt = Some(e.to_string());
            }
        }
    }
    let splits = read_archive(&archive, opts.resize)?;
    let cache = match (write_cache_entry(&splits, &entry), rebuilt) {
        (Ok(()), Some(why)) => CacheUse::Rebuilt(entry, why),
        (Ok(()), None) => CacheUse::Stored(entry),
        (Err(e), _) => CacheUse::NotStored(entry, e.to_string()),
    };
    Ok(Loaded { splits, cache })
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
