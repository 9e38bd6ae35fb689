//! Readiness of a shard's plain TCP connections through one edge-triggered
//! epoll set per shard, instead of a glommio stream (and its readiness
//! source, ~500 bytes, and its io_uring poll request, 256 bytes of kernel
//! slab) per connection: an idle connection costs an epoll registration
//! (192 bytes of slab) and two waker slots here.
//!
//! A connection's socket is read and written with non-blocking `recv` and
//! `send` ([`Registered`]); one that returns `EAGAIN` leaves its task's
//! waker in the set's slot for it, and the next edge on the socket wakes
//! it. One task per shard ([`Readiness::run`]) drains the set with
//! `epoll_wait` (a zero timeout: it never blocks) and, when nothing is
//! ready, sleeps until the
//! epoll descriptor itself is readable: glommio has no public way to wait
//! for an arbitrary descriptor, so the wait is a glommio `UnixStream` over a
//! `dup` of it, read with an empty buffer: `Pending` while nothing is
//! ready, then an error (`ENOTSOCK`, it is no socket) once something is —
//! a new stream per wait, since glommio does not re-arm a stream that
//! failed (docs/notes/idle-reactor.md, checked on this machine: two polls
//! per wait, no spin). Written by hand because glommio 0.9 keeps its
//! reactor private and no crate offers readiness on a glommio executor.
//!
//! TLS connections and broker links keep glommio's streams.

