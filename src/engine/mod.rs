//! Engines: how the nodes of one service agree. `memory` (the default) is
//! one node on its own, exactly as without an engine. `redis` orders every
//! channel's publications in Redis (one Lua script per publication: its
//! offset is the channel's `seq` on every node) and keeps their history in a
//! Redis Stream, so any node answers recovery; `nats` fans publications out
//! to the other nodes over core NATS, at most once, each node ordering and
//! keeping history on its own. Each shard holds its own connections to the
//! broker (`redis`: one per `--redis-url`, the channels spread over them by
//! a stable hash of the name), used only for the channels it owns. The
//! shard sees its engine only as a [`broker::Broker`] (`broker.rs`, with
//! the memory engine's; `redis_broker.rs` and `nats_broker.rs` wrap the
//! links). `docs/cluster.md` states the guarantees.

pub(crate) mod addr;
pub(crate) mod backoff;
pub(crate) mod broker;
pub(crate) mod nats;
pub(crate) mod nats_broker;
pub(crate) mod nats_proto;
pub(crate) mod pipe;
pub(crate) mod record;
pub(crate) mod redis;
pub(crate) mod redis_broker;
pub(crate) mod resp;
pub(crate) mod scripts;
pub(crate) mod settings;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

/// Why a publication (or a question) was not taken: by the engine, or by
/// the channel's owner shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The broker is unreachable and the publication was never sent to it
    /// (the link was down, or lost before it was written): it was not
    /// applied.
    #[error("the cluster engine is unavailable; the publication was not accepted: retry later")]
    Unavailable,
    /// The publication was sent to Redis (or handed to its owner shard) and
    /// no answer came: the link was lost, Redis was silent for
    /// `--engine-timeout`, or its answer could not be read. It may have
    /// been applied; a retry under the same idempotency key publishes it at
    /// most once (`docs/cluster.md`).
    #[error(
        "no answer came for the publication: it may have been applied; \
         retry with the same idempotency_key"
    )]
    OutcomeUnknown,
    /// A publish under a new `idempotency_key`: the owner shard
    /// remembers as many keys as it may, or is over its memory budget
    /// (`shard/idempotency.rs`). Nothing was published; the client may
    /// retry with the same key once older keys expire.
    #[error(
        "the channel's shard remembers as many idempotency keys as it may (or is over \
         max-memory); nothing was published: retry later with the same key"
    )]
    IdempotencyFull,
}

impl Refused {
    /// The error code a refused publisher is answered with.
    pub fn code(self) -> crate::protocol::ErrorCode {
        match self {
            Refused::Unavailable => crate::protocol::ErrorCode::Unavailable,
            Refused::IdempotencyFull => crate::protocol::ErrorCode::OverCapacity,
            Refused::OutcomeUnknown => crate::protocol::ErrorCode::OutcomeUnknown,
        }
    }
}

/// A channel's offset and epoch outlive its history this long at least,
/// so a quiet channel keeps its numbering.
const META_TTL_FLOOR: Duration = Duration::from_secs(24 * 3600);

/// One flag per shard: set while all its engine links are up. Shared by
/// every shard (each writes its own) for `/health`.
pub(crate) type EngineHealth = Arc<[AtomicBool]>;

/// Flags for `shards` shards: up (the memory engine is never down).
pub(crate) fn new_health(shards: usize) -> EngineHealth {
    (0..shards).map(|_| AtomicBool::new(true)).collect()
}

/// Whether every shard's links are up.
pub(crate) fn all_up(health: &EngineHealth) -> bool {
    health.iter().all(|flag| flag.load(Ordering::Acquire))
}

/// What the engine keeps of each channel, from the history, queue,
/// presence and idempotency settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Publications kept per channel (`history-size`).
    pub history_size: usize,
    /// Oldest publication kept (`history-ttl`).
    pub history_ttl: Duration,
    /// Most bytes replayed to one subscriber (`max-queue-bytes`).
    pub replay_bytes: usize,
    /// How long a node's presence members outlive its last refresh.
    pub presence_ttl: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
}

/// Watches a link for silence: a request unanswered (or a ping) for longer
/// than the timeout means the broker is gone even if TCP has not noticed (a
/// partition sends no reset). Idle links are pinged every third of it.
/// Resolves with the reason once the link is taken for lost.
pub(crate) async fn watch_liveness(
    timeout: Duration,
    awaiting_since: impl Fn() -> Option<u64>,
    ping: impl Fn(),
) -> String {
    let every = timeout / 3;
    loop {
        glommio::timer::sleep(every).await;
        match awaiting_since() {
            Some(since) => {
                let waited = crate::clock::now_ns().saturating_sub(since);
                if waited > timeout.as_nanos() as u64 {
                    return format!("no answer for {timeout:?}");
                }
            }
            None => ping(),
        }
    }
}

/// Tags a message other nodes will read with this node's hash: `<16 hex
/// digits>:` and then `body` (presence events and control messages).
pub(crate) fn tagged(node: u64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{node:016x}:").into_bytes();
    message.extend_from_slice(body);
    message
}

/// A [`tagged`] message's node and body; `None` if it is not one.
pub(crate) fn untag(message: &[u8]) -> Option<(u64, &[u8])> {
    let hex = message
        .get(..16)
        .and_then(|hex| std::str::from_utf8(hex).ok())?;
    let origin = u64::from_str_radix(hex, 16).ok()?;
    let body = message.get(16..)?.strip_prefix(b":")?;
    Some((origin, body))
}

#[cfg(test)]
mod tagging_tests {
    use super::*;

    #[test]
    fn a_tagged_message_names_its_node() {
        let message = tagged(0xab, b"{\"x\":1}");
        assert_eq!(&message[..17], b"00000000000000ab:");
        assert_eq!(untag(&message), Some((0xab, &b"{\"x\":1}"[..])));
        assert_eq!(untag(b"00000000000000ab"), None);
        assert_eq!(untag(b"zz000000000000ab:{}"), None);
    }
}
