//! What the owner shard remembers of publications made under an
//! `idempotency_key` (HTTP publish, WebSocket `pub`; the key tagged with its
//! form, `api::remembered_key`): for each (channel, key), the `seq` the
//! first one got, for `--idempotency-window`. A retry within the window is
//! answered with that `seq` and not published again. The owner orders a
//! channel's publications one at a time, so looking a key up, checking
//! for room and remembering it cannot race. The store is bounded in keys
//! and its bytes are counted against the shard's memory budget; a key is
//! never forgotten before its window ends (that would let a retry publish
//! twice): when full, new keys are refused instead (`docs/api.md`). With
//! the Redis engine the key is kept in Redis instead, by the publish script
//! (`engine/scripts.rs`), so a retry that reaches another node is
//! recognised too.

use std::{
    collections::{HashMap, VecDeque},
    rc::Rc,
};

/// Keys remembered per shard at most; past it new keys are refused
/// (counted in `shardcast_idempotency_refused_total`) until the oldest
/// expire.
pub const MAX_REMEMBERED: usize = 100_000;

/// What one remembered key is counted as besides its bytes (channel, a
/// separator, key): its map slot (a 16-byte pointer and two `u64`s, at a
/// load factor down to 7/16 after the table doubles), its queue slot (24
/// bytes, up to twice over after the queue doubles), the shared
/// allocation's counts and the allocator's rounding.
pub const ENTRY_OVERHEAD: usize = 192;

/// Who a key comes from: the server API (a backend, behind `--api-key`
/// when one is set) or a WebSocket client's `pub`. Clients' keys may hold
/// at most half the store, so that anonymous clients flooding keys cannot
/// refuse the backend's keyed publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Client,
}

/// Why a new key was not taken (the publication is refused, see
/// `engine::Refused::IdempotencyFull`; the connection is not affected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// The store holds [`MAX_REMEMBERED`] keys, all within their window.
    #[error("the shard already remembers {keys} idempotency keys, its most")]
    Keys { keys: usize },
    /// WebSocket clients' keys fill their half of the store.
    #[error(
        "the shard already remembers {keys} idempotency keys of WebSocket clients, their most"
    )]
    ClientKeys { keys: usize },
    /// The shard is at or over its share of `--max-memory`.
    #[error("the shard is over its memory budget ({counted} of {budget} bytes counted)")]
    Memory { counted: u64, budget: u64 },
}

/// Remembered publications, oldest first in `order`.
#[derive(Debug)]
pub struct Remembered {
    window_ms: u64,
    /// `(seq, forget at, source)` by scoped key (see [`scoped`]).
    seqs: HashMap<Rc<[u8]>, (u64, u64, Source)>,
    /// `(forget at, key)`, in the order they were remembered (the window
    /// is the same for all, so this is also the order they expire in). The
    /// key's bytes are shared with `seqs`.
    order: VecDeque<(u64, Rc<[u8]>)>,
    capacity: usize,
    /// Keys of [`Source::Client`] among `seqs`.
    client_keys: usize,
    /// What the remembered keys are counted as (see [`ENTRY_OVERHEAD`]).
    bytes: usize,
}

/// `channel`, a NUL (never in a channel name) and `key`: one map key.
fn scoped(channel: &str, key: &str) -> Vec<u8> {
    let mut scoped = Vec::with_capacity(channel.len() + 1 + key.len());
    scoped.extend_from_slice(channel.as_bytes());
    scoped.push(0);
    scoped.extend_from_slice(key.as_bytes());
    scoped
}

fn counted(scoped: &[u8]) -> usize {
    ENTRY_OVERHEAD + scoped.len()
}

impl Remembered {
    pub fn new(window_ms: u64) -> Self {
        Self::with_capacity(window_ms, MAX_REMEMBERED)
    }

    fn with_capacity(window_ms: u64, capacity: usize) -> Self {
        Remembered {
            window_ms,
            seqs: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            client_keys: 0,
            bytes: 0,
        }
    }

    /// The `seq` a publication on `channel` under `key` got within the
    /// window, if one did.
    pub fn recall(&mut self, channel: &str, key: &str, now_ms: u64) -> Option<u64> {
        self.expire(now_ms);
        self.seqs.get(&*scoped(channel, key)).map(|(seq, ..)| *seq)
    }

