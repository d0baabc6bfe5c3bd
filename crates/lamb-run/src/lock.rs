//! One process per run directory: an exclusive advisory lock on `DIR/.lock`, held for the life
//! of a [`RunLock`] and released by the operating system when the process ends in any way
//! (exit, crash, `kill -9`), so a stale lock never needs cleaning up.
//!
//! The lock is `flock(2)` (through [`std::fs::File::try_lock`]). On a local file system it is
//! exact. On NFS, Linux emulates `flock` with POSIX byte-range locks (since 2.6.12): it works
//! between machines when the server supports NFS locking (NFSv4, or NFSv3 with lockd), and with
//! `nolock` mounts it is only local to each machine. On other network file systems (SMB/CIFS,
//! some FUSE file systems) it may be local only; give each machine its own directories there.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run directory (its content is the holder's PID, for messages only).
pub const LOCK_FILE: &str = ".lock";

/// Exit status of `lamb train` when its run directory is held by another process (EX_TEMPFAIL
/// of sysexits.h: try again later). A sweep reads it as "another worker runs this one".
pub const EXIT_LOCKED: u8 = 75;

/// Why a run directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "run directory {dir} is in use by another process ({holder}); a run directory belongs \
         to one process at a time: wait for it to finish, stop it, or choose another directory"
    )]
    Held {
        /// The run directory.
        dir: PathBuf,
        /// "PID 1234", or a note that the PID is not yet known.
        holder: String,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock run directory {dir} (lock file {file})")]
    Io {
        /// The run directory.
        dir: PathBuf,
        /// The lock file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock on a run directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    dir: PathBuf,
}

impl RunLock {
    /// Creates `dir` if needed and takes its lock without waiting; [`LockError::Held`] names the
    /// holder's PID when another process has it.
    pub fn acquire(dir: &Path) -> Result<RunLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            file: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.take(64).read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("PID {pid}"),
                    Err(_) => "a process that has not yet written its PID".into(),
                };
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Only the holder writes: the PID is for the message of the next process refused.
        let pid = std::process::id().to_string();
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        Ok(RunLock {
            file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `dir` is locked by some process right now (this one included, through another
    /// open of the file). A directory without a lock file is not locked.
    pub fn is_held(dir: &Path) -> bool {
        match File::open(dir.join(LOCK_FILE)) {
            Ok(f) => matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_pid_and_freed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let first = RunLock::acquire(&dir).unwrap();
        assert!(RunLock::is_held(&dir));
        // flock locks belong to the open file: a second open in this process conflicts as
        // another process would.
        let e = RunLock::acquire(&dir).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        drop(first);
        assert!(!RunLock::is_held(&dir));
        let again = RunLock::acquire(&dir).unwrap();
        assert_eq!(again.dir(), dir);
    }

    #[test]
    fn an_unlocked_directory_is_not_held() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!RunLock::is_held(tmp.path()));
        assert!(!RunLock::is_held(&tmp.path().join("missing")));
    }
}
