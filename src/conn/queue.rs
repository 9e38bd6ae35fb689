//! The frames one connection has still to write, in order, and how they go
//! into a write. A frame is queued in one of four forms: a share of its
//! channel's tail (`conn/follow.rs`: a range of the shard's chunks that
//! runs to wherever the tail ends, grown once for every queue that shares
//! it; always the last entry, until it settles into a range); a range of the
//! shard's chunks (`conn/chunk.rs`: a small frame laid once per shard, and
//! extended in place by the frames laid right after it, so the subscribers
//! of one channel send one range of the same memory per turn); a run copied
//! into the queue's own contiguous buffer (a small frame that does not lie
//! right after the last range: uWebSockets' cork buffer does the same); or
//! the shared frame (`Bytes`, encoded once per shard) for large frames,
//! conflating and batching connections, and a backlog past
//! [`COPY_BACKLOG`] bytes, so a slow consumer's backlog is shared memory,
//! not a private copy. A run is one queue entry and one slice of the write,
//! with no reference count per delivery; describing each small frame with
//! an iovec costs more (a queue entry, two atomic reference counts, and the
//! kernel's ~30 ns per iovec here, BENCHMARKS.md).
//!
//! Writes may take any number of bytes: what the socket does not take stays
//! queued, and a frame begun on the wire is marked started so that nothing
//! cuts it.

use std::{collections::VecDeque, io::IoSlice, rc::Rc};

use bytes::{Buf, Bytes};

use super::batch;
use super::chunk::{Chunk, Chunks, CHUNK_FRAME_MAX};
use super::follow::{Tail, TailSlot};

/// Most slices handed to one write.
pub(super) const MAX_IOV: usize = 64;
/// Most bytes handed to one write.
const MAX_BATCH_BYTES: usize = 256 << 10;
/// Frames up to this size are copied (when the backlog allows).
const COPY_MAX: usize = 512;
/// Most copied bytes waiting: past them, frames are queued shared.
const COPY_BACKLOG: usize = 16 << 10;
/// Most bytes a queue holds for chunk ranges to be laid in: what a socket
/// that fills up turns into a private copy.
const CHUNK_BACKLOG: usize = 64 << 10;

/// Whether a frame of `len` bytes may be laid in the shard's chunks for a
/// queue holding `queued` bytes: a small frame, for a queue still short.
pub(super) fn fits_chunks(len: usize, queued: usize) -> bool {
    len <= CHUNK_FRAME_MAX && queued + len <= CHUNK_BACKLOG
}
/// A partly written copy buffer is compacted once this much of it is
/// written (and it is at least half written).
const COMPACT_AT: usize = 4 << 10;
/// A drained queue keeps at most this many entries' storage until the
/// sweep finds it still empty ([`FrameQueue::release_idle_storage`]): a
/// busy connection does not give its storage back between writes.
const KEEP_ENTRIES: usize = 1024;

/// What a queue entry writes.
pub(super) enum Body {
    /// A frame, or a piece of a batched frame, in its shared buffer.
    Shared(Bytes),
    /// Whole frames end to end, `len` bytes of them not yet written: in a
    /// chunk of the shard's from `start` (`conn/chunk.rs`), or copied into
    /// the queue's own buffer (`chunk` is `None`; they start at its written
    /// mark when this is the first such run). `frames` frames,
    /// `publications` of them publications.
    Run {
        chunk: Option<Rc<Chunk>>,
        start: u32,
        len: u32,
        frames: u16,
        publications: u16,
    },
    /// Publications of one channel from the chunk range at `start` to
    /// wherever its tail ends now (`conn/follow.rs`): always the last
    /// entry, until it settles into a `Run`. When it began, the tail ended
    /// at `end_at` and had laid `frames_at` frames before this entry's
    /// first.
    Follow {
        tail: Rc<Tail>,
        start: u32,
        end_at: u32,
        frames_at: u16,
    },
}

