//! What a shard tells about itself: its snapshot, the gathering of every
//! shard's snapshot for a scrape (over the mesh, only when asked), and the
//! once-a-second tick that closes the latency second and publishes the
//! snapshot on the `$stats` system channel for the dashboard.

use std::{rc::Rc, time::Duration};

use bytes::Bytes;

use super::Shard;
use crate::{
    channel::{ChannelName, STATS_CHANNEL},
    close::CloseReason,
    mesh::{Question, Reply},
    process::{self, ProcessStats},
    protocol::PayloadKind,
    publication::Payload,
    snapshot::{EngineFigures, Holdings, Identity, LatencyFigures, ServerStats, ShardSnapshot},
    stats::LatencySummary,
};

/// How often each shard publishes on `$stats`.
pub(super) const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a scrape waits for the other shards.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// This shard's figures now. `for_scrape` adds the since-start latency
/// histogram (a copy of about 40 KiB) for `/metrics` buckets.
pub(crate) fn snapshot(shard: &Shard, for_scrape: bool) -> ShardSnapshot {
    let stats = &shard.stats;
    let subscriptions = (shard.registry.borrow().iter())
        .map(|conn| conn.subscription_count() as u64)
        .sum();
    // Kept by every queue as it changes (see `Outbox::set_queued`).
    let outbox_bytes = stats.queued_bytes.get();
    let latency = stats.latency.borrow();
    let since_start = latency.since_start();
    ShardSnapshot {
        identity: Identity {
            shard: shard.id,
            shards: shard.shards,
            node: shard.config.engine.node_id.clone(),
            cpu: shard.shell.cpu,
            time_ms: (process::unix_seconds() * 1e3) as u64,
            uptime_s: shard.shell.heartbeats.uptime_s(),
        },
        engine: EngineFigures {
            engine: shard.config.engine.kind.as_str(),
            engine_up: shard.broker.is_up(),
            engine_replies: stats.engine_replies.get(),
            engine_rtt_us: stats.engine_rtt_us.get(),
        },
        holdings: Holdings {
            connections: shard.connection_count() as u64,
            subscriptions,
            channels: shard.channel_count() as u64,
            channels_owned: shard.owned_channel_count() as u64,
            history_messages: shard.history_len() as u64,
            history_bytes: shard.history_bytes() as u64,
            outbox_bytes,
            memory_counted_bytes: shard.memory_use().counted(),
            memory_budget_bytes: shard.memory_budget(),
        },
        unfinished_bytes: stats.unfinished_bytes.get(),
        mesh_queue: (0..shard.shards)
            .map(|peer| shard.links.depth(peer) as u64)
            .collect(),
        connections_closed: stats.connections_closed(),
        counters: stats.counter_values(),
        closed: CloseReason::ALL
            .iter()
            .map(|r| (r.as_str(), stats.closed_for(*r)))
            .collect(),
        latency: LatencyFigures {
            latency_us: latency.last_second(),
            latency_total_us: LatencySummary::of(&since_start),
            latency_sum_us: latency.sum_us(),
            latency_histogram: for_scrape.then(|| Box::new(since_start)),
        },
        process: ProcessStats::read(),
    }
}

/// Every shard's snapshot, for a scrape: asks each peer over the mesh and
/// waits up to two seconds; a shard that does not answer (stopping) is
/// left out.
pub(crate) async fn gather(shard: &Shard) -> ServerStats {
    let mut snapshots = vec![snapshot(shard, true)];
    let peers = shard.shards - 1;
    if peers > 0 {
        // Freed however the wait ends (a scrape dropped at shutdown too).
        let waiting = shard.pending.wait::<ShardSnapshot>(peers);
        for peer in (0..shard.shards).filter(|p| *p != shard.id) {
            shard.ask(peer, waiting.id(), Question::Snapshot);
        }
        let _ = glommio::timer::timeout(GATHER_TIMEOUT, async {
            while snapshots.len() <= peers {
                let Some(snapshot) = waiting.next().await else {
                    break;
                };
                // One snapshot per shard, whatever a peer sends.
                if !snapshots
                    .iter()
                    .any(|s| s.identity.shard == snapshot.identity.shard)
                {
                    snapshots.push(snapshot);
                }
            }
            Ok(())
        })
        .await;
    }
    ServerStats::new(shard.shards, snapshots)
}

/// Once a second: close the latency second, publish the snapshot on `$stats`.
pub(super) fn spawn_stats_tick(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let channel = ChannelName::of_valid(STATS_CHANNEL);
        while !shard.is_shutting_down() {
            glommio::timer::sleep(STATS_INTERVAL).await;
            shard.stats.latency.borrow_mut().rotate();
            let snapshot = snapshot(&shard, false);
            let Ok(json) = serde_json::to_vec(&snapshot) else {
                continue;
            };
            let payload = Payload::new(PayloadKind::Json, Bytes::from(json));
            shard.publish(channel.clone(), payload, None, Reply::None);
        }
    })
    .detach();
}
