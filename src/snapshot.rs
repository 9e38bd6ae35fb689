//! What a shard reports about itself at one moment ([`ShardSnapshot`]), and
//! the whole server's report built from every shard's ([`ServerStats`], the
//! document of `GET /api/stats`). Snapshots are plain data: a shard builds
//! one from its counters when asked and sends it to the shard serving the
//! request over the mesh. The same snapshot, serialized, is what each shard
//! publishes on `$stats` once a second for the dashboard.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    process::ProcessStats,
    stats::{CounterValues, LatencySummary},
};

/// One shard's figures. Counters are totals since the shard started; gauges
/// (connections, subscriptions, channels, queue sizes) are current. Its
/// parts are flattened: the JSON (`/api/stats`, `$stats`) is one object.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardSnapshot {
    #[serde(flatten)]
    pub identity: Identity,
    #[serde(flatten)]
    pub engine: EngineFigures,
    #[serde(flatten)]
    pub holdings: Holdings,
    /// Payload bytes of unfinished incoming messages now.
    pub unfinished_bytes: u64,
    /// Messages waiting in this shard's queue to each peer (index = peer;
    /// always 0 for the shard itself).
    pub mesh_queue: Vec<u64>,
    pub connections_closed: u64,
    /// Every counter of the table in `stats.rs`, at the top level.
    #[serde(flatten)]
    pub counters: CounterValues,
    /// Closed connections by reason (`normal`, `slow_consumer`, ...).
    pub closed: BTreeMap<&'static str, u64>,
    #[serde(flatten)]
    pub latency: LatencyFigures,
    pub process: ProcessStats,
}

/// Which shard of which node, where and since when.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Identity {
    pub shard: usize,
    pub shards: usize,
    /// The node this shard is part of (`--node-id`).
    pub node: String,
    /// The CPU the shard is pinned to (`null`: unpinned).
    pub cpu: Option<usize>,
    /// Unix time of the snapshot, in milliseconds.
    pub time_ms: u64,
    pub uptime_s: f64,
}

/// The cluster engine as this shard sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineFigures {
    /// The cluster engine, and whether this shard's links to it are up
    /// (always with `memory`).
    pub engine: &'static str,
    pub engine_up: bool,
    /// Requests to the engine answered, and their round trips summed (µs).
    pub engine_replies: u64,
    pub engine_rtt_us: u64,
}

/// What a shard holds now (gauges), summed over shards in the totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Holdings {
    /// WebSocket connections open now.
    pub connections: u64,
    /// Subscriptions of this shard's connections.
    pub subscriptions: u64,
    /// Channels with a subscriber on this shard (summed over shards, a
    /// channel with subscribers on two shards counts twice).
    pub channels: u64,
    /// Channels this shard orders (owns).
    pub channels_owned: u64,
    /// Publications kept in the history of the channels this shard owns.
    pub history_messages: u64,
    /// Bytes counted for that history (bounded by `history-max-bytes`).
    pub history_bytes: u64,
    /// Bytes waiting in this shard's connection queues now.
    pub outbox_bytes: u64,
    /// Bytes counted against this shard's memory budget now.
    pub memory_counted_bytes: u64,
    /// This shard's memory budget (`max-memory` / shards).
    pub memory_budget_bytes: u64,
}

impl Holdings {
    fn add(&mut self, other: &Holdings) {
        self.connections += other.connections;
        self.subscriptions += other.subscriptions;
        self.channels += other.channels;
        self.channels_owned += other.channels_owned;
        self.history_messages += other.history_messages;
        self.history_bytes += other.history_bytes;
        self.outbox_bytes += other.outbox_bytes;
        self.memory_counted_bytes += other.memory_counted_bytes;
        self.memory_budget_bytes += other.memory_budget_bytes;
    }
}

/// Publish→write latency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyFigures {
    /// Over the last completed second.
    pub latency_us: LatencySummary,
    /// Since the shard started.
    pub latency_total_us: LatencySummary,
    /// Sum of every latency recorded, in µs (the histogram's `_sum`).
    pub latency_sum_us: u64,
    /// The since-start histogram, for `/metrics` buckets and merging; only
    /// in snapshots taken for a scrape.
    #[serde(skip)]
    pub latency_histogram: Option<Box<Histogram<u64>>>,
}

