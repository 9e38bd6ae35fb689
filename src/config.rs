//! The one `Config` type and its three sources. Command-line flags and
//! `SHARDCAST_*` environment variables (both through clap) and an optional TOML
//! file all fill the same [`ConfigLayer`]; [`Config::resolve`] stacks them
//! (flag > environment > file > built-in default) and checks the result. Nothing
//! here touches sockets or threads.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    error::ConfigError,
    units::{ByteSize, HumanDuration},
};

/// Everything a running server needs to know. Build it with [`Config::resolve`]
/// or start from [`Config::default`] and change fields (tests do).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT). Default `0.0.0.0:8080`;
    /// port 0 picks a free port, reported in the startup line.
    pub listen: SocketAddr,
    /// Number of shards (executors, one pinned per core). Default: the number of
    /// CPUs this process may run on.
    pub shards: usize,
    /// Idle time after which the server pings a connection. Default 25 s.
    pub ping_interval: Duration,
    /// How long a pinged connection may stay silent before it is closed.
    /// Default 10 s.
    pub ping_timeout: Duration,
    /// Bound on the bytes queued for one connection; a subscriber over it is
    /// closed with 1008 "slow consumer". Default 1 MiB.
    pub max_queue_bytes: usize,
    /// Largest message a client may send (after reassembly); larger ones close
    /// the connection with 1009. Default 64 KiB.
    pub max_message_bytes: usize,
    /// Open WebSocket connections over which an upgrade is answered with 503.
    /// Default 100,000.
    pub max_connections: usize,
    /// Open connections on the public address that are not WebSocket
    /// sessions (HTTP requests, keep-alive, handshakes, TLS included); over
    /// it a new one is answered with 503 and closed (over TLS: closed).
    /// Default 4096.
    pub max_http_connections: usize,
    /// Of those, how many one client address (IPv6: /64) may hold; over it
    /// a new one is answered with 429 and closed, so that one address
    /// sending heads slowly cannot take every slot. 0: no cap. Default 256.
    pub max_http_connections_per_ip: u32,
    /// Channels one connection may be subscribed to at once. Default 256.
    pub max_subscriptions: usize,
    /// Time allowed for a client to send its HTTP request head, and to take
    /// each HTTP response. Default 10 s.
    pub handshake_timeout: Duration,
    /// Time allowed after SIGINT/SIGTERM to flush and close. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Read buffer of each shard, where every connection's reads land: the
    /// most one read takes from a socket. Connections hold none of it.
    /// Default 64 KiB.
    pub read_buffer_bytes: usize,
    /// Publications each channel keeps for recovery (`sub` with `since`);
    /// 0 keeps none. Default 100.
    pub history_size: usize,
    /// Age after which a publication leaves the history; a channel with no
    /// history and no subscriber is then forgotten (its `seq` restarts under a
    /// new epoch). Default 5 minutes.
    pub history_ttl: Duration,
    /// Bytes of history one shard keeps over all its channels; over it, the
    /// oldest publications go first. Default 64 MiB.
    pub history_max_bytes: usize,
    /// Time a client has to finish a message once its first byte arrived
    /// (all fragments, the whole payload); over it the connection is closed
    /// with 1008. Default 5 s: 64 KiB at 105 kbit/s.
    pub message_timeout: Duration,
    /// Time a connection's outgoing queue may hold bytes without the socket
    /// taking any; over it the connection is closed (no close frame can get
    /// through). Default 30 s.
    pub send_timeout: Duration,
    /// How long the flush pass holds a connection's queued frames before
    /// writing them, to gather more frames into each write. Zero (the
    /// default) writes once per executor turn. At most 100 ms.
    pub write_delay: Duration,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it.
    /// Default on.
    pub compression: bool,
    /// Messages under this many bytes go uncompressed. Default 256 B.
    pub compression_min_bytes: usize,
    /// zlib level of compression, 1 (fastest) to 9 (smallest). Default 3.
    pub compression_level: u32,
    /// Channels whose keyed publications conflate for subscribers that fall
    /// behind (token-pattern syntax: `prices.*`, `quotes.>`).
    pub conflate: Vec<String>,
    /// Bytes queued for a subscriber over which a keyed publication of a
    /// conflated channel replaces the older one with its key still queued.
    /// Default 64 KiB.
    pub conflate_after_bytes: usize,
    /// Channels whose subscribers are listed (`presence`), counted
    /// (`occupancy`) and announced (`join`/`leave`), token-pattern syntax.
    pub presence: Vec<String>,
    /// With the Redis engine, a node's presence members stay listed this
    /// long after it last refreshed them (every third of it): a node that
    /// dies drops out within it. Default 30 s.
    pub presence_ttl: Duration,
    /// How long a publication made under an `idempotency_key` (HTTP
    /// publish, WebSocket `pub`) is remembered: a retry within it is
    /// answered with the first one's `seq`. Default 2 min.
    pub idempotency_window: Duration,
    /// Where lifecycle webhooks are POSTed (`http://` or `https://`
    /// `host[:port]/path`).
    pub webhook_url: Option<String>,
    /// PEM certificates an `https` webhook receiver is checked against,
    /// instead of the bundled web roots (Mozilla's).
    pub webhook_ca: Option<PathBuf>,
    /// Key of their `X-Shardcast-Signature` (HMAC-SHA256 of the body).
    pub webhook_secret: Option<String>,
    /// Most events per request. Default 100.
    pub webhook_batch: usize,
    /// `channel_vacated` waits this long, and is dropped if the channel
    /// fills again meanwhile. Default 5 s.
    pub vacated_grace: Duration,
    /// On SIGTERM or `POST /api/drain`, clients are told to reconnect at
    /// points spread over this long. Default 10 s.
    pub drain_spread: Duration,
    /// Memory budget of the process (split evenly over the shards) for what
    /// clients make it hold: connections, outgoing queues, unfinished
    /// messages and history. Over its share a shard refuses new connections
    /// (503) and subscriptions (`err over_capacity`). Default: half of the
    /// machine's memory, or of the cgroup's limit when that is lower.
    pub max_memory: usize,
    /// Allow everything without a token. The default when no JWT key is
    /// configured (logged loudly); cannot be combined with one.
    pub anonymous: bool,
    /// HS256 secret for connection tokens (at least 32 bytes).
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA or EC P-256) for RS256/ES256 connection tokens.
    pub jwt_public_key: Option<PathBuf>,
    /// Required `aud` claim, if set.
    pub jwt_audience: Option<String>,
    /// Required `iss` claim, if set.
    pub jwt_issuer: Option<String>,
    /// Time a `/ws` client without a token at upgrade has to send its
    /// `auth` frame. Default 10 s.
    pub auth_timeout: Duration,
    /// Key required on `POST /api/publish`, `/metrics` and `/api/stats`.
    pub api_key: Option<String>,
    /// A second address serving only the admin routes (`/metrics`,
    /// `/api/stats`, the dashboard and its `$stats` feed); they then leave
    /// the public address.
    pub admin_listen: Option<SocketAddr>,
    /// Origins browsers may connect from (`Origin` header); empty: any.
    pub allowed_origins: Vec<String>,
    /// Publications per second one connection may make; 0: no limit.
    pub publish_rate: u32,
    /// Publications one connection may make at once (token bucket size).
    /// Default: the rate.
    pub publish_burst: Option<u32>,
    /// Channel operations (`sub`, `unsub`, `presence`, `occupancy`) per
    /// second one connection may make, after a burst of
    /// `max-subscriptions`: each may make others' servers work (join and
    /// leave events, webhooks, presence pages). 0: no limit. Default 50.
    pub subscribe_rate: u32,
    /// Open connections per client address (IPv6: per /64); 0: no cap.
    pub max_connections_per_ip: u32,
    /// PEM certificate chain: serve `wss://`/`https://` with it.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How nodes agree: `memory` (one node), `redis` or `nats`.
    pub engine: EngineKind,
    /// Redis servers of the `redis` engine; channels are spread over them
    /// by a stable hash of their name.
    pub redis_url: Vec<String>,
    /// The NATS server of the `nats` engine.
    pub nats_url: Option<String>,
    /// This node's name in logs, metrics and the records it publishes.
    /// Default: the host name and a random suffix.
    pub node_id: String,
    /// Prefix of every key, pub/sub channel and subject the engine uses.
    /// Default `shardcast`.
    pub engine_prefix: String,
    /// A broker that leaves a request unanswered this long (or an idle
    /// link's ping) is taken for lost: the link is dropped and made again.
    /// Default 3 s.
    pub engine_timeout: Duration,
}

