//! How one connection's messages are written: every frame the shard sends a
//! client is encoded by the connection's codec, never by the shard itself.
//! Fan-out encodes each publication once per codec present on the channel
//! and shares the bytes among that codec's subscribers (`shard/index.rs`).
//! A binary codec joins here later; compression wraps a codec's frames.

use bytes::Bytes;

use crate::{
    protocol::{self, OpError},
    publication::Payload,
};

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The JSON envelope protocol (`/ws`): `msg` envelopes, acks, errors.
    Json,
    /// A raw room (`/ws/<channel>`): publications verbatim, no envelope. A
    /// room member sends no ops, so it is never acknowledged; the one
    /// control message it can get is the JSON `err` of a refused join.
    Raw,
}

impl Codec {
    /// Every codec (`codec as usize` indexes it).
    pub const ALL: [Codec; 2] = [Codec::Json, Codec::Raw];

    /// The frame of publication `seq` of `channel`.
    pub fn publication(self, channel: &str, seq: u64, payload: &Payload) -> Bytes {
        match self {
            Codec::Json => protocol::encode_msg(channel, seq, payload.kind, &payload.bytes),
            Codec::Raw => protocol::encode_raw(payload.kind, &payload.bytes),
        }
    }

    /// The acknowledgement of op `id` (with the `seq` a publication got).
    pub fn ack(self, id: &str, seq: Option<u64>) -> Bytes {
        protocol::encode_ack(id, seq)
    }

    /// The acknowledgement of a `sub` with `id`: where the channel stands.
    pub fn sub_ack(self, id: &str, seq: u64, epoch: &str, recovered: Option<bool>) -> Bytes {
        protocol::encode_sub_ack(id, seq, epoch, recovered)
    }

    /// An op refused, and why.
    pub fn err(self, error: &OpError<'_>) -> Bytes {
        protocol::encode_err(error)
    }

    /// The answer to a JSON `ping` op.
    pub fn pong(self, id: Option<&str>) -> Bytes {
        protocol::encode_pong(id)
    }
}
