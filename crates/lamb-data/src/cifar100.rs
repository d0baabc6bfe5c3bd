//! The official CIFAR-100 binary layout (`cifar-100-binary/`): `train.bin` (50,000 records) and
//! `test.bin` (10,000), each record 1 coarse label byte, 1 fine label byte and 3,072 pixel bytes
//! (R, G, B planes, 32x32 row-major); class names in `fine_label_names.txt` and
//! `coarse_label_names.txt` (one per line; when missing, the names are the label numbers).

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Splits};
use crate::error::DataError;
use crate::fsutil::{check_openable, read_capped};
use crate::official::parse_meta;
use crate::options::Cifar100Labels;

/// Training file name.
pub const CIFAR100_TRAIN: &str = "train.bin";
/// Test file name.
pub const CIFAR100_TEST: &str = "test.bin";
/// The subdirectory the official archive extracts to.
pub const CIFAR100_SUBDIR: &str = "cifar-100-binary";
/// Bytes per record: coarse label, fine label, 3 x 32 x 32 pixels.
pub const CIFAR100_RECORD_LEN: usize = 2 + 3 * 32 * 32;
const MAX_FILE: u64 = 1 << 30;
const PLANE: usize = 32 * 32;

fn names_file(labels: Cifar100Labels) -> &'static str {
    match labels {
        Cifar100Labels::Fine => "fine_label_names.txt",
        Cifar100Labels::Coarse => "coarse_label_names.txt",
    }
}

/// The directory holding `train.bin` and `test.bin` if `path` is one or holds a
/// `cifar-100-binary/` subdirectory that is one.
pub fn cifar100_dir(path: &Path) -> Option<PathBuf> {
    let is = |d: &Path| d.join(CIFAR100_TRAIN).is_file() || d.join(CIFAR100_TEST).is_file();
    if is(path) {
        return Some(path.to_path_buf());
    }
    let sub = path.join(CIFAR100_SUBDIR);
    is(&sub).then_some(sub)
}

/// Decodes one CIFAR-100 file's bytes into a dataset with `labels`'s labels (NHWC pixels).
/// `origin` names the file in errors.
pub fn parse_cifar100(
    bytes: &[u8],
    labels: Cifar100Labels,
    class_names: Vec<String>,
    origin: &Path,
) -> Result<Dataset, DataError> {
    let rem = bytes.len() % CIFAR100_RECORD_LEN;
    if rem != 0 {
        return Err(DataError::BadFormat {
            path: origin.to_path_buf(),
            problem: format!(
                "length {} bytes holds {} whole records and {rem} bytes more",
                bytes.len(),
                bytes.len() / CIFAR100_RECORD_LEN
            ),
            expected: format!(
                "a multiple of the CIFAR-100 record length {CIFAR100_RECORD_LEN} (coarse label, \
                 fine label, 3072 pixel bytes)"
            ),
        });
    }
    let which = usize::from(labels == Cifar100Labels::Fine);
    let n = bytes.len() / CIFAR100_RECORD_LEN;
    let mut out_labels = Vec::with_capacity(n);
    let mut images = vec![0u8; n * 3 * PLANE];
    for (record, (rec, out)) in bytes
        .chunks_exact(CIFAR100_RECORD_LEN)
        .zip(images.chunks_exact_mut(3 * PLANE))
        .enumerate()
    {
        for (k, what) in [(0, "coarse"), (1, "fine")] {
            let limit = if k == 0 { 19 } else { 99 };
            if rec[k] as usize > limit {
                return Err(DataError::BadFormat {
                    path: origin.to_path_buf(),
                    problem: format!(
                        "record {record} (byte offset {}) has {what} label {}",
                        record * CIFAR100_RECORD_LEN + k,
                        rec[k]
                    ),
                    expected: format!("{what} labels 0..={limit}"),
                });
            }
        }
        out_labels.push(rec[which]);
        let (r, rest) = rec[2..].split_at(PLANE);
        let (g, b) = rest.split_at(PLANE);
        for (p, px) in out.chunks_exact_mut(3).enumerate() {
            px[0] = r[p];
            px[1] = g[p];
            px[2] = b[p];
        }
    }
    Ok(Dataset {
        images,
        labels: out_labels,
        height: 32,
        width: 32,
        channels: 3,
        class_names,
    })
}

/// Reads the CIFAR-100 binary layout at `path` (the directory or its `cifar-100-binary/`).
pub fn read_cifar100(path: &Path, labels: Cifar100Labels) -> Result<Splits, DataError> {
    let dir = cifar100_dir(path).unwrap_or_else(|| path.to_path_buf());
    let names_path = dir.join(names_file(labels));
    check_openable(&names_path)?;
    let class_names = if names_path.is_file() {
        let names = parse_meta(&read_capped(&names_path, 1 << 20)?, &names_path)?;
        if names.len() != labels.classes() {
            return Err(DataError::BadFormat {
                path: names_path,
                problem: format!("{} class names", names.len()),
                expected: format!("{} ({} labels)", labels.classes(), labels.as_str()),
            });
        }
        names
    } else {
        (0..labels.classes()).map(|i| i.to_string()).collect()
    };
    let split = |name: &str| -> Result<Dataset, DataError> {
        let p = dir.join(name);
        if !p.exists() {
            return Err(DataError::NotFound {
                path: p,
                what: "the CIFAR-100 binary layout needs train.bin and test.bin".into(),
            });
        }
        let bytes = read_capped(&p, MAX_FILE)?;
        let ds = parse_cifar100(&bytes, labels, class_names.clone(), &p)?;
        if ds.is_empty() {
            return Err(DataError::EmptySplit {
                path: p,
                split: name.trim_end_matches(".bin").to_string(),
            });
        }
        Ok(ds)
    };
    let train = split(CIFAR100_TRAIN)?;
    let test = split(CIFAR100_TEST)?;
    Ok(Splits { train, test })
}