    /// Whether one more key from `source` may be remembered now; the keys
    /// whose window ended are forgotten first, the others never are.
    pub fn has_room(&mut self, now_ms: u64, source: Source) -> Result<(), Full> {
        self.expire(now_ms);
        if self.seqs.len() >= self.capacity {
            return Err(Full::Keys {
                keys: self.seqs.len(),
            });
        }
        if source == Source::Client && self.client_keys >= self.capacity / 2 {
            return Err(Full::ClientKeys {
                keys: self.client_keys,
            });
        }
        Ok(())
    }

    /// Remembers that the publication on `channel` under `key` got `seq`
    /// (the owner checked [`Remembered::has_room`] before publishing it).
    pub fn remember(&mut self, channel: &str, key: &str, seq: u64, now_ms: u64, source: Source) {
        let until = now_ms.saturating_add(self.window_ms);
        let scoped: Rc<[u8]> = scoped(channel, key).into();
        // Already there only if its window ended unnoticed (a live key is
        // recalled, not published again): counted once, and its older
        // queue entry is skipped when it comes up.
        match self.seqs.insert(scoped.clone(), (seq, until, source)) {
            None => self.bytes += counted(&scoped),
            Some((.., Source::Client)) => self.client_keys -= 1,
            Some(_) => {}
        }
        if source == Source::Client {
            self.client_keys += 1;
        }
        self.order.push_back((until, scoped));
    }

