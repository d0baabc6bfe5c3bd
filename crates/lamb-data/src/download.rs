//! Downloading the official releases of CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST, with size
//! and md5 verification and resumption of an interrupted download.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use crate::cifar100::{read_cifar100, CIFAR100_SUBDIR, CIFAR100_TEST, CIFAR100_TRAIN};
use crate::error::DataError;
use crate::fsutil::{hex, sync_dir, write_synced};
use crate::idx::read_idx;
use crate::images::scan_archive;
use crate::official::{self, META_FILE, OFFICIAL_SUBDIR, TEST_FILE, TRAIN_FILES};
use crate::options::Cifar100Labels;

/// The official datasets [`download_dataset`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfficialData {
    /// CIFAR-10 binary release (170 MB).
    Cifar10,
    /// CIFAR-100 binary release (169 MB).
    Cifar100,
    /// MNIST IDX files (11 MB, torchvision's mirror).
    Mnist,
    /// Fashion-MNIST IDX files (30 MB, Keras's mirror).
    FashionMnist,
}

impl OfficialData {
    /// Every dataset, in the order `lamb data download` lists them.
    pub const ALL: [OfficialData; 4] = [
        OfficialData::Cifar10,
        OfficialData::Cifar100,
        OfficialData::Mnist,
        OfficialData::FashionMnist,
    ];

    /// The name on the command line: `cifar10`, `cifar100`, `mnist`, `fashion-mnist`.
    pub fn name(self) -> &'static str {
        match self {
            OfficialData::Cifar10 => "cifar10",
            OfficialData::Cifar100 => "cifar100",
            OfficialData::Mnist => "mnist",
            OfficialData::FashionMnist => "fashion-mnist",
        }
    }

    /// The directory (under the download directory) the data lands in.
    pub fn dir_name(self) -> &'static str {
        match self {
            OfficialData::Cifar10 => OFFICIAL_SUBDIR,
            OfficialData::Cifar100 => CIFAR100_SUBDIR,
            OfficialData::Mnist => "mnist",
            OfficialData::FashionMnist => "fashion-mnist",
        }
    }

    /// The files to fetch, with their published sizes and md5 digests.
    pub fn files(self) -> Vec<DownloadSpec> {
        let idx = |base: &str, files: [(&str, u64, &str); 4]| {
            files
                .iter()
                .map(|&(name, size, md5)| DownloadSpec {
                    url: format!("{base}{name}"),
                    size,
                    md5: md5.into(),
                    file_name: name.into(),
                })
                .collect()
        };
        match self {
            OfficialData::Cifar10 => vec![DownloadSpec::official()],
            OfficialData::Cifar100 => vec![DownloadSpec {
                url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz".into(),
                size: 168_513_733,
                md5: "03b5dce01913d631647c71ecec9e9cb8".into(),
                file_name: "cifar-100-binary.tar.gz".into(),
            }],
            OfficialData::Mnist => idx(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                [
                    (
                        "train-images-idx3-ubyte.gz",
                        9_912_422,
                        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    ),
                    (
                        "train-labels-idx1-ubyte.gz",
                        28_881,
                        "d53e105ee54ea40749a09fcbcd1e9432",
                    ),
                    (
                        "t10k-images-idx3-ubyte.gz",
                        1_648_877,
                        "9fb629c4189551a2d022fa330f9573f3",
                    ),
                    (
                        "t10k-labels-idx1-ubyte.gz",
                        4_542,
                        "ec29112dd5afa0611ce80d1b7f02629c",
                    ),
                ],
            ),
            OfficialData::FashionMnist => idx(
                "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
                [
                    (
                        "train-images-idx3-ubyte.gz",
                        26_421_880,
                        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    ),
                    (
                        "train-labels-idx1-ubyte.gz",
                        29_515,
                        "25c81989df183df01b3e8a0aad5dffbe",
                    ),
                    (
                        "t10k-images-idx3-ubyte.gz",
                        4_422_102,
                        "bef4ecab320f06d8554ea6380940ec79",
                    ),
                    (
                        "t10k-labels-idx1-ubyte.gz",
                        5_148,
                        "bb300cfdad3c16e7a12a480ee83cd310",
                    ),
                ],
            ),
        }
    }
}

impl std::str::FromStr for OfficialData {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.to_ascii_lowercase().replace(['_', '-'], "");
        OfficialData::ALL
            .into_iter()
            .find(|d| d.name().replace('-', "") == norm)
            .ok_or_else(|| {
                format!(
                    "unknown dataset {s:?}; valid: {}",
                    OfficialData::ALL.map(|d| d.name()).join(", ")
                )
            })
    }
}

