//! permessage-deflate's compression (RFC 7692 §7), one deflater and one
//! inflater per shard, never per connection. Every connection that
//! negotiated it agreed to `server_no_context_takeover` and
//! `client_no_context_takeover`, so each message is compressed, and
//! inflated, on its own: the deflater is reset after every message, and
//! one compressed frame serves every subscriber of a publication; the
//! inflater is reset before every message, so no state crosses from one
//! connection's message to another's. Both are made on first use (a
//! compressor is ~300 KB) with zlib-rs (through flate2). Pure code.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{FrameBuilder, OpCode};

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 leaves
/// it off the wire and the receiver puts it back (§7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What compression is worth trying, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateSettings {
    /// Messages under this many bytes go uncompressed.
    pub min_bytes: usize,
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub level: u32,
}

/// The shard's compressor of outgoing messages.
pub struct Deflater {
    settings: DeflateSettings,
    compress: Option<Box<Compress>>,
}

impl Deflater {
    pub fn new(settings: DeflateSettings) -> Self {
        Deflater {
            settings,
            compress: None,
        }
    }

    /// The compressed frame (RSV1 set) of a message of `opcode` whose
    /// payload is `payload`; `None` when the message is under the
    /// threshold or compression saves less than a tenth of it (the message
    /// then goes uncompressed, as §6 allows).
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Option<Bytes> {
        if payload.len() < self.settings.min_bytes || payload.is_empty() {
            return None;
        }
        // Room for the worst case (zlib's deflateBound for stored blocks,
        // and the sync flush's tail): zlib-rs 0.6 panics when a stored
        // block does not fit the room it is given (a test below), so the
        // tenth saved is checked on the result instead.
        let room = payload.len() + (payload.len() >> 12) + (payload.len() >> 14) + 32;
        let level = self.settings.level;
        let compress = self
            .compress
            .get_or_insert_with(|| Box::new(Compress::new(Compression::new(level), false)));
        let mut frame = FrameBuilder::compressed(opcode, room);
        let out = frame.spare(room);
        // A panic in the library must not take the shard down with it: the
        // message then goes uncompressed and the next one gets a new
        // compressor.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let result = compress.compress(payload, out, FlushCompress::Sync);
            let done = (compress.total_in() as usize, compress.total_out() as usize);
            compress.reset();
            (result, done)
        }));
        let Ok((result, (read, written))) = run else {
            self.compress = None;
            return None;
        };
        let whole = read == payload.len();
        let finished = written < out.len() && out[..written].ends_with(&SYNC_TAIL);
        let worth_it = written - SYNC_TAIL.len().min(written) <= payload.len() - payload.len() / 10;
        if !matches!(result, Ok(Status::Ok)) || !whole || !finished || !worth_it {
            return None;
        }
        frame.truncate(written - SYNC_TAIL.len());
        Some(frame.finish())
    }
}

/// Why a client's compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the message limit (close 1009).
    TooLarge,
    /// It is not a deflate stream.
    Corrupt,
}

/// The shard's inflater of incoming messages, with the buffer it inflates
/// into (lent out with each message and given back).
#[derive(Default)]
pub struct Inflater {
    decompress: Option<Box<Decompress>>,
    spare: Vec<u8>,
}

/// Bytes inflated per step: the output grows by at most this much beyond
/// what the limit needs.
const INFLATE_STEP: usize = 16 << 10;

