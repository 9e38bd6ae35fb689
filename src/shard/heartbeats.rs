//! The shard's clock and its heartbeat sweep: milliseconds since the shard
//! started (what connections' heartbeats, history and idempotency windows
//! count in), and the periodic pass over every connection that pings the
//! silent ones and closes those that did not answer, whose token expired,
//! whose unfinished message is over `message-timeout`, or whose queue the
//! socket has not taken from for `send-timeout`. Each connection's own
//! heartbeat state is `shardcast_core::heartbeat`.

use std::{rc::Rc, time::Instant};

use bytes::Bytes;

use crate::{
    clock,
    close::CloseReason,
    config::Config,
    conn::{permit::Permit, Conn},
    frame,
    heartbeat::{Action, HeartbeatTimes},
};

/// The shard's clock and heartbeat settings.
pub(crate) struct Heartbeats {
    started: Instant,
    times: HeartbeatTimes,
    /// The ping frame, encoded once.
    ping_frame: Bytes,
    /// `message-timeout`, in nanoseconds.
    message_timeout_ns: u64,
    /// `send-timeout`, in milliseconds.
    send_timeout_ms: u64,
}

impl Heartbeats {
    pub(crate) fn new(config: &Config) -> Self {
        Heartbeats {
            started: Instant::now(),
            times: HeartbeatTimes::new(
                config.heartbeat.ping_interval,
                config.heartbeat.ping_timeout,
            ),
            ping_frame: frame::encode(frame::OpCode::Ping, &[]),
            message_timeout_ns: config.timeouts.message.as_nanos() as u64,
            send_timeout_ms: config.timeouts.send.as_millis() as u64,
        }
    }

    /// Milliseconds since the shard started.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Seconds since the shard started.
    pub(crate) fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// One sweep over `conns` (see the module's paragraph).
    pub(crate) fn sweep<'a>(&self, conns: impl Iterator<Item = &'a Rc<Conn>>) {
        let now = self.now_ms();
        let now_ns = clock::now_ns();
        for conn in conns {
            match conn.heartbeat.tick(now, self.times) {
                Action::Nothing => {}
                Action::SendPing => conn.send(self.ping_frame.clone()),
                Action::TimedOut => conn.outbox.close(CloseReason::HeartbeatTimeout),
            }
            let started = conn.message_started_ns.get();
            if started != 0 && now_ns.saturating_sub(started) > self.message_timeout_ns {
                conn.outbox.close(CloseReason::MessageTimeout);
            }
            if conn.outbox.stalled_for(now) > self.send_timeout_ms {
                conn.outbox.close(CloseReason::SendTimeout);
            }
            conn.outbox.release_idle_storage();
            if now >= conn.auth_deadline_ms() {
                conn.outbox.close(match *conn.permit() {
                    Permit::AwaitingAuth => CloseReason::AuthTimeout,
                    _ => CloseReason::TokenExpired,
                });
            }
        }
    }
}
