//! What a directory given as a run directory holds, and the files that make it a run: the
//! marker [`MARKER`] written first when a run starts (with a fingerprint of its data), the
//! checkpoint, and the temporary files a kill may leave behind.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::checkpoint;
use crate::lock::LOCK_FILE;

/// The file that marks a directory as a lamb run (written before anything else of the run).
pub const MARKER: &str = "lamb-run.json";

/// The log a sweep captures a run's output into; it is created before the run starts, so it
/// does not make a directory non-empty.
pub const LOG_FILE: &str = "train.log";

/// Format tag of [`MARKER`].
pub const MARKER_FORMAT: &str = "lamb-run-1";

/// The content of [`MARKER`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMarker {
    /// Always [`MARKER_FORMAT`].
    pub format: String,
    /// Where the run's data was found (may move; the fingerprint decides).
    pub data_source: PathBuf,
    /// A hash of the data the run trains and validates on (see the command's data loading);
    /// `--resume` refuses data with another fingerprint.
    pub data_fingerprint: String,
}

impl RunMarker {
    /// A marker for data found at `source` with this fingerprint.
    pub fn new(source: &Path, fingerprint: &str) -> RunMarker {
        RunMarker {
            format: MARKER_FORMAT.into(),
            data_source: source.to_path_buf(),
            data_fingerprint: fingerprint.into(),
        }
    }

    /// Reads `dir`'s marker: `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> anyhow::Result<Option<RunMarker>> {
        let path = dir.join(MARKER);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = lamb_data::read_capped(&path, 1 << 20)?;
        let m: RunMarker = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid run marker ({e}); it is written by `lamb train` when a run \
                 starts",
                path.display()
            )
        })?;
        if m.format != MARKER_FORMAT {
            anyhow::bail!(
                "{} has format `{}`; this lamb reads `{MARKER_FORMAT}`",
                path.display(),
                m.format
            );
        }
        Ok(Some(m))
    }

    /// Writes the marker into `dir` atomically.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        write_atomic(
            &dir.join(MARKER),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// What a directory holds, seen as a run directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirState {
    /// Missing, or empty (its lock file and a sweep's [`LOG_FILE`] alone count as empty).
    Empty,
    /// A run that got past its first checkpoint (the checkpoint, its folder or the final
    /// weights are there): it is resumed, never restarted (a lost checkpoint file is then an
    /// error, not a reason to overwrite results).
    Resumable,
    /// A run that stopped before its first checkpoint: nothing to resume, it can start again
    /// in place.
    NotCheckpointed,
    /// Not empty and not a run: these entries (at most 5 named).
    NotARun(Vec<String>),
}

/// Looks at `dir` (see [`DirState`]). A run is a directory with the [`MARKER`] or a checkpoint
/// (runs written before the marker existed have a checkpoint).
pub fn inspect(dir: &Path) -> std::io::Result<DirState> {
    let entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE && n != LOG_FILE)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Empty),
        Err(e) => return Err(e),
    };
    if entries.is_empty() {
        return Ok(DirState::Empty);
    }
    let checkpoint_dir = Path::new(checkpoint::FILE)
        .parent()
        .unwrap_or(Path::new(""));
    if dir.join(checkpoint::FILE).is_file()
        || dir.join(checkpoint_dir).is_dir()
        || dir.join("weights.safetensors").is_file()
    {
        return Ok(DirState::Resumable);
    }
    if dir.join(MARKER).is_file() {
        return Ok(DirState::NotCheckpointed);
    }
    let mut named = entries;
    named.sort();
    named.truncate(5);
    Ok(DirState::NotARun(named))
}

/// Whether `name` is a temporary file of an atomic write (`.<stem>.tmp-<pid>[.ext]`).
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Removes the temporary files that a kill during an atomic write leaves in `dir` and its
/// direct subdirectories (`.checkpoint.tmp-*`, `.history.tmp-*`, ...); returns what it removed.
/// Call it only while holding the directory's lock.
pub fn remove_stale_temporaries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        dirs.extend(
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_temporary(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::remove_file(e.path())?;
                removed.push(e.path());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_of_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("run");
        assert_eq!(inspect(&d).unwrap(), DirState::Empty);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join(LOCK_FILE), "1").unwrap();
        std::fs::write(d.join(LOG_FILE), "sweep output").unwrap();
        assert_eq!(inspect(&d).unwrap(), DirState::Empty);
        std::fs::write(d.join("config.toml"), "seed = 1").unwrap();
        assert_eq!(
            inspect(&d).unwrap(),
            DirState::NotARun(vec!["config.toml".into()])
        );
        RunMarker::new(Path::new("/data"), "abc").write(&d).unwrap();
        assert_eq!(inspect(&d).unwrap(), DirState::NotCheckpointed);
        std::fs::create_dir_all(d.join("checkpoint")).unwrap();
        std::fs::write(d.join(checkpoint::FILE), "x").unwrap();
        assert_eq!(inspect(&d).unwrap(), DirState::Resumable);
        let m = RunMarker::read(&d).unwrap().unwrap();
        assert_eq!(m.data_fingerprint, "abc");
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("checkpoint")).unwrap();
        std::fs::write(d.join(".history.tmp-123.csv"), "x").unwrap();
        std::fs::write(d.join("checkpoint/.checkpoint.tmp-9.safetensors"), "x").unwrap();
        std::fs::write(d.join("history.csv"), "x").unwrap();
        std::fs::write(d.join("checkpoint/checkpoint.safetensors"), "x").unwrap();
        let mut r = remove_stale_temporaries(d).unwrap();
        r.sort();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(d.join("history.csv").is_file());
        assert!(d.join("checkpoint/checkpoint.safetensors").is_file());
        assert!(!d.join(".history.tmp-123.csv").exists());
    }

    #[test]
    fn a_bad_marker_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(MARKER), "{").unwrap();
        let e = RunMarker::read(tmp.path()).unwrap_err().to_string();
        assert!(e.contains(MARKER), "{e}");
    }
}
