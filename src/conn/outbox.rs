//! The write side of one connection: a queue of pre-encoded frames bounded in
//! bytes (`conn/queue.rs`: a publication is encoded once per shard; a small
//! frame is queued as a share of its channel's tail, a range of the shard's
//! shared chunks or copied into the queue's own buffer, a larger one as the
//! shared buffer itself).
//! Queuing a frame marks
//! the connection dirty with its shard's flush pass (`conn/flush.rs`), which
//! hands as many queued frames as fit to one write (`send` for one slice,
//! a gathered `sendmsg` for more),
//! so frames queued in one executor turn leave in one write and a connection
//! that fell behind catches up in few system calls (over TLS, into few
//! records). A push never blocks: over the bound the connection is closed as
//! a slow consumer. tungstenite never writes to the socket.
//!
//! The outbox also keeps its shard's write-side counters: bytes sent, frames
//! queued and dropped, publications delivered and their publish→write latency
//! (a publication's frames carry the time it was published).

use std::{
    cell::{Cell, RefCell},
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use glommio::task::JoinHandle;

use super::chunk::CHUNK_BYTES;
use super::follow::{Tail, TailSlot};
use super::queue::{fits_chunks, FrameQueue, Queued, MAX_IOV};
use super::{batch, flush::Flusher};
use crate::close::CloseReason;
use crate::stream::SharedStream;
use crate::{
    clock, frame,
    stats::{bump, Stats},
};

pub(crate) use shardcast_core::subscriptions::Pushed;

/// Outcome of one non-blocking flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    /// Nothing left to send right now.
    Drained,
    /// The socket buffer is full.
    WouldBlock,
}

/// Where an outbox stands with its shard's flush pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteState {
    /// Nothing to write, or the connection is not marked yet.
    Idle,
    /// On the shard's dirty list: the next pass flushes it.
    Dirty,
    /// The socket is full: a task waits for it to take more, then marks the
    /// outbox dirty again.
    Blocked,
    /// Nothing is written until [`Outbox::release`]: the upgrade's response
    /// has still to go out ahead of the first frame.
    Held,
}

/// The close frame still to send after the queue, kept as what it says (a
/// few bytes) and encoded when it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingClose {
    /// The close frame of a reason of ours.
    Ours(CloseReason),
    /// A reply to the client's close frame, echoing its code (if any).
    Echo(Option<u16>),
}

impl PendingClose {
    fn encode(self) -> Bytes {
        match self {
            // Only reasons with a close frame are kept (see `Outbox::close`).
            PendingClose::Ours(reason) => {
                let (code, text) = reason.close_frame().unwrap_or((1000, ""));
                frame::close(code, text)
            }
            PendingClose::Echo(Some(code)) => frame::close(code, ""),
            PendingClose::Echo(None) => frame::encode(frame::OpCode::Close, &[]),
        }
    }
}

/// The bounded outgoing queue of one connection.
pub struct Outbox {
    frames: RefCell<FrameQueue>,
    /// Bytes in `frames` (the unsent part of a partly sent front frame),
    /// but what an entry that follows a tail gained since it was queued
    /// (counted when it settles or is written; see [`Outbox::queued_bytes`]).
    queued_bytes: Cell<usize>,
    limit: usize,
    /// When the sweep first saw bytes queued that the socket has not taken
    /// since (shard milliseconds, at least 1); 0: none waiting, or written
    /// since. See [`Outbox::stalled_for`].
    stalled_since_ms: Cell<u64>,
    /// Acks still to come from channels' owner shards for this connection's
    /// publications: a graceful close sends them before its close frame.
    awaited_replies: Cell<u32>,
    /// Set once, when the connection starts closing.
    closing: Cell<Option<CloseReason>>,
    /// Close frame still to send after the queue.
    close_frame: Cell<Option<PendingClose>>,
    write_state: Cell<WriteState>,
    /// While [`WriteState::Blocked`]: the task waiting for the socket.
    blocked: Cell<Option<JoinHandle<()>>>,
    /// The session's task: woken when the connection starts closing, and
    /// when everything (close frame included) is written.
    session: Cell<Option<Waker>>,
    /// The socket the flush pass writes to (`None`: a queue no pass
    /// writes, in tests that flush by hand).
    stream: Option<SharedStream>,
    /// The shard's flush pass, which also holds the shard's counters.
    flusher: Rc<Flusher>,
    /// The client asked for envelopes batched (`?batch=1`): text frames
    /// queued together go as one (`conn/batch.rs`).
    batch: bool,
}

impl Outbox {
    pub fn new(
        limit: usize,
        flusher: Rc<Flusher>,
        stream: Option<SharedStream>,
        batch: bool,
    ) -> Self {
        Outbox {
            frames: RefCell::new(FrameQueue::default()),
            queued_bytes: Cell::new(0),
            limit,
            stalled_since_ms: Cell::new(0),
            awaited_replies: Cell::new(0),
            closing: Cell::new(None),
            close_frame: Cell::new(None),
            write_state: Cell::new(WriteState::Idle),
            blocked: Cell::new(None),
            session: Cell::new(None),
            stream,
            flusher,
            batch,
        }
    }

    /// The shard's counters (the read side counts into them too).
    pub fn stats(&self) -> &Stats {
        self.flusher.stats()
    }

