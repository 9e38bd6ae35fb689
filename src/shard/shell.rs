//! What the glommio shell around a shard's logic holds to serve its
//! connections: the CPU it is pinned to, the keys, certificates and limits
//! of the handshake (`security`), the flush pass that writes every
//! connection's queue, the epoll set plain connections wait on
//! (`readiness.rs`), admission and shutdown, the clock and heartbeat
//! sweep, and the flag `/health` reads to say whether this shard's broker
//! links are up. None of it decides anything about channels or
//! publications; `serve`, `session` and `run` use it to move bytes.

use std::{
    rc::Rc,
    sync::{atomic::Ordering, Arc},
};

use super::{heartbeats::Heartbeats, lifetime::Lifetime};
use crate::{conn::flush::Flusher, engine::EngineHealth, readiness::Readiness, security::Security};

/// The shard's shell (see the module's paragraph).
pub(crate) struct Shell {
    /// The CPU this shard's thread is pinned to.
    pub(crate) cpu: Option<usize>,
    /// Keys, certificates and limits (shared read-only by all shards).
    pub(crate) security: Arc<Security>,
    /// The flush pass that writes every connection's queue.
    pub(crate) flusher: Rc<Flusher>,
    /// The epoll set plain connections wait on (`None`: the kernel refused
    /// one; they then wait through glommio, as TLS ones do).
    pub(crate) readiness: Option<Rc<Readiness>>,
    /// Admission of connections and shutdown.
    pub(crate) lifetime: Lifetime,
    /// The shard's clock and heartbeat sweep.
    pub(crate) heartbeats: Heartbeats,
    /// Every shard's "broker links up" flag (each writes its own).
    engine_health: EngineHealth,
}

impl Shell {
    pub(crate) fn new(
        cpu: Option<usize>,
        security: Arc<Security>,
        flusher: Rc<Flusher>,
        lifetime: Lifetime,
        heartbeats: Heartbeats,
        engine_health: EngineHealth,
    ) -> Self {
        let readiness = Readiness::new()
            .inspect_err(
                |error| tracing::warn!(%error, "no epoll set: connections wait through glommio"),
            )
            .ok();
        Shell {
            cpu,
            security,
            flusher,
            readiness,
            lifetime,
            heartbeats,
            engine_health,
        }
    }

    /// Sets shard `shard`'s flag: its broker's links are `up`.
    pub(crate) fn set_engine_health(&self, shard: usize, up: bool) {
        if let Some(flag) = self.engine_health.get(shard) {
            flag.store(up, Ordering::Release);
        }
    }

    /// Whether every shard's broker links are up (`/health`).
    pub(crate) fn engine_up(&self) -> bool {
        crate::engine::all_up(&self.engine_health)
    }
}
