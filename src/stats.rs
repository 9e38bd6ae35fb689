//! Per-shard counters and the delivery-latency histogram: plain `Cell`s bumped
//! on the shard's own thread. No atomics, nothing shared between shards; they
//! are read only when a snapshot is taken (a scrape of `/metrics` or
//! `/api/stats`, the once-a-second `$stats` tick, shutdown).

use std::cell::{Cell, RefCell};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::close::CloseReason;

/// Highest latency the histogram tells apart (one minute, in µs); longer ones
/// are counted as this.
const LATENCY_MAX_US: u64 = 60_000_000;
/// Significant figures of the latency histogram: 1% precision, about 40 KiB
/// per histogram.
const LATENCY_SIGFIGS: u8 = 2;

/// Declares the counters once: each becomes a `Cell` of [`Stats`], a field
/// of [`CounterValues`] (a snapshot's figures, named as in `/api/stats`)
/// and an entry of [`COUNTERS`], which drives the Prometheus exposition and
/// is checked against the metrics table of `docs/metrics.md`. The doc
/// comment is the metric's help text.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])+ $field:ident => $metric:literal, )*) => {
        /// Counters of one shard since it started, and its gauges kept where
        /// the bytes change.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[doc = $doc])+ pub $field: Cell<u64>, )*
            /// Closed connections by [`CloseReason`], in [`CloseReason::ALL`]
            /// order.
            closed: [Cell<u64>; CloseReason::ALL.len()],
            /// Bytes in this shard's connection queues now (a gauge).
            pub queued_bytes: Cell<u64>,
            /// Payload bytes of unfinished incoming messages now (a gauge).
            pub unfinished_bytes: Cell<u64>,
            /// Bytes of HTTP answers built and not yet written (a gauge).
            pub http_answer_bytes: Cell<u64>,
            pub latency: RefCell<Latency>,
            /// Requests to Redis answered, and their round-trip times
            /// summed in µs (the `shardcast_engine_rtt_seconds` summary).
            pub engine_replies: Cell<u64>,
            pub engine_rtt_us: Cell<u64>,
        }

        /// The counters' values at one moment (one shard's, or summed).
        #[derive(Debug, Clone, Default, PartialEq, Serialize)]
        pub struct CounterValues {
            $( pub $field: u64, )*
        }

        impl Stats {
            /// What every counter holds now.
            pub fn counter_values(&self) -> CounterValues {
                CounterValues { $( $field: self.$field.get(), )* }
            }
        }

        impl CounterValues {
            /// Adds another shard's values.
            pub fn add(&mut self, other: &CounterValues) {
                $( self.$field += other.$field; )*
            }
        }

        /// Every counter, in declaration order.
        pub(crate) const COUNTERS: &[Counter] = &[
            $( Counter {
                metric: $metric,
                help: &[$($doc),+],
                read: |v| v.$field,
            }, )*
        ];
    };
}

/// One counter of the table (see [`COUNTERS`]).
pub(crate) struct Counter {
    /// Its Prometheus name (its name in `/api/stats` and `$stats`
    /// snapshots is its field's in [`CounterValues`]).
    pub metric: &'static str,
    /// Its doc comment, line by line.
    help: &'static [&'static str],
    pub read: fn(&CounterValues) -> u64,
}

impl Counter {
    /// The help text: the doc comment on one line.
    pub(crate) fn help(&self) -> String {
        let words: Vec<&str> = self.help.iter().map(|line| line.trim()).collect();
        words.join(" ")
    }
}

