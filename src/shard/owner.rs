//! The owner role: for each channel this shard owns (by hash of its name), the
//! next `seq` and which other shards have subscribers. The owner is the single
//! place a channel's publications are ordered; a cluster broker (Redis, NATS)
//! plugs in here later, taking over the ordering across nodes.

use std::collections::HashMap;

/// Ordering and routing state of one owned channel.
#[derive(Debug, Default)]
struct OwnedChannel {
    /// Last assigned sequence number (0: none yet).
    last_seq: u64,
    /// Bit `p` set: shard `p` (other than this one) has subscribers.
    remote_interest: u64,
}

/// The channels this shard owns.
#[derive(Default)]
pub struct Owner {
    channels: HashMap<Box<str>, OwnedChannel>,
}

impl Owner {
    /// Assigns the next `seq` of `name`; returns it with the mask of shards
    /// that must receive the publication.
    pub fn order(&mut self, name: &str) -> (u64, u64) {
        let channel = self.entry(name);
        channel.last_seq += 1;
        (channel.last_seq, channel.remote_interest)
    }

    /// Records that `peer` gained or lost interest in `name`.
    pub fn set_interest(&mut self, name: &str, peer: usize, on: bool) {
        let channel = self.entry(name);
        if on {
            channel.remote_interest |= 1 << peer;
        } else {
            channel.remote_interest &= !(1 << peer);
        }
    }

    /// Last assigned `seq` of `name` (0 if none).
    pub fn last_seq(&self, name: &str) -> u64 {
        self.channels.get(name).map_or(0, |c| c.last_seq)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn entry(&mut self, name: &str) -> &mut OwnedChannel {
        if !self.channels.contains_key(name) {
            self.channels.insert(name.into(), OwnedChannel::default());
        }
        // Just inserted when absent.
        self.channels.get_mut(name).expect("entry exists")
    }
}

/// The shards whose bit is set in `mask`.
pub fn shards_in(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |p| mask & (1u64 << p) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_counts_per_channel_from_one() {
        let mut owner = Owner::default();
        assert_eq!(owner.order("a").0, 1);
        assert_eq!(owner.order("a").0, 2);
        assert_eq!(owner.order("b").0, 1);
        assert_eq!(owner.last_seq("a"), 2);
        assert_eq!(owner.last_seq("zzz"), 0);
    }

    #[test]
    fn interest_routes_only_to_interested_shards() {
        let mut owner = Owner::default();
        owner.set_interest("a", 3, true);
        owner.set_interest("a", 1, true);
        owner.set_interest("a", 3, false);
        let (_, mask) = owner.order("a");
        assert_eq!(shards_in(mask).collect::<Vec<_>>(), vec![1]);
    }
}
