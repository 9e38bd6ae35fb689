//! Per-shard counters: plain `Cell`s bumped on the shard's own thread, read
//! only when reported. No atomics, nothing shared.

use std::cell::Cell;

use crate::conn::outbox::CloseReason;

/// Counters of one shard since it started.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_opened: Cell<u64>,
    pub connections_closed: Cell<u64>,
    pub closed_slow_consumer: Cell<u64>,
    pub closed_heartbeat: Cell<u64>,
    pub closed_protocol: Cell<u64>,
    pub publications_ordered: Cell<u64>,
    pub messages_delivered: Cell<u64>,
    pub handshake_failures: Cell<u64>,
    pub upgrades_refused_503: Cell<u64>,
    pub http_requests: Cell<u64>,
    pub connection_panics: Cell<u64>,
}

/// Adds `n` to a counter.
pub fn bump(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get() + n);
}

impl Stats {
    /// Counts a closed connection under its reason.
    pub fn closed(&self, reason: CloseReason) {
        bump(&self.connections_closed, 1);
        match reason {
            CloseReason::SlowConsumer => bump(&self.closed_slow_consumer, 1),
            CloseReason::HeartbeatTimeout => bump(&self.closed_heartbeat, 1),
            CloseReason::TooLarge | CloseReason::BadUtf8 | CloseReason::Protocol => {
                bump(&self.closed_protocol, 1)
            }
            CloseReason::Normal | CloseReason::Shutdown | CloseReason::SocketError => {}
        }
    }
}