counters! {
    /// WebSocket connections accepted.
    connections_opened => "shardcast_connections_opened_total",
    /// Publications received from clients (WebSocket pub, raw-room messages,
    /// HTTP publish).
    messages_published => "shardcast_messages_published_total",
    /// Publications ordered by this shard as the channel's owner.
    messages_ordered => "shardcast_messages_ordered_total",
    /// Publication frames written completely to subscribers' sockets.
    messages_delivered => "shardcast_messages_delivered_total",
    /// Bytes read from client sockets (HTTP and WebSocket).
    bytes_in => "shardcast_bytes_received_total",
    /// Bytes written to WebSocket client sockets (before TLS).
    bytes_out => "shardcast_bytes_sent_total",
    /// Frames accepted into connection queues.
    frames_queued => "shardcast_frames_queued_total",
    /// Frames refused (queue over its bound, connection closing) or
    /// discarded unsent (slow consumer closed, connection gone).
    frames_dropped => "shardcast_frames_dropped_total",
    /// Socket writes of WebSocket frames (gathered `sendmsg` calls; over
    /// TLS, writes of records).
    socket_writes => "shardcast_socket_writes_total",
    /// Times a connection's socket was full, so its queue waited for room
    /// (a task of its own until the socket took more).
    socket_full => "shardcast_socket_full_total",
    /// Flush passes that wrote at least one connection (one per executor
    /// turn with something queued).
    flush_passes => "shardcast_flush_passes_total",
    /// Publications compressed for permessage-deflate subscribers: once
    /// per publication per shard, however many subscribers share it.
    publications_compressed => "shardcast_publications_compressed_total",
    /// Publications sent uncompressed to permessage-deflate subscribers
    /// because compression saved less than a tenth.
    compression_declined => "shardcast_compression_declined_total",
    /// Publication frames queued compressed (one per subscriber).
    deliveries_compressed => "shardcast_deliveries_compressed_total",
    /// Compressed client messages inflated.
    messages_inflated => "shardcast_messages_inflated_total",
    /// Fossil deltas computed by channel owners (once per publication, while
    /// some subscriber asked for deltas).
    deltas_computed => "shardcast_deltas_computed_total",
    /// Publication frames queued as deltas (one per subscriber).
    deliveries_delta => "shardcast_deliveries_delta_total",
    /// Publications that took the place of an older one with the same key
    /// in the queue of a subscriber that fell behind (`--conflate`).
    publications_conflated => "shardcast_publications_conflated_total",
    /// Messages sent to other shards.
    mesh_sent => "shardcast_mesh_messages_sent_total",
    /// Messages received from other shards.
    mesh_received => "shardcast_mesh_messages_received_total",
    /// HTTP requests read (upgrades included).
    http_requests => "shardcast_http_requests_total",
    /// Requests that were not valid HTTP, timed out (head or response), or
    /// were refused before an upgrade.
    handshake_failures => "shardcast_handshake_failures_total",
    /// Upgrades refused with 503 (max-connections, shutting down).
    http_503 => "shardcast_http_503_total",
    /// Tokens refused (401 at upgrade, auth frames) and requests without the
    /// API key.
    auth_failures => "shardcast_auth_failures_total",
    /// Operations outside the token's permissions (err forbidden, 403 at
    /// upgrade).
    forbidden => "shardcast_forbidden_total",
    /// Publications refused by the per-connection publish rate limit.
    rate_limited => "shardcast_rate_limited_total",
    /// Connections refused by the per-IP connection cap.
    ip_cap_refusals => "shardcast_ip_cap_refusals_total",
    /// Connections refused at the cap on plain HTTP connections
    /// (max-http-connections).
    http_cap_refusals => "shardcast_http_cap_refusals_total",
    /// Connection tasks that panicked (a bug; the connection was dropped).
    connection_panics => "shardcast_connection_panics_total",
    /// Resumes answered recovered:false because what was missed did not fit
    /// in the connection's queue.
    replays_refused => "shardcast_replays_refused_total",
    /// Connections (503) and subscriptions (err over_capacity) refused over
    /// the shard's memory budget.
    memory_refusals => "shardcast_memory_refusals_total",
    /// Publications this shard sent to the cluster engine (Redis script,
    /// NATS publish).
    engine_publications => "shardcast_engine_publications_total",
    /// Publications refused because the cluster engine was unreachable
    /// (`err unavailable`, HTTP 503: not applied), or sent to it and left
    /// unanswered (`err outcome_unknown`, HTTP 504: maybe applied).
    engine_refused => "shardcast_engine_refused_total",
    /// Times a connection to the cluster engine was made again after a
    /// loss.
    engine_reconnects => "shardcast_engine_reconnects_total",
    /// Messages received from the cluster engine (pub/sub pushes, NATS
    /// messages).
    engine_messages => "shardcast_engine_messages_total",
    /// Messages from the cluster engine that could not be read (dropped).
    engine_unreadable => "shardcast_engine_unreadable_total",
    /// Publications missed from the engine's pub/sub and filled from the
    /// channel's Redis stream.
    engine_gaps_filled => "shardcast_engine_gaps_filled_total",
    /// Times a channel's subscribers were told to resync (`resync` op): its
    /// epoch changed in Redis, or a gap could not be filled.
    engine_resyncs => "shardcast_engine_resyncs_total",
    /// Publications (HTTP publish, WebSocket `pub`) answered with the `seq`
    /// an earlier one under the same `idempotency_key` got, and not
    /// published again.
    publications_deduplicated => "shardcast_publications_deduplicated_total",
    /// Publications under a new idempotency key refused (HTTP 503 or `err`
    /// `over_capacity`, nothing published) because the owner shard already
    /// remembered as many keys as it may, or was over its memory budget.
    idempotency_refused => "shardcast_idempotency_refused_total",
    /// Connections closed or unsubscribed by `POST /api/disconnect` and
    /// `POST /api/unsubscribe`.
    api_kicks => "shardcast_api_kicks_total",
    /// Lifecycle events queued for the webhook (`--webhook-url`).
    webhook_events => "shardcast_webhook_events_total",
    /// Lifecycle events dropped because the shard's webhook queue was full.
    webhook_events_dropped => "shardcast_webhook_events_dropped_total",
    /// Webhook requests made (retries included).
    webhook_requests => "shardcast_webhook_requests_total",
    /// Webhook requests that failed (no connection, no answer within 5 s,
    /// a status other than 2xx) and were retried.
    webhook_failures => "shardcast_webhook_failures_total",
}

/// Adds `n` to a counter.
pub(crate) fn bump(counter: &Cell<u64>, n: u64) {
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
    /// Records `count` deliveries of the same latency.
    pub fn record_n(&mut self, micros: u64, count: u64) {
        self.current.saturating_record_n(micros, count);
        self.sum_us += micros * count;
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
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
            latency.record_n(us, 1);
        }
        assert_eq!(latency.last_second(), LatencySummary::default());
        latency.rotate();
        let second = latency.last_second();
        assert_eq!(second.count, 100);
        assert!((49..=51).contains(&second.p50), "{second:?}");
        assert_eq!(second.max, 100);
        latency.record_n(5_000, 1);
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