/// Downloads `which` into `dest_dir` and makes it loadable, returning the data directory
/// (`dest_dir/`[`OfficialData::dir_name`]). `base_url`, when given, replaces each file's URL up
/// to its last `/` (a mirror; the tests use a loopback server). Every file is fetched as
/// [`download_official`] does (size and md5 checked, resumed from a `.part` file after an
/// interruption, reused when already verified); the archives are then extracted, the IDX files
/// kept gzipped beside each other. The result is loaded once to check it before returning.
pub fn download_dataset(
    which: OfficialData,
    dest_dir: &Path,
    base_url: Option<&str>,
    progress: bool,
) -> Result<PathBuf, DataError> {
    let mut files = which.files();
    if let Some(base) = base_url {
        for f in &mut files {
            f.url = format!("{}/{}", base.trim_end_matches('/'), f.file_name);
        }
    }
    match which {
        OfficialData::Cifar10 => download_official(dest_dir, &files[0], progress),
        OfficialData::Cifar100 => {
            let archive = fetch_verified(dest_dir, &files[0], progress)?;
            extract_cifar100(&archive, dest_dir)
        }
        OfficialData::Mnist | OfficialData::FashionMnist => {
            let dir = dest_dir.join(which.dir_name());
            for f in &files {
                fetch_verified(&dir, f, progress)?;
            }
            read_idx(&dir)?;
            Ok(dir)
        }
    }
}

/// What to download and how to verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSpec {
    /// The URL of a `.tar.gz` holding `cifar-10-batches-bin/`.
    pub url: String,
    /// Its exact size in bytes.
    pub size: u64,
    /// Its md5 digest, lowercase hex.
    pub md5: String,
    /// The name to save it under in the destination directory.
    pub file_name: String,
}

impl DownloadSpec {
    /// The official CIFAR-10 binary release: 170,052,171 bytes, md5
    /// `c32a1d4ab5d03f1284b67883e8d87530`.
    pub fn official() -> Self {
        DownloadSpec {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz".into(),
            size: 170_052_171,
            md5: "c32a1d4ab5d03f1284b67883e8d87530".into(),
            file_name: "cifar-10-binary.tar.gz".into(),
        }
    }
}

/// Downloads `spec` into `dest_dir` and extracts it, returning `dest_dir/cifar-10-batches-bin`.
///
/// The body streams into `<file_name>.part` (with an indicatif progress bar when `progress`),
/// is checked for exact size and md5, then renamed to `<file_name>`; on any failure the
/// partial file is removed. An already present `<file_name>` with the right size and md5 is
/// reused without downloading. Extraction takes only the official member names
/// (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`, `batches.meta.txt`), checks
/// that they load, writes them into a temporary directory and renames it into place (replacing
/// an existing `cifar-10-batches-bin/`). Proxies from the environment (`HTTPS_PROXY`, ...)
/// are used except for loopback hosts.
pub fn download_official(
    dest_dir: &Path,
    spec: &DownloadSpec,
    progress: bool,
) -> Result<PathBuf, DataError> {
    let archive = fetch_verified(dest_dir, spec, progress)?;
    extract_official(&archive, dest_dir)
}

/// Makes `dest_dir/<file_name>` a verified copy of `spec` and returns its path: reused when it
/// already has the right size and md5; else fetched into `<file_name>.part`, resuming after
/// the bytes already there (an HTTP range request; a server that ignores it sends the whole
/// file again), verified, and renamed into place. A body of the wrong size or md5 removes the
/// partial file; a connection lost midway keeps it for the next attempt.
pub fn fetch_verified(
    dest_dir: &Path,
    spec: &DownloadSpec,
    progress: bool,
) -> Result<PathBuf, DataError> {
    fs::create_dir_all(dest_dir).map_err(|e| DataError::io("creating directory", dest_dir, e))?;
    let file = dest_dir.join(&spec.file_name);
    if !already_verified(&file, spec)? {
        let part = dest_dir.join(format!("{}.part", spec.file_name));
        if let Err(e) = fetch(spec, &part, progress) {
            if matches!(e, DataError::Verify { .. }) {
                let _ = fs::remove_file(&part);
            }
            return Err(e);
        }
        fs::rename(&part, &file).map_err(|e| DataError::io("renaming into place", &file, e))?;
        sync_dir(dest_dir);
    }
    Ok(file)
}

