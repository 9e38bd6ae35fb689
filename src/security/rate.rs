//! The per-connection publish rate limit: a token bucket (rate per second,
//! burst) kept in a few cells of the connection, refilled lazily from the
//! shard's millisecond clock when the connection publishes. A publication
//! over the limit is refused; a connection refused more than `burst` times
//! (at least [`MIN_STRIKES`]) within [`STRIKE_WINDOW_MS`] is abusive and is
//! closed. Pure state machine; times are passed in.

use std::cell::Cell;

/// How long refused publications are counted before the count restarts.
pub(crate) const STRIKE_WINDOW_MS: u64 = 10_000;
/// Refusals tolerated in a window, whatever the burst.
pub(crate) const MIN_STRIKES: u32 = 10;

/// A publish rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// What the bucket says about one publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the rate: refuse this one (`err rate_limited`).
    Refused,
    /// Refused too often: close the connection.
    Abusive,
}

/// One connection's bucket. Tokens are counted in thousandths so that
/// refilling by elapsed milliseconds needs no division.
#[derive(Debug)]
pub struct TokenBucket {
    milli_tokens: Cell<u64>,
    refilled_ms: Cell<u64>,
    strikes: Cell<u32>,
    window_start_ms: Cell<u64>,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(limit: RateLimit, now_ms: u64) -> Self {
        TokenBucket {
            milli_tokens: Cell::new(u64::from(limit.burst) * 1000),
            refilled_ms: Cell::new(now_ms),
            strikes: Cell::new(0),
            window_start_ms: Cell::new(now_ms),
        }
    }

    /// Takes one token for a publication at `now_ms`, if there is one.
    pub fn take(&self, limit: RateLimit, now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.refilled_ms.get());
        let full = u64::from(limit.burst) * 1000;
        let tokens = self
            .milli_tokens
            .get()
            .saturating_add(elapsed.saturating_mul(u64::from(limit.per_second)))
            .min(full);
        self.refilled_ms.set(now_ms);
        if tokens >= 1000 {
            self.milli_tokens.set(tokens - 1000);
            return Verdict::Allowed;
        }
        self.milli_tokens.set(tokens);
        if now_ms.saturating_sub(self.window_start_ms.get()) > STRIKE_WINDOW_MS {
            self.window_start_ms.set(now_ms);
            self.strikes.set(0);
        }
        let strikes = self.strikes.get() + 1;
        self.strikes.set(strikes);
        if strikes > limit.burst.max(MIN_STRIKES) {
            Verdict::Abusive
        } else {
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_second: 10,
        burst: 5,
    };

    #[test]
    fn burst_then_rate() {
        let bucket = TokenBucket::new(LIMIT, 0);
        for _ in 0..5 {
            assert_eq!(bucket.take(LIMIT, 0), Verdict::Allowed);
        }
        assert_eq!(bucket.take(LIMIT, 0), Verdict::Refused);
        // 10 per second: one token every 100 ms.
        assert_eq!(bucket.take(LIMIT, 99), Verdict::Refused);
        assert_eq!(bucket.take(LIMIT, 100), Verdict::Allowed);
        assert_eq!(bucket.take(LIMIT, 150), Verdict::Refused);
        // A long pause refills only up to the burst.
        for _ in 0..5 {
            assert_eq!(bucket.take(LIMIT, 60_000), Verdict::Allowed);
        }
        assert_eq!(bucket.take(LIMIT, 60_000), Verdict::Refused);
    }

    #[test]
    fn sustained_abuse_is_abusive_and_a_pause_forgives() {
        let bucket = TokenBucket::new(LIMIT, 0);
        for _ in 0..5 {
            bucket.take(LIMIT, 0);
        }
        for _ in 0..MIN_STRIKES {
            assert_eq!(bucket.take(LIMIT, 1), Verdict::Refused);
        }
        assert_eq!(bucket.take(LIMIT, 1), Verdict::Abusive);

        let patient = TokenBucket::new(LIMIT, 0);
        for _ in 0..5 {
            patient.take(LIMIT, 0);
        }
        for _ in 0..MIN_STRIKES {
            assert_eq!(patient.take(LIMIT, 1), Verdict::Refused);
        }
        // After the window the count restarts.
        let later = STRIKE_WINDOW_MS + 2;
        for _ in 0..5 {
            patient.take(LIMIT, later);
        }
        assert_eq!(patient.take(LIMIT, later), Verdict::Refused);
    }

    #[test]
    fn a_publisher_within_the_rate_is_never_refused() {
        let bucket = TokenBucket::new(LIMIT, 0);
        for i in 0..1000 {
            assert_eq!(bucket.take(LIMIT, i * 100), Verdict::Allowed);
        }
    }
}
