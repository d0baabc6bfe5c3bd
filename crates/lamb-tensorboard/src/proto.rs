//! The protobuf messages of an event file, encoded and decoded by hand: `Event` (wall_time 1,
//! step 2, file_version 3, summary 5), `Summary` (value 1), `Summary.Value` (tag 1,
//! simple_value 2, histo 5) and `HistogramProto` (min 1, max 2, num 3, sum 4, sum_squares 5,
//! bucket_limit 6, bucket 7), as TensorFlow's `event.proto` and `summary.proto` number them.
//! Encoding appends to a caller's buffer and allocates nothing once the buffer has room;
//! decoding skips fields it does not know.

use crate::histogram::Histogram;

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// Bytes of `v` as a base-128 varint.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(buf, (field << 3) | wire);
}

fn put_f64(buf: &mut Vec<u8>, field: u64, v: f64) {
    put_key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_len(buf: &mut Vec<u8>, field: u64, len: usize) {
    put_key(buf, field, LEN);
    put_varint(buf, len as u64);
}

/// Size of a length-delimited field (one-byte key) holding `len` bytes.
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// What a summary value holds, for encoding.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload<'a> {
    Scalar(f32),
    Histogram(&'a Histogram),
}

fn histogram_len(h: &Histogram) -> usize {
    let packed = |n: usize| if n == 0 { 0 } else { len_field(8 * n) };
    5 * 9 + packed(h.bucket_limit.len()) + packed(h.bucket.len())
}

fn value_len(tag: &str, p: Payload<'_>) -> usize {
    len_field(tag.len())
        + match p {
            Payload::Scalar(_) => 5,
            Payload::Histogram(h) => len_field(histogram_len(h)),
        }
}

fn summary_event_len(step: i64, tag: &str, p: Payload<'_>) -> usize {
    9 + 1 + varint_len(step as u64) + len_field(len_field(value_len(tag, p)))
}

/// Appends an `Event` holding one summary value, and returns its encoded length.
pub(crate) fn encode_summary_event(
    buf: &mut Vec<u8>,
    wall_time: f64,
    step: i64,
    tag: &str,
    p: Payload<'_>,
) -> usize {
    let start = buf.len();
    put_f64(buf, 1, wall_time);
    put_key(buf, 2, VARINT);
    put_varint(buf, step as u64);
    let vlen = value_len(tag, p);
    put_len(buf, 5, len_field(vlen));
    put_len(buf, 1, vlen);
    put_len(buf, 1, tag.len());
    buf.extend_from_slice(tag.as_bytes());
    match p {
        Payload::Scalar(v) => {
            put_key(buf, 2, FIXED32);
            buf.extend_from_slice(&v.to_le_bytes());
        }
        Payload::Histogram(h) => {
            put_len(buf, 5, histogram_len(h));
            for (f, v) in [
                (1, h.min),
                (2, h.max),
                (3, h.num),
                (4, h.sum),
                (5, h.sum_squares),
            ] {
                put_f64(buf, f, v);
            }
            for (f, xs) in [(6, &h.bucket_limit), (7, &h.bucket)] {
                if !xs.is_empty() {
                    put_len(buf, f, 8 * xs.len());
                    for x in xs.iter() {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
    }
    let n = buf.len() - start;
    debug_assert_eq!(n, summary_event_len(step, tag, p));
    n
}

/// Appends the `Event` that opens every event file (`file_version: "brain.Event:2"`).
pub(crate) fn encode_file_version_event(buf: &mut Vec<u8>, wall_time: f64) {
    const VERSION: &[u8] = b"brain.Event:2";
    put_f64(buf, 1, wall_time);
    put_len(buf, 3, VERSION.len());
    buf.extend_from_slice(VERSION);
}

/// A decoded `Event` (the fields this crate writes).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch when it was written.
    pub wall_time: f64,
    /// Global step (Keras: the epoch index for `epoch_*` tags, the batch count for `batch_*`).
    pub step: i64,
    /// `brain.Event:2` in a file's first event.
    pub file_version: Option<String>,
    /// Summary values.
    pub values: Vec<Value>,
}

/// A decoded `Summary.Value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Tag (`epoch_loss`, `conv2d/kernel/histogram`, ...).
    pub tag: String,
    /// What it holds.
    pub data: ValueData,
}

/// The content of a [`Value`].
#[derive(Clone, Debug, PartialEq)]
pub enum ValueData {
    /// `simple_value`.
    Scalar(f32),
    /// `histo`.
    Histogram(Histogram),
    /// A kind this crate does not decode (image, audio, tensor).
    Other,
}

/// Why a message could not be decoded.
pub(crate) type DecodeError = &'static str;

struct Fields<'a> {
    rest: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn get_varint(rest: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest.split_first().ok_or("truncated varint")?;
        *rest = tail;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes")
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if rest.len() < n {
        return Err("field runs past the end of its message");
    }
    let (a, b) = rest.split_at(n);
    *rest = b;
    Ok(a)
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Field<'a>), DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = (|| {
            let key = get_varint(&mut self.rest)?;
            let f = match key & 7 {
                VARINT => Field::Varint(get_varint(&mut self.rest)?),
                FIXED64 => Field::Fixed64(take(&mut self.rest, 8)?.try_into().unwrap()),
                FIXED32 => Field::Fixed32(take(&mut self.rest, 4)?.try_into().unwrap()),
                LEN => {
                    let n = get_varint(&mut self.rest)?;
                    let n = usize::try_from(n).map_err(|_| "length too large")?;
                    Field::Bytes(take(&mut self.rest, n)?)
                }
                _ => return Err("unsupported wire type (groups)"),
            };
            Ok((key >> 3, f))
        })();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }
}

fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { rest: bytes }
}

fn packed_f64(b: &[u8], out: &mut Vec<f64>) -> Result<(), DecodeError> {
    if !b.len().is_multiple_of(8) {
        return Err("packed doubles not a multiple of 8 bytes");
    }
    out.extend(
        b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap())),
    );
    Ok(())
}

fn decode_histogram(bytes: &[u8]) -> Result<Histogram, DecodeError> {
    let mut h = Histogram::default();
    for f in fields(bytes) {
        match f? {
            (n @ 1..=5, Field::Fixed64(b)) => {
                let v = f64::from_le_bytes(b);
                match n {
                    1 => h.min = v,
                    2 => h.max = v,
                    3 => h.num = v,
                    4 => h.sum = v,
                    _ => h.sum_squares = v,
                }
            }
            (6, Field::Bytes(b)) => packed_f64(b, &mut h.bucket_limit)?,
            (6, Field::Fixed64(b)) => h.bucket_limit.push(f64::from_le_bytes(b)),
            (7, Field::Bytes(b)) => packed_f64(b, &mut h.bucket)?,
            (7, Field::Fixed64(b)) => h.bucket.push(f64::from_le_bytes(b)),
            _ => {}
        }
    }
    Ok(h)
}

fn decode_value(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut v = Value {
        tag: String::new(),
        data: ValueData::Other,
    };
    for f in fields(bytes) {
        match f? {
            (1, Field::Bytes(b)) => {
                v.tag = String::from_utf8(b.to_vec()).map_err(|_| "tag is not UTF-8")?
            }
            (2, Field::Fixed32(b)) => v.data = ValueData::Scalar(f32::from_le_bytes(b)),
            (5, Field::Bytes(b)) => v.data = ValueData::Histogram(decode_histogram(b)?),
            _ => {}
        }
    }
    Ok(v)
}

/// Decodes one record's `Event`.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut e = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        values: Vec::new(),
    };
    for f in fields(bytes) {
        match f? {
            (1, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => e.step = v as i64,
            (3, Field::Bytes(b)) => {
                e.file_version =
                    Some(String::from_utf8(b.to_vec()).map_err(|_| "file_version is not UTF-8")?)
            }
            (5, Field::Bytes(b)) => {
                for g in fields(b) {
                    if let (1, Field::Bytes(vb)) = g? {
                        e.values.push(decode_value(vb)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut r = &b[..];
            assert_eq!(get_varint(&mut r).unwrap(), v);
        }
    }

    #[test]
    fn scalar_event_bytes_are_the_protobuf_encoding() {
        // Hand-checked against protobuf's wire format: Event{wall_time: 1.5, step: 300,
        // summary{value{tag: "a", simple_value: 2.0}}}.
        let mut b = Vec::new();
        encode_summary_event(&mut b, 1.5, 300, "a", Payload::Scalar(2.0));
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[
            0x10, 0xac, 0x02, 0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'a', 0x15,
        ]);
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(b, want);
        let e = decode_event(&b).unwrap();
        assert_eq!((e.wall_time, e.step), (1.5, 300));
        assert_eq!(e.values[0].tag, "a");
        assert_eq!(e.values[0].data, ValueData::Scalar(2.0));
    }

    #[test]
    fn histogram_event_round_trips() {
        let h = Histogram::from_values(&[0.5, -1.0, 2.0, 2.0], 3);
        let mut b = Vec::new();
        let n = encode_summary_event(&mut b, 0.0, 7, "w/histogram", Payload::Histogram(&h));
        assert_eq!(n, b.len());
        let e = decode_event(&b).unwrap();
        assert_eq!(e.step, 7);
        assert_eq!(e.values[0].data, ValueData::Histogram(h));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let mut b = Vec::new();
        encode_summary_event(&mut b, 1.0, 1, "tag", Payload::Scalar(1.0));
        for cut in 0..b.len() {
            let _ = decode_event(&b[..cut]);
        }
        assert!(decode_event(&b[..b.len() - 2]).is_err());
    }
}
