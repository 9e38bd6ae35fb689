//! A single-threaded wait list: tasks of one shard park on a condition and are
//! woken when another task of the same shard changes it. No atomics, no locks;
//! not `Send` by construction.
//!
//! Each waiting future owns one slot of the list for as long as it lives: a
//! re-poll puts its waker back in place, a wake takes it out (so a waiter is
//! woken once per wait, not once per `wake_all`), and dropping the future
//! (it completed, or a `select` dropped it) frees the slot. So a list never holds more
//! entries than there are live waiters — a wait raced against other work in
//! every request (such as "shutdown began") cannot pile up wakers, nor keep
//! finished tasks alive through them.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use slab::Slab;

/// Wakers of tasks waiting for some shard-local condition.
#[derive(Default)]
pub(crate) struct WaitQueue {
    /// A slot per live waiter; `None` once woken, until it polls again.
    waiters: RefCell<Slab<Option<Waker>>>,
    /// Slots holding a waker.
    armed: Cell<usize>,
}

impl WaitQueue {
    /// Wakes every waiting task; each re-checks its condition and stays
    /// registered until it is satisfied or dropped.
    pub(crate) fn wake_all(&self) {
        if self.armed.get() == 0 {
            return;
        }
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        self.armed.set(0);
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether a waiter is parked (not yet woken).
    pub(crate) fn has_waiters(&self) -> bool {
        self.armed.get() > 0
    }

    #[cfg(test)]
    /// Waiters registered now.
    pub(crate) fn len(&self) -> usize {
        self.waiters.borrow().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.waiters.borrow().is_empty()
    }

    /// Resolves once `ready()` is true, re-checking after each wake.
    pub(crate) fn until<'a, F: Fn() -> bool + Unpin + 'a>(
        &'a self,
        ready: F,
    ) -> impl Future<Output = ()> + 'a {
        Until {
            queue: self,
            ready,
            slot: None,
        }
    }
}

struct Until<'a, F> {
    queue: &'a WaitQueue,
    ready: F,
    /// This waiter's entry in the queue, while registered.
    slot: Option<usize>,
}

impl<F> Until<'_, F> {
    fn unregister(&mut self) {
        if let Some(slot) = self.slot.take() {
            if let Some(Some(_)) = self.queue.waiters.borrow_mut().try_remove(slot) {
                self.queue.armed.set(self.queue.armed.get() - 1);
            }
        }
    }
}

impl<F: Fn() -> bool + Unpin> Future for Until<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if (this.ready)() {
            this.unregister();
            return Poll::Ready(());
        }
        let queue = this.queue;
        let mut waiters = queue.waiters.borrow_mut();
        match this.slot.and_then(|slot| waiters.get_mut(slot)) {
            Some(Some(waker)) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            Some(empty) => {
                *empty = Some(cx.waker().clone());
                queue.armed.set(queue.armed.get() + 1);
            }
            None => {
                this.slot = Some(waiters.insert(Some(cx.waker().clone())));
                queue.armed.set(queue.armed.get() + 1);
            }
        }
        Poll::Pending
    }
}

impl<F> Drop for Until<'_, F> {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Runs `future` to its end on a glommio executor of its own, as small as
/// a shard's (for unit tests of code that needs one).
#[cfg(test)]
pub(crate) fn on_test_executor<T>(future: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(64 << 10)
        .make()
        .expect("a test executor")
        .run(future)
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, task::Wake};

    use super::*;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn waiters_hold_one_slot_while_alive_and_none_after() {
        let queue = WaitQueue::default();
        let flag = Cell::new(false);
        let count = std::sync::Arc::new(Count(0.into()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut first = Box::pin(queue.until(|| flag.get()));
        for _ in 0..3 {
            assert!(first.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(queue.len(), 1, "re-polls reuse the slot");
        {
            let mut raced = Box::pin(queue.until(|| flag.get()));
            assert!(raced.as_mut().poll(&mut cx).is_pending());
            assert_eq!(queue.len(), 2);
        }
        assert_eq!(queue.len(), 1, "a dropped waiter leaves");
        queue.wake_all();
        queue.wake_all();
        assert_eq!(
            count.0.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "woken once until it waits again"
        );
        assert!(!queue.has_waiters());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(queue.has_waiters());
        assert_eq!(queue.len(), 1);
        flag.set(true);
        assert!(first.as_mut().poll(&mut cx).is_ready());
        assert!(queue.is_empty(), "a satisfied waiter leaves");
    }
}