fn already_verified(archive: &Path, spec: &DownloadSpec) -> Result<bool, DataError> {
    match fs::metadata(archive) {
        Ok(m) if m.is_file() && m.len() == spec.size => {}
        _ => return Ok(false),
    }
    let mut f = fs::File::open(archive).map_err(|e| DataError::io("opening", archive, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| DataError::io("reading", archive, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()) == spec.md5.to_ascii_lowercase())
}

/// Whether `url`'s host is a loopback address or `localhost`.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn fetch(spec: &DownloadSpec, part: &Path, progress: bool) -> Result<(), DataError> {
    let dl_err = |message: String| DataError::Download {
        url: spec.url.clone(),
        message,
    };
    // Bytes already fetched by an interrupted attempt (a longer file is not ours: start over).
    let have = match fs::metadata(part) {
        Ok(m) if m.is_file() && m.len() < spec.size => m.len(),
        Ok(_) => {
            let _ = fs::remove_file(part);
            0
        }
        Err(_) => 0,
    };
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .try_proxy_from_env(!is_loopback(&spec.url))
        .build();
    let mut request = agent.get(&spec.url).set("Accept-Encoding", "identity");
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            return Err(dl_err(format!("HTTP status {code} {}", r.status_text())))
        }
        Err(e) => return Err(dl_err(e.to_string())),
    };
    // 206: the server continues after `have`; anything else sends the whole file.
    let start = if response.status() == 206 { have } else { 0 };
    if let Some(len) = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if start + len != spec.size {
            return Err(DataError::Verify {
                url: spec.url.clone(),
                what: "announced size (Content-Length)",
                found: (start + len).to_string(),
                expected: spec.size.to_string(),
            });
        }
    }
    let mut hasher = Md5::new();
    let mut file = if start > 0 {
        // Hash what is already there, then append.
        let mut f = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(part)
            .map_err(|e| DataError::io("opening", part, e))?;
        let copied = std::io::copy(&mut (&mut f).take(start), &mut HashWriter(&mut hasher))
            .map_err(|e| DataError::io("reading", part, e))?;
        if copied != start {
            return Err(dl_err(format!("{} shrank while resuming", part.display())));
        }
        f
    } else {
        fs::File::create(part).map_err(|e| DataError::io("creating", part, e))?
    };
    let bar = if progress {
        let bar = ProgressBar::new(spec.size);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let resumed = if start > 0 { " (resumed)" } else { "" };
        bar.set_message(format!("downloading {}{resumed}", spec.file_name));
        bar.set_position(start);
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut reader = response.into_reader().take(spec.size - start + 1);
    let mut buf = vec![0u8; 1 << 16];
    let mut total: u64 = start;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| dl_err(format!("after {total} bytes (kept for resuming): {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| DataError::io("writing", part, e))?;
        total += n as u64;
        bar.set_position(total);
    }
    bar.finish_and_clear();
    if total != spec.size {
        return Err(DataError::Verify {
            url: spec.url.clone(),
            what: "size",
            found: if total > spec.size {
                format!("more than {} bytes", spec.size)
            } else {
                format!("{total} bytes")
            },
            expected: format!("{} bytes", spec.size),
        });
    }
    let md5 = hex(&hasher.finalize());
    if md5 != spec.md5.to_ascii_lowercase() {
        return Err(DataError::Verify {
            url: spec.url.clone(),
            what: "md5",
            found: md5,
            expected: spec.md5.to_ascii_lowercase(),
        });
    }
    file.sync_all()
        .map_err(|e| DataError::io("syncing", part, e))?;
    Ok(())
}

/// Feeds written bytes to an md5 hasher.
struct HashWriter<'a>(&'a mut Md5);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Extracts `train.bin`, `test.bin` and the two names files of the CIFAR-100 binary archive
/// into `dest_dir/cifar-100-binary` (via a temporary directory renamed into place) after
/// checking that they load; returns that directory.
pub fn extract_cifar100(archive: &Path, dest_dir: &Path) -> Result<PathBuf, DataError> {
    let members = scan_archive_members(
        archive,
        &[
            CIFAR100_TRAIN,
            CIFAR100_TEST,
            "fine_label_names.txt",
            "coarse_label_names.txt",
        ],
    )?;
    let final_dir = dest_dir.join(CIFAR100_SUBDIR);
    let tmp = dest_dir.join(format!(".{CIFAR100_SUBDIR}.tmp-{}", std::process::id()));
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let result = (|| {
        fs::create_dir_all(&tmp).map_err(|e| DataError::io("creating directory", &tmp, e))?;
        for (name, bytes) in &members {
            write_synced(&tmp.join(name), bytes)?;
        }
        read_cifar100(&tmp, Cifar100Labels::Fine)?;
        read_cifar100(&tmp, Cifar100Labels::Coarse)?;
        sync_dir(&tmp);
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)
                .map_err(|e| DataError::io("replacing", &final_dir, e))?;
        }
        fs::rename(&tmp, &final_dir)
            .map_err(|e| DataError::io("renaming into place", &final_dir, e))?;
        sync_dir(dest_dir);
        Ok(())
    })();
    if result.is_err() && tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|_| final_dir)
}