use std::{
    cell::{Cell, RefCell},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use slab::Slab;

/// Events taken by one `epoll_wait`.
const EVENTS: usize = 256;

/// The tasks waiting for one connection's socket.
#[derive(Default)]
struct Waiters {
    read: Option<Waker>,
    write: Option<Waker>,
}

/// A shard's epoll set and the tasks waiting on its sockets.
pub(crate) struct Readiness {
    epoll: OwnedFd,
    waiters: RefCell<Slab<Waiters>>,
    /// Times the task woke from a wait on the set (for tests).
    wakeups: Cell<u64>,
    /// When a failure was last logged.
    last_error: Cell<Option<Instant>>,
}

impl Readiness {
    pub(crate) fn new() -> io::Result<Rc<Self>> {
        // SAFETY: epoll_create1 takes no pointers; a valid fd is ours.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rc::new(Readiness {
            // SAFETY: just created, owned by nobody else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            waiters: RefCell::new(Slab::new()),
            wakeups: Cell::new(0),
            last_error: Cell::new(None),
        }))
    }

    /// Takes over `stream`'s socket: registers a duplicate of it and drops
    /// the glommio stream (closing the original and cancelling its poll).
    /// On failure the stream is handed back, untouched.
    pub(crate) fn register(self: &Rc<Self>, stream: TcpStream) -> Result<Registered, TcpStream> {
        // SAFETY: fcntl on a valid fd; the duplicate is ours.
        let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(stream);
        }
        // SAFETY: just made, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        let key = self.waiters.borrow_mut().insert(Waiters::default());
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: key as u64,
        };
        // SAFETY: both fds are valid; the kernel copies the event.
        let added = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut event,
            )
        };
        if added < 0 {
            self.waiters.borrow_mut().remove(key);
            return Err(stream);
        }
        drop(stream);
        Ok(Registered {
            fd,
            key: key as u32,
            readiness: self.clone(),
        })
    }

    /// Connections registered.
    #[cfg(test)]
    pub(crate) fn registered(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// The shard's readiness task: wakes the tasks whose sockets became
    /// ready, for the shard's lifetime.
    pub(crate) async fn run(self: Rc<Self>) {
        // SAFETY: epoll_event is plain data.
        let mut events: Vec<libc::epoll_event> = vec![unsafe { std::mem::zeroed() }; EVENTS];
        loop {
            // SAFETY: the buffer holds EVENTS events; a zero timeout.
            let ready = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as i32,
                    0,
                )
            };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    self.back_off("epoll_wait", &error).await;
                }
                continue;
            }
            for event in &events[..ready as usize] {
                self.wake(event.u64 as usize, event.events);
            }
            if ready as usize == EVENTS {
                // More may be ready: let the woken tasks run first.
                glommio::executor().yield_now().await;
                continue;
            }
            match self.until_ready().await {
                Ok(()) => self.wakeups.set(self.wakeups.get() + 1),
                // Out of descriptors for the wait's `dup` (a connection
                // flood at the process's limit): poll until it passes.
                Err(error) => self.back_off("the wait on the epoll set", &error).await,
            }
        }
    }

    /// After `what` failed: says so (once per second at most), and waits a
    /// little before the set is polled again, so that connections are still
    /// woken (late) instead of never.
    async fn back_off(&self, what: &str, error: &io::Error) {
        const PAUSE: Duration = Duration::from_millis(5);
        let now = Instant::now();
        if self
            .last_error
            .get()
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.last_error.set(Some(now));
            tracing::warn!(%error, "{what} failed; the shard polls its connections every 5 ms until it works");
        }
        glommio::timer::sleep(PAUSE).await;
    }

    /// Wakes who waits on the connection in slot `key` for what `events`
    /// say is ready (an error or hang-up wakes both sides).
    fn wake(&self, key: usize, events: u32) {
        let hangup = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
        let readable = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | hangup;
        let writable = libc::EPOLLOUT as u32 | hangup;
        let (read, write) = {
            let mut waiters = self.waiters.borrow_mut();
            // A slot freed (and maybe reused) since: a spurious wake at
            // worst, which costs its task one `EAGAIN`.
            let Some(waiters) = waiters.get_mut(key) else {
                return;
            };
            (
                (events & readable != 0)
                    .then(|| waiters.read.take())
                    .flatten(),
                (events & writable != 0)
                    .then(|| waiters.write.take())
                    .flatten(),
            )
        };
        read.into_iter().chain(write).for_each(Waker::wake);
    }

    /// Resolves once the epoll set has an event (see the module's
    /// paragraph for how).
    async fn until_ready(&self) -> io::Result<()> {
        // SAFETY: fcntl on a valid fd; the duplicate is handed to the stream.
        let dup = unsafe { libc::fcntl(self.epoll.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the duplicate is owned by the stream from here (closed
        // when it drops).
        let mut waiting = unsafe { glommio::net::UnixStream::from_raw_fd(dup) };
        let outcome =
            futures_lite::future::poll_fn(|cx| Pin::new(&mut waiting).poll_read(cx, &mut [])).await;
        match outcome {
            // Readable: reading an epoll descriptor as a socket fails.
            Err(error) if error.raw_os_error() == Some(libc::ENOTSOCK) => Ok(()),
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn register_waker(&self, key: u32, write: bool, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        let Some(waiters) = waiters.get_mut(key as usize) else {
            return;
        };
        let slot = match write {
            true => &mut waiters.write,
            false => &mut waiters.read,
        };
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// A plain TCP socket whose readiness comes from its shard's epoll set.
pub(crate) struct Registered {
    fd: OwnedFd,
    key: u32,
    readiness: Rc<Readiness>,
}

impl Registered {
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Runs `io` (a non-blocking `recv` or `send`) until it does not fail
    /// with `EINTR`; on `EAGAIN` leaves `cx`'s waker for the next edge.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        mut io: impl FnMut() -> isize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let done = io();
            if done >= 0 {
                return Poll::Ready(Ok(done as usize));
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    self.readiness.register_waker(self.key, write, cx.waker());
                    return Poll::Pending;
                }
                _ => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Closing the only descriptor of the socket takes it out of the
        // epoll set.
        self.readiness
            .waiters
            .borrow_mut()
            .try_remove(self.key as usize);
    }
}

impl AsyncRead for Registered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let fd = self.fd();
        // SAFETY: the buffer is borrowed for the duration of the call.
        self.poll_io(cx, false, || unsafe {
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
        })
    }
}

impl AsyncWrite for Registered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let fd = self.fd();
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        // SAFETY: the buffer is borrowed for the duration of the call.
        self.poll_io(cx, true, || unsafe {
            libc::send(fd, buf.as_ptr().cast(), buf.len(), flags)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown on a valid fd we own.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::{stream::SharedStream, sync::on_test_executor};

    /// A server socket registered with `readiness`, and its client.
    async fn pair(readiness: &Rc<Readiness>) -> (SharedStream, std::net::TcpStream) {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = listener.accept().await.unwrap();
        let Ok(registered) = readiness.register(accepted) else {
            panic!("the socket is registered");
        };
        (SharedStream::polled(registered), client)
    }

    /// A read waits for the client's bytes without spinning; a write that
    /// fills the socket waits for the client to read; a socket that goes
    /// leaves the set.
    #[test]
    fn reads_and_writes_wait_for_their_socket_without_spinning() {
        on_test_executor(async {
            let readiness = Readiness::new().unwrap();
            glommio::spawn_local(readiness.clone().run()).detach();
            let (server, mut client) = pair(&readiness).await;
            assert_eq!(readiness.registered(), 1);

            // Nothing to read for a while: the task sleeps.
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                client.write_all(b"hello").unwrap();
                client
            });
            let started = Instant::now();
            let mut buf = [0u8; 16];
            let n = server.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"hello");
            assert!(started.elapsed() >= Duration::from_millis(150));
            assert!(
                readiness.wakeups.get() <= 3,
                "woke {} times for one read",
                readiness.wakeups.get()
            );
            let mut client = writer.join().unwrap();

            // Fill the socket, then let the client read it all.
            let chunk = vec![7u8; 64 << 10];
            let mut written = 0;
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let mut got = 0;
                let mut buf = vec![0u8; 64 << 10];
                while got < 8 << 20 {
                    got += client.read(&mut buf).unwrap();
                }
                got
            });
            while written < 8 << 20 {
                let left = (8 << 20) - written;
                written += server.write(&chunk[..left.min(chunk.len())]).await.unwrap();
            }
            assert_eq!(reader.join().unwrap(), 8 << 20);

            // A socket that goes leaves the set.
            drop(server);
            assert_eq!(readiness.registered(), 0, "gone from the set");
        });
    }
}
