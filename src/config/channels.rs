//! The sections of the settings about channels: what is kept of their
//! publications, how those are compressed and conflated, and which
//! channels have presence. Channel patterns are parsed here, once, into
//! [`ChannelPattern`]s.

use std::time::Duration;

use crate::{
    security::pattern::ChannelPattern,
    settings::{ensure, section, Switch},
    units::{ByteSize, HumanDuration},
};

section! {
    /// What is remembered of each channel's publications.
    pub struct History {
        /// Publications each channel keeps for recovery (`sub` with
        /// `since`); 0 keeps none.
        size: usize as usize = 100 => new("history-size", "N")
            .help("Publications kept per channel for clients that resubscribe with `since` (0: none)")
            .readme("publications kept per channel for clients resuming with `since` (0: none)")
            .check(|size| ensure(
                *size <= 100_000,
                || format!("history-size is {size}, must be at most 100000"),
            ));
        /// Age after which a publication leaves the history; a channel with
        /// no history and no subscriber is then forgotten (its `seq`
        /// restarts under a new epoch).
        ttl: Duration as HumanDuration = Duration::from_secs(300) => new("history-ttl", "DURATION")
            .help("How long a publication stays in its channel's history")
            .readme("oldest publication kept; idle channels are then forgotten")
            .check(|ttl| ensure(!ttl.is_zero(), || "history-ttl must be above zero".into()));
        /// Bytes of history one shard keeps over all its channels; over it,
        /// the oldest publications go first.
        max_bytes: usize as ByteSize = 64 << 20 => new("history-max-bytes", "SIZE")
            .help("History memory per shard over all channels; the oldest go first when over")
            .readme("history memory per shard over all channels; the oldest go first");
        /// How long a publication made under an `idempotency_key` (HTTP
        /// publish, WebSocket `pub`) is remembered: a retry within it is
        /// answered with the first one's `seq`.
        idempotency_window: Duration as HumanDuration = Duration::from_secs(120) => new("idempotency-window", "DURATION")
            .help("How long a publish's idempotency_key (HTTP publish, WebSocket pub) is remembered: a retry within it gets the first one's seq and is not published again")
            .readme("an HTTP publish or WebSocket `pub` retried with the same `idempotency_key` within this is answered with the first one's `seq`, not published again")
            .check(|window| ensure(
                (Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(window),
                || "idempotency-window must be 1s to 24h".into(),
            ));
    }
}

section! {
    /// permessage-deflate (RFC 7692).
    pub struct Compression {
        /// Offer permessage-deflate to clients that ask for it.
        enabled: bool as Switch = true => new("compression", "on|off")
            .help("Compress messages with permessage-deflate for clients that offer it: on or off")
            .readme("permessage-deflate for clients that offer it: each publication compressed once per shard for all of them (docs/protocol.md)");
        /// Messages under this many bytes go uncompressed.
        min_bytes: usize as ByteSize = 256 => new("compression-min-bytes", "SIZE")
            .help("Messages under this size go uncompressed")
            .readme("smaller messages go uncompressed");
        /// zlib level of compression, 1 (fastest) to 9 (smallest).
        level: u32 as u32 = 3 => new("compression-level", "N")
            .help("zlib level, 1 (fastest) to 9 (smallest)")
            .readme("zlib level 1–9")
            .check(|level| ensure(
                (1..=9).contains(level),
                || format!("compression-level is {level}, must be 1..=9"),
            ));
    }
}

section! {
    /// Channels whose keyed publications conflate for subscribers that fall
    /// behind.
    pub struct Conflation {
        /// The channels (token-pattern syntax: `prices.*`, `quotes.>`).
        patterns: Vec<ChannelPattern> as Vec<String> = Vec::new() => new("conflate", "PATTERNS")
            .default_text("none")
            .help("Channels (patterns, comma-separated: prices.*, quotes.>) whose publications with a \"key\" conflate for subscribers that fall behind")
            .readme("channel patterns whose publications with a `key` conflate for a subscriber with more than `--conflate-after-bytes` queued: the newest value per key replaces the older one still waiting, instead of the subscriber being closed as slow");
        /// Bytes queued for a subscriber over which a keyed publication of a
        /// conflated channel replaces the older one with its key still
        /// queued.
        after_bytes: usize as ByteSize = 64 << 10 => new("conflate-after-bytes", "SIZE")
            .help("Queued bytes over which a subscriber's older keyed publication is replaced by the newer one")
            .readme("queued bytes over which `--conflate` applies");
    }
}

section! {
    /// Channels whose subscribers are listed, counted and announced.
    pub struct Presence {
        /// The channels (token-pattern syntax).
        patterns: Vec<ChannelPattern> as Vec<String> = Vec::new() => new("presence", "PATTERNS")
            .default_text("none")
            .help("Channels (patterns, comma-separated: room.*, doc.>) whose subscribers are listed, counted and announced (presence, occupancy, join/leave)")
            .readme("channels (patterns) whose subscribers are listed, counted and announced (`presence`, `occupancy`, `join`/`leave`; `GET /api/presence/<ch>`)");
        /// With the Redis engine, a node's presence members stay listed this
        /// long after it last refreshed them (every third of it): a node
        /// that dies drops out within it.
        ttl: Duration as HumanDuration = Duration::from_secs(30) => new("presence-ttl", "DURATION")
            .help("With the Redis engine, how long a node's presence members outlive its last refresh (a dead node drops out within it)")
            .readme("with engine `redis`, how long a node's presence members outlive its last refresh: a node that dies drops out within it")
            .check(|ttl| ensure(
                *ttl >= Duration::from_millis(300),
                || "presence-ttl must be at least 300ms".into(),
            ));
    }
}
