//! Downloading the official CIFAR-10 binary release, with size and md5 verification.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use crate::error::DataError;
use crate::images::scan_archive;
use crate::fsutil::{hex, sync_dir, write_synced};
use crate::official::{self, META_FILE, OFFICIAL_SUBDIR, TEST_FILE, TRAIN_FILES};

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
    fs::create_dir_all(dest_dir).map_err(|e| DataError::io("creating directory", dest_dir, e))?;
    let archive = dest_dir.join(&spec.file_name);
    if !already_verified(&archive, spec)? {
        let part = dest_dir.join(format!("{}.part", spec.file_name));
        let result = fetch(spec, &part, progress);
        if let Err(e) = result {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        fs::rename(&part, &archive)
            .map_err(|e| DataError::io("renaming into place", &archive, e))?;
        sync_dir(dest_dir);
    }
    extract_official(&archive, dest_dir)
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
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .try_proxy_from_env(!is_loopback(&spec.url))
        .build();
    let response = match agent
        .get(&spec.url)
        .set("Accept-Encoding", "identity")
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            return Err(dl_err(format!("HTTP status {code} {}", r.status_text())))
        }
        Err(e) => return Err(dl_err(e.to_string())),
    };
    if let Some(len) = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len != spec.size {
            return Err(DataError::Verify {
                url: spec.url.clone(),
                what: "announced size (Content-Length)",
                found: len.to_string(),
                expected: spec.size.to_string(),
            });
        }
    }
    let bar = if progress {
        let bar = ProgressBar::new(spec.size);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("downloading {}", spec.file_name));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut reader = response.into_reader().take(spec.size + 1);
    let mut file = fs::File::create(part).map_err(|e| DataError::io("creating", part, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total: u64 = 0;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| dl_err(format!("after {total} bytes: {e}")))?;
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
