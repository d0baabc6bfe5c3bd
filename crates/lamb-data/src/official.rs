//! The official CIFAR-10 binary layout: `data_batch_1.bin` .. `data_batch_5.bin`,
//! `test_batch.bin` and optionally `batches.meta.txt`. Each record is 1 label byte followed by
//! 3,072 pixel bytes: the R, G and B planes, each 32x32 row-major. Records are converted to NHWC.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::dataset::{Dataset, Splits, CIFAR10_CLASSES};
use crate::error::{DataError, RECORD_LEN};
use crate::fsutil::{read_capped, sync_dir, write_synced};

/// Training batch file names, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// Test batch file name.
pub const TEST_FILE: &str = "test_batch.bin";
/// Optional class-name file: one name per line, in label order.
pub const META_FILE: &str = "batches.meta.txt";
/// The subdirectory the official archive extracts to.
pub const OFFICIAL_SUBDIR: &str = "cifar-10-batches-bin";

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;

/// The directory holding the official files, if `path` is one (it holds `data_batch_1.bin` or
/// `test_batch.bin`) or holds a `cifar-10-batches-bin/` subdirectory that is one.
pub fn official_dir(path: &Path) -> Option<PathBuf> {
    let is_official = |d: &Path| d.join(TRAIN_FILES[0]).is_file() || d.join(TEST_FILE).is_file();
    if is_official(path) {
        return Some(path.to_path_buf());
    }
    let sub = path.join(OFFICIAL_SUBDIR);
    if is_official(&sub) {
        return Some(sub);
    }
    None
}

/// Parses the text of `batches.meta.txt`: one class name per line, blank lines ignored.
/// `origin` names the file in errors.
pub fn parse_meta(bytes: &[u8], origin: &Path) -> Result<Vec<String>, DataError> {
    let text = String::from_utf8_lossy(bytes);
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() || names.len() > 256 {
        return Err(DataError::BadMeta {
            path: origin.to_path_buf(),
            found: names.len(),
        });
    }
    Ok(names)
}

/// Decodes one batch file's bytes, appending NHWC pixels to `images` and labels to `labels`.
/// Labels must be `< num_classes`. `origin` names the file in errors.
pub fn parse_batch(
    bytes: &[u8],
    num_classes: usize,
    origin: &Path,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<(), DataError> {
    if !bytes.chunks_exact(RECORD_LEN).remainder().is_empty() {
        return Err(DataError::BadLength {
            path: origin.to_path_buf(),
            len: bytes.len() as u64,
        });
    }
    let n = bytes.len() / RECORD_LEN;
    let max = num_classes.clamp(1, 256) - 1;
    for (record, rec) in bytes.chunks_exact(RECORD_LEN).enumerate() {
        if rec[0] as usize > max {
            return Err(DataError::LabelOutOfRange {
                path: origin.to_path_buf(),
                record,
                offset: (record * RECORD_LEN) as u64,
                label: rec[0],
                max: max as u8,
            });
        }
    }
    let start = images.len();
    images.resize(start + n * 3 * PLANE, 0);
    labels.reserve(n);
    for (rec, out) in bytes
        .chunks_exact(RECORD_LEN)
        .zip(images[start..].chunks_exact_mut(3 * PLANE))
    {
        labels.push(rec[0]);
        let (r, rest) = rec[1..].split_at(PLANE);
        let (g, b) = rest.split_at(PLANE);
        for (p, px) in out.chunks_exact_mut(3).enumerate() {
            px[0] = r[p];
            px[1] = g[p];
            px[2] = b[p];
        }
    }
    Ok(())
}

/// Encodes images `range` of `ds` (32x32 RGB, NHWC) as official records (label, R, G, B planes).
pub fn encode_batch(ds: &Dataset, range: std::ops::Range<usize>) -> Vec<u8> {
    let mut out = vec![0u8; range.len() * RECORD_LEN];
    for (i, rec) in range.zip(out.chunks_exact_mut(RECORD_LEN)) {
        rec[0] = ds.labels[i];
        let (r, rest) = rec[1..].split_at_mut(PLANE);
        let (g, b) = rest.split_at_mut(PLANE);
        for (p, px) in ds.image(i).chunks_exact(3).enumerate() {
            r[p] = px[0];
            g[p] = px[1];
            b[p] = px[2];
        }
    }
    out
}

/// Batch files longer than this are refused (an official one is 30,730,000 bytes).
const MAX_BATCH_FILE: u64 = 1 << 30;

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    read_capped(path, MAX_BATCH_FILE)
}

