//! Several JSON envelopes in one text frame, for clients that asked at
//! connect (`?batch=1`): when a flush finds two or more text frames queued
//! together, they go as one frame whose payload is their payloads joined by
//! `\n` (an envelope never holds a raw newline: `Payload::json` makes sure
//! for publications' data, `protocol::push_one_line` for raw-room text
//! delivered as JSON).
//! Nothing is copied: each queued frame keeps its shared buffer, its header
//! is skipped, and the batch's header (on the first piece) or the separator
//! (on the others) is written from a few bytes kept beside it, as one more
//! slice of the same gathered `sendmsg`.
//!
//! Compressed frames batch too, with no compression per connection: each
//! was compressed on its own ending on a byte boundary (a sync flush, whose
//! empty stored block RFC 7692 leaves off the wire), so putting that block
//! back between two of them, then a stored block holding `\n`, makes one
//! valid deflate stream that inflates to the envelopes joined by `\n`.
//! Plain and compressed frames are not mixed in one batch.

use std::collections::VecDeque;

use shardcast_wire::{FrameHeader, OpCode};

use super::queue::{Body, Prefix, Queued};
use crate::frame;

/// Between two plain envelopes.
const PLAIN_SEPARATOR: &[u8] = b"\n";
/// Between two compressed envelopes: the empty stored block that ended the
/// first one (`00 00 ff ff`), then a stored block of the one byte `\n`
/// (header byte 0, LEN 1, NLEN !1, the byte).
const DEFLATE_SEPARATOR: &[u8] = &[0x00, 0x00, 0xff, 0xff, 0x00, 0x01, 0x00, 0xfe, 0xff, b'\n'];

/// The largest batch payload: clients cap what they accept (Python
/// `websockets` at 1 MiB by default), so a batch stays far under.
/// Under 64 KiB, its header is at most 4 bytes.
const MAX_BATCH_PAYLOAD: usize = (64 << 10) - 1;

/// What kind of batch a queued frame can join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Plain,
    Compressed,
}

impl Kind {
    fn of(item: &Queued) -> Option<Kind> {
        // Final text frames only: control frames (pings, the close) and
        // anything already batched stay as they are.
        // Copied runs (never on a batching connection) do not batch either.
        match item.shared()?.first() {
            Some(0x81) => Some(Kind::Plain),
            Some(0xc1) => Some(Kind::Compressed),
            _ => None,
        }
    }

    pub(super) fn separator(self) -> &'static [u8] {
        match self {
            Kind::Plain => PLAIN_SEPARATOR,
            Kind::Compressed => DEFLATE_SEPARATOR,
        }
    }
}

/// Joins runs of text frames not looked at yet into batched frames (and
/// marks everything looked at). Returns how many bytes the queue grew by
/// (headers dropped, batch headers and separators added; may be negative).
pub(super) fn seal(frames: &mut VecDeque<Queued>) -> isize {
    // Sealed entries are a prefix of the queue (everything there at a seal
    // is sealed, later pushes go behind): look for its end from the back,
    // so a long backlog is not walked again at every flush.
    let mut at = frames
        .iter()
        .rposition(|f| f.sealed)
        .map_or(0, |last| last + 1);
    let mut grown = 0;
    while at < frames.len() {
        let kind = Kind::of(&frames[at]);
        let mut end = at + 1;
        if let Some(kind) = kind {
            let separator = kind.separator().len();
            let mut payload = shared_payload(&frames[at]).len();
            while let Some(next) = frames.get(end) {
                let len = shared_payload(next).len();
                if Kind::of(next) != Some(kind) || payload + separator + len > MAX_BATCH_PAYLOAD {
                    break;
                }
                payload += separator + len;
                end += 1;
            }
            if end - at >= 2 {
                grown += join(frames, at, end, kind, payload);
            }
        }
        for item in frames.range_mut(at..end) {
            item.sealed = true;
        }
        at = end;
    }
    grown
}

/// The payload of a shared text frame (a frame `Kind::of` accepts).
fn shared_payload(item: &Queued) -> &[u8] {
    item.shared().map_or(&[], |bytes| frame::payload_of(bytes))
}

