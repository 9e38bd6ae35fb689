//! The property the `frame_decode` fuzzer checks (`fuzz/`), here so that
//! unit tests and the fuzz regressions replay it too. For any bytes, as a
//! client's stream: decoding never panics; decoding them in pieces gives
//! what decoding them at once gives (read boundaries do not matter); and
//! what was decoded, encoded again as client frames, decodes to the same.

use crate::{
    decoder::{DecodeError, Decoder, Event, Limits},
    encode::client_frame,
    header::OpCode,
};

/// An [`Event`] that owns its bytes, for comparing runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Compressed(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    /// The stream ended in this error.
    Error(DecodeError),
}

impl Owned {
    fn of(event: Event<'_>) -> Owned {
        match event {
            Event::Text(text) => Owned::Text(text.to_owned()),
            Event::Binary(bytes) => Owned::Binary(bytes.to_vec()),
            Event::Compressed { text, payload } => Owned::Compressed(text, payload.to_vec()),
            Event::Ping(bytes) => Owned::Ping(bytes.to_vec()),
            Event::Pong(bytes) => Owned::Pong(bytes.to_vec()),
            Event::Close(close) => Owned::Close(close.map(|(c, r)| (c, r.to_owned()))),
        }
    }
}

/// Decodes `stream` handed over in pieces of `piece` bytes (0: at once).
pub fn decode_all(limits: Limits, stream: &[u8], piece: usize) -> Vec<Owned> {
    let mut decoder = Decoder::new(limits);
    let mut events = Vec::new();
    let piece = if piece == 0 {
        stream.len().max(1)
    } else {
        piece
    };
    for chunk in stream.chunks(piece) {
        let mut buf = chunk.to_vec();
        let mut at = 0;
        while at < buf.len() {
            match decoder.decode(&mut buf[at..]) {
                Ok(decoded) => {
                    at += decoded.consumed;
                    if let Some(event) = decoded.event {
                        events.push(Owned::of(event));
                    }
                }
                Err(error) => {
                    events.push(Owned::Error(error));
                    return events;
                }
            }
        }
    }
    events
}

/// The events as client frames again (one frame per message).
fn encode_all(events: &[Owned], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        let frame = match event {
            Owned::Text(text) => client_frame(OpCode::Text, text.as_bytes(), false, mask),
            Owned::Binary(bytes) => client_frame(OpCode::Binary, bytes, false, mask),
            Owned::Ping(bytes) => client_frame(OpCode::Ping, bytes, false, mask),
            Owned::Pong(bytes) => client_frame(OpCode::Pong, bytes, false, mask),
            Owned::Compressed(text, bytes) => {
                let opcode = if *text { OpCode::Text } else { OpCode::Binary };
                let mut frame = client_frame(opcode, bytes, false, mask);
                frame[0] |= 0x40;
                frame
            }
            Owned::Close(close) => {
                let mut payload = Vec::new();
                if let Some((code, reason)) = close {
                    payload.extend_from_slice(&code.to_be_bytes());
                    payload.extend_from_slice(reason.as_bytes());
                }
                client_frame(OpCode::Close, &payload, false, mask)
            }
            Owned::Error(_) => break,
        };
        out.extend_from_slice(&frame);
    }
    out
}

/// The fuzzer's entry point: the first byte picks the limits, the second
/// the piece size and the mask of the re-encoding; the rest is the stream.
pub fn frame_decode(data: &[u8]) {
    let [setup, split, stream @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_message: usize::from(setup >> 1) * 97,
        rsv1: setup & 1 == 1,
    };
    let at_once = decode_all(limits, stream, 0);
    let piece = usize::from(split % 17) + 1;
    assert_eq!(
        decode_all(limits, stream, piece),
        at_once,
        "pieces of {piece}"
    );
    let mask = [*split, split.wrapping_mul(3), !*split, 0x5a];
    let again = decode_all(limits, &encode_all(&at_once, mask), 0);
    let decoded: Vec<&Owned> = at_once
        .iter()
        .filter(|e| !matches!(e, Owned::Error(_)))
        .collect();
    assert_eq!(again.iter().collect::<Vec<_>>(), decoded, "round trip");
}
