//! How one connection's messages are written: every frame the shard sends a
//! client is encoded by the connection's codec, never by the shard itself.
//! Fan-out encodes each publication once per protocol present on the
//! channel, compresses it at most once more for the subscribers that
//! negotiated permessage-deflate ([`PublicationFrames`]), and shares the
//! bytes among them (`shard/index.rs`).

use bytes::Bytes;

use crate::{deflate::Deflater, extension::Agreement, msgpack};
use crate::{
    frame,
    protocol::{self, OpError, RequestId},
    publication::Payload,
};

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The JSON envelope protocol (`/ws`): `msg` envelopes, acks, errors.
    Json,
    /// A raw room (`/ws/<channel>`): publications verbatim, no envelope. A
    /// room member sends no ops, so it is never acknowledged; the one
    /// control message it can get is the JSON `err` of a refused join.
    Raw,
    /// The JSON protocol's ops and fields in MessagePack (`/ws` with
    /// `Sec-WebSocket-Protocol: shardcast.msgpack`, `conn/msgpack.rs`).
    MsgPack,
}

impl Protocol {
    /// How many protocols there are (`protocol as usize` indexes them).
    pub const COUNT: usize = 3;
}

/// How one connection's frames are written: its protocol, and whether
/// its publications may go compressed (permessage-deflate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub protocol: Protocol,
    /// permessage-deflate was negotiated: the window the client inflates
    /// with, in bits; 0: it was not.
    pub deflate_window: u8,
}

impl Codec {
    /// The JSON protocol, uncompressed.
    pub const JSON: Codec = Codec {
        protocol: Protocol::Json,
        deflate_window: 0,
    };
    /// A raw room, uncompressed.
    pub const RAW: Codec = Codec {
        protocol: Protocol::Raw,
        deflate_window: 0,
    };

    /// This codec with permessage-deflate as agreed (if it was).
    pub fn with_deflate(self, agreement: Option<&Agreement>) -> Codec {
        Codec {
            deflate_window: agreement.map_or(0, |a| a.window_bits),
            ..self
        }
    }

    /// Whether the client may send compressed messages.
    pub fn inflates(self) -> bool {
        self.deflate_window != 0
    }

    /// The uncompressed frame of publication `seq` of `channel`.
    pub fn publication(self, channel: &str, seq: u64, payload: &Payload) -> Bytes {
        match self.protocol {
            Protocol::Json => protocol::encode_msg(channel, seq, payload.kind, &payload.bytes),
            Protocol::Raw => protocol::encode_raw(payload.kind, &payload.bytes),
            Protocol::MsgPack => msgpack::publication(channel, seq, payload),
        }
    }

    /// A control message of the JSON protocol, in this codec.
    fn control(self, json: Bytes) -> Bytes {
        match self.protocol {
            Protocol::MsgPack => msgpack::from_json_frame(&json),
            Protocol::Json | Protocol::Raw => json,
        }
    }

    /// The acknowledgement of op `id` (with the `seq` a publication got).
    pub fn ack(self, id: RequestId<'_>, seq: Option<u64>) -> Bytes {
        self.control(protocol::encode_ack(id, seq))
    }

    /// The acknowledgement of a `sub` with `id`: where the channel stands.
    pub fn sub_ack(
        self,
        id: RequestId<'_>,
        seq: u64,
        epoch: &str,
        recovered: Option<bool>,
        conflates: bool,
    ) -> Bytes {
        self.control(protocol::encode_sub_ack(
            id, seq, epoch, recovered, conflates,
        ))
    }

    /// An op refused, and why.
    pub fn err(self, error: &OpError<'_>) -> Bytes {
        self.control(protocol::encode_err(error))
    }

    /// A channel's subscribers resync: see [`protocol::encode_resync`].
    pub fn resync(self, channel: &str, seq: u64, epoch: &str) -> Bytes {
        self.control(protocol::encode_resync(channel, seq, epoch))
    }

    /// A presence channel's `join` or `leave` of `member` (its JSON object).
    pub fn presence_event(self, join: bool, channel: &str, member: &[u8]) -> Bytes {
        self.control(protocol::encode_presence_event(join, channel, member))
    }

    /// The answer to `presence` (`members`: JSON objects joined by commas).
    pub fn presence(
        self,
        id: Option<RequestId<'_>>,
        channel: &str,
        page: (&[u8], usize, Option<&str>),
    ) -> Bytes {
        let (members, count, cursor) = page;
        let json = protocol::presence_json(id, channel, members, count, cursor);
        self.control(frame::encode(frame::OpCode::Text, &json))
    }

