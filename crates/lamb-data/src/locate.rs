//! Finding the data when the user did not say where it is, and saying what to do when it is
//! nowhere.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::{no_data_help, DataError};
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

/// What [`locate_or_download_in`] may download when no data is found (first use, as
/// `keras.datasets.cifar10.load_data()` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoDownload {
    /// Directory to download into (the data lands in `dest_dir/cifar-10-batches-bin`, which the
    /// default search finds next time when `dest_dir` is `./data`).
    pub dest_dir: PathBuf,
    /// The archive (the official CIFAR-10 release by default; tests serve a small one).
    pub spec: crate::download::DownloadSpec,
    /// Show a progress bar.
    pub progress: bool,
}

impl AutoDownload {
    /// The official CIFAR-10 release into `dest_dir`, with a progress bar.
    pub fn official(dest_dir: impl Into<PathBuf>) -> Self {
        AutoDownload {
            dest_dir: dest_dir.into(),
            spec: crate::download::DownloadSpec::official(),
            progress: true,
        }
    }
}

/// [`locate_data_in`], and when nothing is found and `auto` is given, downloads CIFAR-10 as
/// `auto` says (size and md5 checked, resumable; a note on stderr first) and returns its
/// directory. Without `auto` (`--no-download`) the error is [`DataError::NoData`] as before; a
/// failed download is an error that keeps the search's help and adds the download's cause.
pub fn locate_or_download_in(
    explicit: Option<&Path>,
    env_data: Option<&OsStr>,
    cwd: Option<&Path>,
    exe: Option<&Path>,
    auto: Option<&AutoDownload>,
) -> Result<PathBuf, DataError> {
    match (locate_data_in(explicit, env_data, cwd, exe), auto) {
        (Err(DataError::NoData { searched }), Some(a)) => {
            eprintln!(
                "no data found; downloading CIFAR-10 ({} bytes, md5-checked) into {} \
                 (--no-download forbids this)",
                a.spec.size,
                a.dest_dir.display()
            );
            crate::download::download_official(&a.dest_dir, &a.spec, a.progress).map_err(|e| {
                DataError::Download {
                    url: a.spec.url.clone(),
                    message: format!(
                        "{e}\nThe automatic download after the search below failed; an \
                         interrupted download resumes on the next run.\n{}",
                        no_data_help(&searched)
                    ),
                }
            })
        }
        (other, _) => other,
    }
}

/// [`locate_or_download_in`] for the current directory, executable and `$LAMB_DATA`.
pub fn locate_or_download(
    explicit: Option<&Path>,
    auto: Option<&AutoDownload>,
) -> Result<PathBuf, DataError> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    locate_or_download_in(
        explicit,
        std::env::var_os(DATA_ENV).as_deref(),
        cwd.as_deref(),
        exe.as_deref(),
        auto,
    )
}
