//! One frame header (RFC 6455 §5.2) in both directions: parsed from the
//! start of a buffer, or written into a fixed array. Masking (§5.3) lives
//! here too. No state beyond one header.

/// Longest header: 2 bytes, 8 of extended length, 4 of masking key.
pub const MAX_HEADER: usize = 14;

/// Longest header of an unmasked (server) frame.
pub const MAX_SERVER_HEADER: usize = 10;

/// Largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes (§5.2); the reserved ones are refused when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// The opcode of the low four bits of a header's first byte, if it is
    /// not reserved.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes.
    pub fn is_control(self) -> bool {
        self as u8 >= 0x8
    }
}

/// What a header says about its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1: set on the first frame of a compressed message
    /// (permessage-deflate, RFC 7692).
    pub rsv1: bool,
    pub rsv2: bool,
    pub rsv3: bool,
    pub opcode: OpCode,
    /// The masking key: clients must mask, servers must not.
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// A final, unmasked header with no RSV bit: what a server sends.
    pub fn server(opcode: OpCode, payload_len: usize) -> Self {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
            payload_len: payload_len as u64,
        }
    }

    /// A masked header: what a client sends.
    pub fn client(opcode: OpCode, fin: bool, payload_len: usize, mask: [u8; 4]) -> Self {
        FrameHeader {
            fin,
            mask: Some(mask),
            ..FrameHeader::server(opcode, payload_len)
        }
    }

    /// Bytes this header takes on the wire.
    pub fn len(&self) -> usize {
        let extended = match self.payload_len {
            0..=125 => 0,
            126..=0xffff => 2,
            _ => 8,
        };
        2 + extended + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Never: a header is at least two bytes (for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the header into `out`; returns how many bytes it took.
    pub fn write(&self, out: &mut [u8; MAX_HEADER]) -> usize {
        out[0] = u8::from(self.fin) << 7
            | u8::from(self.rsv1) << 6
            | u8::from(self.rsv2) << 5
            | u8::from(self.rsv3) << 4
            | self.opcode as u8;
        let masked = if self.mask.is_some() { 0x80 } else { 0 };
        let mut at = match self.payload_len {
            len @ 0..=125 => {
                out[1] = masked | len as u8;
                2
            }
            len @ 126..=0xffff => {
                out[1] = masked | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = masked | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(mask) = self.mask {
            out[at..at + 4].copy_from_slice(&mask);
            at += 4;
        }
        at
    }
}

/// Why a header cannot be read. Each ends the connection with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// An opcode RFC 6455 reserves (3–7, 0xB–0xF).
    ReservedOpcode(u8),
    /// A 64-bit length with its most significant bit set (§5.2).
    LengthTooLarge,
}

/// Parses the header at the start of `buf`. `Ok(None)`: not all there yet.
/// Returns the header and its length in bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
    let (Some(&first), Some(&second)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let opcode = OpCode::from_bits(first).ok_or(HeaderError::ReservedOpcode(first & 0x0f))?;
    let masked = second & 0x80 != 0;
    let (payload_len, mut at) = match second & 0x7f {
        126 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            // A length in a longer form than it needs is accepted: §5.2
            // binds senders to the minimal form, and refusing it would
            // only break lax clients.
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(HeaderError::LengthTooLarge);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let header = FrameHeader {
        fin: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header, at)))
}

/// XORs `data` with `key`, as if `data` started `offset` bytes into the
/// payload (a payload read in pieces is unmasked piece by piece).
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let key = [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ];
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_at_every_length_boundary() {
        for len in [0u64, 1, 125, 126, 127, 0xffff, 0x1_0000, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let header = FrameHeader {
                    fin: len % 2 == 0,
                    rsv1: true,
                    rsv2: false,
                    rsv3: len == 0,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let mut out = [0u8; MAX_HEADER];
                let n = header.write(&mut out);
                assert_eq!(n, header.len());
                assert_eq!(parse(&out[..n]), Ok(Some((header, n))), "{len}");
                assert_eq!(parse(&out[..n - 1]), Ok(None), "{len}: one byte short");
            }
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(parse(&[0x83, 0x00]), Err(HeaderError::ReservedOpcode(3)));
        assert_eq!(parse(&[0x8B, 0x00]), Err(HeaderError::ReservedOpcode(0xB)));
        let mut huge = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&huge), Err(HeaderError::LengthTooLarge));
        huge[2] = 0;
        huge[9] = 5;
        let lax = FrameHeader::server(OpCode::Binary, 5);
        assert_eq!(
            parse(&huge),
            Ok(Some((lax, 10))),
            "a non-minimal length is read"
        );
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once() {
        let key = [0xa1, 0xb2, 0xc3, 0xd4];
        let original: Vec<u8> = (0..=255).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = original.clone();
        let mut at = 0;
        for size in [1, 2, 3, 5, 7, 11, 13, 17, 19, 23] {
            let end = (at + size).min(pieces.len());
            apply_mask(&mut pieces[at..end], key, at as u64);
            at = end;
        }
        apply_mask(&mut pieces[at..], key, at as u64);
        assert_eq!(whole, pieces);
        apply_mask(&mut whole, key, 0);
        assert_eq!(whole, original, "masking twice is the identity");
    }
}
