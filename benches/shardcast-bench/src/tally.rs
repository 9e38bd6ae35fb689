//! What subscribers received: per subscriber and publisher the last sequence
//! seen, counts of deliveries, duplicates and reorderings, and one
//! end-to-end latency histogram. Single-threaded (the generator's executor).

use hdrhistogram::Histogram;

use super::target::Stamp;

/// Counters of one subscriber.
#[derive(Debug, Default, Clone)]
struct Subscriber {
    /// Sequence last seen from each publisher of its channel (0: none).
    last: Vec<u64>,
    received: u64,
    duplicated: u64,
    out_of_order: u64,
    /// Saw a warm-up message from every publisher of its channel.
    warm: bool,
    warm_seen: u32,
}

/// Totals over all subscribers.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Totals {
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub lost: u64,
}

pub struct Tally {
    subscribers: Vec<Subscriber>,
    publishers_per_channel: usize,
    pub latency_us: Histogram<u64>,
    measuring: bool,
}

impl Tally {
    pub fn new(subscribers: usize, publishers_per_channel: usize) -> Self {
        Tally {
            subscribers: vec![
                Subscriber {
                    last: vec![0; publishers_per_channel],
                    ..Subscriber::default()
                };
                subscribers
            ],
            publishers_per_channel,
            // 1 µs to 10 min, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            measuring: false,
        }
    }

    /// Starts counting (after warm-up).
    pub fn start_measuring(&mut self) {
        self.measuring = true;
    }

    /// Subscribers that have seen warm-up traffic from all their publishers.
    pub fn warm_count(&self) -> usize {
        self.subscribers.iter().filter(|s| s.warm).count()
    }

    /// Records one received publication for subscriber `sub`; with
    /// `now_nanos`, also its latency.
    pub fn record(&mut self, sub: usize, stamp: Stamp, now_nanos: Option<u64>) {
        let per_channel = self.publishers_per_channel;
        let Some(state) = self.subscribers.get_mut(sub) else {
            return;
        };
        let slot = stamp.publisher as usize % per_channel;
        if stamp.seq == 0 {
            // Warm-up marker.
            if !state.warm && state.last[slot] == 0 {
                state.last[slot] = u64::MAX;
                state.warm_seen += 1;
                state.warm = state.warm_seen as usize == per_channel;
            }
            return;
        }
        if !self.measuring {
            return;
        }
        let last = &mut state.last[slot];
        let previous = if *last == u64::MAX { 0 } else { *last };
        if stamp.seq == previous {
            state.duplicated += 1;
            return;
        }
        if stamp.seq < previous {
            state.out_of_order += 1;
        } else {
            *last = stamp.seq;
        }
        state.received += 1;
        if let Some(now) = now_nanos {
            let micros = now.saturating_sub(stamp.nanos) / 1000;
            let _ = self.latency_us.record(micros.max(1));
        }
    }

    /// Sums up; `expected(sub)` is how many measured publications subscriber
    /// `sub` should have received.
    pub fn totals(&self, expected: impl Fn(usize) -> u64) -> Totals {
        let mut totals = Totals::default();
        for (i, s) in self.subscribers.iter().enumerate() {
            totals.received += s.received;
            totals.duplicated += s.duplicated;
            totals.out_of_order += s.out_of_order;
            totals.lost += expected(i).saturating_sub(s.received);
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u64, publisher: u32) -> Stamp {
        Stamp {
            seq,
            publisher,
            nanos: 0,
        }
    }

    #[test]
    fn counts_losses_duplicates_and_reordering() {
        let mut tally = Tally::new(1, 2);
        tally.record(0, stamp(0, 0), None);
        assert_eq!(tally.warm_count(), 0);
        tally.record(0, stamp(0, 1), None);
        assert_eq!(tally.warm_count(), 1);
        tally.start_measuring();
        for seq in [1, 2, 2, 4, 3] {
            tally.record(0, stamp(seq, 0), Some(5000));
        }
        tally.record(0, stamp(1, 1), Some(5000));
        let totals = tally.totals(|_| 4 + 2);
        assert_eq!(totals.received, 5);
        assert_eq!(totals.duplicated, 1);
        assert_eq!(totals.out_of_order, 1);
        assert_eq!(totals.lost, 1);
    }
}
