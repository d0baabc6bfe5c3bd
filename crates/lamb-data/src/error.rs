//! The crate's error type: every variant says what was wrong, where, and what is valid.

use std::path::PathBuf;

/// Bytes per record of the official CIFAR-10 binary layout: 1 label byte + 3 x 32 x 32 pixels.
pub const RECORD_LEN: usize = 1 + 3 * 32 * 32;

/// Everything that can go wrong while finding, reading, importing or downloading data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An operating-system error on a file or directory.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done ("reading", "creating", "renaming", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error (in the message; not a separate `source()`, so that error
        /// chains name it once).
        cause: std::io::Error,
    },

    /// A path given to the loader does not exist.
    #[error("{path} does not exist ({what})")]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// Where the path came from or what was expected there.
        what: String,
    },

    /// A path exists but is none of the supported data layouts.
    #[error(
        "{path} is not a supported data layout: expected a directory holding data_batch_1.bin .. \
         data_batch_5.bin and test_batch.bin (CIFAR-10, or a cifar-10-batches-bin/ \
         subdirectory), train.bin and test.bin (CIFAR-100, or cifar-100-binary/), the four MNIST \
         IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], \
         t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]), a directory holding \
         train/<class>/*.jpg|*.jpeg|*.png and test/<class>/..., or a .tar.gz / .tar / .zip \
         archive of images or of the CIFAR-10 batches"
    )]
    UnknownLayout {
        /// The path that was inspected.
        path: PathBuf,
    },

    /// A file of the official binary layout is missing.
    #[error(
        "missing {name} in {dir}: the official CIFAR-10 binary layout needs data_batch_1.bin .. \
         data_batch_5.bin and test_batch.bin (batches.meta.txt optional)"
    )]
    MissingFile {
        /// The directory (or archive) searched.
        dir: PathBuf,
        /// The missing file name.
        name: String,
    },

    /// A batch file's length is not a whole number of records.
    #[error(
        "{path}: length {len} bytes is not a multiple of the record length {RECORD_LEN} \
         (1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 batch"
    )]
    BadLength {
        /// The batch file (or `archive!member`).
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },

    /// A record's label byte is not a valid class index.
    #[error(
        "{path}: record {record} (byte offset {offset}) has label {label}; valid labels are \
         0..={max}"
    )]
    LabelOutOfRange {
        /// The batch file (or `archive!member`).
        path: PathBuf,
        /// Index of the record within the file.
        record: usize,
        /// Byte offset of the label byte within the file.
        offset: u64,
        /// The label found.
        label: u8,
        /// The largest valid label.
        max: u8,
    },

    /// `batches.meta.txt` does not list a usable set of class names.
    #[error("{path}: found {found} class names; expected 1 to 256 non-empty lines")]
    BadMeta {
        /// The meta file.
        path: PathBuf,
        /// How many names were found.
        found: usize,
    },

    /// A training batch file is empty while another holds records: the official layout (and
    /// `lamb data import`) shares the training images evenly over the five files, so an empty
    /// one was truncated or not copied completely.
    #[error(
        "{path}: empty (0 records) while {other} holds {records}; the five training batches share \
         the images evenly, so this file was truncated or not copied completely (restore it, or \
         import the data again)"
    )]
    EmptyBatch {
        /// The empty file.
        path: PathBuf,
        /// A training batch file that holds records.
        other: PathBuf,
        /// How many records it holds.
        records: usize,
    },

    /// One split of a dataset holds no images.
    #[error("{path}: the {split} split holds no images")]
    EmptySplit {
        /// The dataset location.
        path: PathBuf,
        /// "train" or "test".
        split: String,
    },

    /// An image could not be decoded.
    #[error("{container}: cannot decode image {member}: {message}")]
    CorruptImage {
        /// The archive or folder holding the image.
        container: PathBuf,
        /// The image's path inside the container.
        member: String,
        /// The decoder's message.
        message: String,
    },

    /// An image's size differs from the size the split must share.
    #[error(
        "{container}: image {member} is {found_w}x{found_h}, expected {expected_w}x{expected_h} \
         (all images must share the size of the first one, {first}, unless resized with --resize \
         HxW)"
    )]
    WrongImageSize {
        /// The archive or folder holding the image.
        container: PathBuf,
        /// The image's path inside the container.
        member: String,
        /// Width found.
        found_w: u32,
        /// Height found.
        found_h: u32,
        /// Width expected.
        expected_w: u32,
        /// Height expected.
        expected_h: u32,
        /// The member that set the expected size (or a note saying why that size is required).
        first: String,
    },

    /// An image member is too large to be a plausible dataset image.
    #[error("{container}: member {member} is {size} bytes; images larger than {limit} bytes are refused")]
    MemberTooLarge {
        /// The archive holding the member.
        container: PathBuf,
        /// The member's path.
        member: String,
        /// Its size in bytes.
        size: u64,
        /// The largest size accepted.
        limit: u64,
    },

    /// An image lies outside the `<split>/<class>/<file>` layout.
    #[error(
        "{container}: image {member} is not at <prefix>/<split>/<class>/<file> with split train or \
         test{detail}"
    )]
    UnexpectedMember {
        /// The archive or folder.
        container: PathBuf,
        /// The offending member.
        member: String,
        /// Extra explanation (starts with "; " when non-empty).
        detail: String,
    },

    /// A split folder (train/ or test/) is missing.
    #[error("{container}: missing split folder {split}/ (found: {found}); both train/ and test/ are required")]
    MissingSplit {
        /// The archive or folder.
        container: PathBuf,
        /// The missing split.
        split: String,
        /// The splits that were found.
        found: String,
    },

    /// A class folder exists in one split but not in the other.
    #[error(
        "{container}: missing class folder {split}/{class}/ ({other}/{class}/ exists; train and \
         test must hold the same classes)"
    )]
    MissingClass {
        /// The archive or folder.
        container: PathBuf,
        /// The split lacking the class.
        split: String,
        /// The missing class.
        class: String,
        /// The split that has it.
        other: String,
    },

    /// A class folder holds no images.
    #[error("{container}: class folder {split}/{class}/ holds no .jpg, .jpeg or .png images")]
    EmptyClass {
        /// The archive or folder.
        container: PathBuf,
        /// The split.
        split: String,
        /// The empty class.
        class: String,
    },

    /// More classes than labels of one byte can name.
    #[error("{container}: {count} classes; at most {max} are supported")]
    TooManyClasses {
        /// The archive or folder.
        container: PathBuf,
        /// How many classes were found.
        count: usize,
        /// The most supported.
        max: usize,
    },

    /// An archive could not be read (truncated or corrupt gzip or tar).
    #[error("{path}: corrupt or truncated archive{member_note}: {message}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// " at member X" when the failing member is known, else empty.
        member_note: String,
        /// The underlying message.
        message: String,
    },

    /// No data was found where the loader looked.
    #[error("{}", no_data_help(searched))]
    NoData {
        /// Every location that was searched, in order.
        searched: Vec<PathBuf>,
    },

    /// A download failed (connection, HTTP status, or short body).
    #[error("downloading {url}: {message}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },

    /// A downloaded file has the wrong size or checksum.
    #[error(
        "downloaded {url}: {what} is {found}, expected {expected}; the partial file was removed"
    )]
    Verify {
        /// The URL.
        url: String,
        /// "size" or "md5".
        what: &'static str,
        /// What was found.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// A path is a FIFO, socket or device: refused before opening (opening a FIFO blocks).
    #[error("{path} is {kind}; expected {expected}")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
        /// What the reader takes ("a regular file", "a regular file or a directory").
        expected: &'static str,
    },

    /// A file is longer than a reader accepts.
    #[error("{path}: {size} bytes; files larger than {limit} bytes are refused here")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or the bytes read before giving up).
        size: u64,
        /// The largest size accepted.
        limit: u64,
    },

    /// A directory holds several archives and nothing else that is data: which one is meant?
    #[error(
        "{path} holds {} archives ({}); name one of them with --data",
        archives.len(),
        archives.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    SeveralArchives {
        /// The directory.
        path: PathBuf,
        /// The archives found in it.
        archives: Vec<PathBuf>,
    },

    /// A file of a fixed binary format (CIFAR-100 batch, IDX, the data cache) is malformed.
    #[error("{path}: {problem}; expected {expected}")]
    BadFormat {
        /// The file (or `archive!member`).
        path: PathBuf,
        /// What is wrong, with the record or offset when known.
        problem: String,
        /// What is valid.
        expected: String,
    },

    /// An image's channel count differs from the one its split must share.
    #[error(
        "{container}: image {member} has {found} channel(s), expected {expected} (all images must \
         share the channel count of the first one, {first}; 1 = grayscale, 3 = RGB, alpha is \
         dropped)"
    )]
    WrongChannels {
        /// The archive or folder holding the image.
        container: PathBuf,
        /// The image's path inside the container.
        member: String,
        /// Channels found.
        found: usize,
        /// Channels expected.
        expected: usize,
        /// The member that set the expected count.
        first: String,
    },

    /// A class name that cannot be represented faithfully (not UTF-8, or with a line break).
    #[error("{container}: class {name} {problem}")]
    BadClassName {
        /// The folder, archive or file naming the class.
        container: PathBuf,
        /// The name, escaped for display.
        name: String,
        /// Why it is refused and what is valid.
        problem: String,
    },

    /// An archive holds the same image path twice (or a link it cannot resolve).
    #[error("{container}: member {member} {problem}")]
    BadMember {
        /// The archive.
        container: PathBuf,
        /// The member's path.
        member: String,
        /// What is wrong and what is valid.
        problem: String,
    },
}

/// The message shown when no data is found: where the search looked, and the three ways to
/// provide data (`--data PATH` or `$LAMB_DATA`, `lamb data download`, `lamb data import`).
pub fn no_data_help(searched: &[PathBuf]) -> String {
    let mut s = String::from(
        "no CIFAR-10 data found: neither --data PATH nor $LAMB_DATA was given, and none of these \
         exists:\n",
    );
    for p in searched {
        s.push_str(&format!("  - {}\n", p.display()));
    }
    s.push_str(
        "To fix this, do one of:\n\
         \x20 - pass --data PATH (or set LAMB_DATA=PATH) naming a cifar-10-batches-bin directory, \
         a folder with train/<class>/*.jpg|png and test/<class>/..., or a .tar.gz/.tar/.zip \
         archive of either;\n\
         \x20 - with internet access, run `lamb data download` to fetch the official binary \
         release (170 MB) into ./data/cifar-10-batches-bin;\n\
         \x20 - run `lamb data import ARCHIVE` to convert an image archive you already have into \
         the binary layout for fast loading.",
    );
    s
}

impl DataError {
    /// An [`DataError::Io`] for `path` while doing `action`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            cause: source,
        }
    }
}