/// A frame waiting to be written, a piece of a batched frame
/// (`conn/batch.rs`), or a run of copied frames.
pub(super) struct Queued {
    pub(super) body: Body,
    /// When the publication it carries was published ([`crate::clock::now_ns`]);
    /// 0 for frames that carry no publication (acks, pings, errors). A copied
    /// run's is its oldest publication's.
    pub(super) published_at: u64,
    /// What goes on the wire before a shared frame's bytes (a piece of a
    /// batched frame), of which `prefix_at` bytes are written already.
    pub(super) prefix: Prefix,
    pub(super) prefix_at: u8,
    /// A piece of a batched frame that goes on in the next item: it must
    /// be written whole with the rest.
    pub(super) continues: bool,
    /// Considered for batching already.
    pub(super) sealed: bool,
    /// The publication's channel and conflation key as
    /// `publication::conflation_id` (a keyed hash; 0: none), and
    /// how many older ones this frame replaced (see [`FrameQueue::take_keyed`]).
    pub(super) conflation: u64,
    pub(super) conflated: u32,
}

/// What goes on the wire before a queued entry's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prefix {
    /// Nothing: a frame of its own.
    None,
    /// The first piece of a batched frame: the batch's header (a batch is
    /// under 64 KiB, so its header is at most 4 bytes), and its length.
    Header([u8; 4], u8),
    /// A later piece: the separator from the piece before.
    Separator(batch::Kind),
}

impl Prefix {
    /// All its bytes, written or not.
    fn whole(&self) -> &[u8] {
        match self {
            Prefix::None => &[],
            Prefix::Header(bytes, len) => &bytes[..usize::from(*len)],
            Prefix::Separator(kind) => kind.separator(),
        }
    }
}

impl Queued {
    /// An entry that follows a tail becomes the range it covers now (see
    /// [`FrameQueue::settle_follow`]); returns the bytes it gained.
    fn settle(&mut self) -> usize {
        let growth = self.growth();
        let Body::Follow {
            tail,
            start,
            frames_at,
            ..
        } = &self.body
        else {
            return 0;
        };
        let end = tail.end.get();
        let frames = tail.frames.get() - frames_at;
        self.body = Body::Run {
            chunk: Some(tail.chunk.clone()),
            start: *start,
            len: end - start,
            frames,
            publications: frames,
        };
        growth
    }

    /// Bytes an entry that follows a tail gained since it was queued (0 for
    /// any other).
    fn growth(&self) -> usize {
        match &self.body {
            Body::Follow { tail, end_at, .. } => (tail.end.get() - end_at) as usize,
            _ => 0,
        }
    }

    /// A run takes one more frame of `added` bytes, published at
    /// `published_at` (0: not a publication).
    #[inline]
    fn extend(&mut self, added: usize, published_at: u64) {
        if let Body::Run {
            len,
            frames,
            publications,
            ..
        } = &mut self.body
        {
            *len += added as u32;
            *frames += 1;
            *publications += u16::from(published_at != 0);
            if self.published_at == 0 {
                self.published_at = published_at;
            }
        }
    }

    pub(super) fn new(bytes: Bytes, published_at: u64) -> Self {
        Queued {
            body: Body::Shared(bytes),
            published_at,
            prefix: Prefix::None,
            prefix_at: 0,
            continues: false,
            sealed: false,
            conflation: 0,
            conflated: 0,
        }
    }

    /// The shared frame's bytes (`None` for a run).
    pub(super) fn shared(&self) -> Option<&Bytes> {
        match &self.body {
            Body::Shared(bytes) => Some(bytes),
            Body::Run { .. } | Body::Follow { .. } => None,
        }
    }

    /// A run in the queue's own buffer.
    fn copied(&self) -> bool {
        matches!(self.body, Body::Run { chunk: None, .. })
    }

    /// The prefix still to write.
    pub(super) fn prefix(&self) -> &[u8] {
        &self.prefix.whole()[usize::from(self.prefix_at)..]
    }