/// Turns frames `from..to` into the pieces of one frame of `payload` bytes.
fn join(
    frames: &mut VecDeque<Queued>,
    from: usize,
    to: usize,
    kind: Kind,
    payload: usize,
) -> isize {
    let header = FrameHeader {
        rsv1: kind == Kind::Compressed,
        ..FrameHeader::server(OpCode::Text, payload)
    };
    let mut head = [0u8; shardcast_wire::MAX_HEADER];
    let head_len = header.write(&mut head);
    debug_assert!(head_len <= 4, "a batch is under 64 KiB");
    let mut short = [0u8; 4];
    short.copy_from_slice(&head[..4]);
    let mut grown = 0;
    for (i, item) in frames.range_mut(from..to).enumerate() {
        let Body::Shared(bytes) = &mut item.body else {
            unreachable!("only shared text frames batch (Kind::of)");
        };
        let skipped = bytes.len() - frame::payload_of(bytes).len();
        bytes::Buf::advance(bytes, skipped);
        item.prefix = if i == 0 {
            Prefix::Header(short, head_len as u8)
        } else {
            Prefix::Separator(kind)
        };
        item.prefix_at = 0;
        item.continues = from + i + 1 < to;
        grown += item.prefix().len() as isize - skipped as isize;
    }
    grown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::deflate::{DeflateSettings, Deflater};
    use bytes::Bytes;
    use flate2::{Decompress, FlushDecompress};

    fn queue(frames: &[Bytes]) -> VecDeque<Queued> {
        frames.iter().map(|f| Queued::new(f.clone(), 0)).collect()
    }

    /// What the queue puts on the wire.
    fn wire(frames: &VecDeque<Queued>) -> Vec<u8> {
        let mut out = Vec::new();
        for item in frames {
            out.extend_from_slice(item.prefix());
            out.extend_from_slice(item.shared().unwrap());
        }
        out
    }

    /// Reads the frames on the wire: (rsv1, opcode, payload).
    fn read(mut wire: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let (header, len) = shardcast_wire::header::parse(wire).unwrap().unwrap();
            let end = len + header.payload_len as usize;
            out.push((header.rsv1, header.opcode as u8, wire[len..end].to_vec()));
            wire = &wire[end..];
        }
        out
    }

    fn inflate(payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(1 << 20);
        Decompress::new(false)
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    fn text(body: &str) -> Bytes {
        frame::encode(OpCode::Text, body.as_bytes())
    }

    #[test]
    fn text_frames_queued_together_become_one_and_the_rest_stay() {
        let ping = frame::encode(OpCode::Ping, b"");
        let mut frames = queue(&[
            text("{\"a\":1}"),
            text("{\"b\":2}"),
            ping.clone(),
            text("{\"c\":3}"),
        ]);
        let before: usize = frames.iter().map(Queued::len).sum();
        let grown = seal(&mut frames);
        let after: usize = frames.iter().map(Queued::len).sum();
        assert_eq!(after as isize - before as isize, grown);
        let got = read(&wire(&frames));
        assert_eq!(
            got,
            [
                (false, 1, b"{\"a\":1}\n{\"b\":2}".to_vec()),
                (false, 9, vec![]),
                (false, 1, b"{\"c\":3}".to_vec()),
            ]
        );
        assert!(frames[0].continues && !frames[1].continues);
        assert!(frames.iter().all(|f| f.sealed));
        // Frames queued later batch among themselves, not with sealed ones.
        frames.push_back(Queued::new(text("{\"d\":4}"), 0));
        frames.push_back(Queued::new(text("{\"e\":5}"), 0));
        seal(&mut frames);
        let got = read(&wire(&frames));
        assert_eq!(got[3], (false, 1, b"{\"d\":4}\n{\"e\":5}".to_vec()));
    }

    #[test]
    fn compressed_frames_join_into_one_deflate_stream() {
        let mut deflater = Deflater::new(DeflateSettings {
            min_bytes: 10,
            level: 3,
        });
        let bodies: Vec<String> = (0..3)
            .map(|i| {
                format!(
                    "{{\"n\":{i},\"text\":\"{}\"}}",
                    "hello world ".repeat(40 + i)
                )
            })
            .collect();
        let frames: Vec<Bytes> = bodies
            .iter()
            .map(|b| deflater.frame(OpCode::Text, b.as_bytes()).unwrap())
            .collect();
        let mut queued = queue(&frames);
        queued.push_back(Queued::new(text("{\"plain\":true}"), 0));
        seal(&mut queued);
        let got = read(&wire(&queued));
        assert_eq!(got.len(), 2, "compressed and plain do not mix");
        assert!(got[0].0, "RSV1 on the batch");
        assert_eq!(inflate(&got[0].2), bodies.join("\n").into_bytes());
        assert_eq!(got[1], (false, 1, b"{\"plain\":true}".to_vec()));
    }

    #[test]
    fn a_batch_stays_under_its_bound() {
        let big = "x".repeat(40 << 10);
        let mut frames = queue(&[text(&big), text(&big), text(&big)]);
        seal(&mut frames);
        let got = read(&wire(&frames));
        assert_eq!(got.len(), 3);
        let small: Vec<Bytes> = (0..2000)
            .map(|i| text(&format!("{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(40))))
            .collect();
        let mut frames = queue(&small);
        seal(&mut frames);
        let got = read(&wire(&frames));
        assert!(got.len() > 1 && got.iter().all(|f| f.2.len() <= MAX_BATCH_PAYLOAD));
        let joined: Vec<u8> = got
            .iter()
            .map(|f| f.2.clone())
            .collect::<Vec<_>>()
            .join(&b'\n');
        assert_eq!(joined.split(|b| *b == b'\n').count(), 2000);
    }
}