/// One batch file parsed: NHWC pixels and labels.
type Parsed = Result<(Vec<u8>, Vec<u8>), DataError>;

/// Builds train and test datasets from the official files' bytes. `files` holds, in order,
/// the five training batches then the test batch, each with the path naming it in errors;
/// `meta` the optional `batches.meta.txt`. `origin` names the whole dataset.
pub(crate) fn assemble(
    files: &[(PathBuf, Vec<u8>)],
    meta: Option<(PathBuf, Vec<u8>)>,
    origin: &Path,
) -> Result<Splits, DataError> {
    let class_names = match meta {
        Some((p, bytes)) => parse_meta(&bytes, &p)?,
        None => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    let parsed: Vec<Parsed> = files
        .par_iter()
        .map(|(path, bytes)| {
            let mut images = Vec::new();
            let mut labels = Vec::new();
            parse_batch(bytes, class_names.len(), path, &mut images, &mut labels)?;
            Ok((images, labels))
        })
        .collect();
    let last = parsed.len().saturating_sub(1);
    check_even_shares(files, &parsed[..last])?;
    let mut train = empty_dataset(&class_names);
    let mut test = empty_dataset(&class_names);
    for (k, part) in parsed.into_iter().enumerate() {
        let (images, labels) = part?;
        let ds = if k == last { &mut test } else { &mut train };
        if ds.images.is_empty() {
            ds.images = images;
        } else {
            ds.images.extend_from_slice(&images);
        }
        ds.labels.extend_from_slice(&labels);
    }
    for (ds, split) in [(&train, "train"), (&test, "test")] {
        if ds.is_empty() {
            return Err(DataError::EmptySplit {
                path: origin.to_path_buf(),
                split: split.to_string(),
            });
        }
    }
    Ok(Splits { train, test })
}

/// Refuses an empty training batch beside one of 2 or more records: the writers share the
/// images over the files evenly (shares differ by at most one), so that file lost its content.
fn check_even_shares(files: &[(PathBuf, Vec<u8>)], train: &[Parsed]) -> Result<(), DataError> {
    let counts: Vec<Option<usize>> = train
        .iter()
        .map(|r| r.as_ref().ok().map(|(_, labels)| labels.len()))
        .collect();
    let fullest = counts
        .iter()
        .enumerate()
        .filter_map(|(k, c)| c.map(|c| (k, c)))
        .max_by_key(|&(_, c)| c);
    if let Some((full, records)) = fullest.filter(|&(_, c)| c >= 2) {
        if let Some(empty) = counts.iter().position(|c| *c == Some(0)) {
            return Err(DataError::EmptyBatch {
                path: files[empty].0.clone(),
                other: files[full].0.clone(),
                records,
            });
        }
    }
    Ok(())
}

fn empty_dataset(class_names: &[String]) -> Dataset {
    Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        height: SIDE,
        width: SIDE,
        channels: 3,
        class_names: class_names.to_vec(),
    }
}

/// Reads the official layout from `path` (the directory itself or its `cifar-10-batches-bin/`
/// subdirectory). Class names come from `batches.meta.txt` when present, else CIFAR-10's.
pub fn read_official(path: &Path) -> Result<Splits, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
            what: "expected a directory in the official CIFAR-10 binary layout".into(),
        });
    }
    let dir = official_dir(path).unwrap_or_else(|| path.to_path_buf());
    let names: Vec<&str> = TRAIN_FILES.iter().copied().chain([TEST_FILE]).collect();
    for name in &names {
        let p = dir.join(name);
        if p.exists() && !p.is_file() {
            return Err(DataError::io(
                "reading",
                p,
                std::io::Error::other("not a regular file (a directory?); expected a batch file"),
            ));
        }
        if !p.is_file() {
            return Err(DataError::MissingFile {
                dir: dir.clone(),
                name: name.to_string(),
            });
        }
    }
    let files: Vec<(PathBuf, Vec<u8>)> = names
        .par_iter()
        .map(|name| {
            let p = dir.join(name);
            read_file(&p).map(|b| (p, b))
        })
        .collect::<Result<_, _>>()?;
    let meta_path = dir.join(META_FILE);
    let meta = if meta_path.is_file() {
        Some((meta_path.clone(), read_file(&meta_path)?))
    } else {
        None
    };
    assemble(&files, meta, &dir)
}