    /// Bytes still to write.
    pub(super) fn len(&self) -> usize {
        match &self.body {
            Body::Shared(bytes) => self.prefix().len() + bytes.len(),
            Body::Run { len, .. } => *len as usize,
            Body::Follow { tail, start, .. } => (tail.end.get() - start) as usize,
        }
    }

    /// Frames it stands for.
    fn frames(&self) -> u64 {
        match &self.body {
            Body::Shared(_) => 1,
            Body::Run { frames, .. } => u64::from(*frames),
            Body::Follow {
                tail, frames_at, ..
            } => u64::from(tail.frames.get() - frames_at),
        }
    }
}

/// The queue's own bytes: the copied runs', in queue order; the first
/// `written` are on the wire already.
#[derive(Default)]
struct Own {
    bytes: Vec<u8>,
    written: usize,
}

impl Own {
    /// After a write: an emptied buffer starts again at its beginning, a
    /// mostly written one is compacted.
    fn settle(&mut self) {
        if self.written == self.bytes.len() {
            self.bytes.clear();
            self.written = 0;
        } else if self.written >= COMPACT_AT && self.written * 2 >= self.bytes.len() {
            self.bytes.drain(..self.written);
            self.written = 0;
        }
    }
}

/// The queue's own bytes and how many of them are written (nothing when it
/// has none).
fn view(own: &Option<Box<Own>>) -> (&[u8], usize) {
    own.as_deref()
        .map_or((&[], 0), |own| (&own.bytes, own.written))
}

/// The queue: entries in order, and the buffer copied runs are kept in.
#[derive(Default)]
pub(super) struct FrameQueue {
    pub(super) entries: VecDeque<Queued>,
    /// The copied runs' bytes, made at the first copy (an idle connection
    /// holds a pointer, not an empty buffer).
    own: Option<Box<Own>>,
    /// The front entry is partly on the wire: it must be finished before
    /// anything else, even a close frame, or the stream loses framing.
    started: bool,
}

