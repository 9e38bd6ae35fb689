//! A shard's admission of connections and its shutdown: the process-wide
//! count of WebSocket connections `max-connections` bounds, whether
//! shutdown began, and the tasks waiting for it to begin or for the last
//! connection to close. Connections themselves are in the registry; this
//! only counts and wakes.

use std::{
    cell::Cell,
    future::Future,
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use glommio::sync::Gate;

use crate::sync::WaitQueue;

/// Admission and shutdown of one shard.
pub(crate) struct Lifetime {
    /// WebSocket connections open in the whole process; touched once per
    /// connect and disconnect.
    open_connections: Arc<AtomicUsize>,
    /// `max-connections`.
    max_connections: usize,
    shutting_down: Cell<bool>,
    /// Tasks waiting for shutdown to begin.
    stop_waiters: WaitQueue,
    /// Tasks waiting for the last WebSocket connection to close.
    closed_waiters: WaitQueue,
    /// Every HTTP connection task enters it; shutdown waits for it to empty.
    /// WebSocket sessions are not in it (its wrapper would double each
    /// session future's size): shutdown waits for them on `closed_waiters`.
    pub(crate) gate: Rc<Gate>,
}

impl Lifetime {
    pub(crate) fn new(open_connections: Arc<AtomicUsize>, max_connections: usize) -> Self {
        Lifetime {
            open_connections,
            max_connections,
            shutting_down: Cell::new(false),
            stop_waiters: WaitQueue::default(),
            closed_waiters: WaitQueue::default(),
            gate: Rc::new(Gate::new()),
        }
    }

    /// Reserves a process-wide connection slot; `false` when at
    /// `max-connections` (the upgrade is then refused with 503).
    pub(crate) fn try_reserve_connection(&self) -> bool {
        let max = self.max_connections;
        self.open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot reserved with [`Lifetime::try_reserve_connection`].
    pub(crate) fn release_connection(&self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Shutdown begins; `false` if it already had. Wakes the tasks waiting
    /// for it ([`Lifetime::stopped`]).
    pub(crate) fn begin_shutdown(&self) -> bool {
        if self.shutting_down.replace(true) {
            return false;
        }
        self.stop_waiters.wake_all();
        true
    }

    /// Resolves once shutdown has begun.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + '_ {
        self.stop_waiters.until(|| self.shutting_down.get())
    }

    /// Resolves once `none_left` holds, re-checked each time
    /// [`Lifetime::last_closed`] wakes it.
    pub(crate) fn all_closed<'a>(
        &'a self,
        none_left: impl Fn() -> bool + Unpin + 'a,
    ) -> impl Future<Output = ()> + 'a {
        self.closed_waiters.until(none_left)
    }

    /// The last connection closed.
    pub(crate) fn last_closed(&self) {
        self.closed_waiters.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_admitted_up_to_the_process_wide_bound() {
        let open = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Lifetime::new(open.clone(), 2), Lifetime::new(open, 2));
        assert!(a.try_reserve_connection());
        assert!(b.try_reserve_connection());
        assert!(!a.try_reserve_connection(), "the bound is the process's");
        b.release_connection();
        assert!(a.try_reserve_connection());
    }

    #[test]
    fn shutdown_begins_once() {
        let lifetime = Lifetime::new(Arc::default(), 1);
        assert!(!lifetime.is_shutting_down());
        assert!(lifetime.begin_shutdown());
        assert!(!lifetime.begin_shutdown());
        assert!(lifetime.is_shutting_down());
    }
}
