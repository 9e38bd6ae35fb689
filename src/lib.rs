//! shardcast: a thread-per-core WebSocket broadcast (pub/sub fan-out) server.
//!
//! # Layout
//! - [`config`]: the one `Config` type, in typed sections, and its sources
//!   (flags, `SHARDCAST_*` environment, TOML file); [`settings`]: one
//!   declaration per setting (`section!`), from which come its flag, its
//!   variable, its TOML key, its default, its parse, its `check-config` line
//!   and its README row (security, the engine and webhooks declare their
//!   sections in their own modules); [`units`]: sizes and durations in them.
//! - [`client`]: `shardcast sub` and `shardcast pub`, a command-line client
//!   of the JSON protocol, bounded in time and memory against any server.
//! - [`runtime`]: binds the listeners (refusing an address another process
//!   holds), starts one pinned glommio executor per
//!   shard, reports readiness and failures; [`shutdown`]: signals → shards.
//! - What a shard decides without I/O is the `shardcast-core` crate
//!   (`core/`): channel names, the client protocol's envelopes and codecs,
//!   the registry of connections, subscriptions and fan-out, ordering with
//!   history, deltas, conflation and idempotency keys, presence and
//!   lifecycle events (components the shard drives through host traits),
//!   heartbeats, the memory budget, and its seeded
//!   simulation of nodes following Redis. The modules re-exported here
//!   ([`protocol`], [`channel`], [`frame`], [`json_data`], `publication`,
//!   `close`, `heartbeat`, `conn::codec`, `shard::owner`, ...) are its.
//! - [`shard`]: one shard on its executor — the components and the
//!   routing between them (publications to their owners, questions and
//!   answers), the owner's side of the broker (`shard::cluster`), the glue
//!   to presence, lifecycle, the server API and snapshots, the glommio
//!   shell (`shard::shell`: flush pass, admission and shutdown, clock and
//!   heartbeats), one accepted socket's HTTP and upgrade (`shard::serve`), the
//!   WebSocket session task (`shard::session`), and a seeded simulation of
//!   a node's shards (`shard::simulation`, tests).
//! - [`engine`]: how nodes agree — the Redis engine (a pipelined RESP3
//!   client per shard, Lua scripts that order and keep history), the NATS
//!   engine (core NATS fan-out), each behind the `Broker` trait the shard
//!   asks (`engine::broker`), broker URLs, reconnect backoff, and the
//!   record a publication travels between nodes as; the shard's side is
//!   `shard::cluster`.
//! - [`mesh`]: typed cross-shard messages (casts, questions and answers),
//!   the pending-reply table, and the ordered per-peer links;
//!   [`publication`]: the publication types every layer shares; [`close`]:
//!   why a connection closes.
//! - [`conn`]: one client connection's own parts, which know nothing of the
//!   shard — HTTP parsing (`conn::http`) and the API's queries
//!   (`conn::api_query`), the session's protocol as a state
//!   machine without I/O (`conn::machine`), envelopes batched into one
//!   frame (`conn::batch`), the bounded queue (`conn::outbox` around
//!   `conn::queue`, whose small frames lie in the shard's shared chunks,
//!   `conn::chunk`, or in a buffer of its own) and the shard's flush pass
//!   (`conn::flush`); `Conn` is the core's `Subscriber`.
//! - [`security`]: tokens and channel permissions, API key, origins, rate
//!   limit, per-IP cap, TLS.
//! - [`stats`]: per-shard counters and the latency histogram;
//!   [`snapshot`]: what a shard reports and the server-wide report built from
//!   them; [`exposition`]: that report as Prometheus text; [`process`]: CPU
//!   and memory of the process; [`clock`]: the monotonic clock publications
//!   are stamped with.
//! - `GET /` serves `src/dashboard.html`, a page fed by the `$stats` channel.
//! - [`webhook`]: lifecycle webhooks — the queue, batches, signatures, the
//!   sender; which events and where is the core's `lifecycle`, driven by
//!   `shard::lifecycle`.
//! - [`stream`]: a socket, plain or TLS, as connections and broker links
//!   write it; [`sync`]: a shard-local wait list; [`random`]: the one source of random
//!   numbers (the OS's); [`error`]: the server's error types;
//!   [`fuzzing`]: entry points of the parser fuzzers (`fuzz/`).
//!
//! `docs/design.md` explains how these fit together; `docs/protocol.md`
//! specifies the wire protocol.

#![warn(unreachable_pub)]

pub(crate) mod api;
pub use shardcast_core::channel;
pub mod client;
pub(crate) mod clock;
pub(crate) use shardcast_core::close;
pub mod config;
pub(crate) mod conn;
pub(crate) mod engine;
pub mod error;
pub(crate) mod exposition;
pub use shardcast_core::frame;
pub mod fuzzing;
pub(crate) use shardcast_core::heartbeat;
pub use shardcast_core::json_data;
pub(crate) mod mesh;
pub mod process;
pub use shardcast_core::protocol;
pub(crate) use shardcast_core::publication;
pub(crate) mod random;
pub(crate) mod readiness;
pub mod runtime;
pub(crate) mod security;
pub mod settings;
pub(crate) mod shard;
pub mod shutdown;
pub(crate) mod snapshot;
pub(crate) mod stats;
pub(crate) mod stream;
pub(crate) mod sync;
pub mod tls_client;
pub mod units;
pub(crate) mod webhook;

pub use config::Config;

/// What the micro-benchmarks (`benches/`) measure of the server's inside:
/// not an API, and not kept stable.
#[doc(hidden)]
pub mod internals {
    pub use crate::{
        api::first_names,
        channel::Access,
        conn::codec::Codec,
        conn::deflate::{DeflateSettings, Deflater},
        conn::{flush::Flusher, Conn},
        publication::{ConnRef, Payload},
        security::{
            rate::{RateLimit, TokenBucket},
            ring_jwt,
            token::{unix_now, Verifier},
        },
        stats::Stats,
    };

    /// The subscriptions of a shard's connections.
    pub type Index = shardcast_core::subscriptions::Subscriptions<crate::conn::Conn>;
}

pub use runtime::Server;
pub use shutdown::ShutdownHandle;