    /// What the remembered keys are counted as against the memory budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Forgets the keys whose window has ended.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some((until, _)) = self.order.front() {
            if *until > now_ms {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                // Not a newer entry remembered under the same key since.
                if self.seqs.get(&key).is_some_and(|(_, u, _)| *u <= now_ms) {
                    if let Some((.., source)) = self.seqs.remove(&key) {
                        self.bytes -= counted(&key);
                        self.client_keys -= usize::from(source == Source::Client);
                    }
                }
            }
        }
        // A flood's tables are not kept once it has expired (what
        // `ENTRY_OVERHEAD` counts holds only while they are mostly full).
        if self.seqs.capacity() > 4 * self.seqs.len().max(16) {
            self.seqs.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_remembered_per_channel_for_the_window() {
        let mut remembered = Remembered::new(1_000);
        assert_eq!(remembered.recall("news", "k1", 0), None);
        remembered.remember("news", "k1", 7, 0, Source::Api);
        assert_eq!(remembered.recall("news", "k1", 999), Some(7));
        assert_eq!(remembered.recall("sport", "k1", 999), None, "per channel");
        assert_eq!(remembered.recall("news", "k2", 999), None);
        assert_eq!(remembered.recall("news", "k1", 1_000), None, "window over");
        assert_eq!(remembered.len(), 0, "and forgotten");
    }

    #[test]
    fn channel_and_key_cannot_run_into_each_other() {
        let mut remembered = Remembered::new(1_000);
        remembered.remember("a", "bc", 1, 0, Source::Api);
        assert_eq!(remembered.recall("ab", "c", 0), None);
    }

    #[test]
    fn when_full_new_keys_are_refused_and_none_is_forgotten_early() {
        // Issue 24, finding 15: the oldest keys were evicted to make room,
        // so a flood of new keys made others' retries publish twice.
        let mut remembered = Remembered::with_capacity(10_000, 2);
        assert_eq!(remembered.has_room(0, Source::Api), Ok(()));
        remembered.remember("c", "1", 1, 0, Source::Api);
        remembered.remember("c", "2", 2, 1, Source::Api);
        assert_eq!(
            remembered.has_room(2, Source::Api),
            Err(Full::Keys { keys: 2 })
        );
        assert_eq!(remembered.recall("c", "1", 9_999), Some(1));
        assert_eq!(remembered.recall("c", "2", 9_999), Some(2));
        // The first one's window ends: room for one.
        assert_eq!(remembered.has_room(10_000, Source::Api), Ok(()));
        remembered.remember("c", "3", 3, 10_000, Source::Api);
        assert_eq!(
            remembered.has_room(10_000, Source::Api),
            Err(Full::Keys { keys: 2 })
        );
        assert_eq!(remembered.recall("c", "2", 10_000), Some(2));
    }

    #[test]
    fn clients_keys_hold_at_most_half_the_store() {
        let mut remembered = Remembered::with_capacity(10_000, 4);
        remembered.remember("c", "1", 1, 0, Source::Client);
        remembered.remember("c", "2", 2, 0, Source::Client);
        let full = Err(Full::ClientKeys { keys: 2 });
        assert_eq!(remembered.has_room(0, Source::Client), full);
        // The backend's keys still have their half.
        assert_eq!(remembered.has_room(0, Source::Api), Ok(()));
        remembered.remember("c", "3", 3, 0, Source::Api);
        // Once the clients' expire, clients may remember again.
        assert_eq!(remembered.has_room(10_000, Source::Client), Ok(()));
        assert_eq!((remembered.len(), remembered.client_keys), (0, 0));
    }

    #[test]
    fn the_keys_bytes_are_counted_until_they_expire() {
        let mut remembered = Remembered::new(1_000);
        assert_eq!(remembered.bytes(), 0);
        let key = "k".repeat(128);
        remembered.remember("news", &key, 1, 0, Source::Api);
        remembered.remember("sport", "k", 1, 500, Source::Api);
        let first = ENTRY_OVERHEAD + "news".len() + 1 + 128;
        let second = ENTRY_OVERHEAD + "sport".len() + 1 + 1;
        assert_eq!(remembered.bytes(), first + second);
        remembered.expire(1_000);
        assert_eq!(remembered.bytes(), second);
        // Remembered again after its window: counted once.
        remembered.remember("news", &key, 2, 1_000, Source::Api);
        remembered.remember("news", &key, 3, 1_200, Source::Api);
        assert_eq!(remembered.bytes(), first + second);
        remembered.expire(1_500);
        assert_eq!(remembered.bytes(), first);
        remembered.expire(2_200);
        assert_eq!((remembered.bytes(), remembered.len()), (0, 0));
    }

    #[test]
    fn expiry_forgets_only_the_keys_whose_window_ended() {
        let mut remembered = Remembered::new(1_000);
        remembered.remember("c", "early", 1, 0, Source::Api);
        remembered.remember("c", "late", 2, 500, Source::Client);
        remembered.expire(999);
        assert_eq!(remembered.len(), 2);
        remembered.expire(1_000);
        assert_eq!(remembered.len(), 1);
        assert_eq!(remembered.recall("c", "late", 1_499), Some(2));
        assert_eq!(remembered.recall("c", "early", 1_499), None);
    }

    #[test]
    fn an_older_entry_of_a_key_does_not_forget_its_newer_remembering() {
        let mut remembered = Remembered::new(1_000);
        remembered.remember("c", "k", 1, 0, Source::Api);
        remembered.remember("c", "k", 2, 500, Source::Api);
        assert_eq!(remembered.recall("c", "k", 1_000), Some(2));
        assert_eq!(remembered.recall("c", "k", 1_500), None);
        assert!(remembered.is_empty());
    }

    #[test]
    fn a_client_key_remembered_again_by_the_api_frees_the_clients_half() {
        let mut remembered = Remembered::with_capacity(10_000, 4);
        remembered.remember("c", "1", 1, 0, Source::Client);
        remembered.remember("c", "2", 2, 0, Source::Client);
        assert!(remembered.has_room(0, Source::Client).is_err());
        remembered.remember("c", "2", 2, 0, Source::Api);
        assert_eq!(remembered.has_room(0, Source::Client), Ok(()));
        assert_eq!(remembered.len(), 2);
    }

    #[test]
    fn a_store_full_of_the_apis_keys_refuses_clients_as_full() {
        let mut remembered = Remembered::with_capacity(10_000, 2);
        remembered.remember("c", "1", 1, 0, Source::Api);
        remembered.remember("c", "2", 2, 0, Source::Api);
        assert_eq!(
            remembered.has_room(0, Source::Client),
            Err(Full::Keys { keys: 2 })
        );
    }

    #[test]
    fn a_window_reaching_past_the_end_of_time_does_not_overflow() {
        let mut remembered = Remembered::new(u64::MAX);
        remembered.remember("c", "k", 9, 10, Source::Api);
        assert_eq!(remembered.recall("c", "k", u64::MAX - 1), Some(9));
    }
}
