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
