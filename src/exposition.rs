//! `GET /metrics`: a [`ServerStats`] written in the Prometheus text exposition
//! format (version 0.0.4). Every per-shard figure carries a `shard` label;
//! process figures use the standard `process_*` names. Written by hand: the
//! figures arrive as snapshots gathered from the shards at scrape time, which
//! a metrics registry of long-lived atomic handles would only get in the way
//! of. `tests/metrics.rs` checks the output with Prometheus's own Python
//! parser.

use std::fmt::{Display, Write};

use crate::{
    close::CloseReason,
    process::ProcessStats,
    snapshot::{ServerStats, ShardSnapshot},
    stats::{LatencySummary, COUNTERS},
};

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency histogram's buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Reads one quantile of a summary.
type Quantile = fn(&LatencySummary) -> u64;

/// Quantiles of the latency summary.
const QUANTILES: [(&str, Quantile); 4] = [
    ("0.5", |l| l.p50),
    ("0.9", |l| l.p90),
    ("0.99", |l| l.p99),
    ("0.999", |l| l.p999),
];

type Read = fn(&ShardSnapshot) -> u64;

/// Per-shard gauges: name, help, value.
const GAUGES: [(&str, &str, Read); 12] = [
    (
        "shardcast_connections",
        "WebSocket connections open.",
        |s| s.holdings.connections,
    ),
    (
        "shardcast_subscriptions",
        "Subscriptions of this shard's connections.",
        |s| s.holdings.subscriptions,
    ),
    (
        "shardcast_channels",
        "Channels with a subscriber on this shard.",
        |s| s.holdings.channels,
    ),
    (
        "shardcast_channels_owned",
        "Channels this shard orders.",
        |s| s.holdings.channels_owned,
    ),
    (
        "shardcast_history_messages",
        "Publications kept in the history of the channels this shard owns.",
        |s| s.holdings.history_messages,
    ),
    (
        "shardcast_history_bytes",
        "Bytes counted for that history (bounded by history-max-bytes per shard).",
        |s| s.holdings.history_bytes,
    ),
    (
        "shardcast_outbox_bytes",
        "Bytes waiting in connection queues.",
        |s| s.holdings.outbox_bytes,
    ),
    (
        "shardcast_unfinished_message_bytes",
        "Payload bytes of incoming messages begun and not yet finished.",
        |s| s.unfinished_bytes,
    ),
    (
        "shardcast_memory_counted_bytes",
        "Bytes counted against the shard's memory budget: connections, queues, unfinished messages, history, idempotency keys, HTTP answers not yet taken.",
        |s| s.holdings.memory_counted_bytes,
    ),
    (
        "shardcast_memory_budget_bytes",
        "The shard's memory budget (max-memory divided by the shards).",
        |s| s.holdings.memory_budget_bytes,
    ),
    (
        "shardcast_uptime_seconds",
        "Seconds since the shard started.",
        |s| s.identity.uptime_s as u64,
    ),
    (
        "shardcast_engine_up",
        "1 while the shard's links to the cluster engine are up (always with the memory engine); 0 makes /health answer 503.",
        |s| u64::from(s.engine.engine_up),
    ),
];

/// Writes the exposition of `stats`: what runs, then each shard's gauges,
/// counters, closes, mesh queues, latency and engine round trips, then the
/// process's figures.
pub(crate) fn render(stats: &ServerStats) -> String {
    let mut out = String::with_capacity(8192 + 4096 * stats.per_shard.len());
    let shards = &stats.per_shard;
    write_identity(&mut out, stats);
    write_gauges_and_counters(&mut out, shards);
    write_closes(&mut out, shards);
    write_mesh_queues(&mut out, shards);
    write_latency(&mut out, shards);
    write_engine_rtt(&mut out, shards);
    write_process(&mut out, &stats.process);
    out
}

