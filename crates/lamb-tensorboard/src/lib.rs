//! TensorBoard event files, written and read: the TFRecord framing (length, masked CRC32C of
//! it, data, masked CRC32C of the data), the `Event`/`Summary`/`HistogramProto` protobuf
//! messages (encoded by hand: only the fields scalars and histograms need), a buffered writer
//! that allocates nothing per record once its buffer has room, and a reader that tolerates a
//! torn last record.
//!
//! The published crates were not fit: `tensorboard-rs` (0.5.9) pulls an old `protobuf` and
//! image stack, allocates per record and writes as it goes, which leaves no control over when
//! records become durable (the `lamb` command writes only what a checkpoint covers).
//!
//! ```
//! use lamb_tensorboard::{read_events, EventWriter, Histogram, ValueData};
//! let dir = tempfile::tempdir().unwrap();
//! let (mut w, _) = EventWriter::open(dir.path(), 4096).unwrap();
//! w.scalar("epoch_loss", 0, 1.25);
//! w.histogram("dense/kernel/histogram", 0, &Histogram::from_values(&[0.1, 0.2, 0.4], 30));
//! w.flush().unwrap();
//! let file = read_events(w.path()).unwrap();
//! assert_eq!(file.events[1].values[0].data, ValueData::Scalar(1.25));
//! ```

mod histogram;
mod proto;
mod record;
mod writer;

use std::path::PathBuf;

pub use histogram::Histogram;
pub use proto::{Event, Value, ValueData};
pub use record::{masked_crc32c, parse_events, read_events, EventFile, FRAMING};
pub use writer::{wall_time, EventWriter, Opened, FILE_PREFIX};

/// Errors of reading or writing event files.
#[derive(Debug, thiserror::Error)]
pub enum TbError {
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`reading`, `appending to`, ...).
        action: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// A record is damaged (not merely cut short at the end).
    #[error("{path} is not a valid TensorBoard event file: {what} at byte offset {offset}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Offset of the damaged record.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}
