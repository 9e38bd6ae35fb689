//! shardcast-core: the shard's logic without I/O. What a shard decides —
//! which names are channels and which shard owns each, what clients say
//! and how the server answers them (the JSON envelope and its frames), the
//! order, history and fossil deltas of the channels a shard owns, the
//! members of its presence channels, idempotency keys, heartbeats and the
//! memory budget — lives here as plain data and pure functions. No
//! glommio, no sockets, no clock: times are passed in, effects are
//! returned, and the server crate (`shardcast`) drives it from its
//! executors and carries out what it decides. The frame codec is the
//! `shardcast-wire` crate below this one.
//!
//! # Layout
//! - [`channel`]: channel names and owners; [`pattern`]: channel patterns
//!   (`news.*`, `chat.>`) as grants and settings use them.
//! - [`protocol`]: the client's JSON envelope, parsed and encoded;
//!   [`json_data`]: the JSON data every subscriber's parser holds;
//!   [`frame`]: server WebSocket frames, encoded once and shared.
//! - [`codec`]: the protocol a connection speaks (JSON, MessagePack, raw
//!   room) and its frames for each publication; [`msgpack`]: the
//!   MessagePack protocol; [`extension`]: permessage-deflate's
//!   negotiation; [`deflate`]: the shard's compressor and inflater.
//! - [`publication`]: the publication types every layer passes around.
//! - [`registry`]: the shard's connections, by name.
//! - [`subscriptions`]: the shard's subscribers per channel and fan-out
//!   into their queues.
//! - [`owner`]: channel ordering — sequence, epoch, history, deltas
//!   ([`fossil`]), which channels conflate, which idempotency keys were
//!   used ([`idempotency`]: publications made under a key).
//! - [`presence`]: presence channels, their members ([`members`]: the
//!   table, pages of it and their JSON) and their join and leave events;
//!   [`lifecycle`]: which webhook events a shard emits and where, with
//!   [`occupancy`]: which owned channels have subscribers.
//! - [`heartbeat`]: ping and timeout of one connection; [`close`]: why a
//!   connection closes; [`budget`]: the shard's memory budget.

#![warn(unreachable_pub)]

pub mod budget;
pub mod channel;
pub mod close;
pub mod codec;
pub mod deflate;
pub mod extension;
pub mod fossil;
pub mod frame;
pub mod heartbeat;
pub mod idempotency;
pub mod json_data;
pub mod lifecycle;
pub mod members;
pub mod msgpack;
pub mod occupancy;
pub mod owner;
pub mod pattern;
pub mod presence;
pub mod protocol;
pub mod publication;
pub mod registry;
#[cfg(test)]
mod simulation;
pub mod subscriptions;
#[cfg(test)]
pub(crate) mod testing;