    /// The answer to `occupancy`.
    pub fn occupancy(self, id: Option<RequestId<'_>>, channel: &str, count: usize) -> Bytes {
        self.control(protocol::encode_occupancy(id, channel, count))
    }

    /// The advice a draining server gives before its close.
    pub fn reconnect(self, after_ms: u64) -> Bytes {
        self.control(protocol::encode_reconnect(after_ms))
    }

    /// The server ended the subscription to `channel`.
    pub fn unsubscribed(self, channel: &str, reason: &str) -> Bytes {
        self.control(protocol::encode_unsubscribed(channel, reason))
    }

    /// The answer to a `ping` op.
    pub fn pong(self, id: Option<RequestId<'_>>) -> Bytes {
        self.control(protocol::encode_pong(id))
    }
}

/// One publication's frames, each made the first time a subscriber needs
/// it: at most one uncompressed frame per protocol, and one compressed
/// frame per protocol (compressed from the uncompressed one), shared by
/// every subscriber that speaks it.
pub struct PublicationFrames<'a> {
    channel: &'a str,
    seq: u64,
    payload: &'a Payload,
    /// Its fossil delta against the channel's publication before, when the
    /// owner made one, and the frame of it (JSON only).
    delta: Option<&'a Bytes>,
    delta_frame: Option<Bytes>,
    plain: [Option<Bytes>; Protocol::COUNT],
    /// `Some(None)`: compression was tried and did not pay.
    compressed: [Option<Option<Bytes>>; Protocol::COUNT],
}

impl<'a> PublicationFrames<'a> {
    #[inline]
    pub fn new(channel: &'a str, seq: u64, payload: &'a Payload, delta: Option<&'a Bytes>) -> Self {
        PublicationFrames {
            channel,
            seq,
            payload,
            delta,
            delta_frame: None,
            plain: Default::default(),
            compressed: Default::default(),
        }
    }

    /// The delta frame for a subscriber with `codec` that was sent the
    /// publication before, if the owner made a delta (JSON protocol only).
    #[inline]
    pub fn delta(&mut self, codec: Codec) -> Option<&Bytes> {
        let delta = self.delta.filter(|_| codec.protocol == Protocol::Json)?;
        let (channel, seq) = (self.channel, self.seq);
        Some(
            self.delta_frame
                .get_or_insert_with(|| protocol::encode_msg_delta(channel, seq, delta)),
        )
    }

    /// Compressions made and declined (did not pay) so far.
    pub fn compressions(&self) -> (u64, u64) {
        let made = self
            .compressed
            .iter()
            .filter(|c| matches!(c, Some(Some(_))))
            .count();
        let declined = self
            .compressed
            .iter()
            .filter(|c| matches!(c, Some(None)))
            .count();
        (made as u64, declined as u64)
    }

    /// The frame for a subscriber with `codec`: compressed when it
    /// negotiated permessage-deflate, compression pays and the message fits
    /// its window; uncompressed otherwise.
    #[inline]
    pub fn frame(&mut self, codec: Codec, deflater: &mut Deflater) -> &Bytes {
        let at = codec.protocol as usize;
        let (channel, seq, payload) = (self.channel, self.seq, self.payload);
        let plain = self.plain[at].get_or_insert_with(|| codec.publication(channel, seq, payload));
        if codec.deflate_window == 0 {
            return plain;
        }
        let body = frame::payload_of(plain);
        if !Agreement::fits(codec.deflate_window, body.len()) {
            return plain;
        }
        let compressed = self.compressed[at].get_or_insert_with(|| {
            let opcode = if plain[0] & 0x0f == frame::OpCode::Binary as u8 {
                frame::OpCode::Binary
            } else {
                frame::OpCode::Text
            };
            deflater.frame(opcode, body)
        });
        compressed.as_ref().unwrap_or(&*plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        deflate::{DeflateSettings, Inflater},
        extension,
        protocol::{ErrorCode, PayloadKind},
    };
    use serde_json::{json, Value};

    const MSGPACK: Codec = Codec {
        protocol: Protocol::MsgPack,
        deflate_window: 0,
    };

    fn id(json: &str) -> RequestId<'_> {
        RequestId::parse(json).unwrap()
    }

    fn deflater() -> Deflater {
        Deflater::new(DeflateSettings {
            min_bytes: 64,
            level: 6,
        })
    }

    /// A codec of `protocol` that negotiated permessage-deflate from `offer`.
    fn deflating(protocol: Protocol, offer: &str) -> Codec {
        Codec {
            protocol,
            deflate_window: 0,
        }
        .with_deflate(extension::negotiate(offer).as_ref())
    }