    /// Queues a frame that carries no publication, without blocking.
    pub fn push(self: &Rc<Self>, frame: Bytes) -> Pushed {
        self.push_keyed(&frame, 0, 0, 0)
    }

    /// Queues the frame of a publication published at `published_at`
    /// ([`clock::now_ns`]), without blocking.
    pub fn push_published(self: &Rc<Self>, frame: Bytes, published_at: u64) -> Pushed {
        self.push_keyed(&frame, published_at, 0, 0)
    }

    /// Queues the frame of a publication that conflates under `conflation`
    /// (`publication::conflation_id` of its channel and key; 0: none),
    /// having replaced `conflated` older ones. A small frame of a
    /// connection that keeps up is laid in the shard's chunks or copied
    /// (`conn/queue.rs`); any other is queued shared.
    #[inline]
    pub fn push_keyed(
        self: &Rc<Self>,
        frame: &Bytes,
        published_at: u64,
        conflation: u64,
        conflated: u32,
    ) -> Pushed {
        self.settle();
        if self.closing.get().is_some() || self.queued_bytes.get() + frame.len() > self.limit {
            return self.refuse();
        }
        // Conflating frames stay whole entries (they may be taken back), and
        // a batching connection's are joined at flush. A connection that
        // waits for its socket (or its upgrade's response) keeps no range of
        // the shard's chunks.
        if conflation == 0 && !self.batch {
            let mut frames = self.frames.borrow_mut();
            let laid = self.keeps_up()
                && frames.lay_in(
                    self.flusher.chunks(),
                    frame,
                    published_at,
                    self.queued_bytes.get(),
                );
            if laid || frames.copy_in(frame, published_at) {
                drop(frames);
                return self.queued(frame.len());
            }
        }
        self.enqueue(Queued {
            conflation,
            conflated,
            ..Queued::new(frame.clone(), published_at)
        })
    }

    /// Queues the frame of a publication of the channel whose tail `slot`
    /// holds (not conflating), as an entry that follows the tail
    /// (`conn/follow.rs`): starting the tail if the slot holds none that
    /// this frame ends. A connection that cannot follow (see
    /// [`Outbox::may_follow`]) queues it as [`Outbox::push_keyed`] does.
    #[inline]
    pub fn push_following(
        self: &Rc<Self>,
        slot: &mut TailSlot,
        frame: &Bytes,
        published_at: u64,
    ) -> Pushed {
        self.settle();
        if !self.may_follow(frame, published_at) {
            return self.push_keyed(frame, published_at, 0, 0);
        }
        let chunks = self.flusher.chunks();
        let laid = chunks.lay(frame);
        let end = laid.start + frame.len() as u32;
        let tail = match slot.0.upgrade() {
            Some(tail) if tail.ends_with(laid.chunk, end) => tail,
            _ => {
                let Some(chunk) = chunks.last_chunk() else {
                    return self.push_keyed(frame, published_at, 0, 0);
                };
                let tail = Tail::new(chunk, end, self.flusher.clone());
                slot.0 = Rc::downgrade(&tail);
                tail
            }
        };
        self.frames
            .borrow_mut()
            .push_follow(tail, laid.start, published_at);
        self.queued(frame.len());
        Pushed::Shared
    }

    /// Whether a publication's frame may start a follow: a small frame of
    /// a connection that keeps up (its queue short, its socket not full,
    /// its upgrade answered), not batching, not closing, with room under
    /// its bound for the most a tail can grow (one chunk).
    #[inline]
    fn may_follow(&self, frame: &Bytes, published_at: u64) -> bool {
        let queued = self.queued_bytes.get();
        published_at != 0
            && fits_chunks(frame.len(), queued)
            && queued + frame.len() + CHUNK_BYTES <= self.limit
            && !self.batch
            && self.closing.get().is_none()
            && self.keeps_up()
    }

    /// Whether its socket takes what is queued (not full, its upgrade's
    /// response out): only then does it refer to the shard's chunks, which
    /// a queue lets go of at its next write.
    #[inline]
    fn keeps_up(&self) -> bool {
        matches!(self.write_state.get(), WriteState::Idle | WriteState::Dirty)
    }

    /// Whether the queue ends with an entry that follows the tail `slot`
    /// holds (fan-out's publication reached it when the tail grew).
    #[inline]
    pub fn follows(&self, slot: &TailSlot) -> bool {
        self.frames.borrow().follows(slot)
    }

    /// Stops following a tail (before anything else is queued or written,
    /// or the connection closes), counting the bytes gained meanwhile.
    #[inline]
    pub fn settle(&self) {
        let growth = self.frames.borrow_mut().settle_follow();
        if growth > 0 {
            self.queued_bytes.set(self.queued_bytes.get() + growth);
        }
    }

    /// A frame not taken: the connection is closing, or its queue is full.
    #[cold]
    fn refuse(&self) -> Pushed {
        bump(&self.stats().frames_dropped, 1);
        match self.closing.get() {
            Some(_) => Pushed::Closed,
            None => Pushed::Overflow,
        }
    }

