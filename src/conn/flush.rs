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

use super::chunk::Chunks;
use super::outbox::{Flush, Outbox, WriteState};
use crate::{
    stats::{bump, Stats},
    stream::SharedStream,
};

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
    /// Where the shard lays small frames for its queues to share.
    chunks: Chunks,
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

    /// Where the shard lays small frames for its queues to share.
    pub(super) fn chunks(&self) -> &Chunks {
        &self.chunks
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
        Ok(Flush::WouldBlock) => {
            // It may wait long: it must not keep the shard's chunks alive.
            outbox.own_chunked();
            wait_for_room(outbox, stream)
        }
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
    bump(&outbox.stats().socket_full, 1);
    let weak = Rc::downgrade(outbox);
    let task = glommio::spawn_local(async move {
        let gone = || Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        let written = futures_lite::future::poll_fn(|cx| {
            let Some(outbox) = weak.upgrade() else {
                return gone();
            };
            let Some(stream) = outbox.stream() else {
                return gone();
            };
            match &front {
                Some(front) => stream.poll_write(cx, front),
                None => stream.poll_flush(cx).map_ok(|()| 0),
            }
        })
        .await;
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use bytes::Bytes;

    use super::*;
    use crate::{close::CloseReason, frame, stream::SharedStream, sync::on_test_executor};

    /// A connected pair: the server's end as the flush pass writes it, and
    /// the client's, read with std.
    async fn pair() -> (SharedStream, std::net::TcpStream) {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (SharedStream::new(listener.accept().await.unwrap()), client)
    }

    /// Makes the stream's send buffer `bytes` long, so it fills quickly.
    fn small_send_buffer(stream: &SharedStream, bytes: usize) {
        // SAFETY: the fd is the stream's, open for the whole test.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.fd()) };
        socket2::SockRef::from(&fd)
            .set_send_buffer_size(bytes)
            .unwrap();
    }

    /// Reads `client` to its end on a thread of its own.
    fn read_on_a_thread(
        mut client: std::net::TcpStream,
    ) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).map(|_| got)
        })
    }

    /// A flush pass running on the test executor, counting into `stats`.
    fn running_flusher(stats: &Rc<Stats>) -> Rc<Flusher> {
        let flusher = Rc::new(Flusher::new(stats.clone(), Duration::ZERO));
        glommio::spawn_local(flusher.clone().run()).detach();
        flusher
    }

    #[test]
    fn frames_queued_in_one_turn_leave_in_one_write() {
        on_test_executor(async {
            let (stream, mut client) = pair().await;
            let stats = Rc::new(Stats::default());
            let flusher = running_flusher(&stats);
            let outbox = Rc::new(Outbox::new(1 << 20, flusher.clone(), Some(stream), false));
            for i in 0..10u8 {
                outbox.push(Bytes::from(vec![i; 100]));
            }
            outbox.close(CloseReason::Shutdown);
            assert_eq!(flusher.dirty_count(), 1, "marked dirty once");
            outbox.written_out().await;
            assert_eq!(
                stats.socket_writes.get(),
                1,
                "ten frames and the close frame"
            );
            assert_eq!(stats.flush_passes.get(), 1);
            assert_eq!(flusher.dirty_count(), 0);
            outbox.stream().unwrap().shutdown_write();
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            let close = frame::close(1012, "service restart");
            assert_eq!(got.len(), 1000 + close.len());
            assert_eq!(&got[900..1000], &[9; 100][..]);
            assert_eq!(&got[1000..], &close[..]);
        });
    }

    /// A socket that fills up waits for room in a task of its own, then the
    /// pass goes on where it stopped: every byte arrives, in order.
    #[test]
    fn a_full_socket_resumes_where_it_stopped() {
        on_test_executor(async {
            let (stream, client) = pair().await;
            // A small send buffer fills at once.
            small_send_buffer(&stream, 16 << 10);
            let stats = Rc::new(Stats::default());
            let flusher = running_flusher(&stats);
            let outbox = Rc::new(Outbox::new(8 << 20, flusher, Some(stream), false));
            let mut expected = Vec::new();
            for i in 0..64u8 {
                let frame = vec![i; 64 << 10];
                expected.extend_from_slice(&frame);
                outbox.push(Bytes::from(frame));
            }
            // Read on a thread of its own, so the socket fills up.
            let reader = read_on_a_thread(client);
            outbox.close(CloseReason::Shutdown);
            outbox.written_out().await;
            outbox.stream().unwrap().shutdown_write();
            let got = reader.join().unwrap().unwrap();
            expected.extend_from_slice(&frame::close(1012, "service restart"));
            assert_eq!(got.len(), expected.len());
            assert!(got == expected, "bytes out of order");
            assert!(stats.socket_full.get() > 0, "the socket was full");
            assert_eq!(stats.bytes_out.get(), expected.len() as u64);
        });
    }

    /// Many small frames gathered into each write: a socket that takes
    /// only part of a write keeps the rest queued (mid-frame too), and
    /// every byte arrives in order.
    #[test]
    fn small_frames_gathered_into_writes_survive_a_full_socket() {
        on_test_executor(async {
            let (stream, client) = pair().await;
            small_send_buffer(&stream, 4 << 10);
            let stats = Rc::new(Stats::default());
            let flusher = running_flusher(&stats);
            let outbox = Rc::new(Outbox::new(8 << 20, flusher, Some(stream), false));
            let mut expected = Vec::new();
            for i in 0..20_000u32 {
                let frame = format!("frame {i:>10} ").repeat(5).into_bytes();
                expected.extend_from_slice(&frame);
                outbox.push(Bytes::from(frame));
            }
            // Nobody reads until the socket is full (on one loaded core a
            // reader could keep up with every write).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while stats.socket_full.get() == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the socket never filled"
                );
                glommio::executor().yield_now().await;
            }
            let reader = read_on_a_thread(client);
            outbox.close(CloseReason::Shutdown);
            outbox.written_out().await;
            outbox.stream().unwrap().shutdown_write();
            let got = reader.join().unwrap().unwrap();
            expected.extend_from_slice(&frame::close(1012, "service restart"));
            assert_eq!(got.len(), expected.len());
            assert!(got == expected, "bytes out of order");
            assert!(stats.socket_full.get() > 0, "the socket was full");
        });
    }

    /// Two queues share one channel's tail (`conn/follow.rs`) while one of
    /// them fills its socket: the other goes on sharing, the full one
    /// settles (written in part, then moved into its own buffer), and
    /// every byte reaches both in order, counted once.
    #[test]
    fn queues_sharing_a_tail_get_every_byte_when_one_socket_fills() {
        use super::super::follow::TailSlot;
        use crate::conn::outbox::Pushed;
        on_test_executor(async {
            let stats = Rc::new(Stats::default());
            let flusher = running_flusher(&stats);
            let (fast_stream, fast_client) = pair().await;
            let (slow_stream, slow_client) = pair().await;
            small_send_buffer(&slow_stream, 4 << 10);
            let fast_reader = read_on_a_thread(fast_client);
            let outbox =
                |stream| Rc::new(Outbox::new(8 << 20, flusher.clone(), Some(stream), false));
            let (fast, slow) = (outbox(fast_stream), outbox(slow_stream));
            let mut slot = TailSlot::default();
            let mut expected = Vec::new();
            let mut shared = 0;
            const PUBLICATIONS: u64 = 50_000;
            for i in 0..PUBLICATIONS {
                let frame = frame::encode(
                    frame::OpCode::Text,
                    format!("publication {i:>8}").as_bytes(),
                );
                expected.extend_from_slice(&frame);
                // What fan-out does: grow the tail, push to who it missed.
                let grown = slot.extend(&frame, 1);
                shared += grown;
                for queue in [&fast, &slow] {
                    if grown > 0 && queue.follows(&slot) {
                        continue;
                    }
                    let pushed = queue.push_following(&mut slot, &frame, 1);
                    assert!(matches!(pushed, Pushed::Queued | Pushed::Shared));
                }
                if i % 64 == 63 {
                    glommio::executor().yield_now().await;
                }
            }
            assert!(shared > 0, "the tail grew for its followers");
            assert!(stats.socket_full.get() > 0, "the slow socket filled");
            let slow_reader = read_on_a_thread(slow_client);
            for queue in [&fast, &slow] {
                queue.close(CloseReason::Shutdown);
                queue.written_out().await;
                queue.stream().unwrap().shutdown_write();
            }
            expected.extend_from_slice(&frame::close(1012, "service restart"));
            for reader in [fast_reader, slow_reader] {
                let got = reader.join().unwrap().unwrap();
                assert_eq!(got.len(), expected.len());
                assert!(got == expected, "bytes out of order");
            }
            assert_eq!(stats.frames_queued.get(), 2 * PUBLICATIONS);
            assert_eq!(stats.messages_delivered.get(), 2 * PUBLICATIONS);
            assert_eq!(stats.queued_bytes.get(), 0, "every byte counted once");
            assert_eq!(fast.queued_bytes() + slow.queued_bytes(), 0);
        });
    }
}
