//! The shard's flush pass: one task per shard writes every connection's
//! queued frames, instead of a writer task per connection. Queuing a frame
//! marks its connection dirty ([`Outbox::mark_dirty`]); the pass runs once the
//! tasks already woken in this executor turn have run (or, with
//! `--write-delay`, that long after the first mark), so publications that
//! arrive in one turn leave in one gathered `sendmsg` per subscriber. A
//! connection whose socket is full gets a task of its own only until the
//! socket takes more; one with nothing queued holds no task and no waker.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use super::{
    outbox::{Flush, Outbox, WriteState},
    stream::SharedStream,
};
use crate::stats::{bump, Stats};

/// A shard's list of connections with something to write, and the task that
/// writes them.
#[derive(Default)]
pub struct Flusher {
    dirty: RefCell<Vec<Rc<Outbox>>>,
    /// The pass, parked while the list is empty.
    waker: Cell<Option<Waker>>,
    /// `--write-delay`: how long a pass waits after it is first woken, to
    /// gather more frames per write (zero: not at all).
    write_delay: Duration,
    /// The shard's counters.
    stats: Rc<Stats>,
}

impl Flusher {
    pub fn new(stats: Rc<Stats>, write_delay: Duration) -> Self {
        Flusher {
            write_delay,
            stats,
            ..Flusher::default()
        }
    }

    /// The shard's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Puts an outbox on the list (its state says it is not there yet).
    pub(super) fn mark(&self, outbox: Rc<Outbox>) {
        self.dirty.borrow_mut().push(outbox);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Connections waiting for the next pass.
    pub fn dirty_count(&self) -> usize {
        self.dirty.borrow().len()
    }

    /// The pass, for the shard's lifetime: waits for a dirty connection,
    /// then flushes every connection on the list.
    pub async fn run(self: Rc<Self>) {
        let mut pass = Vec::new();
        loop {
            Marked(&self).await;
            if !self.write_delay.is_zero() {
                glommio::timer::sleep(self.write_delay).await;
            }
            self.flush_dirty(&mut pass);
        }
    }

    /// Flushes every connection on the list (`pass` is the spare list,
    /// swapped in so both keep their capacity). Connections marked while it
    /// runs wait for the next pass.
    pub fn flush_dirty(&self, pass: &mut Vec<Rc<Outbox>>) {
        std::mem::swap(&mut *self.dirty.borrow_mut(), pass);
        if !pass.is_empty() {
            bump(&self.stats.flush_passes, 1);
        }
        for outbox in pass.drain(..) {
            flush_one(&outbox);
        }
    }
}

/// Resolves when the list holds a connection.
struct Marked<'a>(&'a Flusher);

impl Future for Marked<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.0.dirty.borrow().is_empty() {
            return Poll::Ready(());
        }
        self.0.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// Writes what one connection has queued, without waiting.
fn flush_one(outbox: &Rc<Outbox>) {
    let Some(stream) = outbox.stream() else {
        outbox.set_write_state(WriteState::Idle);
        return;
    };
    let stats = outbox.stats();
    let flushed = if stream.is_tls() {
        flush_tls(outbox, stream, stats)
    } else {
        outbox.flush(|slices| {
            bump(&stats.socket_writes, 1);
            stream.send_now(slices)
        })
    };
    match flushed {
        Ok(Flush::Drained) => outbox.drained(),
        Ok(Flush::WouldBlock) => wait_for_room(outbox, stream),
        Err(_) => {
            outbox.set_write_state(WriteState::Idle);
            outbox.abandon();
        }
    }
}

/// Frames go into the TLS session as plaintext (many frames make one
/// record), then the session's records are written out.
fn flush_tls(outbox: &Outbox, stream: &SharedStream, stats: &Stats) -> io::Result<Flush> {
    loop {
        let flushed = outbox.flush(|slices| stream.encrypt(slices))?;
        bump(&stats.socket_writes, 1);
        if !stream.send_tls_now()? {
            return Ok(Flush::WouldBlock);
        }
        if flushed == Flush::Drained {
            return Ok(Flush::Drained);
        }
    }
}

/// The socket is full: a task waits until it takes more (a plain stream's
/// front frame, or part of it; a TLS session's records), then marks the
/// outbox dirty again. It holds the outbox weakly, and the outbox holds it
/// to cancel it at teardown.
fn wait_for_room(outbox: &Rc<Outbox>, stream: &SharedStream) {
    // The front frame is marked started: a slow-consumer close while the
    // write waits keeps it whole instead of cutting it on the wire.
    let front = if stream.is_tls() {
        None
    } else {
        outbox.start_front()
    };
    let weak = Rc::downgrade(outbox);
    let stream = stream.clone();
    let task = glommio::spawn_local(async move {
        let written = match &front {
            Some(front) => stream.write(front).await,
            None => stream.flush().await.map(|()| 0),
        };
        let Some(outbox) = weak.upgrade() else {
            return;
        };
        outbox.unblock();
        match written {
            Ok(sent) => {
                if sent > 0 {
                    bump(&outbox.stats().socket_writes, 1);
                    outbox.consume(sent);
                }
                outbox.mark_dirty();
            }
            Err(_) => outbox.abandon(),
        }
    })
    .detach();
    outbox.set_blocked(task);
}
