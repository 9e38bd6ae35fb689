//! A shard's small frames laid end to end in shared, append-only chunks, so
//! that the publications a connection receives in one executor turn are,
//! for every subscriber of the same channel, one contiguous range of the
//! same memory: a queue extends its last range instead of copying the
//! frame (`conn/queue.rs`), and the flush pass sends that range with one
//! `send`. A publication is copied once per shard (and codec) instead of
//! once per subscriber; a delivery costs a comparison and an addition.
//!
//! A chunk's filled bytes are never written again, and it lives while a
//! queue still refers to it. Queues refer to chunks only until their next
//! flush: a connection whose socket is full moves what it still has in
//! chunks into its own buffer (`FrameQueue::own_chunked`), so a slow reader
//! never pins the shard's chunks.
//!
//! Written by hand: `bytes::BytesMut::split` gives adjacent pieces of one
//! buffer, but no safe way to treat two adjacent pieces as one range.

use std::{
    cell::{Cell, RefCell},
    ptr::NonNull,
    rc::Rc,
};

use bytes::Bytes;

/// Bytes per chunk.
pub(super) const CHUNK_BYTES: usize = 64 << 10;
/// Frames up to this size are laid in chunks; larger ones are queued shared.
pub(super) const CHUNK_FRAME_MAX: usize = 1 << 10;

/// An append-only buffer of frames.
pub(super) struct Chunk {
    /// `CHUNK_BYTES` bytes, owned (freed in `Drop`).
    data: NonNull<u8>,
    /// Bytes written: `data[..filled]` is never written again.
    filled: Cell<usize>,
}

impl Chunk {
    fn new() -> Self {
        let data: Box<[u8]> = vec![0; CHUNK_BYTES].into_boxed_slice();
        // SAFETY: Box::into_raw never returns null.
        let data = unsafe { NonNull::new_unchecked(Box::into_raw(data).cast::<u8>()) };
        Chunk {
            data,
            filled: Cell::new(0),
        }
    }

    /// Appends `bytes`; where they start, or `None` if they do not fit.
    fn append(&self, bytes: &[u8]) -> Option<usize> {
        let at = self.filled.get();
        if bytes.len() > CHUNK_BYTES - at {
            return None;
        }
        // SAFETY: `at..at + len` is inside the allocation and above
        // `filled`: no slice handed out by `range` covers it.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.as_ptr().add(at), bytes.len())
        };
        self.filled.set(at + bytes.len());
        Some(at)
    }

    /// The filled bytes `start..start + len`.
    pub(super) fn range(&self, start: usize, len: usize) -> &[u8] {
        assert!(
            start + len <= self.filled.get(),
            "only filled bytes are read"
        );
        // SAFETY: inside the allocation, filled, and never written again
        // while `self` lives.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().add(start), len) }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.data.as_ptr(), CHUNK_BYTES);
        // SAFETY: made by Box::into_raw of a CHUNK_BYTES-long boxed slice.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Where a frame was laid: its chunk (to compare with, not to keep: see
/// [`Chunks::last_chunk`]) and its first byte there.
#[derive(Clone, Copy)]
pub(super) struct Laid {
    pub(super) chunk: *const Chunk,
    pub(super) start: u32,
}

/// The shard's current chunk, and the frame laid in it last (so every
/// subscriber of one publication finds the same range).
#[derive(Default)]
pub(super) struct Chunks {
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    current: Option<Rc<Chunk>>,
    /// The last frame laid, held so that its address is not reused by
    /// another frame while it is remembered, and where it lies.
    last: Option<(Bytes, Rc<Chunk>, u32)>,
}

impl Chunks {
    /// Where `frame` lies, laying it in the current chunk (or a new one) the
    /// first time it is asked for. `frame` must be at most
    /// [`CHUNK_FRAME_MAX`] long.
    #[inline]
    pub(super) fn lay(&self, frame: &Bytes) -> Laid {
        let mut state = self.state.borrow_mut();
        if let Some((last, chunk, start)) = &state.last {
            if last.as_ptr() == frame.as_ptr() && last.len() == frame.len() {
                return Laid {
                    chunk: Rc::as_ptr(chunk),
                    start: *start,
                };
            }
        }
        state.lay_new(frame)
    }

    /// The chunk the last frame was laid in, to keep (a queue's new range).
    pub(super) fn last_chunk(&self) -> Option<Rc<Chunk>> {
        let state = self.state.borrow();
        state.last.as_ref().map(|(_, chunk, _)| chunk.clone())
    }
}

impl State {
    #[cold]
    fn lay_new(&mut self, frame: &Bytes) -> Laid {
        debug_assert!(frame.len() <= CHUNK_FRAME_MAX);
        let placed = self.current.as_ref().and_then(|chunk| chunk.append(frame));
        let (chunk, start) = match placed {
            Some(start) => (self.current.clone().expect("appended to it"), start),
            None => {
                let chunk = Rc::new(Chunk::new());
                let start = chunk.append(frame).expect("a frame fits an empty chunk");
                self.current = Some(chunk.clone());
                (chunk, start)
            }
        };
        let start = start as u32;
        let laid = Laid {
            chunk: Rc::as_ptr(&chunk),
            start,
        };
        self.last = Some((frame.clone(), chunk, start));
        laid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frame_is_laid_once_and_the_next_right_after_it() {
        let chunks = Chunks::default();
        let a = Bytes::from_static(b"first frame");
        let b = Bytes::from(vec![7u8; 100]);
        let one = chunks.lay(&a);
        let again = chunks.lay(&a);
        assert_eq!(one.chunk, again.chunk);
        assert_eq!(one.start, again.start);
        let first_chunk = chunks.last_chunk().unwrap();
        let two = chunks.lay(&b);
        assert_eq!(two.start as usize, one.start as usize + a.len(), "adjacent");
        assert_eq!(first_chunk.range(one.start as usize, a.len()), &a[..]);
        assert_eq!(first_chunk.range(two.start as usize, 100), &b[..]);
    }

    #[test]
    fn a_full_chunk_gives_way_to_a_new_one_and_lives_while_referred_to() {
        let chunks = Chunks::default();
        let frame = Bytes::from(vec![1u8; CHUNK_FRAME_MAX]);
        let first = chunks.lay(&frame);
        let first_chunk = chunks.last_chunk().unwrap();
        let mut last = None;
        for i in 0..CHUNK_BYTES / CHUNK_FRAME_MAX {
            // A new Bytes each time: a new frame, laid anew.
            let frame = Bytes::from(vec![i as u8; CHUNK_FRAME_MAX]);
            last = Some(chunks.lay(&frame));
        }
        let last = last.unwrap();
        assert_ne!(first.chunk, last.chunk, "the first chunk was full");
        assert_eq!(last.start, 0);
        assert_eq!(first_chunk.range(0, CHUNK_FRAME_MAX), &frame[..]);
    }

    #[test]
    #[should_panic(expected = "only filled bytes")]
    fn unfilled_bytes_are_never_read() {
        let chunks = Chunks::default();
        chunks.lay(&Bytes::from_static(b"abc"));
        chunks.last_chunk().unwrap().range(0, 4);
    }
}
