//! The per-IP connection cap (`--max-connections-per-ip`), shared by all
//! shards without a lock: open connections are counted per address in a
//! count-min sketch — two rows of atomic counters indexed by two keyed
//! hashes (keyed with a random seed per run). A count can only be
//! overestimated, when both of an address's counters are shared with other
//! connected addresses; with 2 × 2^20 counters and 20,000 addresses that
//! happens to about one address in a million. The counters take 8 MiB of
//! address space, of which only the pages touched become memory. IPv6
//! clients are counted per /64, the block one subscriber line usually gets.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
};

const COUNTERS: usize = 1 << 20;

/// Open connections per client address, over every shard.
pub(crate) struct IpCap {
    limit: u32,
    rows: [Box<[AtomicU32]>; 2],
    seed: u64,
}

impl std::fmt::Debug for IpCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpCap").field("limit", &self.limit).finish()
    }
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct IpSlot {
    cap: Arc<IpCap>,
    slots: [usize; 2],
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        for (row, &slot) in self.cap.rows.iter().zip(&self.slots) {
            row[slot].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What is counted for `ip`: the address, or the /64 of an IPv6 one.
fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) | (1 << 127),
        },
    }
}

/// A row of zeroed counters. Allocated zeroed (calloc), so pages no
/// address hashes to are never touched.
fn zeroed_row() -> Box<[AtomicU32]> {
    let row = vec![0u32; COUNTERS].into_boxed_slice();
    // SAFETY: AtomicU32 has the same size, alignment and bit validity as u32.
    unsafe { Box::from_raw(Box::into_raw(row) as *mut [AtomicU32]) }
}

impl IpCap {
    /// A cap of `limit` connections per address, hashed with `seed`.
    pub(crate) fn new(limit: u32, seed: u64) -> Arc<Self> {
        Arc::new(IpCap {
            limit,
            rows: [zeroed_row(), zeroed_row()],
            seed,
        })
    }

    /// The counter of `key` in row `row`.
    fn slot(&self, row: usize, key: u128) -> usize {
        let mut hasher = DefaultHasher::new();
        (self.seed, row, key).hash(&mut hasher);
        hasher.finish() as usize % COUNTERS
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Counts a connection from `ip`, or `None` if `ip` is at the cap.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = client_key(ip);
        let slots = [0, 1].map(|row| self.slot(row, key));
        let before = [0, 1].map(|i| self.rows[i][slots[i]].fetch_add(1, Ordering::AcqRel));
        let slot = IpSlot {
            cap: self.clone(),
            slots,
        };
        // The smaller counter is the closer estimate; dropping the slot undoes
        // both increments.
        (before[0].min(before[1]) < self.limit).then_some(slot)
    }

    #[cfg(test)]
    /// Connections counted for `ip` (an estimate: never below the truth).
    pub(crate) fn count(&self, ip: IpAddr) -> u32 {
        let key = client_key(ip);
        (0..2)
            .map(|row| self.rows[row][self.slot(row, key)].load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn caps_each_address_and_frees_on_drop() {
        let cap = IpCap::new(3, 7);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| cap.try_acquire(a).unwrap()).collect();
        assert!(cap.try_acquire(a).is_none());
        assert_eq!(cap.count(a), 3, "a refused attempt is not counted");
        assert!(
            cap.try_acquire(b).is_some(),
            "another address is not affected"
        );
        drop(held);
        assert_eq!(cap.count(a), 0);
        assert!(cap.try_acquire(a).is_some());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let cap = IpCap::new(1, 7);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = cap.try_acquire(one).unwrap();
        assert!(cap.try_acquire(same_64).is_none());
        assert!(cap.try_acquire(other_64).is_some());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped = IpAddr::V6(Ipv6Addr::from(0xffff_c000_0207u128));
        let _v4 = cap.try_acquire(v4).unwrap();
        assert!(cap.try_acquire(mapped).is_none());
    }

    #[test]
    fn many_addresses_do_not_crowd_each_other_out() {
        let cap = IpCap::new(4, 7);
        let mut held = Vec::new();
        for i in 0..20_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..2 {
                held.push(cap.try_acquire(ip).expect("under the cap"));
            }
        }
    }
}