/// How the nodes of one service agree (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// One node on its own: ordering and history in this process.
    #[default]
    Memory,
    /// Ordering and history in Redis: one order per channel on every node.
    Redis,
    /// Fan-out over core NATS, at most once; history stays on each node.
    Nats,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Memory => "memory",
            EngineKind::Redis => "redis",
            EngineKind::Nats => "nats",
        }
    }
}

/// The host name and a random suffix: unique enough to tell nodes apart.
pub fn default_node_id() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let len = name.iter().position(|b| *b == 0).unwrap_or(0);
    let host: String = match ok && len > 0 {
        true => String::from_utf8_lossy(&name[..len])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .collect(),
        false => String::new(),
    };
    let host = if host.is_empty() { "node".into() } else { host };
    let suffix = crate::random::u64() & 0xff_ffff;
    format!("{host}-{suffix:06x}")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shards: default_shards(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(10),
            max_queue_bytes: 1 << 20,
            max_message_bytes: 64 << 10,
            max_connections: 100_000,
            max_http_connections: 4096,
            max_http_connections_per_ip: 256,
            max_subscriptions: 256,
            handshake_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            read_buffer_bytes: 64 << 10,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            history_max_bytes: 64 << 20,
            message_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(30),
            write_delay: Duration::ZERO,
            compression: true,
            compression_min_bytes: 256,
            compression_level: 3,
            conflate: Vec::new(),
            conflate_after_bytes: 64 << 10,
            presence: Vec::new(),
            presence_ttl: Duration::from_secs(30),
            idempotency_window: Duration::from_secs(120),
            webhook_url: None,
            webhook_ca: None,
            webhook_secret: None,
            webhook_batch: 100,
            vacated_grace: Duration::from_secs(5),
            drain_spread: Duration::from_secs(10),
            max_memory: default_max_memory(),
            anonymous: false,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_audience: None,
            jwt_issuer: None,
            auth_timeout: Duration::from_secs(10),
            api_key: None,
            admin_listen: None,
            allowed_origins: Vec::new(),
            publish_rate: 0,
            publish_burst: None,
            max_connections_per_ip: 0,
            subscribe_rate: 50,
            tls_cert: None,
            tls_key: None,
            engine: EngineKind::Memory,
            redis_url: Vec::new(),
            nats_url: None,
            node_id: default_node_id(),
            engine_prefix: "shardcast".into(),
            engine_timeout: Duration::from_secs(3),
        }
    }
}

