//! A publication as it travels between nodes and sits in a broker's
//! history: a fixed 29-byte header (format version, payload kind, the
//! conflation key's length, origin node, the connection to skip), the
//! conflation key, then the payload's bytes, unchanged. A record read back
//! is checked as a client's publication is (JSON data every parser holds,
//! UTF-8 text, a key within bounds): anything else on the shared prefix is
//! refused, never fanned out. The Redis engine stores it in the channel's
//! stream and publishes it as `<offset>:<epoch>:<record>`; the NATS engine
//! sends it as the message body. Pure functions, no I/O.

use bytes::{BufMut, BytesMut};

use crate::{
    json_data,
    protocol::{PayloadKind, MAX_KEY_LEN},
    publication::{ConnRef, Payload, Skip},
};

/// Format of the header below; a record of another version is refused
/// (1: the conflation key was an unkeyed hash).
const VERSION: u8 = 2;
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 29;

/// Why a record (or a published message) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("record shorter than its header")]
    Short,
    #[error("record format {0} is not known (this node reads format {VERSION})")]
    Version(u8),
    #[error("unknown payload kind {0}")]
    Kind(u8),
    #[error("published message is not <offset>:<epoch>:<record>")]
    Envelope,
    #[error("conflation key of {0} bytes is not 1 to {MAX_KEY_LEN} bytes of UTF-8 in the record")]
    Key(u64),
    #[error("payload is not what its kind says: {0}")]
    Payload(String),
}

/// A publication read back from a record.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub payload: Payload,
    /// The node it was published on (see [`node_hash`]).
    pub origin: u64,
    /// A raw-room sender to leave out, meaningful on `origin` only.
    pub skip: Option<Skip>,
}

/// A node id as records carry it: 64 bits of its FNV-1a hash.
pub(crate) fn node_hash(node_id: &str) -> u64 {
    crate::channel::fnv1a(node_id.as_bytes())
}

/// Writes `payload` as a record from node `origin` into `out`.
pub(crate) fn encode(out: &mut BytesMut, payload: &Payload, origin: u64, skip: Option<Skip>) {
    let key = payload.key.as_deref().unwrap_or_default();
    out.reserve(HEADER_LEN + key.len() + payload.bytes.len());
    out.put_u8(VERSION);
    out.put_u8(match payload.kind {
        PayloadKind::Json => 0,
        PayloadKind::Text => 1,
        PayloadKind::Binary => 2,
    });
    out.put_u64_le(key.len() as u64);
    out.put_u64_le(origin);
    match skip {
        Some(skip) => {
            out.put_u8(1);
            out.put_u16_le(skip.shard);
            out.put_u32_le(skip.conn.key);
            out.put_u32_le(skip.conn.gen);
        }
        None => out.put_bytes(0, 11),
    }
    out.put_slice(key.as_bytes());
    out.put_slice(&payload.bytes);
}

/// Reads a record. The payload is copied out of `record` (one allocation
/// of its length): a payload never pins the buffer it was read into.
pub(crate) fn decode(record: &[u8]) -> Result<Record, RecordError> {
    if record.len() < HEADER_LEN {
        return Err(RecordError::Short);
    }
    if record[0] != VERSION {
        return Err(RecordError::Version(record[0]));
    }
    let kind = match record[1] {
        0 => PayloadKind::Json,
        1 => PayloadKind::Text,
        2 => PayloadKind::Binary,
        other => return Err(RecordError::Kind(other)),
    };
    let u64_at = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().unwrap_or_default());
    let u32_at = |at: usize| u32::from_le_bytes(record[at..at + 4].try_into().unwrap_or_default());
    let skip = (record[18] == 1).then(|| Skip {
        shard: u16::from_le_bytes([record[19], record[20]]),
        conn: ConnRef {
            key: u32_at(21),
            gen: u32_at(25),
        },
    });
    let key_len = u64_at(2);
    let rest = &record[HEADER_LEN..];
    let (key, bytes) = match usize::try_from(key_len) {
        Ok(0) => (None, rest),
        Ok(len @ 1..=MAX_KEY_LEN) if len <= rest.len() => {
            let key = std::str::from_utf8(&rest[..len]).map_err(|_| RecordError::Key(key_len))?;
            (Some(key), &rest[len..])
        }
        _ => return Err(RecordError::Key(key_len)),
    };
    match kind {
        PayloadKind::Json => json_data::check(bytes)
            .map_err(|why| RecordError::Payload(format!("JSON refused: {why}")))?,
        PayloadKind::Text => {
            std::str::from_utf8(bytes)
                .map_err(|_| RecordError::Payload("text not UTF-8".into()))?;
        }
        PayloadKind::Binary => {}
    }
    // JSON as a client's `pub` leaves it: one line (see `Payload::json`).
    let mut payload = match kind {
        PayloadKind::Json => Payload::json(bytes),
        _ => Payload::copy_of(kind, bytes),
    }
    .received_at(crate::clock::now_ns());
    if let Some(key) = key {
        payload = payload.with_key(key);
    }
    Ok(Record {
        payload,
        origin: u64_at(10),
        skip,
    })
}

