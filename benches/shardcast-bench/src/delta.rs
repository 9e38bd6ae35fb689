//! The generator's side of fossil deltas (`--delta`): a subscriber keeps
//! the last `data` it received and rebuilds each delta `msg` from it, so
//! the stamp inside can be found, counted and timed as for a whole one.
//! The delta is carried in a JSON string, one character per byte
//! (docs/protocol.md).

/// One subscriber's delta state.
#[derive(Default)]
pub struct DeltaReader {
    /// The last `data`, as it appeared in (or was rebuilt from) its envelope.
    base: Vec<u8>,
    scratch: Vec<u8>,
}

const DELTA_MARK: &[u8] = b",\"delta\":true,\"data\":\"";
const DATA_MARK: &[u8] = b",\"data\":";

impl DeltaReader {
    /// The `data` of `envelope`, rebuilt if it is a delta; `None` if it
    /// cannot be (no base, a bad delta).
    pub fn data<'a>(&'a mut self, envelope: &'a [u8]) -> Option<&'a [u8]> {
        if let Some(at) = memchr::memmem::find(envelope, DELTA_MARK) {
            decode_string(&envelope[at + DELTA_MARK.len()..], &mut self.scratch)?;
            let rebuilt =
                std::panic::catch_unwind(|| fossil_delta::apply(&self.base, &self.scratch))
                    .ok()?
                    .ok()?;
            self.base = rebuilt;
            return Some(&self.base);
        }
        let at = memchr::memmem::find(envelope, DATA_MARK)? + DATA_MARK.len();
        let data = envelope.get(at..envelope.len().checked_sub(1)?)?;
        self.base.clear();
        self.base.extend_from_slice(data);
        Some(&self.base)
    }
}

/// Decodes a JSON string's content (up to its closing quote) whose code
/// points are all at most U+00FF into those bytes.
fn decode_string(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let mut i = 0;
    loop {
        match *text.get(i)? {
            b'"' => return Some(()),
            b'\\' => {
                let byte = match *text.get(i + 1)? {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 8,
                    b'f' => 12,
                    b'u' => {
                        let hex = std::str::from_utf8(text.get(i + 2..i + 6)?).ok()?;
                        i += 4;
                        u8::try_from(u16::from_str_radix(hex, 16).ok()?).ok()?
                    }
                    _ => return None,
                };
                out.push(byte);
                i += 2;
            }
            first @ 0xc2..=0xc3 => {
                out.push((first & 0x03) << 6 | (*text.get(i + 1)? & 0x3f));
                i += 2;
            }
            byte if byte < 0x80 => {
                out.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_what_the_server_encodes() {
        let base = br#"{"s":1,"t":9,"levels":[[1,2],[3,4],[5,6],[7,8],[9,10],[11,12]]}"#;
        let next = br#"{"s":2,"t":10,"levels":[[1,2],[3,4],[5,66],[7,8],[9,10],[11,12]]}"#;
        let delta = fossil_delta::delta(&next[..], &base[..]);
        let whole =
            shardcast::protocol::encode_msg("c", 1, shardcast::protocol::PayloadKind::Json, base);
        let as_delta = shardcast::protocol::encode_msg_delta("c", 2, &delta);
        let mut reader = DeltaReader::default();
        assert_eq!(
            reader.data(shardcast::frame::payload_of(&whole)),
            Some(&base[..])
        );
        assert_eq!(
            reader.data(shardcast::frame::payload_of(&as_delta)),
            Some(&next[..])
        );
        // Every byte value survives the JSON string.
        let mut all = Vec::new();
        let bytes: Vec<u8> = (0..=255).collect();
        let frame = shardcast::protocol::encode_msg_delta("c", 3, &bytes);
        let text = shardcast::frame::payload_of(&frame);
        let at = memchr::memmem::find(text, DELTA_MARK).unwrap() + DELTA_MARK.len();
        decode_string(&text[at..], &mut all).unwrap();
        assert_eq!(all, bytes);
        let parsed: serde_json::Value = serde_json::from_slice(text).unwrap();
        let chars: Vec<u32> = parsed["data"]
            .as_str()
            .unwrap()
            .chars()
            .map(u32::from)
            .collect();
        assert_eq!(chars, (0..=255).collect::<Vec<u32>>());
    }
}