impl FrameQueue {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a shared frame (or piece).
    pub(super) fn push(&mut self, entry: Queued) {
        // A quiet connection's queue holds one frame at a time (a ping, a
        // publication now and then): room for one, not the four a first
        // push would make. A busy one grows as usual.
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(1);
        }
        self.entries.push_back(entry);
    }

    /// Copies a small frame in, at the back of the queue; `false` (nothing
    /// done) when it is too large or the copied backlog is full, and the
    /// caller queues it shared.
    #[inline]
    pub(super) fn copy_in(&mut self, frame: &[u8], published_at: u64) -> bool {
        if frame.len() > COPY_MAX {
            return false;
        }
        let own = self.own.get_or_insert_with(Box::default);
        if own.bytes.len() - own.written + frame.len() > COPY_BACKLOG {
            return false;
        }
        own.bytes.extend_from_slice(frame);
        if let Some(back) = self.extendable_back() {
            if back.copied() {
                back.extend(frame.len(), published_at);
                return true;
            }
        }
        self.push_run(None, 0, frame.len(), published_at);
        true
    }

    /// The back entry, if a frame may join it: not begun on the wire (a
    /// run that takes frames while it is written could live on for ever,
    /// its publications uncounted and timed from its oldest), and not full.
    #[inline]
    fn extendable_back(&mut self) -> Option<&mut Queued> {
        let begun = self.started && self.entries.len() == 1;
        let back = self.entries.back_mut()?;
        let full = matches!(
            back.body,
            Body::Run {
                frames: u16::MAX,
                ..
            }
        );
        (!begun && !full).then_some(back)
    }

    /// Lays a small frame in the shard's chunks (once per shard: every
    /// subscriber finds it where the first one laid it) and queues its range
    /// there, extending the range at the back when the frame lies right
    /// after it; `false` (nothing done) when the frame is too large, the
    /// queue holds [`CHUNK_BACKLOG`] bytes already (a socket that fills up
    /// makes its ranges a private copy: `own_chunked`), or the queue ends
    /// with anything but a chunk range (a connection with frames of its own
    /// queued goes on copying, so its run stays contiguous).
    #[inline]
    pub(super) fn lay_in(
        &mut self,
        chunks: &Chunks,
        frame: &Bytes,
        published_at: u64,
        queued: usize,
    ) -> bool {
        if !fits_chunks(frame.len(), queued) {
            return false;
        }
        // A range is never begun on the wire while it can still grow: the
        // flush pass writes it whole or, the socket full, makes it the
        // queue's own (`own_chunked`); nor can it hold 65,535 frames (a
        // chunk is 64 KiB).
        let Some(back) = self.entries.back_mut() else {
            let laid = chunks.lay(frame);
            self.push_run(chunks.last_chunk(), laid.start, frame.len(), published_at);
            return true;
        };
        let Body::Run {
            chunk: Some(chunk),
            start,
            len,
            ..
        } = &back.body
        else {
            return false;
        };
        let laid = chunks.lay(frame);
        if Rc::as_ptr(chunk) != laid.chunk || start + len != laid.start {
            return false;
        }
        back.extend(frame.len(), published_at);
        true
    }

    /// Appends a run of one frame.
    fn push_run(&mut self, chunk: Option<Rc<Chunk>>, start: u32, len: usize, published_at: u64) {
        self.push(Queued {
            body: Body::Run {
                chunk,
                start,
                len: len as u32,
                frames: 1,
                publications: u16::from(published_at != 0),
            },
            ..Queued::new(Bytes::new(), published_at)
        });
    }

    /// Queues a publication laid at `start` in `tail`'s chunk, the tail's
    /// last frame, as an entry that follows the tail from there
    /// (`conn/follow.rs`).
    pub(super) fn push_follow(&mut self, tail: Rc<Tail>, start: u32, published_at: u64) {
        let (end_at, frames_at) = (tail.end.get(), tail.frames.get() - 1);
        self.push(Queued {
            body: Body::Follow {
                tail,
                start,
                end_at,
                frames_at,
            },
            ..Queued::new(Bytes::new(), published_at)
        });
    }

    /// Whether the queue ends with an entry that follows a tail.
    pub(super) fn following(&self) -> bool {
        matches!(
            self.entries.back(),
            Some(Queued {
                body: Body::Follow { .. },
                ..
            })
        )
    }

    /// Whether the queue ends with an entry that follows the tail `slot`
    /// holds.
    pub(super) fn follows(&self, slot: &TailSlot) -> bool {
        match self.entries.back() {
            Some(Queued {
                body: Body::Follow { tail, .. },
                ..
            }) => slot.holds(tail),
            _ => false,
        }
    }

    /// Bytes the entry that follows a tail has gained since it was queued
    /// (0 for a queue that follows none).
    pub(super) fn follow_growth(&self) -> usize {
        self.entries.back().map_or(0, Queued::growth)
    }

    /// Stops following: the entry that follows a tail becomes the range it
    /// covers now. Returns the bytes it gained while following (for the
    /// connection's count; the shard's counted them as the tail grew).
    #[inline]
    pub(super) fn settle_follow(&mut self) -> usize {
        self.entries.back_mut().map_or(0, Queued::settle)
    }

    /// Every entry with the bytes of its body still to write (a shared
    /// frame's rest, a chunk range, or its part of the queue's own buffer),
    /// in order.
    fn bodies(&self) -> impl Iterator<Item = (&Queued, &[u8])> + '_ {
        let (copied, mut copied_at) = view(&self.own);
        self.entries.iter().map(move |entry| {
            let body: &[u8] = match &entry.body {
                Body::Shared(bytes) => bytes,
                Body::Run {
                    chunk: Some(chunk),
                    start,
                    len,
                    ..
                } => chunk.range(*start as usize, *len as usize),
                Body::Run {
                    chunk: None, len, ..
                } => {
                    copied_at += *len as usize;
                    &copied[copied_at - *len as usize..copied_at]
                }
                Body::Follow { tail, start, .. } => tail
                    .chunk
                    .range(*start as usize, (tail.end.get() - start) as usize),
            };
            (entry, body)
        })
    }

    /// Points `slices` at up to [`MAX_IOV`] pieces of what is queued (at
    /// most [`MAX_BATCH_BYTES`], but always the first); returns how many.
    pub(super) fn gather<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let mut count = 0;
        let mut total = 0;
        for (entry, body) in self.bodies() {
            let len = entry.len();
            let prefix = entry.prefix();
            let pieces = 1 + usize::from(!prefix.is_empty());
            if count + pieces > MAX_IOV || (count > 0 && total + len > MAX_BATCH_BYTES) {
                break;
            }
            if !prefix.is_empty() {
                slices[count] = IoSlice::new(prefix);
                count += 1;
            }
            slices[count] = IoSlice::new(body);
            count += 1;
            total += len;
        }
        count
    }

    /// Drops `sent` bytes (just written) from the front; calls `delivered`
    /// with the publication time and count of every entry written
    /// completely that carries publications. Returns the bytes taken from
    /// entries (not more than they held), and the bytes an entry that
    /// follows a tail gained since it was queued (the entry stops
    /// following: written whole, it goes; in part, it settles).
    pub(super) fn consume(
        &mut self,
        mut sent: usize,
        mut delivered: impl FnMut(u64, u64),
    ) -> (usize, usize) {
        let mut grown = 0;
        let mut from_queue = 0;
        while sent > 0 {
            let Some(front) = self.entries.front_mut() else {
                break;
            };
            if matches!(front.body, Body::Follow { .. }) {
                grown += front.growth();
                if sent < front.len() {
                    // Written in part: it stops growing, and goes on as a
                    // range begun on the wire.
                    front.settle();
                }
            }
            let done = match &mut front.body {
                Body::Run {
                    chunk,
                    start,
                    len,
                    publications,
                    ..
                } => {
                    let taken = (*len as usize).min(sent);
                    *len -= taken as u32;
                    match chunk {
                        Some(_) => *start += taken as u32,
                        None => {
                            if let Some(own) = self.own.as_mut() {
                                own.written += taken;
                            }
                        }
                    }
                    sent -= taken;
                    from_queue += taken;
                    (*len == 0).then_some(u64::from(*publications))
                }
                // Written whole (see above for in part).
                Body::Follow {
                    tail,
                    start,
                    frames_at,
                    ..
                } => {
                    let len = (tail.end.get() - *start) as usize;
                    sent -= len;
                    from_queue += len;
                    Some(u64::from(tail.frames.get() - *frames_at))
                }
                Body::Shared(bytes) => {
                    let whole_prefix = front.prefix.whole().len();
                    let prefix = (whole_prefix - usize::from(front.prefix_at)).min(sent);
                    front.prefix_at += prefix as u8;
                    sent -= prefix;
                    from_queue += prefix;
                    let len = bytes.len();
                    if sent >= len && usize::from(front.prefix_at) == whole_prefix {
                        sent -= len;
                        from_queue += len;
                        Some(u64::from(front.published_at != 0))
                    } else {
                        let taken = sent.min(len);
                        bytes.advance(taken);
                        from_queue += taken;
                        sent = 0;
                        None
                    }
                }
            };
            match done {
                Some(publications) => {
                    if publications > 0 {
                        delivered(front.published_at, publications);
                    }
                    // Inside a batched frame, the frame is still started.
                    self.started = front.continues;
                    self.entries.pop_front();
                }
                None => self.started = true,
            }
        }
        if let Some(own) = self.own.as_mut() {
            own.settle();
        }
        (from_queue, grown)
    }

    /// Removes the newest entry still waiting whole (not begun on the wire,
    /// not joined into a batched frame) of a publication that conflates
    /// under `conflation`; returns how many it had replaced itself.
    pub(super) fn take_keyed(&mut self, conflation: u64) -> Option<Queued> {
        let at = self
            .entries
            .iter()
            .enumerate()
            .skip(usize::from(self.started))
            .rev()
            // A piece of a batched frame (it has a header or separator
            // before it) stays: the batch's header counts its bytes.
            .find(|(_, f)| f.conflation == conflation && f.prefix == Prefix::None)
            .map(|(at, _)| at)?;
        // Runs never conflate (conflation 0 is never asked for).
        self.entries.remove(at)
    }

    /// Drops everything but the started front frame (all its pieces, or
    /// its whole copied run); returns how many frames were dropped.
    pub(super) fn keep_only_started(&mut self) -> u64 {
        let keep = match self.started {
            true => self
                .entries
                .iter()
                .position(|f| !f.continues)
                .map_or(self.entries.len(), |at| at + 1),
            false => 0,
        };
        let dropped = self.entries.range(keep..).map(Queued::frames).sum();
        self.entries.truncate(keep);
        let copied: usize = self
            .entries
            .iter()
            .filter(|f| f.copied())
            .map(Queued::len)
            .sum();
        if let Some(own) = self.own.as_mut() {
            own.bytes.truncate(own.written + copied);
        }
        dropped
    }

    /// Moves the ranges queued in the shard's chunks into the queue's own
    /// buffer (order kept): for a connection whose socket is full, which
    /// must not keep the shard's chunks alive while it waits.
    pub(super) fn own_chunked(&mut self) {
        debug_assert!(!self.following(), "a write settles its queue first");
        self.settle_follow();
        let chunked = |e: &Queued| matches!(e.body, Body::Run { chunk: Some(_), .. });
        if !self.entries.iter().any(chunked) {
            return;
        }
        let runs = || self.bodies().filter(|(entry, _)| entry.shared().is_none());
        let mut owned = Vec::with_capacity(runs().map(|(_, body)| body.len()).sum());
        for (_, body) in runs() {
            owned.extend_from_slice(body);
        }
        for entry in &mut self.entries {
            if let Body::Run { chunk, start, .. } = &mut entry.body {
                *chunk = None;
                *start = 0;
            }
        }
        self.own = Some(Box::new(Own {
            bytes: owned,
            written: 0,
        }));
    }

    /// Drops everything; returns how many frames that was (a run partly
    /// written counts whole: which of its frames went out is not kept).
    pub(super) fn clear(&mut self) -> u64 {
        let dropped = self.frame_count();
        self.entries.clear();
        if let Some(own) = self.own.as_mut() {
            own.bytes.clear();
            own.written = 0;
        }
        self.started = false;
        dropped
    }

    /// Frames queued.
    pub(super) fn frame_count(&self) -> u64 {
        self.entries.iter().map(Queued::frames).sum()
    }

    /// Bytes still to write.
    pub(super) fn bytes(&self) -> usize {
        self.entries.iter().map(Queued::len).sum()
    }

    /// After a write that left nothing queued: keeps a busy queue's storage
    /// unless it grew large.
    pub(super) fn drained(&mut self) {
        if self.entries.capacity() > KEEP_ENTRIES {
            self.entries.shrink_to(KEEP_ENTRIES);
        }
    }

    /// Frees the storage of an empty queue (for the sweep).
    pub(super) fn release_idle_storage(&mut self) {
        if self.entries.is_empty() {
            if self.entries.capacity() > 0 {
                self.entries = VecDeque::new();
            }
            self.own = None;
        }
    }

    /// Storage held, in entries and copied bytes (for tests).
    #[cfg(test)]
    pub(super) fn capacity(&self) -> (usize, usize) {
        let own = self.own.as_ref().map_or(0, |own| own.bytes.capacity());
        (self.entries.capacity(), own)
    }

    /// The bytes of the front entry still to write (its prefix alone if it
    /// has one left), for a write that may take only part of them; marks
    /// it started, so a close while the write waits keeps it whole.
    pub(super) fn start_front(&mut self) -> Option<Bytes> {
        let (front, body) = self.bodies().next()?;
        let bytes = match (&front.body, front.prefix()) {
            (Body::Shared(bytes), []) => bytes.clone(),
            (Body::Shared(_), prefix) => Bytes::copy_from_slice(prefix),
            (Body::Run { .. } | Body::Follow { .. }, _) => Bytes::copy_from_slice(body),
        };
        self.started = true;
        Some(bytes)
    }

    /// Every frame queued, in order, as whole frames (copied runs split at
    /// their frames' headers): for a queue no socket takes, read by tests.
    #[cfg(test)]
    pub(super) fn whole_frames(&self) -> Vec<Bytes> {
        let mut out = Vec::new();
        for (entry, mut run) in self.bodies() {
            match &entry.body {
                Body::Shared(bytes) => out.push(bytes.clone()),
                Body::Run { .. } | Body::Follow { .. } => {
                    while !run.is_empty() {
                        let whole = whole_frame_len(run);
                        out.push(Bytes::copy_from_slice(&run[..whole]));
                        run = &run[whole..];
                    }
                }
            }
        }
        out
    }
}

