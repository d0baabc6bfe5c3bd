//! The buffered event-file writer: records are encoded into a memory buffer and reach the file
//! only when the caller flushes, each flush one append of whole records.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::histogram::Histogram;
use crate::proto::{encode_file_version_event, encode_summary_event, Payload};
use crate::record::{append_record, read_events};
use crate::TbError;

/// Start of every event file's name (TensorBoard finds files by `tfevents` in the name).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// Seconds since the Unix epoch, as `Event.wall_time` holds them.
pub fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What [`EventWriter::open`] found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// A new file was created (it starts with the `file_version` event).
    Created,
    /// An existing file is appended to, holding this many whole records.
    Appended {
        /// Whole records already there.
        records: usize,
        /// Bytes of a torn last record that were cut off first (0 when it was whole).
        torn_bytes_dropped: u64,
    },
}

/// Writes one TensorBoard run directory's events (one file, appended across resumes). Records
/// are buffered in memory: [`EventWriter::flush`] appends them all with one write, and
/// [`EventWriter::discard`] drops them. Adding a record allocates nothing while the buffer has
/// room (it starts with the capacity given to [`EventWriter::open`]).
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
}

impl EventWriter {
    /// Opens the event file of `dir` (creating the directory): the last file named
    /// `events.out.tfevents.*` when there is one, after cutting off a torn last record (left by
    /// a process killed mid-write) so that new records follow whole ones; otherwise a new file
    /// `events.out.tfevents.<seconds>.<host>.<pid>.v2` starting with the `file_version` event.
    /// `capacity` is the buffer's initial size in bytes. A file whose records are corrupt
    /// (checksums) is an error, not overwritten.
    pub fn open(dir: &Path, capacity: usize) -> Result<(EventWriter, Opened), TbError> {
        let io = |path: &Path, action: &'static str| {
            let path = path.to_path_buf();
            move |source| TbError::Io {
                path,
                action,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir, "creating"))?;
        let mut existing: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir, "listing"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(FILE_PREFIX))
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        existing.sort();
        let buf = Vec::with_capacity(capacity);
        if let Some(path) = existing.pop() {
            let found = read_events(&path)?;
            let len = std::fs::metadata(&path)
                .map_err(io(&path, "reading"))?
                .len();
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path, "opening"))?;
            if found.torn_tail {
                file.set_len(found.whole_len)
                    .map_err(io(&path, "cutting the torn last record of"))?;
            }
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io(&path, "opening"))?;
            let records = found.events.len();
            let mut w = EventWriter { file, path, buf };
            if records == 0 {
                append_record(&mut w.buf, |b| encode_file_version_event(b, wall_time()));
                w.flush()?;
            }
            return Ok((
                w,
                Opened::Appended {
                    records,
                    torn_bytes_dropped: len - found.whole_len,
                },
            ));
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().replace(['/', '.'], "_"))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let secs = wall_time() as u64;
        let path = dir.join(format!(
            "{FILE_PREFIX}{secs}.{host}.{}.v2",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(&path, "creating"))?;
        let mut w = EventWriter { file, path, buf };
        append_record(&mut w.buf, |b| encode_file_version_event(b, wall_time()));
        w.flush()?;
        Ok((w, Opened::Created))
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Buffers a scalar (`simple_value`) at `step`, stamped with the current time.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) {
        let t = wall_time();
        append_record(&mut self.buf, |b| {
            encode_summary_event(b, t, step, tag, Payload::Scalar(value));
        });
    }

    /// Buffers a histogram (`histo`) at `step`, stamped with the current time.
    pub fn histogram(&mut self, tag: &str, step: i64, h: &Histogram) {
        let t = wall_time();
        append_record(&mut self.buf, |b| {
            encode_summary_event(b, t, step, tag, Payload::Histogram(h));
        });
    }

    /// Bytes buffered and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Drops the buffered records unwritten.
    pub fn discard(&mut self) {
        self.buf.clear();
    }

    /// Appends the buffered records to the file with one write (a kill during it leaves a
    /// torn last record, which readers skip and [`EventWriter::open`] cuts off), and empties
    /// the buffer (its capacity is kept).
    pub fn flush(&mut self) -> Result<(), TbError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.flush());
        self.buf.clear();
        r.map_err(|source| TbError::Io {
            path: self.path.clone(),
            action: "appending to",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ValueData;

    fn steps(path: &Path) -> Vec<i64> {
        read_events(path)
            .unwrap()
            .events
            .iter()
            .filter(|e| !e.values.is_empty())
            .map(|e| e.step)
            .collect()
    }

    #[test]
    fn records_reach_the_file_only_when_flushed() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, o) = EventWriter::open(d.path(), 1024).unwrap();
        assert_eq!(o, Opened::Created);
        let first = read_events(w.path()).unwrap();
        assert_eq!(first.events.len(), 1);
        assert_eq!(
            first.events[0].file_version.as_deref(),
            Some("brain.Event:2")
        );
        w.scalar("epoch_loss", 0, 2.5);
        w.scalar("epoch_loss", 1, 1.5);
        assert!(steps(w.path()).is_empty());
        w.flush().unwrap();
        assert_eq!(steps(w.path()), vec![0, 1]);
        w.scalar("epoch_loss", 2, 1.0);
        w.discard();
        w.flush().unwrap();
        assert_eq!(steps(w.path()), vec![0, 1]);
        let e = read_events(w.path()).unwrap();
        assert_eq!(e.events[2].values[0].data, ValueData::Scalar(1.5));
    }

    #[test]
    fn reopening_appends_after_cutting_a_torn_record() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = EventWriter::open(d.path(), 0).unwrap();
        w.scalar("a", 1, 1.0);
        w.scalar("a", 2, 2.0);
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        // A kill mid-write: only part of the next record reached the file.
        let len = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[7, 0, 0, 0, 0, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        assert!(read_events(&path).unwrap().torn_tail);
        let (mut w, o) = EventWriter::open(d.path(), 0).unwrap();
        assert_eq!(
            o,
            Opened::Appended {
                records: 3,
                torn_bytes_dropped: 10
            }
        );
        assert_eq!(w.path(), path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        w.scalar("a", 3, 3.0);
        w.flush().unwrap();
        let f = read_events(&path).unwrap();
        assert!(!f.torn_tail);
        assert_eq!(steps(&path), vec![1, 2, 3]);
        // One file per directory, whatever the number of sessions.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_file_is_refused_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let (w, _) = EventWriter::open(d.path(), 0).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let mut b = std::fs::read(&path).unwrap();
        b[14] ^= 0xff;
        std::fs::write(&path, &b).unwrap();
        let e = EventWriter::open(d.path(), 0).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("checksum"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b);
    }
}