/// The CPUs this process may run on (respects `taskset`), at least one.
pub fn default_shards() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .unwrap_or(1)
        .max(1)
}

/// The smallest memory budget of one shard (`max-memory` / `shards`).
const MIN_MEMORY_PER_SHARD: usize = 4 << 20;
/// The longest `write-delay`: past it, latency costs more than any batching
/// buys.
const MAX_WRITE_DELAY: Duration = Duration::from_millis(100);

/// Half of the memory this process may use: the machine's, or its cgroup's
/// limit when lower (1 GiB when neither can be read).
pub fn default_max_memory() -> usize {
    crate::process::memory_limit_bytes().map_or(1 << 30, |bytes| (bytes / 2) as usize)
}

/// One source of settings: every field optional, so layers can be stacked.
/// The same struct is the clap argument group (flags and `SHARDCAST_*`
/// variables) and the TOML file's schema.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigLayer {
    /// Address to listen on [default: 0.0.0.0:8080]
    #[arg(long, env = "SHARDCAST_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Number of shards, one executor pinned per core [default: the CPUs this process may use]
    #[arg(long, env = "SHARDCAST_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
    /// Ping a connection after this much silence, e.g. 25s, 500ms [default: 25s]
    #[arg(long, env = "SHARDCAST_PING_INTERVAL", value_name = "DURATION")]
    pub ping_interval: Option<HumanDuration>,
    /// Close a pinged connection still silent after this long [default: 10s]
    #[arg(long, env = "SHARDCAST_PING_TIMEOUT", value_name = "DURATION")]
    pub ping_timeout: Option<HumanDuration>,
    /// Outgoing bytes queued per connection before it is closed as a slow consumer [default: 1MiB]
    #[arg(long, env = "SHARDCAST_MAX_QUEUE_BYTES", value_name = "SIZE")]
    pub max_queue_bytes: Option<ByteSize>,
    /// Largest incoming message; larger ones close with 1009 [default: 64KiB]
    #[arg(long, env = "SHARDCAST_MAX_MESSAGE_BYTES", value_name = "SIZE")]
    pub max_message_bytes: Option<ByteSize>,
    /// Open WebSocket connections over which upgrades get HTTP 503 [default: 100000]
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Open plain HTTP connections (not upgraded) over which new ones get HTTP 503 [default: 4096]
    #[arg(long, env = "SHARDCAST_MAX_HTTP_CONNECTIONS", value_name = "N")]
    pub max_http_connections: Option<usize>,
    /// Of those, open per client IP (IPv6: per /64); over it HTTP 429 (0: no cap) [default: 256]
    #[arg(long, env = "SHARDCAST_MAX_HTTP_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_http_connections_per_ip: Option<u32>,
    /// Channels one connection may subscribe to at once [default: 256]
    #[arg(long, env = "SHARDCAST_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Time a client has to send its HTTP request head, and to read each response [default: 10s]
    #[arg(long, env = "SHARDCAST_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<HumanDuration>,
    /// Time allowed after SIGINT/SIGTERM to flush and close everyone [default: 10s]
    #[arg(long, env = "SHARDCAST_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<HumanDuration>,
    /// Read buffer of each shard, shared by its connections: the most one read takes [default: 64KiB]
    #[arg(long, env = "SHARDCAST_READ_BUFFER_BYTES", value_name = "SIZE")]
    pub read_buffer_bytes: Option<ByteSize>,
    /// Publications kept per channel for clients that resubscribe with `since` (0: none) [default: 100]
    #[arg(long, env = "SHARDCAST_HISTORY_SIZE", value_name = "N")]
    pub history_size: Option<usize>,
    /// How long a publication stays in its channel's history [default: 5m]
    #[arg(long, env = "SHARDCAST_HISTORY_TTL", value_name = "DURATION")]
    pub history_ttl: Option<HumanDuration>,
    /// History memory per shard over all channels; the oldest go first when over [default: 64MiB]
    #[arg(long, env = "SHARDCAST_HISTORY_MAX_BYTES", value_name = "SIZE")]
    pub history_max_bytes: Option<ByteSize>,
    /// Time a client has to finish a message it started; then close 1008 [default: 5s]
    #[arg(long, env = "SHARDCAST_MESSAGE_TIMEOUT", value_name = "DURATION")]
    pub message_timeout: Option<HumanDuration>,
    /// Close a connection whose queued bytes the socket has not taken for this long [default: 30s]
    #[arg(long, env = "SHARDCAST_SEND_TIMEOUT", value_name = "DURATION")]
    pub send_timeout: Option<HumanDuration>,
    /// Hold queued frames this long before writing, to gather more per write, e.g. 1ms (0: once per executor turn) [default: 0]
    #[arg(long, env = "SHARDCAST_WRITE_DELAY", value_name = "DURATION")]
    pub write_delay: Option<HumanDuration>,
    /// Compress messages with permessage-deflate for clients that offer it: on or off [default: on]
    #[arg(long, env = "SHARDCAST_COMPRESSION", value_name = "on|off")]
    pub compression: Option<Switch>,
    /// Messages under this size go uncompressed [default: 256B]
    #[arg(long, env = "SHARDCAST_COMPRESSION_MIN_BYTES", value_name = "SIZE")]
    pub compression_min_bytes: Option<ByteSize>,
    /// zlib level, 1 (fastest) to 9 (smallest) [default: 3]
    #[arg(long, env = "SHARDCAST_COMPRESSION_LEVEL", value_name = "N")]
    pub compression_level: Option<u32>,
    /// Channels (patterns, comma-separated: prices.*, quotes.>) whose publications with a "key" conflate for subscribers that fall behind
    #[arg(
        long,
        env = "SHARDCAST_CONFLATE",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub conflate: Option<Vec<String>>,
    /// Channels (patterns, comma-separated: room.*, doc.>) whose subscribers are listed, counted and announced (presence, occupancy, join/leave)
    #[arg(
        long,
        env = "SHARDCAST_PRESENCE",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub presence: Option<Vec<String>>,
    /// With the Redis engine, how long a node's presence members outlive its last refresh (a dead node drops out within it) [default: 30s]
    #[arg(long, env = "SHARDCAST_PRESENCE_TTL", value_name = "DURATION")]
    pub presence_ttl: Option<HumanDuration>,
    /// How long a publish's idempotency_key (HTTP publish, WebSocket pub) is remembered: a retry within it gets the first one's seq and is not published again [default: 2m]
    #[arg(long, env = "SHARDCAST_IDEMPOTENCY_WINDOW", value_name = "DURATION")]
    pub idempotency_window: Option<HumanDuration>,
    /// POST lifecycle events (channel_occupied/vacated, connected/disconnected, subscribed/unsubscribed) here, http(s)://host[:port]/path
    #[arg(long, env = "SHARDCAST_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// PEM CA certificate(s) an https webhook receiver must chain to, instead of the bundled web roots
    #[arg(long, env = "SHARDCAST_WEBHOOK_CA", value_name = "FILE")]
    pub webhook_ca: Option<PathBuf>,
    /// Secret signing each webhook body (X-Shardcast-Signature: sha256=<hex HMAC-SHA256>); prefer the environment variable
    #[arg(
        long,
        env = "SHARDCAST_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
    /// Most events per webhook request [default: 100]
    #[arg(long, env = "SHARDCAST_WEBHOOK_BATCH", value_name = "N")]
    pub webhook_batch: Option<usize>,
    /// channel_vacated waits this long and is dropped if the channel fills again [default: 5s]
    #[arg(long, env = "SHARDCAST_VACATED_GRACE", value_name = "DURATION")]
    pub vacated_grace: Option<HumanDuration>,
    /// On SIGTERM or POST /api/drain, clients are told to reconnect at points spread over this long (0: all at once) [default: 10s]
    #[arg(long, env = "SHARDCAST_DRAIN_SPREAD", value_name = "DURATION")]
    pub drain_spread: Option<HumanDuration>,
    /// Queued bytes over which a subscriber's older keyed publication is replaced by the newer one [default: 64KiB]
    #[arg(long, env = "SHARDCAST_CONFLATE_AFTER_BYTES", value_name = "SIZE")]
    pub conflate_after_bytes: Option<ByteSize>,
    /// Memory budget for connections, queues, unfinished messages and history; over it new connections and subscriptions are refused [default: half of the machine's or cgroup's memory]
    #[arg(long, env = "SHARDCAST_MAX_MEMORY", value_name = "SIZE")]
    pub max_memory: Option<ByteSize>,
    /// Let anyone connect, subscribe and publish without a token (the default without a JWT key)
    #[arg(long, env = "SHARDCAST_ANONYMOUS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub anonymous: Option<bool>,
    /// HS256 secret (>= 32 bytes) verifying connection tokens; prefer the environment variable
    #[arg(
        long,
        env = "SHARDCAST_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA or EC P-256) verifying RS256/ES256 connection tokens
    #[arg(long, env = "SHARDCAST_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `aud` claim of connection tokens
    #[arg(long, env = "SHARDCAST_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim of connection tokens
    #[arg(long, env = "SHARDCAST_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Time a /ws client without a token has to send {"op":"auth"} [default: 10s]
    #[arg(long, env = "SHARDCAST_AUTH_TIMEOUT", value_name = "DURATION")]
    pub auth_timeout: Option<HumanDuration>,
    /// Key (>= 16 bytes) required on POST /api/publish, /metrics and /api/stats (X-API-Key or Authorization: Bearer)
    #[arg(
        long,
        env = "SHARDCAST_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Serve /metrics, /api/stats and the dashboard on this address only [default: on the public address]
    #[arg(long, env = "SHARDCAST_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Origins browsers may connect from, comma-separated (https://app.example.com, https://*.example.com) [default: any]
    #[arg(
        long,
        env = "SHARDCAST_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Publications per second per connection; over it `err rate_limited` (0: no limit) [default: 0]
    #[arg(long, env = "SHARDCAST_PUBLISH_RATE", value_name = "N")]
    pub publish_rate: Option<u32>,
    /// Publications a connection may make at once before the rate applies [default: the rate]
    #[arg(long, env = "SHARDCAST_PUBLISH_BURST", value_name = "N")]
    pub publish_burst: Option<u32>,
    /// sub/unsub/presence/occupancy ops per second per connection, after a burst of max-subscriptions; over it `err rate_limited` (0: no limit) [default: 50]
    #[arg(long, env = "SHARDCAST_SUBSCRIBE_RATE", value_name = "N")]
    pub subscribe_rate: Option<u32>,
    /// Open connections per client IP (IPv6: per /64); over it HTTP 429 (0: no cap) [default: 0]
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
    /// PEM certificate chain: serve wss:// and https:// (with --tls-key)
    #[arg(long, env = "SHARDCAST_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "SHARDCAST_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// How nodes agree: memory (one node), redis (one order and shared history) or nats (at-most-once fan-out) [default: memory]
    #[arg(long, env = "SHARDCAST_ENGINE", value_name = "ENGINE")]
    pub engine: Option<EngineKind>,
    /// Redis of the redis engine, redis://[user:password@]host:port[/db]; repeat (or comma-separate) to spread channels over several
    #[arg(
        long,
        env = "SHARDCAST_REDIS_URL",
        value_name = "URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_url: Option<Vec<String>>,
    /// NATS of the nats engine, nats://[user:password@]host:port
    #[arg(
        long,
        env = "SHARDCAST_NATS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub nats_url: Option<String>,
    /// This node's name in logs, metrics and the dashboard [default: host name and a random suffix]
    #[arg(long, env = "SHARDCAST_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Prefix of the engine's Redis keys, pub/sub channels and NATS subjects [default: shardcast]
    #[arg(long, env = "SHARDCAST_ENGINE_PREFIX", value_name = "PREFIX")]
    pub engine_prefix: Option<String>,
    /// Drop and remake a broker link that leaves a request (or its ping) unanswered this long [default: 3s]
    #[arg(long, env = "SHARDCAST_ENGINE_TIMEOUT", value_name = "DURATION")]
    pub engine_timeout: Option<HumanDuration>,
}

