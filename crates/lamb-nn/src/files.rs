//! Bounded reading of safetensors files: only a regular file is opened (lamb-data's
//! [`lamb_data::open_regular`]: a FIFO, a device or a socket would block or never end), and its
//! header is checked against the file's length before its body is read. Other untrusted files
//! are read with [`lamb_data::read_capped`].

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::NnError;

/// The largest safetensors header accepted (the `safetensors` crate's own limit).
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Reads a safetensors file after checking its framing: a regular file, an 8-byte header
/// length of at most [`MAX_SAFETENSORS_HEADER`], and a header whose tensors end exactly at the
/// end of the file. A file whose header is wrong is refused after reading at most its header.
pub fn read_safetensors(path: &Path) -> Result<Vec<u8>, NnError> {
    let io_err = |cause| NnError::Io {
        action: "reading",
        path: path.to_path_buf(),
        cause,
    };
    let bad = |message: String| NnError::Weights {
        path: PathBuf::from(path),
        message,
    };
    let (mut file, len) = lamb_data::open_regular(path).map_err(|e| match e {
        lamb_data::DataError::Io { cause, .. } => io_err(cause),
        other => io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            other.to_string(),
        )),
    })?;
    if len < 8 {
        return Err(bad(format!(
            "{len} bytes: too short for a safetensors file (8-byte header length, JSON header, data)"
        )));
    }
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(io_err)?;
    let header_len = u64::from_le_bytes(n);
    if header_len == 0 || header_len > MAX_SAFETENSORS_HEADER || header_len > len - 8 {
        return Err(bad(format!(
            "its first 8 bytes give a header of {header_len} bytes, but a safetensors header is \
             1 to {MAX_SAFETENSORS_HEADER} bytes and the file has {} bytes after the length: \
             not a safetensors file, or truncated",
            len - 8
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io_err)?;
    let data_len = len - 8 - header_len;
    let end = header_data_end(&header).map_err(|m| bad(format!("header: {m}")))?;
    if end != data_len {
        return Err(bad(format!(
            "its header describes {end} bytes of tensor data but the file holds {data_len}: \
             truncated, or extended after it was written"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    bytes.extend_from_slice(&n);
    bytes.extend_from_slice(&header);
    (&mut file)
        .take(data_len)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 != len {
        return Err(bad(format!(
            "the file shrank while being read ({} of {len} bytes)",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The largest `data_offsets` end in a safetensors JSON header.
fn header_data_end(header: &[u8]) -> Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("not valid JSON ({e})"))?;
    let obj = v
        .as_object()
        .ok_or("not a JSON object of tensors".to_string())?;
    let mut end = 0u64;
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let offs = t
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| format!("tensor `{name}` has no valid `data_offsets` [start, end]"))?;
        end = end.max(offs.1);
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let e = read_safetensors(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let tmp = tempfile::tempdir().unwrap();
        let e = read_safetensors(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let fifo = tmp.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_safetensors(&fifo).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }

    #[test]
    fn a_sparse_file_with_a_bad_header_is_refused_before_its_body_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("w.safetensors");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(2 << 30).unwrap(); // 2 GiB of holes: header length 0
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("header of 0 bytes"), "{e}");
        // A plausible header length with a header describing less data than the file holds.
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 8]);
        std::fs::write(&p, &bytes).unwrap();
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(
            e.contains("describes 4 bytes") && e.contains("holds 8"),
            "{e}"
        );
        bytes.truncate(bytes.len() - 4);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_safetensors(&p).unwrap(), bytes);
    }
}