impl Inflater {
    /// Inflates one whole message, stopping as soon as it passes `limit`
    /// bytes, so a deflate bomb costs no more than the limit. Returns the
    /// message in a buffer to give back with [`Inflater::recycle`].
    pub fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let decompress = self
            .decompress
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        decompress.reset(false);
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        let mut inputs = [compressed, &SYNC_TAIL[..]];
        let mut input = 0;
        loop {
            while input < inputs.len() && inputs[input].is_empty() {
                input += 1;
            }
            if out.len() > limit {
                return Err(self.give_back(out, InflateError::TooLarge));
            }
            let room = (limit + 1 - out.len()).min(INFLATE_STEP);
            out.reserve(room);
            let spare_before = out.capacity() - out.len();
            let before_in = decompress.total_in();
            let before_out = out.len();
            let chunk = inputs.get(input).copied().unwrap_or_default();
            let status = decompress.decompress_vec(chunk, &mut out, FlushDecompress::Sync);
            let used = (decompress.total_in() - before_in) as usize;
            if let Some(rest) = inputs.get_mut(input) {
                *rest = &rest[used..];
            }
            let produced = out.len() - before_out;
            match status {
                // A final block (BFINAL) ends the message: after it may come
                // only what a sync flush leaves once its tail is removed (a
                // lone 0x00, RFC 7692 7.2.3.3), never more data.
                Ok(Status::StreamEnd) if matches!(inputs[0], [] | [0]) => break,
                Ok(Status::StreamEnd) => return Err(self.give_back(out, InflateError::Corrupt)),
                Ok(_) => {}
                Err(_) => return Err(self.give_back(out, InflateError::Corrupt)),
            }
            let input_left = inputs[input.min(1)..].iter().any(|i| !i.is_empty());
            if !input_left && produced < spare_before {
                break;
            }
            if used == 0 && produced == 0 {
                // No progress with input and room left: a truncated stream.
                return Err(self.give_back(out, InflateError::Corrupt));
            }
        }
        if out.len() > limit {
            return Err(self.give_back(out, InflateError::TooLarge));
        }
        Ok(out)
    }

    /// Takes back a buffer [`Inflater::inflate`] returned, to inflate into
    /// next time (a huge one is let go).
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() <= 1 << 20 {
            self.spare = buffer;
        }
    }

    fn give_back(&mut self, buffer: Vec<u8>, error: InflateError) -> InflateError {
        self.recycle(buffer);
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflater() -> Deflater {
        Deflater::new(DeflateSettings {
            min_bytes: 16,
            level: 3,
        })
    }

    /// Inflates as a client would: a fresh raw inflater, the tail put back.
    fn inflate_as_client(payload: &[u8], window_bits: u8) -> Vec<u8> {
        let mut d = Decompress::new_with_window_bits(false, window_bits);
        let mut input = payload.to_vec();
        input.extend_from_slice(&SYNC_TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    fn chat(len: usize) -> Vec<u8> {
        let words = b"the quick brown fox jumps over the lazy dog, said alice to bob. ";
        words.iter().cycle().take(len).copied().collect()
    }

    #[test]
    fn compressed_frames_decode_alone_and_state_does_not_carry_over() {
        let mut deflater = deflater();
        for len in [100, 1000, 70_000] {
            let message = chat(len);
            // The same message twice: the second must not lean on the first.
            for _ in 0..2 {
                let frame = deflater.frame(OpCode::Text, &message).unwrap();
                assert!(crate::frame::is_compressed(&frame));
                assert_eq!(frame[0] & 0x0f, OpCode::Text as u8);
                let payload = crate::frame::payload_of(&frame);
                assert!(payload.len() < len);
                assert_eq!(inflate_as_client(payload, 15), message);
            }
        }
    }

    #[test]
    fn small_or_incompressible_messages_stay_plain() {
        let mut deflater = deflater();
        assert!(deflater.frame(OpCode::Text, &chat(15)).is_none());
        // Pseudo-random bytes do not shrink by a tenth.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        assert!(deflater
            .frame(OpCode::Binary, &noise(4096, &mut seed))
            .is_none());
        assert_still_compresses(&mut deflater, 500);
    }

    /// `len` pseudo-random bytes (xorshift from `seed`).
    fn noise(len: usize, seed: &mut u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    /// The deflater still makes frames a client inflates.
    fn assert_still_compresses(deflater: &mut Deflater, len: usize) {
        let message = chat(len);
        let frame = deflater.frame(OpCode::Text, &message).unwrap();
        assert_eq!(
            inflate_as_client(crate::frame::payload_of(&frame), 15),
            message
        );
    }

    #[test]
    fn incompressible_messages_of_every_size_do_not_upset_the_deflater() {
        // zlib-rs 0.6 panicked here when handed less room than the message
        // could take (Autobahn 12.2.*: random binary messages).
        let mut deflater = deflater();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in (16..3000).step_by(7) {
            assert!(deflater
                .frame(OpCode::Binary, &noise(len, &mut seed))
                .is_none());
        }
        assert_still_compresses(&mut deflater, 300);
    }

    #[test]
    fn a_short_message_decodes_with_a_small_window() {
        // Fresh state per message: no distance reaches before its start, so
        // a message of at most 2^bits bytes suits a client window of bits.
        let message = chat(256);
        let frame = deflater().frame(OpCode::Text, &message).unwrap();
        assert_eq!(
            inflate_as_client(crate::frame::payload_of(&frame), 9),
            message
        );
    }

    fn compress_as_client(message: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(message.len() + 64);
        c.compress_vec(message, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn inflates_client_messages_one_at_a_time() {
        let mut inflater = Inflater::default();
        for len in [0, 1, 100, 40_000, 100_000] {
            let message = chat(len);
            let got = inflater
                .inflate(&compress_as_client(&message), 1 << 20)
                .unwrap();
            assert_eq!(got, message);
            inflater.recycle(got);
        }
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit() {
        let bomb = compress_as_client(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000);
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&bomb, 64 << 10),
            Err(InflateError::TooLarge)
        );
        // Exactly at the limit is allowed.
        let exact = compress_as_client(&vec![7u8; 64 << 10]);
        assert_eq!(inflater.inflate(&exact, 64 << 10).unwrap().len(), 64 << 10);
        assert!(inflater.spare.capacity() <= 64 << 10 | INFLATE_STEP);
    }

    #[test]
    fn garbage_and_truncated_streams_are_corrupt_and_leave_no_state() {
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&[0xff, 0xff, 0xff, 0xff], 1000),
            Err(InflateError::Corrupt)
        );
        let message = chat(5000);
        let whole = compress_as_client(&message);
        let cut = inflater.inflate(&whole[..whole.len() / 2], 1 << 20);
        assert!(cut.map_or(true, |got| got.len() < message.len()));
        // The next message is unaffected by what came before.
        assert_eq!(
            inflater
                .inflate(&compress_as_client(&message), 1 << 20)
                .unwrap(),
            message
        );
    }

    #[test]
    fn a_final_block_ends_the_message() {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(1000);
        c.compress_vec(b"hello hello hello", &mut out, FlushCompress::Finish)
            .unwrap();
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&out, 100).unwrap(),
            b"hello hello hello".to_vec()
        );
        // What a sync flush after it leaves once its tail is removed.
        let mut flushed = out.clone();
        flushed.push(0x00);
        assert_eq!(
            inflater.inflate(&flushed, 100).unwrap(),
            b"hello hello hello"
        );
        // Anything more after the final block is not one message: refused,
        // not published as the first part alone.
        for after in [&b"junk"[..], &[0x00, 0x00], &out] {
            let mut smuggled = out.clone();
            smuggled.extend_from_slice(after);
            assert_eq!(
                inflater.inflate(&smuggled, 100),
                Err(InflateError::Corrupt),
                "{after:?}"
            );
        }
    }

    #[test]
    fn the_threshold_is_the_smallest_message_compressed() {
        let mut deflater = deflater();
        assert!(deflater.frame(OpCode::Text, &[b'a'; 16]).is_some());
        assert!(deflater.frame(OpCode::Text, &[b'a'; 15]).is_none());
        let mut any_size = Deflater::new(DeflateSettings {
            min_bytes: 0,
            level: 3,
        });
        assert!(
            any_size.frame(OpCode::Text, b"").is_none(),
            "nothing to compress"
        );
    }

    #[test]
    fn a_binary_message_stays_binary() {
        let message = chat(1000);
        let frame = deflater().frame(OpCode::Binary, &message).unwrap();
        assert_eq!(
            frame[0],
            0x80 | 0x40 | OpCode::Binary as u8,
            "FIN, RSV1, binary"
        );
        assert_eq!(
            inflate_as_client(crate::frame::payload_of(&frame), 15),
            message
        );
    }

    #[test]
    fn every_level_makes_frames_the_shards_own_inflater_reads() {
        let message = chat(20_000);
        let mut inflater = Inflater::default();
        for level in 1..=9 {
            let mut deflater = Deflater::new(DeflateSettings {
                min_bytes: 16,
                level,
            });
            let frame = deflater.frame(OpCode::Text, &message).unwrap();
            let got = inflater
                .inflate(crate::frame::payload_of(&frame), message.len())
                .unwrap();
            assert_eq!(got, message, "level {level}");
            inflater.recycle(got);
        }
    }

    #[test]
    fn one_byte_over_the_limit_is_too_large() {
        let message = chat(1000);
        let mut inflater = Inflater::default();
        let compressed = compress_as_client(&message);
        assert_eq!(
            inflater.inflate(&compressed, 999),
            Err(InflateError::TooLarge)
        );
        assert_eq!(inflater.inflate(&compressed, 1000).unwrap(), message);
    }

    #[test]
    fn a_huge_buffer_given_back_is_let_go_and_a_small_one_kept() {
        let mut inflater = Inflater::default();
        inflater.recycle(Vec::with_capacity(4 << 20));
        assert_eq!(inflater.spare.capacity(), 0, "let go");
        inflater.recycle(Vec::with_capacity(4096));
        assert!(
            inflater.spare.capacity() >= 4096,
            "kept for the next message"
        );
    }
}