/// The length of the server frame `run` starts with, header included.
#[cfg(test)]
fn whole_frame_len(run: &[u8]) -> usize {
    let (header, len) = shardcast_wire::header::parse(run)
        .expect("a frame built here")
        .expect("whole");
    len + header.payload_len as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(payload: &str) -> Bytes {
        crate::frame::encode(crate::frame::OpCode::Text, payload.as_bytes())
    }

    /// What one write would carry, concatenated.
    fn gathered(queue: &FrameQueue) -> (usize, Vec<u8>) {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let count = queue.gather(&mut slices);
        (
            count,
            slices[..count]
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect(),
        )
    }

    #[test]
    fn small_frames_in_a_row_make_one_slice() {
        let mut queue = FrameQueue::default();
        let frames: Vec<Bytes> = (0..10).map(|i| text(&format!("m{i}"))).collect();
        for (i, frame) in frames.iter().enumerate() {
            assert!(queue.copy_in(frame, 100 + i as u64));
        }
        assert_eq!(queue.entries.len(), 1);
        let (count, bytes) = gathered(&queue);
        assert_eq!(count, 1);
        assert_eq!(bytes, frames.concat());
        assert_eq!(queue.whole_frames(), frames);
        let mut timed = Vec::new();
        assert_eq!(
            queue.consume(bytes.len(), |at, n| timed.push((at, n))),
            (bytes.len(), 0)
        );
        assert_eq!(
            timed,
            [(100, 10)],
            "one record: the oldest, ten publications"
        );
        assert!(queue.is_empty());
        assert_eq!(view(&queue.own), (&[][..], 0), "a drained buffer is reset");
    }

    #[test]
    fn copied_and_shared_frames_keep_their_order_through_partial_writes() {
        let mut queue = FrameQueue::default();
        let big = Bytes::from(vec![b'x'; COPY_MAX + 1]);
        let mut expected = Vec::new();
        for i in 0..30 {
            let frame = if i % 7 == 3 {
                big.clone()
            } else {
                text(&format!("{i}"))
            };
            expected.extend_from_slice(&frame);
            if !queue.copy_in(&frame, 1) {
                queue.push(Queued::new(frame, 1));
            }
        }
        assert_eq!(queue.bytes(), expected.len());
        let mut wire = Vec::new();
        let mut delivered = 0;
        // Writes of 5 bytes at most: every entry is cut somewhere.
        while !queue.is_empty() {
            let (_, bytes) = gathered(&queue);
            let take = bytes.len().min(5);
            wire.extend_from_slice(&bytes[..take]);
            queue.consume(take, |_, n| delivered += n);
        }
        assert_eq!(wire, expected);
        assert_eq!(delivered, 30);
    }

    #[test]
    fn past_the_copied_backlog_frames_are_queued_shared() {
        let mut queue = FrameQueue::default();
        let frame = Bytes::from(vec![b'y'; COPY_MAX]);
        let fit = COPY_BACKLOG / COPY_MAX;
        for _ in 0..fit {
            assert!(queue.copy_in(&frame, 0));
        }
        assert!(!queue.copy_in(&frame, 0), "the backlog is full");
        assert!(
            !queue.copy_in(&Bytes::from(vec![0; COPY_MAX + 1]), 0),
            "too large"
        );
        // Once written, copying goes on.
        queue.consume(COPY_BACKLOG, |_, _| ());
        assert!(queue.copy_in(&frame, 0));
    }

    #[test]
    fn a_partly_written_buffer_is_compacted_not_grown_forever() {
        let mut queue = FrameQueue::default();
        let frame = Bytes::from(vec![b'z'; 100]);
        for round in 0..1000 {
            assert!(queue.copy_in(&frame, 0), "round {round}");
            assert!(queue.copy_in(&frame, 0), "round {round}");
            // Not quite two frames written each round: never drained.
            queue.consume(190, |_, _| ());
        }
        assert!(queue.capacity().1 <= 4 * COMPACT_AT + COPY_BACKLOG);
        assert_eq!(queue.bytes(), 1000 * 10);
    }

    #[test]
    fn subscribers_of_one_channel_share_one_range_per_turn() {
        let chunks = Chunks::default();
        let (mut x, mut y) = (FrameQueue::default(), FrameQueue::default());
        let frames: Vec<Bytes> = (0..20).map(|i| text(&format!("p{i}"))).collect();
        for frame in &frames {
            assert!(x.lay_in(&chunks, frame, 1, 0));
            assert!(y.lay_in(&chunks, frame, 1, 0));
        }
        assert_eq!((x.entries.len(), y.entries.len()), (1, 1), "one range each");
        let (count, bytes) = gathered(&x);
        assert_eq!((count, bytes), (1, frames.concat()));
        assert_eq!(y.whole_frames(), frames);
        assert!(x.own.is_none(), "nothing copied");
    }

    #[test]
    fn a_frame_not_right_after_the_range_is_copied_and_order_kept() {
        let chunks = Chunks::default();
        let mut x = FrameQueue::default();
        let (a, other, b) = (text("a"), text("for someone else"), text("b"));
        assert!(x.lay_in(&chunks, &a, 1, 0));
        let _ = chunks.lay(&other);
        assert!(!x.lay_in(&chunks, &b, 1, 0), "not adjacent");
        assert!(x.copy_in(&b, 1));
        let c = text("c");
        assert!(
            !x.lay_in(&chunks, &c, 1, 0),
            "the queue ends with its own run"
        );
        assert!(x.copy_in(&c, 1));
        assert_eq!(x.whole_frames(), [a.clone(), b.clone(), c.clone()]);
        // The socket is full: the ranges become the queue's own bytes.
        x.consume(1, |_, _| ());
        x.own_chunked();
        assert!(x
            .entries
            .iter()
            .all(|e| matches!(e.body, Body::Run { chunk: None, .. })));
        let (_, bytes) = gathered(&x);
        assert_eq!(bytes, [&a[1..], &b[..], &c[..]].concat());
        let mut delivered = 0;
        x.consume(bytes.len(), |_, n| delivered += n);
        assert_eq!(delivered, 3);
        assert!(x.is_empty());
    }

    #[test]
    fn a_run_begun_on_the_wire_takes_no_more_frames() {
        let mut x = FrameQueue::default();
        let (a, b) = (text("a"), text("b"));
        assert!(x.copy_in(&a, 1));
        x.consume(1, |_, _| ());
        assert!(x.copy_in(&b, 1), "copied, as a run of its own");
        assert_eq!(x.entries.len(), 2);
        let mut delivered = Vec::new();
        x.consume(a.len() - 1 + b.len(), |at, n| delivered.push((at, n)));
        assert_eq!(delivered, [(1, 1), (1, 1)], "each run counted when written");
    }

    #[test]
    fn past_the_chunk_backlog_frames_are_not_laid() {
        let chunks = Chunks::default();
        let mut x = FrameQueue::default();
        let frame = text("p");
        assert!(
            !x.lay_in(&chunks, &frame, 1, CHUNK_BACKLOG),
            "the queue is full enough"
        );
        assert!(x.lay_in(&chunks, &frame, 1, CHUNK_BACKLOG - frame.len()));
    }
}
