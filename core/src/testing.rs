//! What the core's tests stand in for the server's parts with: a
//! connection whose queue is a list of frames, bounded in bytes as the
//! server's is, which tests read back. Test-only.

use std::cell::{Cell, RefCell};

use bytes::Bytes;

use crate::{
    codec::Codec,
    frame,
    publication::ConnRef,
    subscriptions::{Pushed, Subscriber},
};

/// A frame waiting in a [`TestConn`]'s queue.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub frame: Bytes,
    /// The conflation id it was queued under (0: none).
    pub conflation: u64,
    /// How many older publications it replaced.
    pub conflated: u32,
}

/// A connection without a socket: what fan-out pushes stays in `queue`
/// until the test takes it.
#[derive(Debug)]
pub(crate) struct TestConn {
    pub id: ConnRef,
    pub codec: Codec,
    /// Queue bound in bytes (over it: overflow, as `max-queue-bytes`).
    pub limit: usize,
    pub queue: RefCell<Vec<Queued>>,
    pub closed_slow: Cell<bool>,
}

impl TestConn {
    pub(crate) fn new(key: u32, codec: Codec) -> Self {
        TestConn {
            id: ConnRef { key, gen: 1 },
            codec,
            limit: usize::MAX,
            queue: RefCell::default(),
            closed_slow: Cell::new(false),
        }
    }

    /// The frames queued, taken out.
    pub(crate) fn take(&self) -> Vec<Bytes> {
        self.queue.take().into_iter().map(|q| q.frame).collect()
    }

    /// The JSON bodies of the frames queued, taken out.
    pub(crate) fn take_json(&self) -> Vec<serde_json::Value> {
        self.take()
            .iter()
            .map(|f| serde_json::from_slice(frame::payload_of(f)).expect("a JSON frame"))
            .collect()
    }
}

impl Subscriber for TestConn {
    type Tail = ();

    fn conn_ref(&self) -> ConnRef {
        self.id
    }

    fn codec(&self) -> Codec {
        self.codec
    }

    fn send(&self, frame: Bytes) {
        if self.push_keyed(&frame, 0, 0, 0) == Pushed::Overflow {
            self.close_slow_consumer();
        }
    }

    fn queued_bytes(&self) -> usize {
        self.queue.borrow().iter().map(|q| q.frame.len()).sum()
    }

    fn take_keyed(&self, conflation: u64) -> Option<u32> {
        let mut queue = self.queue.borrow_mut();
        let at = queue.iter().position(|q| q.conflation == conflation)?;
        Some(queue.remove(at).conflated)
    }

    fn push_keyed(&self, frame: &Bytes, _: u64, conflation: u64, conflated: u32) -> Pushed {
        if self.closed_slow.get() {
            return Pushed::Closed;
        }
        if self.queued_bytes() + frame.len() > self.limit {
            return Pushed::Overflow;
        }
        self.queue.borrow_mut().push(Queued {
            frame: frame.clone(),
            conflation,
            conflated,
        });
        Pushed::Queued
    }

    fn close_slow_consumer(&self) {
        self.closed_slow.set(true);
    }
}
