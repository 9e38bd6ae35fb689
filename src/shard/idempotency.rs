//! What the owner shard remembers of publications made under an
//! `idempotency_key` (HTTP publish): for each (channel, key), the `seq` the
//! first one got, for `--idempotency-window`. A retry within the window is
//! answered with that `seq` and not published again. The owner orders a
//! channel's publications one at a time, so looking a key up and
//! remembering it cannot race. With the Redis engine the key is kept in
//! Redis instead, by the publish script (`engine/scripts.rs`), so a retry
//! that reaches another node is recognised too.

use std::collections::{HashMap, VecDeque};

/// Keys remembered per shard at most; past it the oldest are forgotten
/// before their window ends (counted in `shardcast_idempotency_evicted_total`).
pub const MAX_REMEMBERED: usize = 100_000;

/// Remembered publications, oldest first in `order`.
#[derive(Debug)]
pub struct Remembered {
    window_ms: u64,
    seqs: HashMap<Box<[u8]>, (u64, u64)>,
    /// `(forget at, key)`, in the order they were remembered (the window
    /// is the same for all, so this is also the order they expire in).
    order: VecDeque<(u64, Box<[u8]>)>,
    capacity: usize,
}

/// `channel`, a NUL (never in a channel name) and `key`: one map key.
fn scoped(channel: &str, key: &str) -> Box<[u8]> {
    let mut scoped = Vec::with_capacity(channel.len() + 1 + key.len());
    scoped.extend_from_slice(channel.as_bytes());
    scoped.push(0);
    scoped.extend_from_slice(key.as_bytes());
    scoped.into_boxed_slice()
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
        }
    }

    /// The `seq` a publication on `channel` under `key` got within the
    /// window, if one did.
    pub fn recall(&mut self, channel: &str, key: &str, now_ms: u64) -> Option<u64> {
        self.expire(now_ms);
        self.seqs.get(&*scoped(channel, key)).map(|(seq, _)| *seq)
    }

    /// Remembers that the publication on `channel` under `key` got `seq`.
    /// Returns how many keys had to be forgotten early to make room.
    pub fn remember(&mut self, channel: &str, key: &str, seq: u64, now_ms: u64) -> usize {
        self.expire(now_ms);
        let mut evicted = 0;
        while self.seqs.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.seqs.remove(&oldest);
            evicted += 1;
        }
        let until = now_ms.saturating_add(self.window_ms);
        let scoped = scoped(channel, key);
        self.seqs.insert(scoped.clone(), (seq, until));
        self.order.push_back((until, scoped));
        evicted
    }

    #[cfg(test)]
    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Forgets the keys whose window has ended.
    fn expire(&mut self, now_ms: u64) {
        while let Some((until, _)) = self.order.front() {
            if *until > now_ms {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                // Not a newer entry remembered under the same key since.
                if self.seqs.get(&key).is_some_and(|(_, u)| *u <= now_ms) {
                    self.seqs.remove(&key);
                }
            }
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
        assert_eq!(remembered.remember("news", "k1", 7, 0), 0);
        assert_eq!(remembered.recall("news", "k1", 999), Some(7));
        assert_eq!(remembered.recall("sport", "k1", 999), None, "per channel");
        assert_eq!(remembered.recall("news", "k2", 999), None);
        assert_eq!(remembered.recall("news", "k1", 1_000), None, "window over");
        assert_eq!(remembered.len(), 0, "and forgotten");
    }

    #[test]
    fn channel_and_key_cannot_run_into_each_other() {
        let mut remembered = Remembered::new(1_000);
        remembered.remember("a", "bc", 1, 0);
        assert_eq!(remembered.recall("ab", "c", 0), None);
    }

    #[test]
    fn the_oldest_keys_go_first_when_full() {
        let mut remembered = Remembered::with_capacity(10_000, 2);
        remembered.remember("c", "1", 1, 0);
        remembered.remember("c", "2", 2, 1);
        assert_eq!(remembered.remember("c", "3", 3, 2), 1);
        assert_eq!(remembered.recall("c", "1", 3), None);
        assert_eq!(remembered.recall("c", "2", 3), Some(2));
        assert_eq!(remembered.recall("c", "3", 3), Some(3));
    }
}
