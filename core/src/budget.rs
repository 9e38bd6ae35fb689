//! The shard's memory budget (`max-memory` / `shards`): what the memory
//! clients make a shard hold is counted as — connections, subscriptions,
//! queues, unfinished messages, owned channels and their history, HTTP
//! answers in flight, idempotency keys, the webhook queue — and whether the
//! shard is over it. Over it the shard refuses new connections and
//! subscriptions (and new idempotency keys, and history and channel pages);
//! what clients already hold stays bounded per connection
//! (`max-queue-bytes`, `max-message-bytes`) and in time (`send-timeout`,
//! `message-timeout`), and history by `history-max-bytes`. Pure: the shard passes its figures in.

/// What an idle WebSocket connection is counted as: 1.3 KiB of resident
/// memory are measured per idle plain connection and 11.4 KiB over TLS
/// (BENCHMARKS.md); 4 KiB covers a plain one with its queue storage and a
/// token's grant, and leaves room for a share of TLS ones. Kernel socket
/// buffers are not in it (they are the kernel's, ~5 KiB per idle loopback
/// socket pair).
pub const IDLE_CONNECTION_BYTES: u64 = 4096;

/// An unfinished incoming message is held once, by the connection's
/// decoder (counted by its buffers' capacity).
const UNFINISHED_COPIES: u64 = 1;

/// What one subscription is counted as: its entry in its channel's list
/// and in its connection's, and a share of the channel's own entry. An
/// outside run measured ~730 B of resident memory per subscription with
/// 250 channels of their own per connection (the worst case: no channel
/// shared).
pub const SUBSCRIPTION_BYTES: u64 = 768;

/// The figures of one shard that the budget counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    pub connections: u64,
    /// Subscriptions of those connections.
    pub subscriptions: u64,
    /// Bytes in outgoing queues.
    pub queued_bytes: u64,
    /// Payload bytes of unfinished incoming messages.
    pub unfinished_bytes: u64,
    /// What the owned channels and their history hold, as
    /// `history-max-bytes` counts it (`shard/owner.rs`).
    pub history_bytes: u64,
    /// Lifecycle events waiting for the webhook receiver.
    pub webhook_bytes: u64,
    /// What the idempotency keys of HTTP publishes are counted as
    /// (`shard/idempotency.rs`).
    pub idempotency_bytes: u64,
    /// HTTP answers built and not yet taken by their clients.
    pub http_answer_bytes: u64,
}

impl MemoryUse {
    /// The bytes counted against the budget.
    pub fn counted(&self) -> u64 {
        self.connections * IDLE_CONNECTION_BYTES
            + self.subscriptions * SUBSCRIPTION_BYTES
            + self.queued_bytes
            + self.unfinished_bytes * UNFINISHED_COPIES
            + self.history_bytes
            + self.webhook_bytes
            + self.idempotency_bytes
            + self.http_answer_bytes
    }

    /// Whether this use is at or over `budget` bytes.
    pub fn is_over(&self, budget: u64) -> bool {
        self.counted() >= budget
    }
}

#[cfg(test)]
/// The worst case one connection can make a shard hold, in bytes of
/// process memory: its idle cost, a full queue and an unfinished message of
/// the largest size (docs/design.md quotes it).
pub fn worst_case_per_connection(max_queue_bytes: u64, max_message_bytes: u64) -> u64 {
    IDLE_CONNECTION_BYTES + max_queue_bytes + max_message_bytes * UNFINISHED_COPIES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_kind_of_holding() {
        let idle = MemoryUse {
            connections: 10,
            ..MemoryUse::default()
        };
        assert_eq!(idle.counted(), 10 * IDLE_CONNECTION_BYTES);
        let busy = MemoryUse {
            connections: 1,
            subscriptions: 3,
            queued_bytes: 1000,
            unfinished_bytes: 500,
            history_bytes: 7,
            webhook_bytes: 11,
            idempotency_bytes: 300,
            http_answer_bytes: 40,
        };
        assert_eq!(
            busy.counted(),
            IDLE_CONNECTION_BYTES + 3 * SUBSCRIPTION_BYTES + 1000 + 500 + 7 + 11 + 300 + 40
        );
        assert!(busy.is_over(busy.counted()));
        assert!(!busy.is_over(busy.counted() + 1));
    }

    #[test]
    fn the_documented_worst_case_with_defaults() {
        // 1 MiB queue, 64 KiB messages: about 1.07 MiB per connection.
        assert_eq!(
            worst_case_per_connection(1 << 20, 64 << 10),
            4096 + (1 << 20) + (64 << 10)
        );
    }

    #[test]
    fn an_empty_shard_is_over_only_a_budget_of_nothing() {
        let empty = MemoryUse::default();
        assert_eq!(empty.counted(), 0);
        assert!(empty.is_over(0));
        assert!(!empty.is_over(1));
    }
}
