//! Reconnect delays: exponential from 50 ms, capped at 5 s, with "full
//! jitter" (a uniform draw below the exponential bound), so nodes that lost
//! their broker together do not come back in step. Pure: the caller brings
//! the randomness.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(50);
const CAP: Duration = Duration::from_secs(5);

/// Consecutive failed attempts of one connection.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt, given a random number, after one
    /// more failure.
    pub(crate) fn next_delay(&mut self, random: u64) -> Duration {
        let bound = FIRST.saturating_mul(1 << self.failures.min(16)).min(CAP);
        self.failures = self.failures.saturating_add(1);
        let bound_us = bound.as_micros() as u64;
        // At least a tenth of the bound, so a tight loop is impossible.
        Duration::from_micros(bound_us / 10 + random % (bound_us - bound_us / 10 + 1))
    }

    /// A connection that came up: the next failure starts over.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay(0);
        assert_eq!(first, Duration::from_millis(5));
        let mut highest = Duration::ZERO;
        for _ in 0..20 {
            let delay = backoff.next_delay(random::u64());
            assert!(delay <= CAP, "{delay:?}");
            highest = highest.max(delay);
        }
        // Uniform over [0.5 s, 5 s] once capped: 14 draws all under 2 s
        // would happen about once in ten million runs.
        assert!(highest > Duration::from_secs(2), "{highest:?}");
        backoff.reset();
        assert!(backoff.next_delay(random::u64()) <= FIRST);
    }
}