/// A message the Redis engine's script published: `<offset>:<epoch>:` and
/// the record. Returns the offset, the epoch and the record's bytes.
pub(crate) fn split_published(message: &[u8]) -> Result<(u64, &str, &[u8]), RecordError> {
    let colon = memchr::memchr(b':', message).ok_or(RecordError::Envelope)?;
    let offset = parse_u64(&message[..colon]).ok_or(RecordError::Envelope)?;
    let rest = &message[colon + 1..];
    let colon = memchr::memchr(b':', rest).ok_or(RecordError::Envelope)?;
    let epoch = std::str::from_utf8(&rest[..colon]).map_err(|_| RecordError::Envelope)?;
    if epoch.is_empty() {
        return Err(RecordError::Envelope);
    }
    Ok((offset, epoch, &rest[colon + 1..]))
}

/// Decimal digits as a `u64` (no sign, no spaces, no overflow).
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit()
            .then_some(())
            .and_then(|_| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let skip = Some(Skip {
            shard: 3,
            conn: ConnRef {
                key: 70_000,
                gen: 9,
            },
        });
        for (kind, skip) in [
            (PayloadKind::Json, None),
            (PayloadKind::Text, skip),
            (PayloadKind::Binary, None),
        ] {
            let bytes: &[u8] = match kind {
                PayloadKind::Binary => b"{\"a\":[1,2]}\xff",
                _ => b"{\"a\":[1,2]}",
            };
            let payload = Payload::copy_of(kind, bytes).with_key("k\u{e9}");
            let mut out = BytesMut::new();
            encode(&mut out, &payload, node_hash("node-a"), skip);
            assert_eq!(out.len(), HEADER_LEN + 3 + payload.bytes.len());
            let back = decode(&out).unwrap();
            assert_eq!(back.payload.kind, kind);
            assert_eq!(back.payload.bytes, payload.bytes);
            assert_eq!(back.payload.key, payload.key);
            assert_eq!(back.origin, node_hash("node-a"));
            assert_eq!(back.skip, skip);
        }
    }

    #[test]
    fn bad_records_are_refused_not_misread() {
        let mut out = BytesMut::new();
        encode(
            &mut out,
            &Payload::copy_of(PayloadKind::Json, b"1"),
            1,
            None,
        );
        assert_eq!(
            decode(&out[..HEADER_LEN - 1]).unwrap_err(),
            RecordError::Short
        );
        let mut other = out.to_vec();
        other[0] = 1;
        assert_eq!(decode(&other).unwrap_err(), RecordError::Version(1));
        other[0] = VERSION;
        other[1] = 7;
        assert_eq!(decode(&other).unwrap_err(), RecordError::Kind(7));
    }

    /// What a forged record on the shared prefix could carry: each is
    /// refused, none reaches a subscriber.
    #[test]
    fn records_are_checked_as_publications_are() {
        let record = |kind: PayloadKind, bytes: &[u8], key: Option<&str>| {
            let mut payload = Payload::copy_of(kind, bytes);
            payload.key = key.map(Into::into);
            let mut out = BytesMut::new();
            encode(&mut out, &payload, 1, None);
            out
        };
        for (kind, bytes) in [
            (PayloadKind::Json, &b"{\"a\":"[..]),
            (PayloadKind::Json, b"1e999"),
            (PayloadKind::Json, b"\"\\ud800\""),
            (PayloadKind::Text, b"\xff\xfe"),
        ] {
            let error = decode(&record(kind, bytes, None)).unwrap_err();
            assert!(
                matches!(error, RecordError::Payload(_)),
                "{bytes:?}: {error}"
            );
        }
        let long_key = "k".repeat(MAX_KEY_LEN + 1);
        let error = decode(&record(PayloadKind::Json, b"1", Some(&long_key))).unwrap_err();
        assert_eq!(error, RecordError::Key(MAX_KEY_LEN as u64 + 1));
        let mut not_utf8 = record(PayloadKind::Json, b"1", Some("ab"));
        not_utf8[HEADER_LEN] = 0xff;
        assert_eq!(decode(&not_utf8).unwrap_err(), RecordError::Key(2));
        let mut past_the_end = record(PayloadKind::Json, b"1", None);
        past_the_end[2] = 9;
        assert_eq!(decode(&past_the_end).unwrap_err(), RecordError::Key(9));
        // JSON with a raw line break is made one line, as a `pub`'s is.
        let back = decode(&record(PayloadKind::Json, b"[1,\n2]", None)).unwrap();
        assert_eq!(&back.payload.bytes[..], b"[1, 2]");
    }

    #[test]
    fn published_messages_split_into_offset_epoch_and_record() {
        let (offset, epoch, record) = split_published(b"42:a1b2:\x01x:y").unwrap();
        assert_eq!((offset, epoch, record), (42, "a1b2", &b"\x01x:y"[..]));
        for bad in [
            &b""[..],
            b"42",
            b"42:e",
            b"x:e:r",
            b"42::r",
            b":e:r",
            b"99999999999999999999999:e:r",
        ] {
            assert_eq!(
                split_published(bad).unwrap_err(),
                RecordError::Envelope,
                "{bad:?}"
            );
        }
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
    }
}
