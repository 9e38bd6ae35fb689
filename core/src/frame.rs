//! Server-to-client WebSocket frames (RFC 6455 §5.2) as the shard shares
//! them: unmasked, final, one buffer per frame, the header written by the
//! codec (`shardcast-wire`). A frame is built once and its `Bytes` shared by
//! every subscriber it goes to. The payload is written first into a buffer that
//! keeps [`MAX_HEADER`] bytes free at the front; the header is then written just
//! before it, so no frame is ever copied to prepend its header. Pure code.

use bytes::{Bytes, BytesMut};
pub use shardcast_wire::OpCode;
use shardcast_wire::{FrameHeader, MAX_SERVER_HEADER};

/// Largest header of an unmasked server frame: 2 bytes + 8 bytes of length.
pub const MAX_HEADER: usize = MAX_SERVER_HEADER;

/// A frame under construction: append the payload, then [`FrameBuilder::finish`].
pub struct FrameBuilder {
    buf: BytesMut,
    opcode: OpCode,
    /// RSV1: the payload is compressed (permessage-deflate).
    compressed: bool,
}

impl FrameBuilder {
    /// Starts a frame whose payload will be about `payload_hint` bytes.
    pub fn new(opcode: OpCode, payload_hint: usize) -> Self {
        let mut buf = BytesMut::with_capacity(MAX_HEADER + payload_hint);
        buf.resize(MAX_HEADER, 0);
        FrameBuilder {
            buf,
            opcode,
            compressed: false,
        }
    }

    /// Starts a frame whose payload is compressed (RSV1 set), of at most
    /// `max_payload` bytes: [`FrameBuilder::spare`] hands out the room.
    pub fn compressed(opcode: OpCode, max_payload: usize) -> Self {
        FrameBuilder {
            compressed: true,
            ..FrameBuilder::new(opcode, max_payload)
        }
    }

    /// `len` more payload bytes, zeroed, to be written in place; give back
    /// what was not used with [`FrameBuilder::truncate`].
    pub fn spare(&mut self, len: usize) -> &mut [u8] {
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        &mut self.buf[start..]
    }

    /// Keeps the first `payload_len` bytes of the payload.
    pub fn truncate(&mut self, payload_len: usize) {
        self.buf.truncate(MAX_HEADER + payload_len);
    }

    /// The payload written so far (after the reserved header room).
    pub fn payload_len(&self) -> usize {
        self.buf.len() - MAX_HEADER
    }

    /// Appends payload bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes the header in front of the payload and returns the whole frame.
    pub fn finish(mut self) -> Bytes {
        let len = self.payload_len();
        let header = FrameHeader {
            rsv1: self.compressed,
            ..FrameHeader::server(self.opcode, len)
        };
        let mut bytes = [0u8; shardcast_wire::MAX_HEADER];
        let header_len = header.write(&mut bytes);
        let header = bytes;
        let start = MAX_HEADER - header_len;
        self.buf[start..MAX_HEADER].copy_from_slice(&header[..header_len]);
        self.buf.freeze().slice(start..)
    }
}

impl std::io::Write for FrameBuilder {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.push(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The payload of a whole server frame built here (its header skipped).
#[inline]
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let header_len = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header_len..).unwrap_or_default()
}

/// Whether a server frame built here has RSV1 set (a compressed message).
#[inline]
pub fn is_compressed(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x40 != 0)
}

/// A whole frame around `payload`, in one new buffer.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut builder = FrameBuilder::new(opcode, payload.len());
    builder.push(payload);
    builder.finish()
}

/// A close frame with `code` and a `reason` (cut to fit the 125-byte limit of
/// control frames at a character boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut builder = FrameBuilder::new(OpCode::Close, 2 + end);
    builder.push(&code.to_be_bytes());
    builder.push(&reason.as_bytes()[..end]);
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::{protocol::Role, Message, WebSocket};

    /// Reads `bytes` with tungstenite as a client would: the reference reader
    /// (it also rejects masked frames from a server).
    fn read_as_client(bytes: &[u8]) -> Message {
        let socket = std::io::Cursor::new(bytes.to_vec());
        let mut ws = WebSocket::from_raw_socket(socket, Role::Client, None);
        ws.read().unwrap()
    }

    #[test]
    fn lengths_at_every_boundary() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            match read_as_client(&encode(OpCode::Binary, &payload)) {
                Message::Binary(got) => assert_eq!(got.len(), len),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        match read_as_client(&close(1008, "slow consumer")) {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert_eq!(frame.reason.as_str(), "slow consumer");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let frame = close(1000, &"é".repeat(100));
        assert!(frame.len() <= 2 + 125);
        assert!(matches!(read_as_client(&frame), Message::Close(Some(_))));
    }

    #[test]
    fn a_close_reason_of_123_bytes_is_kept_whole_and_a_longer_one_cut_to_it() {
        let longest = "r".repeat(123);
        assert_eq!(
            payload_of(&close(1000, &longest)),
            [&[0x03, 0xe8][..], longest.as_bytes()].concat()
        );
        let cut = close(1000, &"r".repeat(200));
        assert_eq!(payload_of(&cut).len(), 125);
        assert!(matches!(read_as_client(&cut), Message::Close(Some(f)) if f.reason.len() == 123));
    }

    #[test]
    fn frames_are_final_unmasked_and_carry_their_opcode() {
        for opcode in [OpCode::Text, OpCode::Binary, OpCode::Close] {
            let frame = encode(opcode, b"x");
            assert_eq!(frame[0], 0x80 | opcode as u8, "{opcode:?}");
            assert_eq!(frame[1] & 0x80, 0, "unmasked");
        }
    }

    #[test]
    fn payload_of_skips_each_header_size() {
        for len in [0, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                payload_of(&encode(OpCode::Binary, &payload)),
                payload,
                "{len}"
            );
        }
        assert_eq!(payload_of(&[]), b"");
        assert_eq!(payload_of(&[0x82, 126, 0]), b"", "a header cut short");
    }

    #[test]
    fn a_frame_built_in_pieces_is_the_frame_encoded_at_once() {
        let mut builder = FrameBuilder::new(OpCode::Text, 1);
        builder.push(b"hello ");
        std::io::Write::write_all(&mut builder, b"world").unwrap();
        assert_eq!(builder.payload_len(), 11);
        assert_eq!(builder.finish(), encode(OpCode::Text, b"hello world"));
    }

    #[test]
    fn spare_room_keeps_only_what_truncate_leaves() {
        let mut builder = FrameBuilder::new(OpCode::Binary, 0);
        builder.push(b"ab");
        let room = builder.spare(10);
        assert!(room.iter().all(|&b| b == 0), "zeroed");
        room[..3].copy_from_slice(b"cde");
        builder.truncate(5);
        assert_eq!(payload_of(&builder.finish()), b"abcde");
    }

    #[test]
    fn only_a_compressed_frame_has_rsv1() {
        let mut compressed = FrameBuilder::compressed(OpCode::Text, 4);
        compressed.push(b"data");
        let compressed = compressed.finish();
        assert!(is_compressed(&compressed));
        assert_eq!(compressed[0] & 0x0f, OpCode::Text as u8);
        assert!(!is_compressed(&encode(OpCode::Text, b"data")));
        assert!(!is_compressed(&[]));
    }
}
