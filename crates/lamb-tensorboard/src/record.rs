//! TFRecord framing of an event file: each record is its length (u64, little-endian), the
//! masked CRC32C of those 8 bytes, the data, and the masked CRC32C of the data.

use std::path::Path;

use crate::proto::{decode_event, Event};
use crate::TbError;

/// Bytes a record adds around its data.
pub const FRAMING: usize = 8 + 4 + 4;

/// CRC32C of `data`, masked as TFRecord does (rotated right by 15 bits, plus a constant).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Appends a record whose data `encode` appends to `buf` (returning nothing); no allocation
/// once `buf` has room.
pub(crate) fn append_record(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    let head = buf.len();
    buf.extend_from_slice(&[0; 12]);
    encode(buf);
    let len = (buf.len() - head - 12) as u64;
    buf[head..head + 8].copy_from_slice(&len.to_le_bytes());
    let hcrc = masked_crc32c(&buf[head..head + 8]);
    buf[head + 8..head + 12].copy_from_slice(&hcrc.to_le_bytes());
    let dcrc = masked_crc32c(&buf[head + 12..]);
    buf.extend_from_slice(&dcrc.to_le_bytes());
}

/// The events of a file, and how much of it was whole.
#[derive(Clone, Debug, PartialEq)]
pub struct EventFile {
    /// Every whole record's event, in file order.
    pub events: Vec<Event>,
    /// Bytes taken by the whole records (the file's length unless its last record is torn).
    pub whole_len: u64,
    /// Whether the file ends in an incomplete record (a write cut short), which readers skip.
    pub torn_tail: bool,
}

/// Reads every record of `bytes` (`path` names it in errors). An incomplete last record is a
/// torn tail, not an error; a record whose checksum or message is wrong is an error naming its
/// offset.
pub fn parse_events(bytes: &[u8], path: &Path) -> Result<EventFile, TbError> {
    let corrupt = |offset: usize, what: String| TbError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    let mut events = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 12 {
            break;
        }
        let len_bytes = &rest[..8];
        let hcrc = u32::from_le_bytes(rest[8..12].try_into().unwrap());
        if masked_crc32c(len_bytes) != hcrc {
            return Err(corrupt(at, "record length checksum mismatch".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap());
        let Some(total) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(FRAMING))
        else {
            return Err(corrupt(at, format!("record length {len} is too large")));
        };
        if rest.len() < total {
            break;
        }
        let data = &rest[12..total - 4];
        let dcrc = u32::from_le_bytes(rest[total - 4..total].try_into().unwrap());
        if masked_crc32c(data) != dcrc {
            return Err(corrupt(at, "record data checksum mismatch".into()));
        }
        events.push(decode_event(data).map_err(|e| corrupt(at, format!("bad Event: {e}")))?);
        at += total;
    }
    Ok(EventFile {
        events,
        whole_len: at as u64,
        torn_tail: at < bytes.len(),
    })
}

/// Reads the event file at `path` (see [`parse_events`]).
pub fn read_events(path: &Path) -> Result<EventFile, TbError> {
    let bytes = std::fs::read(path).map_err(|source| TbError::Io {
        path: path.to_path_buf(),
        action: "reading",
        source,
    })?;
    parse_events(&bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{encode_summary_event, Payload, ValueData};

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("123456789") = 0xe3069283 (the standard check value); its mask as TensorBoard's
        // own `pywrap_tensorflow.masked_crc32c(b"123456789")` gives it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    fn two_records() -> Vec<u8> {
        let mut b = Vec::new();
        for step in [1, 2] {
            append_record(&mut b, |b| {
                encode_summary_event(b, 0.0, step, "x", Payload::Scalar(step as f32));
            });
        }
        b
    }

    #[test]
    fn every_cut_is_a_torn_tail_of_whole_records() {
        let b = two_records();
        let first = b.len() / 2;
        let p = Path::new("t");
        for cut in 0..=b.len() {
            let f = parse_events(&b[..cut], p).unwrap();
            let whole = [0, first, b.len()].iter().filter(|&&w| w <= cut).count() - 1;
            assert_eq!(f.events.len(), whole, "cut {cut}");
            assert_eq!(f.torn_tail, cut != 0 && cut != first && cut != b.len());
        }
        let f = parse_events(&b, p).unwrap();
        assert_eq!(f.events[1].values[0].data, ValueData::Scalar(2.0));
    }

    #[test]
    fn flipped_bits_are_errors_naming_the_offset() {
        let b = two_records();
        let first = b.len() / 2;
        let mut bad = b.clone();
        bad[first + 20] ^= 1;
        let e = parse_events(&bad, Path::new("f")).unwrap_err().to_string();
        assert!(e.contains(&format!("offset {first}")), "{e}");
        assert!(e.contains("data checksum"), "{e}");
        let mut bad = b;
        bad[3] ^= 1;
        let e = parse_events(&bad, Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("length checksum"), "{e}");
    }
}
