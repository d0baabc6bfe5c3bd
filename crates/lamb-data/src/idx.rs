//! MNIST and Fashion-MNIST in the IDX format: `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each
//! optionally gzipped (`.gz`, recognised by content) and with `.` instead of the last `-` (as
//! some mirrors name them). An image file is the magic number 0x00000803, then the big-endian
//! u32 counts n, rows, cols, then n x rows x cols pixel bytes; a label file 0x00000801, n, then
//! n label bytes (0..=9).
//!
//! Class names: Fashion-MNIST's ten names when the directory's path names "fashion" (as
//! `lamb data download fashion-mnist` lays it out), else the digits "0".."9".

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Splits};
use crate::error::DataError;
use crate::fsutil::read_capped;

/// Fashion-MNIST class names in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The four IDX files' base names: (train images, train labels, test images, test labels).
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];
const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest (decompressed) IDX file accepted.
const MAX_IDX: u64 = 1 << 30;

/// The existing file for IDX base name `base` in `dir`: `base`, `base.gz`, or the same with
/// `.idx` for `-idx` (`train-images.idx3-ubyte`), in that order.
fn idx_file(dir: &Path, base: &str) -> Option<PathBuf> {
    let dotted = base.replacen("-idx", ".idx", 1);
    [
        base.to_string(),
        format!("{base}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ]
    .into_iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

/// Whether `dir` holds an IDX training-images or test-images file.
pub fn is_idx_dir(dir: &Path) -> bool {
    idx_file(dir, IDX_FILES[0]).is_some() || idx_file(dir, IDX_FILES[2]).is_some()
}

/// The file's bytes, gunzipped when they start with the gzip magic (capped at 1 GiB).
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_capped(path, MAX_IDX)?;
    if raw.len() < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&raw[..])
        .take(MAX_IDX + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::Archive {
            path: path.to_path_buf(),
            member_note: String::new(),
            message: format!("gzip: {e}"),
        })?;
    if out.len() as u64 > MAX_IDX {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            size: out.len() as u64,
            limit: MAX_IDX,
        });
    }
    Ok(out)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks the header of an IDX file: its magic and that the counts `dims` (read after the
/// magic) match the length. Returns the counts.
fn header(bytes: &[u8], magic: u32, ndims: usize, path: &Path) -> Result<Vec<usize>, DataError> {
    let what = if magic == IMAGES_MAGIC {
        "an IDX image file (magic 0x00000803: unsigned bytes, 3 dimensions)"
    } else {
        "an IDX label file (magic 0x00000801: unsigned bytes, 1 dimension)"
    };
    let head = 4 + 4 * ndims;
    if bytes.len() >= 4 && be32(bytes, 0) != magic {
        return Err(DataError::BadFormat {
            path: path.to_path_buf(),
            problem: format!("magic number 0x{:08x}", be32(bytes, 0)),
            expected: what.into(),
        });
    }
    if bytes.len() < head {
        return Err(DataError::BadFormat {
            path: path.to_path_buf(),
            problem: format!(
                "only {} bytes, shorter than the {head}-byte header",
                bytes.len()
            ),
            expected: what.into(),
        });
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|k| be32(bytes, 4 + 4 * k) as usize)
        .collect();
    let body: u128 = dims.iter().map(|&d| d as u128).product();
    if body != (bytes.len() - head) as u128 {
        return Err(DataError::BadFormat {
            path: path.to_path_buf(),
            problem: format!(
                "the header's counts {dims:?} need {body} data bytes but the file holds {}",
                bytes.len() - head
            ),
            expected: format!("{what} whose counts agree with its length"),
        });
    }
    Ok(dims)
}

/// Parses one split from the bytes of its image and label files (`paths` name them in errors).
pub fn parse_idx(
    images: &[u8],
    labels: &[u8],
    class_names: Vec<String>,
    paths: (&Path, &Path),
) -> Result<Dataset, DataError> {
    let d = header(images, IMAGES_MAGIC, 3, paths.0)?;
    let (n, rows, cols) = (d[0], d[1], d[2]);
    if rows == 0 || cols == 0 {
        return Err(DataError::BadFormat {
            path: paths.0.to_path_buf(),
            problem: format!("images of {rows}x{cols} pixels"),
            expected: "at least one row and one column".into(),
        });
    }
    let nl = header(labels, LABELS_MAGIC, 1, paths.1)?[0];
    if nl != n {
        return Err(DataError::BadFormat {
            path: paths.1.to_path_buf(),
            problem: format!("{nl} labels for the {n} images of {}", paths.0.display()),
            expected: "one label per image".into(),
        });
    }
    let labels = &labels[8..];
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= class_names.len())
    {
        return Err(DataError::LabelOutOfRange {
            path: paths.1.to_path_buf(),
            record: i,
            offset: 8 + i as u64,
            label: l,
            max: (class_names.len() - 1) as u8,
        });
    }
    Ok(Dataset {
        images: images[16..].to_vec(),
        labels: labels.to_vec(),
        height: rows,
        width: cols,
        channels: 1,
        class_names,
    })
}

/// The class names for IDX data at `dir`: Fashion-MNIST's when the path names "fashion".
pub fn idx_class_names(dir: &Path) -> Vec<String> {
    let fashion = dir.components().any(|c| {
        c.as_os_str()
            .to_string_lossy()
            .to_lowercase()
            .contains("fashion")
    });
    if fashion {
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        (0..10).map(|i| i.to_string()).collect()
    }
}

/// Reads MNIST-style IDX files from `dir` (see the module docs).
pub fn read_idx(dir: &Path) -> Result<Splits, DataError> {
    let names = idx_class_names(dir);
    let find = |base: &str| {
        idx_file(dir, base).ok_or_else(|| DataError::NotFound {
            path: dir.join(base),
            what: "MNIST-style data needs train-images-idx3-ubyte, train-labels-idx1-ubyte, \
                   t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may end in .gz)"
                .into(),
        })
    };
    let paths: Vec<PathBuf> = IDX_FILES
        .iter()
        .map(|b| find(b))
        .collect::<Result<_, _>>()?;
    let bytes: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| read_maybe_gz(p))
        .collect::<Result<_, _>>()?;
    let train = parse_idx(&bytes[0], &bytes[1], names.clone(), (&paths[0], &paths[1]))?;
    let test = parse_idx(&bytes[2], &bytes[3], names, (&paths[2], &paths[3]))?;
    for (ds, split, p) in [(&train, "train", &paths[0]), (&test, "test", &paths[2])] {
        if ds.is_empty() {
            return Err(DataError::EmptySplit {
                path: p.clone(),
                split: split.into(),
            });
        }
    }
    if (train.height, train.width) != (test.height, test.width) {
        return Err(DataError::BadFormat {
            path: paths[2].clone(),
            problem: format!("images of {}x{}", test.height, test.width),
            expected: format!(
                "the size of the training images, {}x{} ({})",
                train.height,
                train.width,
                paths[0].display()
            ),
        });
    }
    Ok(Splits { train, test })
}