    /// Takes out of the queue the newest frame still waiting whole (not
    /// begun on the wire, not joined into a batched frame) of a publication that
    /// conflates under `conflation`; returns how many it had replaced
    /// itself. The newer publication then goes in its stead, at the back.
    pub fn take_keyed(&self, conflation: u64) -> Option<u32> {
        self.settle();
        let taken = self.frames.borrow_mut().take_keyed(conflation)?;
        self.set_queued(self.queued_bytes.get() - taken.len());
        Some(taken.conflated)
    }

    /// Makes every queued publication final: none is replaced by a newer
    /// one with its key any more. Called when a subscription to a
    /// conflating channel ends or is replaced, so that what was queued for
    /// it is delivered (before the `unsub` ack) and never taken by the
    /// next subscription's publications (found by the shard simulation,
    /// seed 33). The ids are hashes that do not name their channel, so the
    /// other channels' queued publications are made final too: they are
    /// delivered whole, as if the subscriber had kept up.
    pub fn keep_queued_publications(&self) {
        for frame in self.frames.borrow_mut().entries.iter_mut() {
            frame.conflation = 0;
        }
    }

    /// Appends a frame the caller decided to take, and marks the outbox
    /// dirty.
    #[inline]
    fn enqueue(self: &Rc<Self>, entry: Queued) -> Pushed {
        self.settle();
        let len = entry.len();
        self.frames.borrow_mut().push(entry);
        self.queued(len)
    }

    /// Counts a frame of `len` bytes just queued, and marks the outbox
    /// dirty.
    #[inline]
    fn queued(self: &Rc<Self>, len: usize) -> Pushed {
        self.set_queued(self.queued_bytes.get() + len);
        bump(&self.stats().frames_queued, 1);
        self.mark_dirty();
        Pushed::Queued
    }

    /// Puts the outbox on its shard's dirty list, unless it is there already
    /// or waits for its socket (which marks it again once writable).
    #[inline]
    pub(super) fn mark_dirty(self: &Rc<Self>) {
        if self.write_state.get() == WriteState::Idle {
            self.write_state.set(WriteState::Dirty);
            self.flusher.mark(self.clone());
        }
    }

    /// Keeps the flush pass from writing what is queued until
    /// [`Outbox::release`] (a new connection, before its upgrade's response
    /// is written).
    pub fn hold(&self) {
        if self.write_state.get() == WriteState::Idle {
            self.write_state.set(WriteState::Held);
        }
    }

    /// Lets the flush pass write again, starting with what was queued while
    /// held.
    pub fn release(self: &Rc<Self>) {
        if self.write_state.get() != WriteState::Held {
            return;
        }
        self.write_state.set(WriteState::Idle);
        if !self.frames.borrow().is_empty() || self.close_frame.get().is_some() {
            self.mark_dirty();
        }
    }

    /// The socket the flush pass writes to.
    pub fn stream(&self) -> Option<&SharedStream> {
        self.stream.as_ref()
    }

    pub(super) fn set_write_state(&self, state: WriteState) {
        self.write_state.set(state);
    }

    /// Keeps the task that waits for the socket, so teardown can cancel it.
    pub(super) fn set_blocked(&self, task: JoinHandle<()>) {
        self.write_state.set(WriteState::Blocked);
        self.blocked.set(Some(task));
    }

    /// The socket took more (or failed): the waiting task is done.
    pub(super) fn unblock(&self) {
        drop(self.blocked.take());
        self.write_state.set(WriteState::Idle);
    }

    /// Stops waiting for the socket (the connection is going away).
    pub fn cancel_blocked(&self) {
        if let Some(task) = self.blocked.take() {
            task.cancel();
        }
    }

    /// After a flush that left nothing to write now: wakes the session if
    /// the connection has closed and everything is out.
    pub(super) fn drained(&self) {
        self.write_state.set(WriteState::Idle);
        if self.finished() {
            wake(&self.session);
        }
    }

    /// The socket failed: nothing more can be written, so nothing waits to
    /// be (the started frame, the close frame, awaited acks go too).
    pub(super) fn abandon(self: &Rc<Self>) {
        self.close(CloseReason::SocketError);
        let dropped = self.frames.borrow_mut().clear();
        bump(&self.stats().frames_dropped, dropped);
        self.set_queued(0);
        self.close_frame.take();
        self.awaited_replies.set(0);
        wake(&self.session);
    }

    /// A publication of this connection went to another shard, whose ack
    /// will come back through [`Outbox::push_reply`].
    pub fn expect_reply(&self) {
        self.awaited_replies.set(self.awaited_replies.get() + 1);
    }

    /// Queues an ack that [`Outbox::expect_reply`] announced. While a
    /// graceful close waits for it (its close frame not sent yet), it is
    /// still queued, so every publication that took effect is acknowledged
    /// before the close.
    pub fn push_reply(self: &Rc<Self>, frame: Bytes) -> Pushed {
        let awaited = self.awaited_replies.get();
        self.awaited_replies.set(awaited.saturating_sub(1));
        if self.closing.get().is_none() {
            return self.push(frame);
        }
        if awaited == 0 || self.close_frame.get().is_none() {
            bump(&self.stats().frames_dropped, 1);
            return Pushed::Closed;
        }
        self.enqueue(Queued::new(frame, 0))
    }

