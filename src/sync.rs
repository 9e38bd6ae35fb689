//! A single-threaded wait list: tasks of one shard park on a condition and are
//! woken when another task of the same shard changes it. No atomics, no locks;
//! not `Send` by construction.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

/// Wakers of tasks waiting for some shard-local condition.
#[derive(Default)]
pub struct WaitQueue {
    waiters: RefCell<Vec<Waker>>,
}

impl WaitQueue {
    /// Wakes every waiting task; each re-checks its condition.
    pub fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiters.borrow().is_empty()
    }

    /// Resolves once `ready()` is true, re-checking after each wake.
    pub fn until<'a, F: Fn() -> bool + 'a>(&'a self, ready: F) -> impl Future<Output = ()> + 'a {
        Until { queue: self, ready }
    }
}

struct Until<'a, F> {
    queue: &'a WaitQueue,
    ready: F,
}

impl<F: Fn() -> bool> Future for Until<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if (self.ready)() {
            return Poll::Ready(());
        }
        // No de-duplication: a task polls again only after a wake, which
        // emptied the list; at worst a spurious poll adds a second entry,
        // costing one extra wake. Scanning would make n waiters cost n².
        self.queue.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}
