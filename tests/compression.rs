//! Fewer bytes on the wire, against the real server, with a client of the
//! test's own that shows what tungstenite hides: the offer and the answer,
//! RSV1 on each frame, the frames themselves and their bytes.
//! permessage-deflate (RFC 7692): one compressed frame serves every
//! subscriber; a client's compressed messages are inflated under the
//! message limit; offers are accepted or declined as the RFC says.
//! Batching (`?batch=1`): envelopes queued together arrive as one frame,
//! compressed or not. The standard clients (Python `websockets`, Node
//! `ws`, Chromium) are driven with compression on in their own tests.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use shardcast_wire::{
    encode::client_frame,
    header::{self, OpCode},
};
use support::{get_json, wait_for_subscriptions, wait_until, Server, DEADLINE};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [9, 8, 7, 6];

/// A WebSocket client over a plain socket that inflates what it is sent.
struct DeflateClient {
    stream: TcpStream,
    /// Read and not yet decoded.
    buffer: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<String>,
}

/// One message from the server.
struct Received {
    opcode: OpCode,
    compressed: bool,
    /// Its payload as it came (compressed or not).
    wire_len: usize,
    /// Its payload, inflated if it was compressed.
    payload: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("a JSON message")
    }
}

impl DeflateClient {
    fn connect(server: &Server, path: &str, offer: Option<&str>) -> DeflateClient {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let offer = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut buffer = Vec::new();
        let end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).expect("the 101 response");
            assert!(n > 0, "closed during the handshake");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        buffer.drain(..end);
        DeflateClient {
            stream,
            buffer,
            extensions,
        }
    }

    /// Sends `message` compressed (RSV1), in frames of at most `chunk`
    /// compressed bytes.
    fn send_compressed(&mut self, opcode: OpCode, message: &[u8], chunk: usize) {
        let mut deflated = Vec::with_capacity(message.len() + 64);
        Compress::new(Compression::new(6), false)
            .compress_vec(message, &mut deflated, FlushCompress::Sync)
            .unwrap();
        deflated.truncate(deflated.len() - 4);
        let pieces: Vec<&[u8]> = deflated.chunks(chunk).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            let mut frame = client_frame(op, piece, i + 1 < pieces.len(), MASK);
            if i == 0 {
                frame[0] |= 0x40;
            }
            self.stream.write_all(&frame).unwrap();
        }
    }

    fn send_text(&mut self, text: &str) {
        let frame = client_frame(OpCode::Text, text.as_bytes(), false, MASK);
        self.stream.write_all(&frame).unwrap();
    }

    /// The next whole message (the server sends unfragmented frames).
    fn recv(&mut self) -> Received {
        loop {
            if let Some((header, len)) = header::parse(&self.buffer).unwrap() {
                let end = len + header.payload_len as usize;
                if self.buffer.len() >= end {
                    assert!(header.fin && header.mask.is_none());
                    let wire: Vec<u8> = self.buffer[len..end].to_vec();
                    self.buffer.drain(..end);
                    let payload = if header.rsv1 {
                        inflate(&wire)
                    } else {
                        wire.clone()
                    };
                    return Received {
                        opcode: header.opcode,
                        compressed: header.rsv1,
                        wire_len: wire.len(),
                        payload,
                    };
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("a frame in time");
            assert!(n > 0, "the server closed");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// The code of the close frame the server sends next (other messages
    /// are skipped).
    fn close_code(&mut self) -> u16 {
        loop {
            let message = self.recv();
            if message.opcode == OpCode::Close {
                return u16::from_be_bytes([message.payload[0], message.payload[1]]);
            }
        }
    }
}

/// Inflates one message as a client does: fresh state, the tail put back.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::new();
    while (inflater.total_in() as usize) < input.len() || out.len() == out.capacity() {
        out.reserve(64 << 10);
        let used = inflater.total_in() as usize;
        inflater
            .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
            .expect("the server's frame inflates");
    }
    out
}

/// A chat line of about `len` bytes, as compressible as real text.
fn chat(len: usize) -> String {
    "alice: are we still on for lunch at noon? bob: yes, the usual place. "
        .chars()
        .cycle()
        .take(len)
        .collect()
}

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn offers_are_accepted_declined_or_narrowed_as_the_rfc_says() {
    let server = Server::start(&["--shards", "1"]);
    let answer = |offer: Option<&str>| DeflateClient::connect(&server, "/ws", offer).extensions;
    assert_eq!(answer(Some(OFFER)).as_deref(), Some(ANSWER));
    assert_eq!(answer(None), None);
    assert_eq!(answer(Some("x-webkit-deflate-frame")), None);
    assert_eq!(
        answer(Some("permessage-deflate; server_max_window_bits=9")),
        Some(format!("{ANSWER}; server_max_window_bits=9"))
    );
    // A first offer declined (window 7 is out of range), the second taken.
    assert_eq!(
        answer(Some(
            "permessage-deflate; server_max_window_bits=7, permessage-deflate"
        ))
        .as_deref(),
        Some(ANSWER)
    );
    let off = Server::start(&["--shards", "1", "--compression", "off"]);
    assert_eq!(
        DeflateClient::connect(&off, "/ws", Some(OFFER)).extensions,
        None
    );
}

#[test]
fn one_compressed_frame_serves_every_subscriber() {
    let server = Server::start(&["--shards", "2"]);
    let mut subscribers: Vec<DeflateClient> = (0..8)
        .map(|_| DeflateClient::connect(&server, "/ws?sub=chat", Some(OFFER)))
        .collect();
    let mut plain = DeflateClient::connect(&server, "/ws?sub=chat", None);
    // A client whose window is 2^8: only messages up to 256 bytes suit it.
    let mut narrow = DeflateClient::connect(
        &server,
        "/ws?sub=chat",
        Some("permessage-deflate; server_max_window_bits=8"),
    );
    wait_for_subscriptions(&server, 10);
    let before = get_json(&server, "/api/stats")["total"].clone();
    let messages: Vec<String> = (0..20).map(|i| format!("{i} {}", chat(1000))).collect();
    for message in &messages {
        support::publish(&server, "chat", json!(message));
    }
    // Under --compression-min-bytes (256): uncompressed for everyone.
    support::publish(&server, "chat", json!("short"));
    for client in subscribers.iter_mut() {
        for (i, message) in messages.iter().enumerate() {
            let got = client.recv();
            assert!(got.compressed, "publication {i} compressed");
            assert_eq!(got.json()["data"], json!(message));
            assert!(got.wire_len * 2 < got.payload.len(), "{} B", got.wire_len);
        }
        let short = client.recv();
        assert!(!short.compressed);
        assert_eq!(short.json()["data"], "short");
    }
    for client in [&mut plain, &mut narrow] {
        for message in &messages {
            let got = client.recv();
            assert!(!got.compressed);
            assert_eq!(got.json()["data"], json!(message));
        }
        assert_eq!(client.recv().json()["data"], "short");
    }
    let after = get_json(&server, "/api/stats")["total"].clone();
    let count = |name: &str| after[name].as_u64().unwrap() - before[name].as_u64().unwrap();
    assert_eq!(count("deliveries_compressed"), 8 * 20);
    // Once per publication on each shard that has such subscribers.
    let compressions = count("publications_compressed");
    assert!(
        (20..=40).contains(&compressions),
        "{compressions} compressions for 160 deliveries"
    );
}

#[test]
fn raw_rooms_compress_text_and_binary_and_inflate_what_members_send() {
    let server = Server::start(&["--shards", "1"]);
    let mut member = DeflateClient::connect(&server, "/ws/room", Some(OFFER));
    let mut other = DeflateClient::connect(&server, "/ws/room?echo=0", Some(OFFER));
    wait_for_subscriptions(&server, 2);
    let text = chat(3000);
    other.send_compressed(OpCode::Text, text.as_bytes(), 100);
    let got = member.recv();
    assert_eq!((got.opcode, got.compressed), (OpCode::Text, true));
    assert!(
        got.payload == text.as_bytes(),
        "{} bytes",
        got.payload.len()
    );
    let binary: Vec<u8> = (0..4000u32).map(|i| (i % 13) as u8).collect();
    member.send_compressed(OpCode::Binary, &binary, 1 << 20);
    let got = other.recv();
    assert_eq!((got.opcode, got.compressed), (OpCode::Binary, true));
    assert!(got.payload == binary, "{} bytes", got.payload.len());
    assert_eq!(
        get_json(&server, "/api/stats")["total"]["messages_inflated"],
        2
    );
}

#[test]
fn a_deflate_bomb_closes_its_sender_with_1009_and_nobody_else_notices() {
    let server = Server::start(&["--shards", "1", "--max-message-bytes", "64KiB"]);
    let mut bystander = DeflateClient::connect(&server, "/ws?sub=news", Some(OFFER));
    let mut attacker = DeflateClient::connect(&server, "/ws", Some(OFFER));
    wait_for_subscriptions(&server, 1);
    // 16 MiB of one repeated op, a few KiB on the wire.
    let bomb = format!(
        r#"{{"op":"pub","ch":"news","data":"{}"}}"#,
        "A".repeat(16 << 20)
    );
    attacker.send_compressed(OpCode::Text, bomb.as_bytes(), 1 << 20);
    assert_eq!(attacker.close_code(), 1009);
    // The same client, a sane compressed op, on a new connection: fine.
    let mut honest = DeflateClient::connect(&server, "/ws", Some(OFFER));
    let op = json!({"op":"pub","ch":"news","data":chat(2000),"id":1}).to_string();
    honest.send_compressed(OpCode::Text, op.as_bytes(), 1 << 20);
    assert_eq!(honest.recv().json()["op"], "ack");
    let got = bystander.recv();
    assert_eq!(got.json()["data"], json!(chat(2000)));
    wait_until("the bomb's close counted", || {
        get_json(&server, "/api/stats")["total"]["closed"]["too_large"] == 1
    });
}

#[test]
fn compressed_garbage_closes_with_1007_and_uncompressed_rsv1_needs_negotiation() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = DeflateClient::connect(&server, "/ws", Some(OFFER));
    let mut frame = client_frame(OpCode::Text, &[0xff; 16], false, MASK);
    frame[0] |= 0x40;
    client.stream.write_all(&frame).unwrap();
    assert_eq!(client.close_code(), 1007);
    // RSV1 from a client that did not negotiate the extension: 1002.
    let mut plain = DeflateClient::connect(&server, "/ws", None);
    plain.send_compressed(OpCode::Text, br#"{"op":"ping"}"#, 100);
    assert_eq!(plain.close_code(), 1002);
    // And a negotiated client may still send uncompressed messages.
    let mut mixed = DeflateClient::connect(&server, "/ws", Some(OFFER));
    mixed.send_text(r#"{"op":"ping","id":"p"}"#);
    assert_eq!(mixed.recv().json()["op"], "pong");
}

/// Reads frames until `count` envelopes came, splitting batched frames on
/// `\n`; returns the envelopes and how many frames carried them.
fn envelopes(client: &mut DeflateClient, count: usize) -> (Vec<Value>, usize, bool) {
    let (mut got, mut frames, mut compressed) = (Vec::new(), 0, false);
    while got.len() < count {
        let message = client.recv();
        frames += 1;
        compressed |= message.compressed;
        for line in message.payload.split(|b| *b == b'\n') {
            got.push(serde_json::from_slice(line).expect("one envelope per line"));
        }
    }
    (got, frames, compressed)
}

#[test]
fn batched_subscribers_get_envelopes_queued_together_in_one_frame() {
    let server = Server::start(&["--shards", "1"]);
    let mut batched = DeflateClient::connect(&server, "/ws?sub=b&batch=1", None);
    let mut both = DeflateClient::connect(&server, "/ws?sub=b&batch=1", Some(OFFER));
    let mut unbatched = DeflateClient::connect(&server, "/ws?sub=b", None);
    let mut publisher = DeflateClient::connect(&server, "/ws", None);
    wait_for_subscriptions(&server, 3);
    // Multi-line JSON data: its line breaks must not split envelopes.
    let messages: Vec<String> = (0..50).map(|i| format!("{i}: {}", chat(400))).collect();
    // Sent in one write, so the server reads, orders and fans them out in
    // one turn: they are queued together for each subscriber.
    let mut burst = Vec::new();
    for message in &messages {
        let op = format!(
            "{{\"op\":\"pub\",\n\"ch\":\"b\",\r\n\"data\":{}}}",
            json!(message)
        );
        burst.extend(client_frame(OpCode::Text, op.as_bytes(), false, MASK));
    }
    publisher.stream.write_all(&burst).unwrap();
    let expected: Vec<Value> = messages.iter().map(|m| json!(m)).collect();
    let data = |got: &[Value]| got.iter().map(|e| e["data"].clone()).collect::<Vec<_>>();
    let (got, frames, _) = envelopes(&mut batched, 50);
    assert_eq!(data(&got), expected);
    assert!(frames < 50, "{frames} frames for 50 envelopes");
    // Compressed and batched: one deflate stream per frame, still split on \n.
    let (got, frames, compressed) = envelopes(&mut both, 50);
    assert_eq!(data(&got), expected);
    assert!(
        compressed && frames < 50,
        "{frames} frames, compressed {compressed}"
    );
    let (got, frames, _) = envelopes(&mut unbatched, 50);
    assert_eq!((data(&got), frames), (expected, 50));
    // Seqs in order across the batches.
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
}
