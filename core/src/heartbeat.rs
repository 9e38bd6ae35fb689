//! Heartbeat state of one connection, as a pure state machine driven by the
//! shard's sweep (one timer per shard, not per connection). Times are
//! milliseconds on the shard's clock, passed in so tests choose them.
//!
//! Rule: a connection silent for `interval` gets a WebSocket ping; if it is
//! still silent `timeout` after that ping, it is closed. Anything the client
//! sends (a frame of any kind, a pong included) counts as life.

use std::{cell::Cell, time::Duration};

/// What the sweep must do for a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    SendPing,
    /// Silent since the last ping for longer than the timeout: close it.
    TimedOut,
}

/// Heartbeat intervals in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatTimes {
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

impl HeartbeatTimes {
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        HeartbeatTimes {
            interval_ms: interval.as_millis() as u64,
            timeout_ms: timeout.as_millis() as u64,
        }
    }

    /// How often the sweep should run: fine enough that a ping or a timeout
    /// is at most a quarter of the shorter interval late, at most once a second.
    pub fn sweep_every(&self) -> Duration {
        let ms = (self.interval_ms.min(self.timeout_ms) / 4).clamp(5, 1000);
        Duration::from_millis(ms)
    }
}

/// Per-connection heartbeat state: two timestamps, 16 bytes.
#[derive(Debug)]
pub struct Heartbeat {
    /// When the client last sent anything.
    last_seen_ms: Cell<u64>,
    /// When the unanswered ping went out, or `u64::MAX` when none is pending.
    ping_sent_ms: Cell<u64>,
}

const NO_PING: u64 = u64::MAX;

impl Heartbeat {
    pub fn new(now_ms: u64) -> Self {
        Heartbeat {
            last_seen_ms: Cell::new(now_ms),
            ping_sent_ms: Cell::new(NO_PING),
        }
    }

    /// The client sent something.
    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.set(now_ms);
    }

    /// Decides what the sweep does at `now_ms`.
    pub fn tick(&self, now_ms: u64, times: HeartbeatTimes) -> Action {
        let last_seen = self.last_seen_ms.get();
        let ping_sent = self.ping_sent_ms.get();
        if ping_sent != NO_PING {
            if last_seen >= ping_sent {
                // Answered (or any other sign of life) since the ping.
                self.ping_sent_ms.set(NO_PING);
            } else if now_ms.saturating_sub(ping_sent) >= times.timeout_ms {
                return Action::TimedOut;
            } else {
                return Action::Nothing;
            }
        }
        if now_ms.saturating_sub(last_seen) >= times.interval_ms {
            self.ping_sent_ms.set(now_ms);
            return Action::SendPing;
        }
        Action::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMES: HeartbeatTimes = HeartbeatTimes {
        interval_ms: 25_000,
        timeout_ms: 10_000,
    };

    #[test]
    fn busy_connection_is_never_pinged() {
        let hb = Heartbeat::new(0);
        for t in (0..100_000).step_by(1000) {
            hb.seen(t);
            assert_eq!(hb.tick(t, TIMES), Action::Nothing);
        }
    }

    #[test]
    fn silent_connection_is_pinged_then_timed_out() {
        let hb = Heartbeat::new(0);
        assert_eq!(hb.tick(24_999, TIMES), Action::Nothing);
        assert_eq!(hb.tick(25_000, TIMES), Action::SendPing);
        assert_eq!(
            hb.tick(26_000, TIMES),
            Action::Nothing,
            "one ping per silence"
        );
        assert_eq!(hb.tick(34_999, TIMES), Action::Nothing);
        assert_eq!(hb.tick(35_000, TIMES), Action::TimedOut);
    }

    #[test]
    fn pong_clears_the_pending_ping() {
        let hb = Heartbeat::new(0);
        assert_eq!(hb.tick(25_000, TIMES), Action::SendPing);
        hb.seen(25_010);
        assert_eq!(hb.tick(40_000, TIMES), Action::Nothing);
        assert_eq!(
            hb.tick(50_010, TIMES),
            Action::SendPing,
            "next ping a full interval after the pong"
        );
    }

    #[test]
    fn sweep_interval_is_bounded() {
        assert_eq!(TIMES.sweep_every(), Duration::from_secs(1));
        let fast = HeartbeatTimes::new(Duration::from_millis(100), Duration::from_millis(200));
        assert_eq!(fast.sweep_every(), Duration::from_millis(25));
    }

    #[test]
    fn sweeps_are_at_least_5ms_apart() {
        let tiny = HeartbeatTimes::new(Duration::from_millis(1), Duration::from_millis(3));
        assert_eq!(tiny.sweep_every(), Duration::from_millis(5));
    }

    #[test]
    fn times_are_taken_in_milliseconds() {
        let times = HeartbeatTimes::new(Duration::from_secs(25), Duration::from_micros(10_500));
        assert_eq!((times.interval_ms, times.timeout_ms), (25_000, 10));
    }

    #[test]
    fn a_sign_of_life_in_the_ms_of_the_ping_answers_it() {
        let hb = Heartbeat::new(0);
        assert_eq!(hb.tick(25_000, TIMES), Action::SendPing);
        hb.seen(25_000);
        assert_eq!(hb.tick(35_000, TIMES), Action::Nothing);
    }

    #[test]
    fn the_timeout_counts_from_the_ping_not_from_the_silence() {
        // The sweep came late: the ping went out at 30 s, not 25 s.
        let hb = Heartbeat::new(0);
        assert_eq!(hb.tick(30_000, TIMES), Action::SendPing);
        assert_eq!(hb.tick(39_999, TIMES), Action::Nothing);
        assert_eq!(hb.tick(40_000, TIMES), Action::TimedOut);
    }

    #[test]
    fn a_clock_reading_before_the_last_sign_of_life_does_nothing() {
        let hb = Heartbeat::new(100_000);
        assert_eq!(hb.tick(0, TIMES), Action::Nothing);
        assert_eq!(hb.tick(99_999, TIMES), Action::Nothing);
    }
}
