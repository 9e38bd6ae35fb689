//! The cap on plain HTTP connections (`--max-http-connections`), shared by
//! all shards without a lock: one atomic count of the public listener's
//! sockets that are not (yet) WebSocket sessions — requests in flight,
//! keep-alive connections between requests, handshakes (TLS included).
//! An upgraded connection leaves this count; `--max-connections` counts it
//! from then on.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// Open plain HTTP connections over every shard.
#[derive(Debug)]
pub(crate) struct HttpCap {
    limit: usize,
    open: AtomicUsize,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct HttpSlot {
    cap: Arc<HttpCap>,
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.cap.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HttpCap {
    /// A cap of `limit` connections.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(HttpCap {
            limit,
            open: AtomicUsize::new(0),
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Counts a connection, or `None` at the cap.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<HttpSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        Some(HttpSlot { cap: self.clone() })
    }

    #[cfg(test)]
    /// Connections counted now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_frees_on_drop() {
        let cap = HttpCap::new(2);
        let held: Vec<_> = (0..2).map(|_| cap.try_acquire().unwrap()).collect();
        assert!(cap.try_acquire().is_none());
        assert_eq!(cap.open(), 2, "a refused attempt is not counted");
        drop(held);
        assert_eq!(cap.open(), 0);
        assert!(cap.try_acquire().is_some());
    }
}
