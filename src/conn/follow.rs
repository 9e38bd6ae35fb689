//! A channel's publications of one turn as one growing range of the
//! shard's chunks that every subscriber keeping up follows, so that fan-out
//! touches no subscriber for the second and later publications of a turn.
//!
//! The first publication a subscriber is queued in a turn starts (or joins)
//! its channel's [`Tail`]: the queue's last entry then *follows* the tail
//! (`queue::Body::Follow`), its range running to wherever the tail ends now.
//! A later publication of the channel that lies right after the tail in
//! the chunk extends the tail once, for every follower at once
//! ([`TailSlot::extend`]); fan-out walks the subscribers only when one of
//! them does not follow (it was written, or queued something else, or it is
//! new). A queue stops following (it *settles*: the entry becomes a fixed
//! range) before anything else is queued after it, when a write takes only
//! part of it or its socket is full, and when its connection closes; an
//! entry written whole is simply dropped. The bytes and frames it gained
//! while following are counted into the shard's totals when the tail
//! grows, and into the connection's own count when it settles or is
//! written.
//!
//! The channel holds its tail weakly: the followers' entries keep it (and
//! its chunk) alive, so a channel nobody follows pins nothing.

use std::{
    cell::Cell,
    rc::{Rc, Weak},
};

use bytes::Bytes;

use super::chunk::{Chunk, CHUNK_FRAME_MAX};
use super::flush::Flusher;
use crate::stats::bump;

/// A range of one chunk that followers' queues end with, growing at its end.
pub(super) struct Tail {
    pub(super) chunk: Rc<Chunk>,
    /// Where it ends in `chunk` (its followers start wherever they joined).
    pub(super) end: Cell<u32>,
    /// Frames laid in it since it began (each a publication).
    pub(super) frames: Cell<u16>,
    /// The shard's flush pass: its chunks and counters.
    flusher: Rc<Flusher>,
}

impl Tail {
    /// A tail of one frame, laid in `chunk` ending at `end`.
    pub(super) fn new(chunk: Rc<Chunk>, end: u32, flusher: Rc<Flusher>) -> Rc<Tail> {
        Rc::new(Tail {
            chunk,
            end: Cell::new(end),
            frames: Cell::new(1),
            flusher,
        })
    }

    /// Whether this tail ends at `end` in `chunk` (a frame laid there
    /// would follow it; one that ends there is its last).
    pub(super) fn ends_with(&self, chunk: *const Chunk, end: u32) -> bool {
        std::ptr::eq(Rc::as_ptr(&self.chunk), chunk) && self.end.get() == end
    }
}

/// A channel's tail, as fan-out holds it (weakly: see the module's
/// documentation). Empty until a subscriber starts one.
#[derive(Default, Clone)]
pub struct TailSlot(pub(super) Weak<Tail>);

impl TailSlot {
    /// Appends `frame` (a publication, published at `published_at`) to the
    /// tail for every follower at once, if it lies right after it; returns
    /// how many followers that queued it for (0: none, nothing done).
    #[inline]
    pub fn extend(&self, frame: &Bytes, published_at: u64) -> usize {
        if published_at == 0 || frame.len() > CHUNK_FRAME_MAX {
            return 0;
        }
        let Some(tail) = self.0.upgrade() else {
            return 0;
        };
        // The queues' entries hold the others.
        let followers = Rc::strong_count(&tail) - 1;
        let frames = tail.frames.get();
        if followers == 0 || frames == u16::MAX {
            return 0;
        }
        let laid = tail.flusher.chunks().lay(frame);
        if !tail.ends_with(laid.chunk, laid.start) {
            return 0;
        }
        tail.end.set(laid.start + frame.len() as u32);
        tail.frames.set(frames + 1);
        let stats = tail.flusher.stats();
        bump(&stats.frames_queued, followers as u64);
        bump(&stats.queued_bytes, (followers * frame.len()) as u64);
        followers
    }

    /// Whether `tail` is the one this slot holds.
    pub(super) fn holds(&self, tail: &Rc<Tail>) -> bool {
        std::ptr::eq(self.0.as_ptr(), Rc::as_ptr(tail))
    }
}