/// Refuses a class name that `batches.meta.txt` (one trimmed name per line) cannot hold
/// faithfully: empty, with a line break or other control character, or with leading or
/// trailing white space.
fn check_meta_name(name: &str, out_dir: &Path) -> Result<(), DataError> {
    let problem = if name.trim().is_empty() {
        Some("is empty or only white space")
    } else if name.chars().any(char::is_control) {
        Some("holds a line break or another control character")
    } else if name.trim() != name {
        Some("starts or ends with white space")
    } else {
        None
    };
    match problem {
        Some(p) => Err(DataError::BadClassName {
            container: out_dir.join(META_FILE),
            name: format!("{name:?}"),
            problem: format!(
                "{p}; batches.meta.txt holds one trimmed name per line, so rename the class \
                 folder"
            ),
        }),
        None => Ok(()),
    }
}

/// What [`write_official`] and [`crate::import_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The directory written.
    pub out_dir: PathBuf,
    /// Training images written.
    pub train: usize,
    /// Test images written.
    pub test: usize,
    /// Class names in label order (also written to `batches.meta.txt`).
    pub class_names: Vec<String>,
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
}

/// Writes `splits` (32x32 RGB only) to `out_dir` in the official layout. The training images
/// are split in order over the five `data_batch_*.bin` files as evenly as possible (file `k`
/// gets images `k*n/5 .. (k+1)*n/5`; 50,000 gives 10,000 each, like the official release).
/// Each file is written under a temporary name, synced, and renamed into place only after all
/// were written, so no file ever looks complete while half-written.
pub fn write_official(splits: &Splits, out_dir: &Path) -> Result<ImportSummary, DataError> {
    for (ds, split) in [(&splits.train, "train"), (&splits.test, "test")] {
        if ds.channels != 3 {
            return Err(DataError::BadFormat {
                path: out_dir.to_path_buf(),
                problem: format!("the {split} split's images have {} channel(s)", ds.channels),
                expected: "RGB images (3 channels): the official binary layout stores 32x32 RGB \
                           only; load grayscale data directly instead of importing it"
                    .into(),
            });
        }
        if (ds.height, ds.width) != (SIDE, SIDE) {
            return Err(DataError::WrongImageSize {
                container: out_dir.to_path_buf(),
                member: format!("{split} split"),
                found_w: ds.width as u32,
                found_h: ds.height as u32,
                expected_w: SIDE as u32,
                expected_h: SIDE as u32,
                first: "the official binary layout stores 32x32 RGB images only".into(),
            });
        }
    }
    for name in &splits.train.class_names {
        check_meta_name(name, out_dir)?;
    }
    fs::create_dir_all(out_dir).map_err(|e| DataError::io("creating directory", out_dir, e))?;
    let n = splits.train.len();
    let mut contents: Vec<(&str, Vec<u8>)> = TRAIN_FILES
        .iter()
        .enumerate()
        .map(|(k, name)| {
            (
                *name,
                encode_batch(&splits.train, k * n / 5..(k + 1) * n / 5),
            )
        })
        .collect();
    contents.push((TEST_FILE, encode_batch(&splits.test, 0..splits.test.len())));
    let mut meta = splits.train.class_names.join("\n");
    meta.push('\n');
    contents.push((META_FILE, meta.into_bytes()));

    let pid = std::process::id();
    let mut temps: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        for (name, bytes) in &contents {
            let tmp = out_dir.join(format!(".{name}.tmp-{pid}"));
            temps.push((tmp.clone(), out_dir.join(name)));
            write_synced(&tmp, bytes)?;
        }
        for (tmp, dst) in &temps {
            fs::rename(tmp, dst).map_err(|e| DataError::io("renaming into place", dst, e))?;
        }
        sync_dir(out_dir);
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _) in &temps {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    Ok(ImportSummary {
        out_dir: out_dir.to_path_buf(),
        train: n,
        test: splits.test.len(),
        class_names: splits.train.class_names.clone(),
        files: temps.into_iter().map(|(_, d)| d).collect(),
    })
}