/// The members of a `.tar.gz` whose file names are in `wanted` (each at most once; a missing
/// `train.bin` or `test.bin` is an error).
fn scan_archive_members(
    archive: &Path,
    wanted: &[&str],
) -> Result<Vec<(String, Vec<u8>)>, DataError> {
    let f = fs::File::open(archive).map_err(|e| DataError::io("opening", archive, e))?;
    let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 16, f));
    let mut tar = tar::Archive::new(gz);
    let err = |e: std::io::Error| DataError::Archive {
        path: archive.to_path_buf(),
        member_note: String::new(),
        message: e.to_string(),
    };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in tar.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = path.rsplit('/').next().unwrap_or("").to_string();
        if !wanted.contains(&name.as_str()) {
            continue;
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(DataError::BadMember {
                container: archive.to_path_buf(),
                member: path,
                problem: format!("is a second {name}; the archive must hold one"),
            });
        }
        if entry.size() > 1 << 30 {
            return Err(DataError::MemberTooLarge {
                container: archive.to_path_buf(),
                member: path,
                size: entry.size(),
                limit: 1 << 30,
            });
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(err)?;
        out.push((name, bytes));
    }
    for need in [CIFAR100_TRAIN, CIFAR100_TEST] {
        if !out.iter().any(|(n, _)| n == need) {
            return Err(DataError::NotFound {
                path: archive.join(need),
                what: "the CIFAR-100 binary archive holds cifar-100-binary/train.bin and test.bin"
                    .into(),
            });
        }
    }
    Ok(out)
}

/// Extracts the official members of `archive` into `dest_dir/cifar-10-batches-bin` (see
/// [`download_official`]) after checking that they load; returns that directory.
pub fn extract_official(archive: &Path, dest_dir: &Path) -> Result<PathBuf, DataError> {
    let contents = scan_archive(archive)?;
    let mut files = Vec::new();
    for name in TRAIN_FILES.iter().copied().chain([TEST_FILE]) {
        let (member, bytes) = contents
            .batches
            .get(name)
            .ok_or_else(|| DataError::MissingFile {
                dir: archive.to_path_buf(),
                name: name.to_string(),
            })?;
        files.push((
            PathBuf::from(format!("{}!{member}", archive.display())),
            bytes.clone(),
        ));
    }
    let meta = contents.batches.get(META_FILE).map(|(m, b)| {
        (
            PathBuf::from(format!("{}!{m}", archive.display())),
            b.clone(),
        )
    });
    official::assemble(&files, meta, archive)?;

    let final_dir = dest_dir.join(OFFICIAL_SUBDIR);
    let tmp = dest_dir.join(format!(".{OFFICIAL_SUBDIR}.tmp-{}", std::process::id()));
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let result = (|| {
        fs::create_dir_all(&tmp).map_err(|e| DataError::io("creating directory", &tmp, e))?;
        for name in TRAIN_FILES.iter().copied().chain([TEST_FILE, META_FILE]) {
            if let Some((_, bytes)) = contents.batches.get(name) {
                write_synced(&tmp.join(name), bytes)?;
            }
        }
        sync_dir(&tmp);
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)
                .map_err(|e| DataError::io("replacing", &final_dir, e))?;
        }
        fs::rename(&tmp, &final_dir)
            .map_err(|e| DataError::io("renaming into place", &final_dir, e))?;
        sync_dir(dest_dir);
        Ok(())
    })();
    if result.is_err() && tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|_| final_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_bypass_proxies() {
        assert!(is_loopback("http://127.0.0.1:8080/x.tar.gz"));
        assert!(is_loopback("http://localhost/x"));
        assert!(is_loopback("http://user@[::1]:80/x"));
        assert!(!is_loopback(&DownloadSpec::official().url));
        assert!(!is_loopback("http://127.example.com/x"));
        assert!(!is_loopback("http://localhost.example.com/x"));
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab]), "000fab");
    }
}