/// Counters summed over every shard that answered.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Totals {
    #[serde(flatten)]
    pub holdings: Holdings,
    pub connections_closed: u64,
    #[serde(flatten)]
    pub counters: CounterValues,
    pub closed: BTreeMap<&'static str, u64>,
    /// Latency since start over all shards (histograms merged).
    pub latency_total_us: LatencySummary,
}

/// `GET /api/stats`: the process, the totals and every shard.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerStats {
    pub version: &'static str,
    /// This node (`--node-id`) and its engine (`memory`, `redis`, `nats`).
    pub node: String,
    pub engine: &'static str,
    pub shards: usize,
    /// Shards that answered in time (all of them unless one is stopping).
    pub shards_reporting: usize,
    pub process: ProcessStats,
    pub total: Totals,
    #[serde(rename = "shard")]
    pub per_shard: Vec<ShardSnapshot>,
}

impl ServerStats {
    /// Builds the report from the snapshots gathered (sorted by shard).
    pub(crate) fn new(shards: usize, mut per_shard: Vec<ShardSnapshot>) -> Self {
        per_shard.sort_by_key(|s| s.identity.shard);
        let process = ProcessStats::read();
        let node = per_shard
            .first()
            .map(|s| s.identity.node.clone())
            .unwrap_or_default();
        let engine = per_shard.first().map_or("memory", |s| s.engine.engine);
        ServerStats {
            version: env!("CARGO_PKG_VERSION"),
            node,
            engine,
            shards,
            shards_reporting: per_shard.len(),
            process,
            total: Totals::of(&per_shard),
            per_shard,
        }
    }
}

impl Totals {
    pub(crate) fn of(snapshots: &[ShardSnapshot]) -> Self {
        let mut total = Totals::default();
        let mut merged: Option<Histogram<u64>> = None;
        for s in snapshots {
            total.holdings.add(&s.holdings);
            total.connections_closed += s.connections_closed;
            total.counters.add(&s.counters);
            for (reason, n) in &s.closed {
                *total.closed.entry(reason).or_default() += n;
            }
            if let Some(histogram) = &s.latency.latency_histogram {
                match merged.as_mut() {
                    Some(all) => {
                        let _ = all.add(histogram.as_ref());
                    }
                    None => merged = Some(histogram.as_ref().clone()),
                }
            }
        }
        if let Some(all) = merged {
            total.latency_total_us = LatencySummary::of(&all);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: usize, connections: u64, latencies: &[u64]) -> ShardSnapshot {
        let mut histogram = Histogram::new_with_bounds(1, 60_000_000, 2).unwrap();
        for &l in latencies {
            histogram.record(l).unwrap();
        }
        ShardSnapshot {
            identity: Identity {
                shard: id,
                ..Identity::default()
            },
            holdings: Holdings {
                connections,
                ..Holdings::default()
            },
            closed: [("normal", 1), ("slow_consumer", id as u64)].into(),
            latency: LatencyFigures {
                latency_histogram: Some(Box::new(histogram)),
                ..LatencyFigures::default()
            },
            ..ShardSnapshot::default()
        }
    }

    #[test]
    fn totals_sum_shards_and_merge_latency() {
        let stats = ServerStats::new(2, vec![shard(1, 5, &[1000]), shard(0, 7, &[10, 20])]);
        assert_eq!(stats.per_shard[0].identity.shard, 0, "sorted by shard");
        assert_eq!(stats.total.holdings.connections, 12);
        assert_eq!(stats.total.closed["normal"], 2);
        assert_eq!(stats.total.closed["slow_consumer"], 1);
        assert_eq!(stats.total.latency_total_us.count, 3);
        assert!(stats.total.latency_total_us.max >= 990);
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["shard"][1]["connections"], 5);
        assert!(json["shard"][0].get("latency_histogram").is_none());
    }
}