    /// Everything queued, in order, as written to a socket that takes it
    /// all (counted as written): for a queue no flush pass writes, read by
    /// the shard simulation's clients. Not batched: each is a whole frame.
    #[cfg(test)]
    pub fn take_queued(&self) -> Vec<Bytes> {
        debug_assert!(!self.batch, "batched pieces are not whole frames");
        self.settle();
        let frames = self.frames.borrow().whole_frames();
        self.consume(frames.iter().map(Bytes::len).sum());
        frames
    }

    /// The byte bound of the queue.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued (a following entry's up to where its tail ends now).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get() + self.frames.borrow().follow_growth()
    }

    /// Sets the bytes queued, keeping the shard's total in step.
    fn set_queued(&self, bytes: usize) {
        let total = &self.stats().queued_bytes;
        total.set(total.get() + bytes as u64 - self.queued_bytes.get() as u64);
        self.queued_bytes.set(bytes);
    }

    /// For the sweep at `now_ms` (shard clock): how long bytes have been
    /// queued without the socket taking any, as far as the sweeps saw
    /// (0 when nothing waits or something was written since the last one).
    pub fn stalled_for(&self, now_ms: u64) -> u64 {
        if self.queued_bytes.get() == 0 {
            self.stalled_since_ms.set(0);
            return 0;
        }
        match self.stalled_since_ms.get() {
            0 => {
                self.stalled_since_ms.set(now_ms.max(1));
                0
            }
            since => now_ms.saturating_sub(since),
        }
    }

    /// Frees the queue's storage if it is empty: for the sweep, so a
    /// connection that has had nothing to send since the last sweep holds
    /// none, while a busy one keeps its storage from write to write.
    pub fn release_idle_storage(&self) {
        self.frames.borrow_mut().release_idle_storage();
    }

    /// Why the connection is closing, once it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.closing.get()
    }

    /// Starts closing: no more pushes; the flush pass sends what is queued
    /// (or, for a slow consumer, drops it), then the close frame for
    /// `reason`. Wakes the session so the connection task tears down. Later
    /// calls do nothing: the first reason wins.
    pub fn close(self: &Rc<Self>, reason: CloseReason) {
        if self.closing.get().is_some() {
            return;
        }
        self.settle();
        self.closing.set(Some(reason));
        if matches!(reason, CloseReason::SlowConsumer | CloseReason::SocketError) {
            let mut frames = self.frames.borrow_mut();
            // The frame on the wire goes out whole: all its pieces.
            let dropped = frames.keep_only_started();
            let left = frames.bytes();
            drop(frames);
            bump(&self.stats().frames_dropped, dropped);
            self.set_queued(left);
        }
        match reason.close_frame() {
            Some(_) => self.close_frame.set(Some(PendingClose::Ours(reason))),
            // Nothing more can reach the client: no ack to wait for.
            None => self.awaited_replies.set(0),
        }
        self.mark_dirty();
        wake(&self.session);
    }

    /// Closes with a close frame the server's API chose (`POST
    /// /api/disconnect`): what is queued goes first, then this frame. Acks
    /// of publications still crossing shards are not waited for: the
    /// publications took effect, the connection is being thrown out.
    pub fn close_told(self: &Rc<Self>, code: u16, reason: &str) {
        if self.closing.get().is_some() {
            return;
        }
        self.settle();
        self.closing.set(Some(CloseReason::Disconnected));
        self.awaited_replies.set(0);
        self.enqueue(Queued::new(frame::close(code, reason), 0));
        wake(&self.session);
    }

    /// Like [`Outbox::close`], but echoes the client's close code (a reply to
    /// the client's own close frame).
    pub fn close_in_reply(self: &Rc<Self>, code: Option<u16>) {
        if self.closing.get().is_some() {
            return;
        }
        self.settle();
        self.closing.set(Some(CloseReason::Normal));
        self.close_frame.set(Some(PendingClose::Echo(code)));
        self.mark_dirty();
        wake(&self.session);
    }

    /// Ready once the connection starts closing; otherwise registers the
    /// session task to be woken when it does.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        match self.closing.get() {
            Some(reason) => Poll::Ready(reason),
            None => {
                register(&self.session, cx);
                Poll::Pending
            }
        }
    }

    /// Resolves once the connection has closed and everything queued, close
    /// frame included, is written (or the socket failed).
    pub fn written_out(&self) -> impl Future<Output = ()> + '_ {
        WrittenOut(self)
    }

    /// All written: closing, queue empty, close frame (if any) sent.
    pub(super) fn finished(&self) -> bool {
        self.closing.get().is_some()
            && self.frames.borrow().is_empty()
            && self.close_frame.get().is_none()
    }

    /// Hands queued frames to `send` without blocking, gathered into as
    /// few calls as it accepts: `sendmsg` on a plain socket, the TLS
    /// session's buffer otherwise. `send` returning 0 or `WouldBlock` means
    /// "full for now". The close frame is appended once the queue is empty.
    pub(super) fn flush(
        &self,
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<Flush> {
        loop {
            // Once no ack is awaited nothing more can be queued: the close
            // frame goes last, in the same write as the frames before it.
            if self.awaited_replies.get() == 0 {
                if let Some(close) = self.close_frame.take() {
                    self.settle();
                    self.frames
                        .borrow_mut()
                        .push(Queued::new(close.encode(), 0));
                }
            }
            // What follows a tail is written up to where the tail ends now
            // (`FrameQueue::consume` counts what it gained).
            let mut frames = self.frames.borrow_mut();
            if frames.is_empty() {
                frames.drained();
                return Ok(Flush::Drained);
            }
            if self.batch {
                let grown = batch::seal(&mut frames.entries);
                let queued = self.queued_bytes.get() as isize + grown;
                self.set_queued(queued.max(0) as usize);
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let count = frames.gather(&mut slices);
            let sent = match send(&slices[..count]) {
                Ok(0) => return Ok(Flush::WouldBlock),
                Ok(sent) => sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            drop(frames);
            self.consume(sent);
        }
    }

    /// Drops `sent` bytes (just written) from the front of the queue; counts
    /// them, and times the publications written completely (those of one
    /// write by one clock reading; a copied run's by its oldest).
    pub(super) fn consume(&self, sent: usize) {
        bump(&self.stats().bytes_out, sent as u64);
        let mut now = 0;
        let (from_queue, grown) =
            self.frames
                .borrow_mut()
                .consume(sent, |published_at, publications| {
                    if now == 0 {
                        now = clock::now_ns();
                    }
                    self.delivered(now.saturating_sub(published_at), publications);
                });
        // What a tail grew by is in the shard's total already.
        self.queued_bytes.set(self.queued_bytes.get() + grown);
        // The close frame is not counted in queued_bytes.
        self.set_queued(self.queued_bytes.get().saturating_sub(from_queue));
        self.stalled_since_ms.set(0);
    }

    /// Counts `publications` written, `latency_ns` after they were published.
    fn delivered(&self, latency_ns: u64, publications: u64) {
        let stats = self.stats();
        bump(&stats.messages_delivered, publications);
        stats
            .latency
            .borrow_mut()
            .record_n(latency_ns / 1_000, publications);
    }

    /// Moves what is queued in the shard's chunks into the queue's own
    /// buffer (the socket is full: the wait may be long).
    pub(super) fn own_chunked(&self) {
        self.settle();
        self.frames.borrow_mut().own_chunked();
    }

    /// The front frame, for a write that may take only part of it: marked
    /// started first, so a close while the write waits (a slow consumer)
    /// keeps the frame whole instead of cutting it on the wire.
    pub(super) fn start_front(&self) -> Option<Bytes> {
        self.frames.borrow_mut().start_front()
    }
}

impl Drop for Outbox {
    /// Frames still queued when the connection is gone were never sent.
    fn drop(&mut self) {
        self.settle();
        let unsent = self.frames.get_mut().frame_count();
        bump(&self.stats().frames_dropped, unsent);
        self.set_queued(0);
        self.cancel_blocked();
    }
}

/// Stores the task's waker in `slot`, unless the one there already wakes it.
fn register(slot: &Cell<Option<Waker>>, cx: &Context<'_>) {
    let current = slot.take();
    match current {
        Some(waker) if waker.will_wake(cx.waker()) => slot.set(Some(waker)),
        _ => slot.set(Some(cx.waker().clone())),
    }
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

/// Resolves once everything is written (see [`Outbox::written_out`]).
struct WrittenOut<'a>(&'a Outbox);

impl Future for WrittenOut<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.finished() {
            return Poll::Ready(());
        }
        register(&self.0.session, cx);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::send_gathered;

    /// A queue no flush pass writes (the tests flush it by hand).
    fn outbox(limit: usize) -> Rc<Outbox> {
        outbox_counting(limit, &Rc::default())
    }

    fn outbox_counting(limit: usize, stats: &Rc<Stats>) -> Rc<Outbox> {
        let flusher = Flusher::new(stats.clone(), std::time::Duration::ZERO);
        Rc::new(Outbox::new(limit, Rc::new(flusher), None, false))
    }

    #[test]
    fn push_is_bounded_in_bytes() {
        let outbox = outbox(10);
        assert_eq!(outbox.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"1")), Pushed::Overflow);
        assert_eq!(outbox.queued_bytes(), 10);
    }

    #[test]
    fn a_held_outbox_is_flushed_only_once_released() {
        let outbox = outbox(100);
        outbox.hold();
        outbox.push(Bytes::from_static(b"queued while held"));
        assert_eq!(outbox.write_state.get(), WriteState::Held, "not marked");
        outbox.release();
        assert_eq!(outbox.write_state.get(), WriteState::Dirty);
        outbox.release();
        assert_eq!(outbox.write_state.get(), WriteState::Dirty, "once");

        let empty = self::outbox(100);
        empty.hold();
        empty.release();
        assert_eq!(
            empty.write_state.get(),
            WriteState::Idle,
            "nothing to flush"
        );
        empty.hold();
        empty.close(CloseReason::Shutdown);
        assert_eq!(empty.write_state.get(), WriteState::Held);
        empty.release();
        assert_eq!(
            empty.write_state.get(),
            WriteState::Dirty,
            "the close frame"
        );
    }

    /// A frame too large to be copied: queued shared, an entry of its own.
    fn large(byte: u8) -> Bytes {
        Bytes::from(vec![byte; LARGE])
    }

    /// Larger than any frame a queue copies or lays in a chunk.
    const LARGE: usize = 5000;

    #[test]
    fn slow_consumer_close_keeps_only_a_started_frame() {
        let outbox = outbox(3 * LARGE);
        outbox.push(large(b'a'));
        outbox.push(large(b'b'));
        outbox.consume(2);
        assert_eq!(outbox.queued_bytes(), 2 * LARGE - 2);
        outbox.close(CloseReason::SlowConsumer);
        assert_eq!(
            outbox.queued_bytes(),
            LARGE - 2,
            "rest of the started frame stays"
        );
        assert_eq!(
            outbox.start_front().unwrap(),
            Bytes::from(vec![b'a'; LARGE - 2])
        );
        assert_eq!(outbox.push(Bytes::from_static(b"x")), Pushed::Closed);
        assert!(outbox.close_frame.get().is_some());
        assert_eq!(outbox.stats().frames_queued.get(), 2);
        assert_eq!(
            outbox.stats().frames_dropped.get(),
            2,
            "the second frame discarded and x refused; the started frame is kept"
        );
    }

    /// Small frames queued one after another make one run (laid in the
    /// shard's chunk, or copied after a frame of another kind); a run begun
    /// on the wire goes out whole (its frames are whole frames), what
    /// follows it is dropped.
    #[test]
    fn slow_consumer_close_keeps_a_started_run_whole() {
        let outbox = outbox(2 * LARGE);
        outbox.push(Bytes::from_static(b"abcdef"));
        outbox.push(Bytes::from_static(b"ghij"));
        outbox.push(large(b'c'));
        outbox.push(Bytes::from_static(b"klm"));
        assert_eq!(outbox.frames.borrow().entries.len(), 3, "run, shared, run");
        outbox.consume(2);
        outbox.close(CloseReason::SlowConsumer);
        assert_eq!(outbox.queued_bytes(), 8);
        assert_eq!(
            outbox.start_front().unwrap(),
            Bytes::from_static(b"cdefghij")
        );
        assert_eq!(outbox.stats().frames_dropped.get(), 2);
        outbox.consume(8);
        assert!(outbox.frames.borrow().is_empty());
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn written_publications_are_counted_and_timed() {
        let outbox = outbox(100);
        let published_at = clock::now_ns() - 2_000_000;
        outbox.push_published(Bytes::from_static(b"abcd"), published_at);
        outbox.push(Bytes::from_static(b"ack"));
        outbox.consume(2);
        assert_eq!(outbox.stats().messages_delivered.get(), 0, "half written");
        outbox.consume(5);
        let stats = outbox.stats();
        assert_eq!(stats.messages_delivered.get(), 1, "acks are not deliveries");
        assert_eq!(stats.bytes_out.get(), 7);
        let mut latency = stats.latency.borrow_mut();
        latency.rotate();
        let second = latency.last_second();
        assert_eq!(second.count, 1);
        assert!(second.p50 >= 1_990, "about 2 ms: {second:?}");
    }

    #[test]
    fn the_shard_total_follows_every_queue() {
        let stats = Rc::new(Stats::default());
        let flusher = Rc::new(Flusher::new(stats.clone(), std::time::Duration::ZERO));
        let a = Rc::new(Outbox::new(100, flusher.clone(), None, false));
        let b = Rc::new(Outbox::new(100, flusher.clone(), None, false));
        a.push(Bytes::from_static(b"abcdef"));
        b.push(Bytes::from_static(b"ghij"));
        assert_eq!(stats.queued_bytes.get(), 10);
        a.consume(4);
        assert_eq!(stats.queued_bytes.get(), 6);
        b.close(CloseReason::SlowConsumer);
        assert_eq!(stats.queued_bytes.get(), 2);
        assert_eq!(flusher.dirty_count(), 2, "both marked dirty once");
        // A pass lets go of them (these have no socket to write to).
        flusher.flush_dirty(&mut Vec::new());
        drop(a);
        assert_eq!(stats.queued_bytes.get(), 0);
    }

    #[test]
    fn an_empty_queue_gives_its_storage_back() {
        let outbox = outbox(2 * LARGE);
        outbox.push(large(b'a'));
        outbox.push(Bytes::from_static(b"abc"));
        outbox.release_idle_storage();
        let (entries, copied) = outbox.frames.borrow().capacity();
        assert!(entries > 0 && copied > 0, "not empty: kept");
        outbox.consume(LARGE + 3);
        outbox.release_idle_storage();
        assert_eq!(outbox.frames.borrow().capacity(), (0, 0));
    }

    #[test]
    fn a_queue_the_socket_takes_nothing_from_is_stalled() {
        let outbox = outbox(100);
        assert_eq!(outbox.stalled_for(1_000), 0, "nothing queued");
        outbox.push(Bytes::from_static(b"abcdef"));
        assert_eq!(outbox.stalled_for(2_000), 0, "first seen waiting");
        assert_eq!(outbox.stalled_for(5_000), 3_000);
        outbox.consume(1);
        assert_eq!(outbox.stalled_for(6_000), 0, "written since: progress");
        assert_eq!(outbox.stalled_for(9_000), 3_000);
        outbox.consume(5);
        assert_eq!(outbox.stalled_for(10_000), 0, "drained");
    }

    /// The writer hands the front frame to a write that waits for the socket
    /// (`write_plain`); a slow-consumer close while it waits must not drop
    /// that frame: the client gets it whole, then the close frame.
    #[test]
    fn a_close_while_the_front_frame_is_being_written_keeps_it_whole() {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::{io::Read, os::fd::AsRawFd};
        let outbox = outbox(2 * LARGE);
        outbox.push(large(b'0'));
        outbox.push(Bytes::from_static(b"next"));
        let front = outbox.start_front().unwrap();
        outbox.close(CloseReason::SlowConsumer);
        // The waiting write took 4 bytes of the front frame.
        std::io::Write::write_all(&mut &ours, &front[..4]).unwrap();
        outbox.consume(4);
        outbox
            .flush(|slices| send_gathered(ours.as_raw_fd(), slices))
            .unwrap();
        assert!(outbox.finished());
        drop(ours);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        let close = frame::close(1008, "slow consumer");
        assert_eq!(
            &got[..LARGE],
            &[b'0'; LARGE][..],
            "the started frame, whole"
        );
        assert_eq!(
            &got[LARGE..],
            &close[..],
            "then the close frame, nothing else"
        );
    }

    #[test]
    fn a_graceful_close_sends_awaited_acks_before_its_close_frame() {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::{io::Read, os::fd::AsRawFd};
        let send = |slices: &[IoSlice<'_>]| send_gathered(ours.as_raw_fd(), slices);
        let outbox = outbox(100);
        outbox.expect_reply();
        outbox.expect_reply();
        outbox.push(Bytes::from_static(b"ack1"));
        outbox.close(CloseReason::RateLimited);
        assert_eq!(outbox.flush(send).unwrap(), Flush::Drained);
        assert!(!outbox.finished(), "two acks still to come");
        assert_eq!(
            outbox.push_reply(Bytes::from_static(b"ack2")),
            Pushed::Queued
        );
        outbox.flush(send).unwrap();
        assert!(!outbox.finished(), "one ack still to come");
        assert_eq!(
            outbox.push_reply(Bytes::from_static(b"ack3")),
            Pushed::Queued
        );
        outbox.flush(send).unwrap();
        assert!(outbox.finished());
        assert_eq!(
            outbox.push_reply(Bytes::from_static(b"late")),
            Pushed::Closed
        );
        drop(ours);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        let close = frame::close(1008, "rate limit exceeded");
        assert_eq!(&got[..12], b"ack1ack2ack3");
        assert_eq!(&got[12..], &close[..]);
    }

    #[test]
    fn a_close_without_a_frame_waits_for_no_ack() {
        let outbox = outbox(100);
        outbox.expect_reply();
        outbox.close(CloseReason::SocketError);
        assert!(outbox.finished());
        assert_eq!(
            outbox.push_reply(Bytes::from_static(b"ack")),
            Pushed::Closed
        );
    }

    #[test]
    fn graceful_close_keeps_the_queue() {
        let outbox = outbox(100);
        outbox.push(Bytes::from_static(b"abc"));
        outbox.close(CloseReason::Shutdown);
        assert_eq!(outbox.queued_bytes(), 3);
        outbox.close(CloseReason::SlowConsumer);
        assert_eq!(
            outbox.closing(),
            Some(CloseReason::Shutdown),
            "first reason wins"
        );
    }

    #[test]
    fn flush_gathers_frames_into_a_socket() {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::{io::Read, os::fd::AsRawFd};
        let outbox = outbox(1 << 20);
        for i in 0..100u8 {
            outbox.push(Bytes::from(vec![i; 3]));
        }
        outbox.close(CloseReason::Shutdown);
        assert!(matches!(
            outbox
                .flush(|slices| send_gathered(ours.as_raw_fd(), slices))
                .unwrap(),
            Flush::Drained
        ));
        assert!(outbox.finished());
        drop(ours);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        let close = frame::close(1012, "service restart");
        assert_eq!(got.len(), 300 + close.len());
        assert_eq!(&got[..3], &[0, 0, 0]);
        assert_eq!(&got[297..300], &[99, 99, 99]);
        assert_eq!(&got[300..], &close[..]);
    }

    /// Reads server frames off `wire`: (RSV1, opcode, payload).
    fn frames_on(mut wire: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((header, len)) = shardcast_wire::header::parse(wire).unwrap() {
            let end = len + header.payload_len as usize;
            out.push((header.rsv1, header.opcode as u8, wire[len..end].to_vec()));
            wire = &wire[end..];
        }
        assert!(wire.is_empty(), "a frame cut short");
        out
    }

    #[test]
    fn batches_survive_partial_writes_and_closes_keep_framing() {
        // A pseudo-random mix of envelopes and pings, pushed in bursts, the
        // socket taking a random few bytes per write: whatever the cuts,
        // the wire carries whole frames, every envelope once and in order.
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..200 {
            let flusher = Flusher::new(Rc::default(), std::time::Duration::ZERO);
            let outbox = Rc::new(Outbox::new(1 << 20, Rc::new(flusher), None, true));
            let (mut wire, mut pushed) = (Vec::new(), Vec::new());
            let slow_close_at = (round % 4 == 0).then(|| next(40));
            for step in 0..40 {
                for _ in 0..=next(4) {
                    if next(5) == 0 {
                        outbox.push(frame::encode(frame::OpCode::Ping, b""));
                    } else {
                        let envelope = format!(
                            "{{\"n\":{},\"pad\":\"{}\"}}",
                            pushed.len(),
                            "x".repeat(next(300) as usize)
                        );
                        outbox.push(frame::encode(frame::OpCode::Text, envelope.as_bytes()));
                        pushed.push(envelope);
                    }
                }
                if slow_close_at == Some(step) {
                    outbox.close(CloseReason::SlowConsumer);
                }
                // One write of a few bytes, then the socket is full.
                let mut writes = 0;
                let flushed = outbox.flush(|slices| {
                    writes += 1;
                    if writes > 1 {
                        return Ok(0);
                    }
                    // Half the time the write ends exactly on a piece's
                    // end (inside a batch, between two of its pieces).
                    let whole = 1 + next(slices.len() as u64) as usize;
                    let room = match next(2) {
                        0 => slices[..whole].iter().map(|s| s.len()).sum(),
                        _ => 1 + next(400) as usize,
                    };
                    let mut taken = 0;
                    for slice in slices {
                        let n = slice.len().min(room - taken);
                        wire.extend_from_slice(&slice[..n]);
                        taken += n;
                        if taken == room {
                            break;
                        }
                    }
                    Ok(taken)
                });
                assert!(flushed.is_ok());
            }
            outbox.close(CloseReason::Shutdown);
            while !outbox.finished() {
                outbox
                    .flush(|slices| {
                        let n = slices.iter().map(|s| s.len()).sum();
                        slices.iter().for_each(|s| wire.extend_from_slice(s));
                        Ok(n)
                    })
                    .unwrap();
            }
            assert_eq!(outbox.queued_bytes(), 0);
            let mut got = Vec::new();
            for (rsv1, opcode, payload) in frames_on(&wire) {
                assert!(!rsv1);
                if opcode == frame::OpCode::Text as u8 {
                    got.extend(
                        payload
                            .split(|b| *b == b'\n')
                            .map(|e| String::from_utf8(e.to_vec()).unwrap()),
                    );
                }
            }
            // Everything, or (a slow consumer) a prefix of it.
            assert!(
                got.len() <= pushed.len() && got[..] == pushed[..got.len()],
                "round {round}"
            );
            if slow_close_at.is_none() {
                assert_eq!(got.len(), pushed.len(), "round {round}");
            }
        }
    }

    #[test]
    fn a_keyed_frame_is_taken_back_unless_it_is_on_the_wire() {
        let outbox = outbox(1 << 20);
        outbox.push_keyed(&Bytes::from_static(b"a1"), 1, 7, 0);
        outbox.push_keyed(&Bytes::from_static(b"b1"), 1, 8, 0);
        outbox.push_keyed(&Bytes::from_static(b"a2"), 1, 7, 2);
        // The newest with the key goes, and says what it stood for.
        assert_eq!(outbox.take_keyed(7), Some(2));
        assert_eq!(outbox.queued_bytes(), 4);
        assert_eq!(outbox.take_keyed(9), None);
        // A frame begun on the wire stays, whatever its key.
        outbox.consume(1);
        assert_eq!(outbox.take_keyed(7), None);
        assert_eq!(outbox.take_keyed(8), Some(0));
        assert_eq!(outbox.queued_bytes(), 1);
        assert_eq!(outbox.start_front().unwrap(), Bytes::from_static(b"1"));
    }

    #[test]
    fn queued_publications_made_final_are_no_longer_taken_back() {
        let outbox = outbox(1 << 20);
        outbox.push_keyed(&Bytes::from_static(b"a1"), 1, 7, 0);
        outbox.keep_queued_publications();
        assert_eq!(outbox.take_keyed(7), None, "final");
        // Later ones conflate as before.
        outbox.push_keyed(&Bytes::from_static(b"a2"), 1, 7, 0);
        assert_eq!(outbox.take_keyed(7), Some(0));
        assert_eq!(outbox.queued_bytes(), 2, "a1 stays");
    }

    #[test]
    fn a_keyed_frame_joined_into_a_batch_stays_and_one_left_alone_goes() {
        let flusher = Flusher::new(Rc::default(), std::time::Duration::ZERO);
        let outbox = Rc::new(Outbox::new(1 << 20, Rc::new(flusher), None, true));
        let text = |body: &str| frame::encode(frame::OpCode::Text, body.as_bytes());
        outbox.push_keyed(&text("{\"a\":1}"), 1, 7, 0);
        outbox.push_keyed(&text("{\"b\":1}"), 1, 8, 0);
        outbox.push(frame::encode(frame::OpCode::Ping, b""));
        outbox.push_keyed(&text("{\"c\":1}"), 1, 9, 0);
        // A flush the socket takes nothing of: the first two are joined,
        // the last is sealed but stands alone.
        outbox.flush(|_| Ok(0)).unwrap();
        assert_eq!(outbox.take_keyed(7), None, "joined into a batch");
        assert_eq!(outbox.take_keyed(8), None, "joined into a batch");
        assert_eq!(outbox.take_keyed(9), Some(0), "alone");
    }

    #[test]
    fn a_queued_frame_stays_small() {
        // A shared buffer (32; the body's third form, a share of a tail,
        // costs its tag: 8), its publication time and conflation key (16),
        // and what batching and conflation keep beside it.
        assert!(std::mem::size_of::<Queued>() <= 72);
    }
}
