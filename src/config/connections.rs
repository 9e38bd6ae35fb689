//! The sections of the settings about connections: where the server
//! listens, what clients may make it hold, how quiet a connection may be
//! and how long each step may take.

use std::{net::SocketAddr, time::Duration};

use crate::{
    settings::{ensure, section},
    units::{ByteSize, HumanDuration},
};

/// The smallest memory budget of one shard (`max-memory` / `shards`).
const MIN_MEMORY_PER_SHARD: usize = 4 << 20;
/// The longest `write-delay`: past it, latency costs more than any batching
/// buys.
const MAX_WRITE_DELAY: Duration = Duration::from_millis(100);

section! {
    /// The addresses the server listens on.
    pub struct Listeners {
        /// Address every shard listens on (SO_REUSEPORT); port 0 picks a
        /// free port, reported in the startup line.
        public: SocketAddr as SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080)) => new("listen", "ADDR")
            .help("Address to listen on")
            .readme("address (port 0: pick one)");
        /// A second address serving only the admin routes (`/metrics`,
        /// `/api/stats`, the dashboard and its `$stats` feed); they then
        /// leave the public address.
        admin: Option<SocketAddr> as SocketAddr = None => new("admin-listen", "ADDR")
            .default_text("the public address")
            .help("Serve /metrics, /api/stats and the dashboard on this address only")
            .readme("address for `/metrics`, `/api/stats` and the dashboard");
    }
}

impl Listeners {
    /// The admin address is another address.
    pub fn check(&self) -> Result<(), String> {
        let same = self.admin.is_some_and(|admin| {
            admin.port() != 0
                && admin.port() == self.public.port()
                && admin.ip() == self.public.ip()
        });
        ensure(!same, || "admin-listen must differ from listen".into())
    }
}

section! {
    /// What clients may make the server hold.
    pub struct Limits {
        /// Open WebSocket connections over which an upgrade is answered with
        /// 503.
        max_connections: usize as usize = 100_000 => new("max-connections", "N")
            .help("Open WebSocket connections over which upgrades get HTTP 503")
            .readme("over it, upgrades get HTTP 503");
        /// Channels one connection may be subscribed to at once.
        max_subscriptions: usize as usize = 256 => new("max-subscriptions", "N")
            .help("Channels one connection may subscribe to at once")
            .readme("channels per connection")
            .check(|n| ensure(*n > 0, || "max-subscriptions must be at least 1".into()));
        /// Bound on the bytes queued for one connection; a subscriber over
        /// it is closed with 1008 "slow consumer".
        max_queue_bytes: usize as ByteSize = 1 << 20 => new("max-queue-bytes", "SIZE")
            .help("Outgoing bytes queued per connection before it is closed as a slow consumer")
            .readme("per-connection outgoing bound; over it: close 1008");
        /// Largest message a client may send (after reassembly); larger ones
        /// close the connection with 1009.
        max_message_bytes: usize as ByteSize = 64 << 10 => new("max-message-bytes", "SIZE")
            .help("Largest incoming message; larger ones close with 1009")
            .readme("larger messages: close 1009; HTTP: 413")
            .check(|bytes| ensure(
                *bytes >= 125,
                || format!("max-message-bytes is {bytes}, must be at least 125"),
            ));
        /// Read buffer of each shard, where every connection's reads land:
        /// the most one read takes from a socket. Connections hold none of
        /// it.
        read_buffer_bytes: usize as ByteSize = 64 << 10 => new("read-buffer-bytes", "SIZE")
            .help("Read buffer of each shard, shared by its connections: the most one read takes")
            .readme("read buffer of each shard, shared by its connections (the most one read takes)")
            .check(|bytes| ensure(
                (64..=1 << 20).contains(bytes),
                || format!("read-buffer-bytes is {bytes}, must be 64B..=1MiB"),
            ));
        /// Memory budget of the process (split evenly over the shards) for
        /// what clients make it hold: connections, outgoing queues,
        /// unfinished messages and history. Over its share a shard refuses
        /// new connections (503) and subscriptions (`err over_capacity`).
        max_memory: usize as ByteSize = default_max_memory() => new("max-memory", "SIZE")
            .default_text("half the machine's (or cgroup's) memory")
            .help("Memory budget for connections, queues, unfinished messages and history; over it new connections and subscriptions are refused")
            .readme("budget for connections, queues, unfinished messages and history, split over the shards; over it upgrades get 503 and `sub` gets `err over_capacity`");
    }
}

impl Limits {
    /// A queue holds one message as any subscriber receives it, and each of
    /// `shards` shards gets a budget it can work with.
    pub fn check(&self, shards: usize) -> Result<(), String> {
        let largest_frame = crate::protocol::max_msg_frame_len(self.max_message_bytes);
        ensure(self.max_queue_bytes >= largest_frame, || {
            format!(
                "max-queue-bytes is {}, must be at least {largest_frame}: one message of \
                 max-message-bytes ({}) can grow to that for a JSON subscriber (raw-room \
                 text escaped, 6x, plus its envelope)",
                self.max_queue_bytes, self.max_message_bytes
            )
        })?;
        let least_memory = shards * MIN_MEMORY_PER_SHARD;
        ensure(self.max_memory >= least_memory, || {
            format!(
                "max-memory is {}, must be at least {least_memory} ({} per shard)",
                self.max_memory, MIN_MEMORY_PER_SHARD
            )
        })
    }
}

/// Half of the memory this process may use: the machine's, or its cgroup's
/// limit when lower (1 GiB when neither can be read).
pub fn default_max_memory() -> usize {
    crate::process::memory_limit_bytes().map_or(1 << 30, |bytes| (bytes / 2) as usize)
}

