//! Per-shard counters and the delivery-latency histogram: plain `Cell`s bumped
//! on the shard's own thread. No atomics, nothing shared between shards; they
//! are read only when a snapshot is taken (a scrape of `/metrics` or
//! `/api/stats`, the once-a-second `$stats` tick, shutdown).

use std::cell::{Cell, RefCell};

use hdrhistogram::Histogram;

use crate::conn::outbox::CloseReason;

/// Highest latency the histogram tells apart (one minute, in µs); longer ones
/// are counted as this.
const LATENCY_MAX_US: u64 = 60_000_000;
/// Significant figures of the latency histogram: 1% precision, about 40 KiB
/// per histogram.
const LATENCY_SIGFIGS: u8 = 2;

/// Counters of one shard since it started.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_opened: Cell<u64>,
    /// Closed connections by [`CloseReason`], in [`CloseReason::ALL`] order.
    closed: [Cell<u64>; CloseReason::ALL.len()],
    /// Publications received from clients on this shard (WebSocket `pub`,
    /// raw-room messages, HTTP publish).
    pub messages_published: Cell<u64>,
    /// Publications this shard ordered as the channel's owner.
    pub messages_ordered: Cell<u64>,
    /// Publication frames written completely to a subscriber's socket.
    pub messages_delivered: Cell<u64>,
    /// Bytes read from client sockets (HTTP and WebSocket).
    pub bytes_received: Cell<u64>,
    /// Bytes written to WebSocket client sockets.
    pub bytes_sent: Cell<u64>,
    /// Frames accepted into connection queues.
    pub frames_queued: Cell<u64>,
    /// Frames refused (queue over its bound, connection closing) or discarded
    /// unsent (slow consumer closed, connection gone).
    pub frames_dropped: Cell<u64>,
    /// Messages received from other shards.
    pub mesh_received: Cell<u64>,
    pub http_requests: Cell<u64>,
    /// Requests that were not valid HTTP, timed out (head not sent, response
    /// not taken), or asked for a bad route.
    pub handshake_failures: Cell<u64>,
    /// Upgrades refused with 503 (at `max-connections`, shutting down).
    pub http_503: Cell<u64>,
    /// Tokens refused (HTTP 401 at upgrade, `auth` frames refused) and
    /// requests without the API key.
    pub auth_failures: Cell<u64>,
    /// Operations outside a token's permissions (`err forbidden`).
    pub forbidden: Cell<u64>,
    /// Publications refused by the per-connection rate limit.
    pub rate_limited: Cell<u64>,
    /// Connections refused by the per-IP cap.
    pub ip_cap_refusals: Cell<u64>,
    /// Connections refused at `max-http-connections`.
    pub http_cap_refusals: Cell<u64>,
    pub connection_panics: Cell<u64>,
    /// Resumes answered `recovered:false` because what was missed would not
    /// fit in the connection's queue.
    pub replays_refused: Cell<u64>,
    /// Connections (503) and subscriptions (`err over_capacity`) refused
    /// over the shard's share of `max-memory`.
    pub memory_refusals: Cell<u64>,
    /// Bytes in this shard's connection queues now (a gauge).
    pub queued_bytes: Cell<u64>,
    /// Payload bytes of unfinished incoming messages now (a gauge).
    pub unfinished_bytes: Cell<u64>,
    pub latency: RefCell<Latency>,
}

/// Adds `n` to a counter.
pub fn bump(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get() + n);
}

impl Stats {
    /// Counts a closed connection under its reason.
    pub fn closed(&self, reason: CloseReason) {
        bump(&self.closed[reason as usize], 1);
    }

    /// Connections closed for `reason`.
    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].get()
    }

    /// Connections closed for any reason.
    pub fn connections_closed(&self) -> u64 {
        self.closed.iter().map(Cell::get).sum()
    }
}

/// Publish→write latency of one shard's deliveries, in microseconds. The
/// current second is recorded alone, so the dashboard can show the latest
/// second; every second it is folded into the since-start histogram.
#[derive(Debug)]
pub struct Latency {
    current: Histogram<u64>,
    earlier: Histogram<u64>,
    /// Exact sum of every recorded value (the histogram keeps none).
    sum_us: u64,
    /// The last completed second.
    last_second: LatencySummary,
}

impl Default for Latency {
    fn default() -> Self {
        let histogram = || {
            Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIGS)
                .expect("latency histogram bounds are valid")
        };
        Latency {
            current: histogram(),
            earlier: histogram(),
            sum_us: 0,
            last_second: LatencySummary::default(),
        }
    }
}

impl Latency {
    pub fn record(&mut self, micros: u64) {
        self.current.saturating_record(micros);
        self.sum_us += micros;
    }

    /// Ends the current second: keeps its summary, folds it into the
    /// since-start histogram.
    pub fn rotate(&mut self) {
        self.last_second = LatencySummary::of(&self.current);
        // Same bounds on both sides: adding cannot fail.
        let _ = self.earlier.add(&self.current);
        self.current.reset();
    }

    /// The last completed second.
    pub fn last_second(&self) -> LatencySummary {
        self.last_second
    }

    /// Everything since the shard started, the current second included.
    pub fn since_start(&self) -> Histogram<u64> {
        let mut all = self.earlier.clone();
        let _ = all.add(&self.current);
        all
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }
}

/// Count and quantiles of a latency histogram, in microseconds (all 0 when
/// empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let at = |q| histogram.value_at_quantile(q);
        LatencySummary {
            count: histogram.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: histogram.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_counted_by_reason() {
        let stats = Stats::default();
        stats.closed(CloseReason::SlowConsumer);
        stats.closed(CloseReason::SlowConsumer);
        stats.closed(CloseReason::Shutdown);
        assert_eq!(stats.closed_for(CloseReason::SlowConsumer), 2);
        assert_eq!(stats.closed_for(CloseReason::Shutdown), 1);
        assert_eq!(stats.closed_for(CloseReason::Normal), 0);
        assert_eq!(stats.connections_closed(), 3);
    }

    #[test]
    fn latency_keeps_the_last_second_and_everything() {
        let mut latency = Latency::default();
        for us in 1..=100 {
            latency.record(us);
        }
        assert_eq!(latency.last_second(), LatencySummary::default());
        latency.rotate();
        let second = latency.last_second();
        assert_eq!(second.count, 100);
        assert!((49..=51).contains(&second.p50), "{second:?}");
        assert_eq!(second.max, 100);
        latency.record(5_000);
        let all = LatencySummary::of(&latency.since_start());
        assert_eq!(all.count, 101);
        assert!(all.max >= 4_950, "{all:?}");
        assert_eq!(latency.sum_us(), 5050 + 5000);
        latency.rotate();
        assert_eq!(latency.last_second().count, 1);
        latency.rotate();
        assert_eq!(latency.last_second().count, 0, "an idle second is empty");
    }
}
