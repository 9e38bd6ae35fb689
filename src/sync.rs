//! A single-threaded wait list: tasks of one shard park on a condition and are
//! woken when another task of the same shard changes it. No atomics, no locks;
//! not `Send` by construction.
//!
//! Each waiting future owns one slot of the list for as long as it lives: a
//! re-poll updates its waker in place and dropping the future (it completed,
//! or a `select` dropped it) frees the slot. So a list never holds more
//! entries than there are live waiters — a wait raced against other work in
//! every request (such as "shutdown began") cannot pile up wakers, nor keep
//! finished tasks alive through them.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use slab::Slab;

/// Wakers of tasks waiting for some shard-local condition.
#[derive(Default)]
pub struct WaitQueue {
    waiters: RefCell<Slab<Waker>>,
}

impl WaitQueue {
    /// Wakes every waiting task; each re-checks its condition and stays
    /// registered until it is satisfied or dropped.
    pub fn wake_all(&self) {
        let wakers: Vec<Waker> = self
            .waiters
            .borrow()
            .iter()
            .map(|(_, w)| w.clone())
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiters.borrow().is_empty()
    }

    /// Waiters registered now.
    pub fn len(&self) -> usize {
        self.waiters.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.borrow().is_empty()
    }

    /// Resolves once `ready()` is true, re-checking after each wake.
    pub fn until<'a, F: Fn() -> bool + Unpin + 'a>(
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
            self.queue.waiters.borrow_mut().try_remove(slot);
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
        let mut waiters = this.queue.waiters.borrow_mut();
        match this.slot.and_then(|slot| waiters.get_mut(slot)) {
            Some(waker) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => this.slot = Some(waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl<F> Drop for Until<'_, F> {
    fn drop(&mut self) {
        self.unregister();
    }
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
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        flag.set(true);
        assert!(first.as_mut().poll(&mut cx).is_ready());
        assert!(queue.is_empty(), "a satisfied waiter leaves");
    }
}