/// A feature turned on or off (`on`/`off`, also `true`/`false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    #[value(alias = "true")]
    #[serde(alias = "true")]
    On,
    #[value(alias = "false")]
    #[serde(alias = "false")]
    Off,
}

/// Copies every field a layer sets onto the config, converting units.
macro_rules! apply_layer {
    ($config:expr, $layer:expr, { $($plain:ident),* }, { $($unit:ident),* },
     { $($optional:ident),* }) => {
        $( if let Some(value) = $layer.$plain { $config.$plain = value; } )*
        $( if let Some(value) = $layer.$unit { $config.$unit = value.0; } )*
        $( if let Some(value) = $layer.$optional { $config.$optional = Some(value); } )*
    };
}

impl Config {
    /// Stacks the sources: `cli` (flags and environment, as clap produced them)
    /// over the TOML file at `file` (if any) over the defaults, then validates.
    pub fn resolve(cli: &ConfigLayer, file: Option<&PathBuf>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                path: path.clone(),
                source,
            })?;
            let layer: ConfigLayer =
                toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
            config.apply(&layer);
        }
        config.apply(cli);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, layer: &ConfigLayer) {
        let layer = layer.clone();
        apply_layer!(self, layer,
            { listen, shards, max_connections, max_http_connections, max_http_connections_per_ip, max_subscriptions, history_size, anonymous,
              allowed_origins, publish_rate, subscribe_rate, max_connections_per_ip, compression_level, conflate, presence,
              engine, redis_url, node_id, engine_prefix, webhook_batch },
            { ping_interval, ping_timeout, max_queue_bytes, max_message_bytes,
              handshake_timeout, shutdown_timeout, read_buffer_bytes, history_ttl,
              history_max_bytes, auth_timeout, message_timeout, send_timeout, write_delay,
              max_memory, compression_min_bytes, conflate_after_bytes, engine_timeout, presence_ttl,
              vacated_grace, drain_spread, idempotency_window },
            { jwt_secret, jwt_public_key, jwt_audience, jwt_issuer, api_key, admin_listen,
              publish_burst, tls_cert, tls_key, nats_url, webhook_url, webhook_ca, webhook_secret });
        if let Some(switch) = layer.compression {
            self.compression = switch == Switch::On;
        }
    }

    /// Whether the server runs in anonymous mode: asked for with
    /// `--anonymous`, or (the default) because no JWT key is configured.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous || (self.jwt_secret.is_none() && self.jwt_public_key.is_none())
    }

    /// Rejects settings the server cannot run with, quoting the numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: String| Err(ConfigError::Invalid(what));
        if self.shards == 0 || self.shards > shardcast_core::owner::MAX_SHARDS {
            return invalid(format!(
                "shards is {}, must be 1..={}",
                self.shards,
                shardcast_core::owner::MAX_SHARDS
            ));
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return invalid("ping-interval and ping-timeout must be above zero".into());
        }
        if self.max_message_bytes < 125 {
            return invalid(format!(
                "max-message-bytes is {}, must be at least 125",
                self.max_message_bytes
            ));
        }
        let largest_frame = crate::protocol::max_msg_frame_len(self.max_message_bytes);
        if self.max_queue_bytes < largest_frame {
            return invalid(format!(
                "max-queue-bytes is {}, must be at least {largest_frame}: one message of \
                 max-message-bytes ({}) can grow to that for a JSON subscriber (raw-room \
                 text escaped, 6x, plus its envelope)",
                self.max_queue_bytes, self.max_message_bytes
            ));
        }
        if !(64..=1 << 20).contains(&self.read_buffer_bytes) {
            return invalid(format!(
                "read-buffer-bytes is {}, must be 64B..=1MiB",
                self.read_buffer_bytes
            ));
        }
        if self.history_size > 100_000 {
            return invalid(format!(
                "history-size is {}, must be at most 100000",
                self.history_size
            ));
        }
        if self.message_timeout.is_zero() || self.send_timeout.is_zero() {
            return invalid("message-timeout and send-timeout must be above zero".into());
        }
        if self.write_delay > MAX_WRITE_DELAY {
            return invalid(format!(
                "write-delay is {:?}, must be at most {MAX_WRITE_DELAY:?}",
                self.write_delay
            ));
        }
        if !(1..=9).contains(&self.compression_level) {
            return invalid(format!(
                "compression-level is {}, must be 1..=9",
                self.compression_level
            ));
        }
        for pattern in &self.conflate {
            if let Err(error) = crate::security::pattern::ChannelPattern::parse(pattern) {
                return invalid(format!("conflate: {error}"));
            }
        }
        for pattern in &self.presence {
            if let Err(error) = crate::security::pattern::ChannelPattern::parse(pattern) {
                return invalid(format!("presence: {error}"));
            }
        }
        let least_memory = self.shards * MIN_MEMORY_PER_SHARD;
        if self.max_memory < least_memory {
            return invalid(format!(
                "max-memory is {}, must be at least {least_memory} ({} per shard)",
                self.max_memory, MIN_MEMORY_PER_SHARD
            ));
        }
        self.validate_engine()?;
        if self.history_ttl.is_zero() {
            return invalid("history-ttl must be above zero".into());
        }
        if self.max_subscriptions == 0 {
            return invalid("max-subscriptions must be at least 1".into());
        }
        if self.max_http_connections == 0 {
            return invalid("max-http-connections must be at least 1".into());
        }
        let jwt = self.jwt_secret.is_some() || self.jwt_public_key.is_some();
        if self.anonymous && jwt {
            return invalid(
                "anonymous and a JWT key (jwt-secret, jwt-public-key) exclude each other".into(),
            );
        }
        if !jwt && (self.jwt_audience.is_some() || self.jwt_issuer.is_some()) {
            return invalid("jwt-audience and jwt-issuer need a JWT key".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls-cert and tls-key go together".into());
        }
        if self.auth_timeout.is_zero() {
            return invalid("auth-timeout must be above zero".into());
        }
        if self.publish_rate == 0 && self.publish_burst.is_some() {
            return invalid("publish-burst needs publish-rate".into());
        }
        if self.publish_burst == Some(0) {
            return invalid("publish-burst must be at least 1".into());
        }
        if self.admin_listen.is_some_and(|admin| {
            admin.port() != 0
                && admin.port() == self.listen.port()
                && admin.ip() == self.listen.ip()
        }) {
            return invalid("admin-listen must differ from listen".into());
        }
        Ok(())
    }

    /// The engine's settings: its broker URLs parse, and none is given for
    /// another engine.
    fn validate_engine(&self) -> Result<(), ConfigError> {
        use crate::engine::addr::BrokerAddr;
        let invalid = |what: String| Err(ConfigError::Invalid(what));
        match self.engine {
            EngineKind::Redis if self.redis_url.is_empty() => {
                return invalid("engine redis needs at least one redis-url".into());
            }
            EngineKind::Nats if self.nats_url.is_none() => {
                return invalid("engine nats needs nats-url".into());
            }
            EngineKind::Memory | EngineKind::Nats if !self.redis_url.is_empty() => {
                return invalid("redis-url is for engine redis".into());
            }
            EngineKind::Memory | EngineKind::Redis if self.nats_url.is_some() => {
                return invalid("nats-url is for engine nats".into());
            }
            _ => {}
        }
        for url in &self.redis_url {
            if let Err(error) = BrokerAddr::parse(url, "redis") {
                return invalid(format!("redis-url: {error}"));
            }
        }
        if let Some(Err(error)) = self
            .nats_url
            .as_deref()
            .map(|u| BrokerAddr::parse(u, "nats"))
        {
            return invalid(format!("nats-url: {error}"));
        }
        let prefix_ok = !self.engine_prefix.is_empty()
            && self.engine_prefix.len() <= 64
            && self
                .engine_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !prefix_ok {
            return invalid("engine-prefix must be 1 to 64 of A-Z a-z 0-9 _ -".into());
        }
        if let Some(url) = &self.webhook_url {
            if let Err(error) = crate::webhook::WebhookUrl::parse(url) {
                return invalid(error.to_string());
            }
        }
        if self.webhook_secret.is_some() && self.webhook_url.is_none() {
            return invalid("webhook-secret needs webhook-url".into());
        }
        let https = self
            .webhook_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"));
        if self.webhook_ca.is_some() && !https {
            return invalid("webhook-ca needs an https:// webhook-url".into());
        }
        if self.drain_spread > Duration::from_secs(3600) {
            return invalid("drain-spread must be at most 1h".into());
        }
        if !(1..=10_000).contains(&self.webhook_batch) {
            return invalid(format!(
                "webhook-batch is {}, must be 1..=10000",
                self.webhook_batch
            ));
        }
        if self.idempotency_window < Duration::from_secs(1)
            || self.idempotency_window > Duration::from_secs(24 * 3600)
        {
            return invalid("idempotency-window must be 1s to 24h".into());
        }
        if self.presence_ttl < Duration::from_millis(300) {
            return invalid("presence-ttl must be at least 300ms".into());
        }
        if self.engine_timeout < Duration::from_millis(100) {
            return invalid("engine-timeout must be at least 100ms".into());
        }
        if self.node_id.is_empty()
            || self.node_id.len() > 128
            || self.node_id.chars().any(char::is_whitespace)
        {
            return invalid("node-id must be 1 to 128 characters without spaces".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn cli_overrides_file_overrides_default() {
        let dir = std::env::temp_dir().join(format!("shardcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "ping-interval = \"5s\"\nmax-queue-bytes = \"2MiB\"\nshards = 1\n",
        )
        .unwrap();
        let cli = ConfigLayer {
            ping_interval: Some("250ms".parse().unwrap()),
            ..Default::default()
        };
        let config = Config::resolve(&cli, Some(&path)).unwrap();
        assert_eq!(config.ping_interval, Duration::from_millis(250));
        assert_eq!(config.max_queue_bytes, 2 << 20);
        assert_eq!(config.shards, 1);
        assert_eq!(config.ping_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("shardcast-config2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "ping-intervall = \"5s\"\n").unwrap();
        let err = Config::resolve(&ConfigLayer::default(), Some(&path)).unwrap_err();
        assert!(err.to_string().contains("ping-intervall"), "{err}");
    }

    #[test]
    fn the_production_example_is_valid() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/production.toml");
        let config = Config::resolve(&ConfigLayer::default(), Some(&path)).unwrap();
        assert!(config.jwt_public_key.is_some() && config.tls_cert.is_some());
        assert_eq!(config.allowed_origins.len(), 2);
        assert_eq!((config.publish_rate, config.publish_burst), (20, Some(40)));
        assert_eq!(config.max_connections_per_ip, 200);
        assert!(config.admin_listen.is_some());
    }

    #[test]
    fn security_settings_that_contradict_are_refused() {
        let invalid = |config: Config| config.validate().unwrap_err().to_string();
        let anonymous_with_key = Config {
            anonymous: true,
            jwt_secret: Some("x".repeat(40)),
            ..Config::default()
        };
        assert!(invalid(anonymous_with_key).contains("exclude"));
        let half_tls = Config {
            tls_cert: Some("c.pem".into()),
            ..Config::default()
        };
        assert!(invalid(half_tls).contains("tls-key"));
        let burst_alone = Config {
            publish_burst: Some(5),
            ..Config::default()
        };
        assert!(invalid(burst_alone).contains("publish-rate"));
    }

    #[test]
    fn queue_must_hold_one_message_as_any_subscriber_receives_it() {
        let with = |queue, message| Config {
            max_queue_bytes: queue,
            max_message_bytes: message,
            ..Config::default()
        };
        assert!(with(1000, 1000).validate().is_err());
        // Raw-room text escaped for a JSON subscriber: 6x, not +256.
        let error = with(200 << 10, 64 << 10)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("must be at least 393411"), "{error}");
        assert!(with(393_411, 64 << 10).validate().is_ok());
    }
}
