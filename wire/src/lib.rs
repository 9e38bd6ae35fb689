//! shardcast-wire: the WebSocket frame codec of shardcast (RFC 6455), with
//! no I/O, no clock and no dependency — its own crate so that the compiler
//! keeps it from using anything of the server. The server, its load
//! generator and its tests all frame with it.
//!
//! # Layout
//! - [`header`]: one frame header, parsed and written; masking.
//! - [`decoder`]: what a client sends, fed as it is read: unmasking,
//!   reassembly, limits, RSV rules, UTF-8, close payloads.
//! - [`utf8`]: UTF-8 validation of a message arriving in pieces.
//! - [`close`]: close payloads and which codes an endpoint may send.
//! - [`encode`]: whole frames for servers and clients, and the round trip
//!   the fuzzer checks ([`fuzzing`]).

pub mod close;
pub mod decoder;
pub mod encode;
pub mod fuzzing;
pub mod header;
pub mod utf8;

pub use decoder::{DecodeError, Decoded, Decoder, Event, Limits};
pub use header::{FrameHeader, OpCode, MAX_HEADER, MAX_SERVER_HEADER};
