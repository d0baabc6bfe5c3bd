//! Finding the data when the user did not say where it is, and saying what to do when it is
//! nowhere.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::fsutil::check_openable;

/// Environment variable naming the data path.
pub const DATA_ENV: &str = "LAMB_DATA";
/// File name of the shared JPEG archive.
pub const SHARED_ARCHIVE: &str = "cifar10-jpeg.tar.gz";

/// Finds the data to load, in this order:
/// 1. `explicit` (from `--data PATH`): used if it exists, else an error (no fallback);
/// 2. `$LAMB_DATA`, if set and non-empty: likewise;
/// 3. the first existing one of [`candidate_paths`] for the current directory and executable.
///
/// The result is a path for [`crate::load`] / [`crate::load_cached`]; when nothing is found
/// the error's message ([`crate::no_data_help`]) says where it looked and what to do.
pub fn locate_data(explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    locate_data_in(
        explicit,
        std::env::var_os(DATA_ENV).as_deref(),
        cwd.as_deref(),
        exe.as_deref(),
    )
}

/// [`locate_data`] with its inputs given: `env_data` is the value of `$LAMB_DATA`, `cwd` the
/// current directory, `exe` the running executable's path.
pub fn locate_data_in(
    explicit: Option<&Path>,
    env_data: Option<&OsStr>,
    cwd: Option<&Path>,
    exe: Option<&Path>,
) -> Result<PathBuf, DataError> {
    if let Some(p) = explicit {
        return existing(p, "given with --data");
    }
    if let Some(v) = env_data.filter(|v| !v.is_empty()) {
        return existing(Path::new(v), "given by $LAMB_DATA");
    }
    let searched = candidate_paths(cwd, exe);
    for c in &searched {
        if c.exists() {
            return Ok(c.clone());
        }
    }
    Err(DataError::NoData { searched })
}

fn existing(p: &Path, what: &str) -> Result<PathBuf, DataError> {
    check_openable(p)?;
    if p.exists() {
        Ok(p.to_path_buf())
    } else {
        Err(DataError::NotFound {
            path: p.to_path_buf(),
            what: what.to_string(),
        })
    }
}

/// The default locations, in search order: relative to `cwd`, `data/cifar-10-batches-bin`
/// (where `lamb data download` puts the official release), `data/cifar10-jpeg.tar.gz`, and
/// `../shared/data/cifar10-jpeg.tar.gz`; then, for each ancestor `A` of the executable's
/// directory (nearest first), `A/../shared/data/cifar10-jpeg.tar.gz` (the development tree:
/// `/work/main/target/release/lamb` finds `/work/shared/data`). Duplicates are dropped.
pub fn candidate_paths(cwd: Option<&Path>, exe: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    if let Some(cwd) = cwd {
        push(cwd.join("data").join("cifar-10-batches-bin"));
        push(cwd.join("data").join(SHARED_ARCHIVE));
        if let Some(parent) = cwd.parent() {
            push(parent.join("shared").join("data").join(SHARED_ARCHIVE));
        }
    }
    if let Some(dir) = exe.and_then(Path::parent) {
        for a in dir.ancestors() {
            if let Some(parent) = a.parent() {
                push(parent.join("shared").join("data").join(SHARED_ARCHIVE));
            }
        }
    }
    out
}