/// Which shardcast, node and engine; how many shards run and answered.
fn write_identity(out: &mut String, stats: &ServerStats) {
    family(
        out,
        "shardcast_info",
        "gauge",
        "Always 1; the labels say which shardcast, which node and which cluster engine.",
    );
    sample(
        out,
        "shardcast_info",
        &[
            ("version", stats.version),
            ("node", &stats.node),
            ("engine", stats.engine),
        ],
        1,
    );
    family(
        out,
        "shardcast_shards",
        "gauge",
        "Shards (executors) the server runs.",
    );
    sample(out, "shardcast_shards", &[], stats.shards);
    family(
        out,
        "shardcast_shards_reporting",
        "gauge",
        "Shards that answered this scrape in time.",
    );
    sample(
        out,
        "shardcast_shards_reporting",
        &[],
        stats.shards_reporting,
    );
}

/// [`GAUGES`] and every counter of [`COUNTERS`], per shard.
fn write_gauges_and_counters(out: &mut String, shards: &[ShardSnapshot]) {
    for (name, help, read) in GAUGES {
        family(out, name, "gauge", help);
        for s in shards {
            sample(
                out,
                name,
                &[("shard", &s.identity.shard.to_string())],
                read(s),
            );
        }
    }
    for counter in COUNTERS {
        let name = counter.metric;
        family(out, name, "counter", &counter.help());
        for s in shards {
            let value = (counter.read)(&s.counters);
            sample(
                out,
                name,
                &[("shard", &s.identity.shard.to_string())],
                value,
            );
        }
    }
}

/// Connections closed per shard, by every [`CloseReason`] (0 included).
fn write_closes(out: &mut String, shards: &[ShardSnapshot]) {
    let name = "shardcast_connections_closed_total";
    family(
        out,
        name,
        "counter",
        "WebSocket connections closed, by reason.",
    );
    for s in shards {
        let shard = s.identity.shard.to_string();
        for reason in CloseReason::ALL {
            let n = s.closed.get(reason.as_str()).copied().unwrap_or(0);
            sample(
                out,
                name,
                &[("shard", &shard), ("reason", reason.as_str())],
                n,
            );
        }
    }
}

/// Each shard's queue to each of its peers.
fn write_mesh_queues(out: &mut String, shards: &[ShardSnapshot]) {
    let name = "shardcast_mesh_queue_depth";
    family(
        out,
        name,
        "gauge",
        "Messages waiting in a shard's queue to a peer shard.",
    );
    for s in shards {
        let shard = s.identity.shard.to_string();
        for (peer, depth) in s
            .mesh_queue
            .iter()
            .enumerate()
            .filter(|(p, _)| *p != s.identity.shard)
        {
            sample(
                out,
                name,
                &[("shard", &shard), ("peer", &peer.to_string())],
                depth,
            );
        }
    }
}

/// The round trip of each shard's requests to the engine: sum and count.
fn write_engine_rtt(out: &mut String, shards: &[ShardSnapshot]) {
    let name = "shardcast_engine_rtt_seconds";
    family(
        out,
        name,
        "summary",
        "Round trip of the shard's requests to the cluster engine (Redis scripts and pings): sum and count.",
    );
    for s in shards {
        let shard = s.identity.shard.to_string();
        let labels = [("shard", shard.as_str())];
        sample(
            out,
            &format!("{name}_sum"),
            &labels,
            seconds(s.engine.engine_rtt_us),
        );
        sample(
            out,
            &format!("{name}_count"),
            &labels,
            s.engine.engine_replies,
        );
    }
}

/// The standard `process_*` figures.
fn write_process(out: &mut String, process: &ProcessStats) {
    let figures: [(&str, &str, &str, &dyn Display); 3] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process.",
            &process.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            &process.rss_bytes,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process, Unix seconds.",
            &process.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in figures {
        family(out, name, kind, help);
        sample(out, name, &[], value);
    }
}