    /// The JSON text frame's body.
    fn json_of(frame: &[u8]) -> Value {
        assert_eq!(frame[0] & 0x0f, frame::OpCode::Text as u8, "a text frame");
        serde_json::from_slice(frame::payload_of(frame)).unwrap()
    }

    /// The MessagePack binary frame's map, as the JSON value it says.
    fn msgpack_of(frame: &[u8]) -> Value {
        fn to_json(value: rmpv::Value) -> Value {
            match value {
                rmpv::Value::Nil => Value::Null,
                rmpv::Value::Boolean(b) => json!(b),
                rmpv::Value::Integer(i) => match i.as_u64() {
                    Some(u) => json!(u),
                    None => json!(i.as_i64().unwrap()),
                },
                rmpv::Value::F64(f) => json!(f),
                rmpv::Value::String(s) => json!(s.into_str().unwrap()),
                rmpv::Value::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
                rmpv::Value::Map(fields) => Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k.as_str().unwrap().to_owned(), to_json(v)))
                        .collect(),
                ),
                other => panic!("not in a server message: {other:?}"),
            }
        }
        assert_eq!(
            frame[0] & 0x0f,
            frame::OpCode::Binary as u8,
            "a binary frame"
        );
        to_json(rmpv::decode::read_value(&mut frame::payload_of(frame)).unwrap())
    }

    /// A JSON publication long and repetitive enough to compress.
    fn compressible() -> Payload {
        let data = format!("[{}0]", "{\"px\":187.25,\"qty\":100},".repeat(40));
        Payload::copy_of(PayloadKind::Json, data.as_bytes())
    }

    #[test]
    fn a_json_subscriber_gets_the_msg_envelope() {
        let payload = Payload::copy_of(PayloadKind::Json, br#"{"px":1}"#);
        assert_eq!(
            json_of(&Codec::JSON.publication("prices", 9, &payload)),
            json!({"op":"msg","ch":"prices","seq":9,"data":{"px":1}})
        );
    }

    #[test]
    fn a_raw_member_gets_the_payload_verbatim_in_a_frame_of_its_kind() {
        for (kind, opcode) in [
            (PayloadKind::Json, frame::OpCode::Text),
            (PayloadKind::Text, frame::OpCode::Text),
            (PayloadKind::Binary, frame::OpCode::Binary),
        ] {
            let payload = Payload::copy_of(kind, b"{\"a\": 1}\xff");
            let frame = Codec::RAW.publication("room", 3, &payload);
            assert_eq!(frame[0] & 0x0f, opcode as u8, "{kind:?}");
            assert_eq!(frame::payload_of(&frame), &payload.bytes[..], "{kind:?}");
        }
    }

    #[test]
    fn a_msgpack_subscriber_gets_the_publication_as_a_binary_map() {
        let payload = Payload::copy_of(PayloadKind::Json, br#"{"px":1.5,"n":-2}"#);
        assert_eq!(
            msgpack_of(&MSGPACK.publication("prices", 4, &payload)),
            json!({"op":"msg","ch":"prices","seq":4,"data":{"px":1.5,"n":-2}})
        );
    }

    #[test]
    fn every_control_message_in_messagepack_says_what_the_json_one_says() {
        let error = OpError::new(ErrorCode::Forbidden, "no \"way\"", Some(id("\"e\"")));
        let member = br#"{"user":"u","conn":"c.1","info":{"x":[1,2]}}"#;
        let controls: [&dyn Fn(Codec) -> Bytes; 11] = [
            &|c| c.ack(id("1"), Some(7)),
            &|c| c.ack(id("\"a\""), None),
            &|c| c.sub_ack(id("2"), 41, "ab-1", Some(false), true),
            &|c| c.err(&error),
            &|c| c.resync("news", 5, "ab-2"),
            &|c| c.presence_event(false, "room", member),
            &|c| c.presence(Some(id("3")), "room", (member, 1, Some("c.1"))),
            &|c| c.occupancy(None, "room", 12),
            &|c| c.reconnect(2500),
            &|c| c.unsubscribed("news", "kicked"),
            &|c| c.pong(Some(id("-4"))),
        ];
        for (i, control) in controls.iter().enumerate() {
            let json = json_of(&control(Codec::JSON));
            assert!(json["op"].is_string(), "{i}: {json}");
            assert_eq!(msgpack_of(&control(MSGPACK)), json, "{i}");
        }
    }

    #[test]
    fn a_raw_room_gets_control_messages_as_the_json_text() {
        let error = OpError::new(ErrorCode::Forbidden, "no", None);
        assert_eq!(Codec::RAW.err(&error), Codec::JSON.err(&error));
        assert_eq!(
            json_of(&Codec::RAW.err(&error)),
            json!({"op":"err","code":"forbidden","msg":"no"})
        );
    }

    #[test]
    fn a_codec_takes_the_agreed_window_and_inflates_only_with_one() {
        assert!(!Codec::JSON.inflates());
        assert_eq!(Codec::JSON.with_deflate(None), Codec::JSON);
        let small = deflating(
            Protocol::Json,
            "permessage-deflate; server_max_window_bits=9",
        );
        assert_eq!((small.deflate_window, small.inflates()), (9, true));
        let plain = deflating(Protocol::MsgPack, "permessage-deflate");
        assert_eq!(plain.deflate_window, extension::MAX_WINDOW_BITS);
        assert_eq!(plain.protocol, Protocol::MsgPack);
    }

    #[test]
    fn a_publications_frame_is_made_once_per_protocol_and_shared() {
        let payload = compressible();
        let mut frames = PublicationFrames::new("c", 1, &payload, None);
        let mut deflater = deflater();
        let first = frames.frame(Codec::JSON, &mut deflater).clone();
        let again = frames.frame(Codec::JSON, &mut deflater).clone();
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same bytes, shared");
        let msgpack = frames.frame(MSGPACK, &mut deflater).clone();
        assert_ne!(msgpack, first, "each protocol its own");
        assert_eq!(
            frames.compressions(),
            (0, 0),
            "nobody asked for compression"
        );
    }

    #[test]
    fn a_deflating_subscriber_gets_the_same_message_compressed() {
        let payload = compressible();
        let mut frames = PublicationFrames::new("c", 1, &payload, None);
        let mut deflater = deflater();
        let plain = frames.frame(Codec::JSON, &mut deflater).clone();
        let codec = deflating(Protocol::Json, "permessage-deflate");
        let compressed = frames.frame(codec, &mut deflater).clone();
        assert!(frame::is_compressed(&compressed) && !frame::is_compressed(&plain));
        assert!(compressed.len() < plain.len());
        let inflated = Inflater::default()
            .inflate(frame::payload_of(&compressed), 1 << 20)
            .unwrap();
        assert_eq!(inflated, frame::payload_of(&plain));
        let shared = frames.frame(codec, &mut deflater).clone();
        assert_eq!(shared.as_ptr(), compressed.as_ptr(), "compressed once");
        assert_eq!(frames.compressions(), (1, 0));
    }

    #[test]
    fn compression_that_does_not_pay_is_tried_once_and_the_plain_frame_sent() {
        let payload = Payload::copy_of(PayloadKind::Json, b"1");
        let mut frames = PublicationFrames::new("c", 1, &payload, None);
        let mut deflater = deflater();
        let codec = deflating(Protocol::Json, "permessage-deflate");
        let sent = frames.frame(codec, &mut deflater).clone();
        assert!(!frame::is_compressed(&sent));
        assert_eq!(sent, Codec::JSON.publication("c", 1, &payload));
        frames.frame(codec, &mut deflater);
        assert_eq!(frames.compressions(), (0, 1), "declined once");
    }

    #[test]
    fn a_message_longer_than_a_small_window_goes_plain_without_a_try() {
        let payload = compressible();
        assert!(payload.bytes.len() > 1 << 8);
        let mut frames = PublicationFrames::new("c", 1, &payload, None);
        let codec = deflating(
            Protocol::Json,
            "permessage-deflate; server_max_window_bits=8",
        );
        let sent = frames.frame(codec, &mut deflater()).clone();
        assert!(!frame::is_compressed(&sent));
        assert_eq!(frames.compressions(), (0, 0));
    }

    #[test]
    fn a_delta_frame_goes_to_json_subscribers_only_and_is_made_once() {
        let payload = Payload::copy_of(PayloadKind::Json, b"[1,2,3]");
        let delta = Bytes::from_static(b"7\n2:ab1;");
        let mut frames = PublicationFrames::new("c", 5, &payload, Some(&delta));
        assert!(frames.delta(MSGPACK).is_none());
        assert!(frames.delta(Codec::RAW).is_none());
        let frame = frames.delta(Codec::JSON).unwrap().clone();
        assert_eq!(
            json_of(&frame),
            json!({"op":"msg","ch":"c","seq":5,"delta":true,"data":"7\n2:ab1;"})
        );
        assert_eq!(frames.delta(Codec::JSON).unwrap().as_ptr(), frame.as_ptr());
        let mut without = PublicationFrames::new("c", 5, &payload, None);
        assert!(without.delta(Codec::JSON).is_none());
    }
}