section! {
    /// How quiet a connection may be.
    pub struct Heartbeat {
        /// Idle time after which the server pings a connection.
        ping_interval: Duration as HumanDuration = Duration::from_secs(25) => new("ping-interval", "DURATION")
            .help("Ping a connection after this much silence, e.g. 25s, 500ms")
            .readme("ping after silence")
            .check(above_zero_ping);
        /// How long a pinged connection may stay silent before it is closed.
        ping_timeout: Duration as HumanDuration = Duration::from_secs(10) => new("ping-timeout", "DURATION")
            .help("Close a pinged connection still silent after this long")
            .readme("close if still silent after a ping")
            .check(above_zero_ping);
    }
}

fn above_zero_ping(time: &Duration) -> Result<(), String> {
    ensure(!time.is_zero(), || {
        "ping-interval and ping-timeout must be above zero".into()
    })
}

section! {
    /// How long each step of a connection, and of the server's end, may
    /// take.
    pub struct Timeouts {
        /// Time allowed for a client to send its HTTP request head, and to
        /// take each HTTP response.
        handshake: Duration as HumanDuration = Duration::from_secs(10) => new("handshake-timeout", "DURATION")
            .help("Time a client has to send its HTTP request head, and to read each response")
            .readme("to send the HTTP request head (and a publish body), and to take each response");
        /// Time a client has to finish a message once its first byte arrived
        /// (all fragments, the whole payload); over it the connection is
        /// closed with 1008. 5 s is 64 KiB at 105 kbit/s.
        message: Duration as HumanDuration = Duration::from_secs(5) => new("message-timeout", "DURATION")
            .help("Time a client has to finish a message it started; then close 1008")
            .readme("a message begun must be finished within this (64 KiB in 5 s is 105 kbit/s: raise it with `--max-message-bytes`); else close 1008")
            .check(above_zero_transfer);
        /// Time a connection's outgoing queue may hold bytes without the
        /// socket taking any; over it the connection is closed (no close
        /// frame can get through).
        send: Duration as HumanDuration = Duration::from_secs(30) => new("send-timeout", "DURATION")
            .help("Close a connection whose queued bytes the socket has not taken for this long")
            .readme("queued bytes the socket takes nothing of for this long: the connection is reset")
            .check(above_zero_transfer);
        /// How long the flush pass holds a connection's queued frames before
        /// writing them, to gather more frames into each write. Zero writes
        /// once per executor turn. At most 100 ms.
        write_delay: Duration as HumanDuration = Duration::ZERO => new("write-delay", "DURATION")
            .help("Hold queued frames this long before writing, to gather more per write, e.g. 1ms (0: once per executor turn)")
            .readme("hold queued frames up to this long (at most 100 ms) to gather more per write: ~6 % less CPU at 1M deliveries/s for ~6 ms more p99 (BENCHMARKS.md)")
            .check(|delay| ensure(
                *delay <= MAX_WRITE_DELAY,
                || format!("write-delay is {delay:?}, must be at most {MAX_WRITE_DELAY:?}"),
            ));
        /// Time allowed after SIGINT/SIGTERM to flush and close.
        shutdown: Duration as HumanDuration = Duration::from_secs(10) => new("shutdown-timeout", "DURATION")
            .help("Time allowed after SIGINT/SIGTERM to flush and close everyone")
            .readme("SIGINT/SIGTERM: flush and close within this");
        /// On SIGTERM or `POST /api/drain`, clients are told to reconnect at
        /// points spread over this long.
        drain_spread: Duration as HumanDuration = Duration::from_secs(10) => new("drain-spread", "DURATION")
            .help("On SIGTERM or POST /api/drain, clients are told to reconnect at points spread over this long (0: all at once)")
            .readme("on SIGTERM or `POST /api/drain`, clients are told to reconnect at points spread over this long, then closed with 1012")
            .check(|spread| ensure(
                *spread <= Duration::from_secs(3600),
                || "drain-spread must be at most 1h".into(),
            ));
    }
}

fn above_zero_transfer(time: &Duration) -> Result<(), String> {
    ensure(!time.is_zero(), || {
        "message-timeout and send-timeout must be above zero".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_must_hold_one_message_as_any_subscriber_receives_it() {
        let with = |queue, message| Limits {
            max_queue_bytes: queue,
            max_message_bytes: message,
            ..Limits::default()
        };
        assert!(with(1000, 1000).check(1).is_err());
        // Raw-room text escaped for a JSON subscriber: 6x, not +256.
        let error = with(200 << 10, 64 << 10).check(1).unwrap_err();
        assert!(error.contains("must be at least 393411"), "{error}");
        assert!(with(393_411, 64 << 10).check(1).is_ok());
    }

    #[test]
    fn each_shard_gets_a_workable_budget() {
        let limits = Limits {
            max_memory: 8 << 20,
            ..Limits::default()
        };
        assert!(limits.check(2).is_ok());
        let error = limits.check(3).unwrap_err();
        assert!(error.contains("must be at least 12582912"), "{error}");
    }

    #[test]
    fn the_admin_address_is_another() {
        let with = |admin: &str| Listeners {
            public: "127.0.0.1:80".parse().unwrap(),
            admin: Some(admin.parse().unwrap()),
        };
        assert!(with("127.0.0.1:80").check().is_err());
        assert!(with("127.0.0.1:81").check().is_ok());
        assert!(with("127.0.0.1:0").check().is_ok());
    }
}