/// The publish→write latency: a histogram (aggregatable across shards) and a
/// summary with the exact quantiles of each shard's HDR histogram.
fn write_latency(out: &mut String, shards: &[ShardSnapshot]) {
    let name = "shardcast_delivery_latency_seconds";
    family(
        out,
        name,
        "histogram",
        "Time from a publication's arrival to its frame being written to a subscriber's socket.",
    );
    let bucket = format!("{name}_bucket");
    for s in shards {
        let shard = s.identity.shard.to_string();
        let mut counts = [0u64; LATENCY_BUCKETS_US.len()];
        let mut total = 0;
        if let Some(histogram) = &s.latency.latency_histogram {
            for value in histogram.iter_recorded() {
                let at = value.value_iterated_to();
                let n = value.count_at_value();
                total += n;
                for (bound, count) in LATENCY_BUCKETS_US.iter().zip(counts.iter_mut()) {
                    if at <= *bound {
                        *count += n;
                    }
                }
            }
        }
        for (bound, count) in LATENCY_BUCKETS_US.iter().zip(counts) {
            let le = seconds(*bound).to_string();
            sample(out, &bucket, &[("shard", &shard), ("le", &le)], count);
        }
        sample(out, &bucket, &[("shard", &shard), ("le", "+Inf")], total);
        sample(
            out,
            &format!("{name}_sum"),
            &[("shard", &shard)],
            seconds(s.latency.latency_sum_us),
        );
        sample(out, &format!("{name}_count"), &[("shard", &shard)], total);
    }

    let name = "shardcast_delivery_latency_quantile_seconds";
    family(
        out,
        name,
        "summary",
        "The same latency as exact quantiles since the shard started.",
    );
    for s in shards {
        let shard = s.identity.shard.to_string();
        for (quantile, read) in QUANTILES {
            let value = seconds(read(&s.latency.latency_total_us));
            sample(
                out,
                name,
                &[("shard", &shard), ("quantile", quantile)],
                value,
            );
        }
        sample(
            out,
            &format!("{name}_sum"),
            &[("shard", &shard)],
            seconds(s.latency.latency_sum_us),
        );
        sample(
            out,
            &format!("{name}_count"),
            &[("shard", &shard)],
            s.latency.latency_total_us.count,
        );
    }
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line. Label values here are numbers and fixed words: nothing
/// needs escaping.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{value}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS_DOC: &str = include_str!("../docs/metrics.md");

    /// The counters `docs/metrics.md` documents: `(metric, kind)` of each
    /// row of its table.
    fn documented() -> Vec<(&'static str, &'static str)> {
        METRICS_DOC
            .lines()
            .filter_map(|line| {
                let mut cells = line.strip_prefix("| `")?.split(" | ");
                let name = cells.next()?.strip_suffix('`')?;
                Some((name, cells.next()?))
            })
            .collect()
    }

    /// One list of counters (`stats.rs`) drives the exposition; the docs
    /// must name exactly those, and the `$stats` fields by their JSON names.
    #[test]
    fn the_docs_list_every_counter_and_no_other() {
        let documented: Vec<&str> = documented()
            .into_iter()
            .filter(|(_, kind)| *kind == "counter")
            .map(|(name, _)| name)
            .collect();
        // Counted outside the table: by reason, and the process's.
        let elsewhere = [
            "shardcast_connections_closed_total",
            "process_cpu_seconds_total",
        ];
        for counter in COUNTERS {
            assert!(
                documented.contains(&counter.metric),
                "docs/metrics.md has no row for {}",
                counter.metric
            );
        }
        let fields = serde_json::to_value(crate::stats::CounterValues::default()).unwrap();
        for field in fields.as_object().unwrap().keys() {
            assert!(
                METRICS_DOC.contains(&format!("`{field}`")),
                "docs/metrics.md does not name the snapshot field {field}"
            );
        }
        for name in documented {
            assert!(
                elsewhere.contains(&name) || COUNTERS.iter().any(|c| c.metric == name),
                "docs/metrics.md documents {name}, which is not a counter"
            );
        }
    }

    #[test]
    fn every_counter_is_exposed_with_its_help() {
        let mut snapshot = ShardSnapshot::default();
        snapshot.counters.socket_writes = 7;
        let text = render(&ServerStats::new(1, vec![snapshot]));
        for counter in COUNTERS {
            let help = format!("# HELP {} {}\n", counter.metric, counter.help());
            assert!(text.contains(&help), "missing {help}");
        }
        assert!(text.contains("shardcast_socket_writes_total{shard=\"0\"} 7\n"));
    }
}
