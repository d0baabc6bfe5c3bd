//! Small file-system helpers shared by the readers and writers: refusing paths that are not
//! regular files or directories before opening them, bounded reads, synced writes.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::DataError;

/// What kind of file-system object `meta` describes, in words ("a FIFO", "a socket", ...).
fn special_kind(meta: &fs::Metadata) -> &'static str {
    if meta.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
    }
    let _ = meta;
    "neither a regular file nor a directory"
}

/// Refuses `path` unless it is a regular file or a directory (following symbolic links), so
/// that a FIFO, socket or device is never opened (opening a FIFO blocks until a writer comes).
/// A path that does not exist passes (the caller reports it in its own words).
pub fn check_openable(path: &Path) -> Result<(), DataError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() || m.is_dir() => Ok(()),
        Ok(m) => Err(DataError::NotRegular {
            path: path.to_path_buf(),
            kind: special_kind(&m),
            expected: "a regular file or a directory",
        }),
        Err(_) => Ok(()),
    }
}

/// Opens `path` for reading if it is a regular file (after following links), returning the
/// file and its length. A FIFO, device, socket or directory is refused without blocking: the
/// open is non-blocking and the type is read from the opened file, so a swap after a check
/// cannot slip through.
pub fn open_regular(path: &Path) -> Result<(fs::File, u64), DataError> {
    #[cfg(unix)]
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    #[cfg(not(unix))]
    let f = fs::File::open(path);
    let f = f.map_err(|e| DataError::io("opening", path, e))?;
    let meta = f
        .metadata()
        .map_err(|e| DataError::io("reading metadata of", path, e))?;
    if !meta.is_file() {
        return Err(DataError::NotRegular {
            path: path.to_path_buf(),
            kind: special_kind(&meta),
            expected: "a regular file",
        });
    }
    Ok((f, meta.len()))
}

/// Reads the regular file `path` whole (see [`open_regular`]), refusing files longer than
/// `limit` bytes (checked before reading, and again while reading in case the file grows).
pub fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let (f, len) = open_regular(path)?;
    if len > limit {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            size: len,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io("reading", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Creates `path`, writes `bytes` and syncs it to disk.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let mut f = fs::File::create(path).map_err(|e| DataError::io("creating", path, e))?;
    f.write_all(bytes)
        .map_err(|e| DataError::io("writing", path, e))?;
    f.sync_all().map_err(|e| DataError::io("syncing", path, e))
}

/// Best-effort sync of a directory's entries (renames) to disk; not all platforms support it.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
