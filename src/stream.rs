//! One TCP stream — plain, or TLS through futures-rustls: an accepted
//! connection, or a broker link the engines open (`engine/`). An accepted
//! plain connection waits on its shard's epoll set (`readiness.rs`); the
//! others on glommio's own readiness. The HTTP
//! task owns it until the upgrade; then it lives in the connection's outbox,
//! and the session task, the shard's flush pass and, while the socket is
//! full, a task waiting for it to take more each borrow it only inside a
//! single poll or call, so the borrows never overlap; glommio keeps
//! separate read and write readiness for a stream, so readers and writers do
//! not steal each other's wake-ups. The flush pass writes without waiting:
//! plain streams with one gathered `sendmsg` ([`SharedStream::send_now`]),
//! TLS streams by taking frames as plaintext ([`SharedStream::encrypt`]) and
//! writing the session's records out ([`SharedStream::send_tls_now`]).

use std::{
    cell::RefCell,
    io::{self, IoSlice, Write},
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;

use crate::readiness::Registered;

/// The socket, with or without TLS over it.
enum Transport {
    /// Read and written through its shard's epoll set (`readiness.rs`):
    /// a client's plain connection.
    Polled(Registered),
    /// A glommio stream: a broker link, or a plain connection of a shard
    /// without an epoll set.
    Plain(Box<TcpStream>),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    fn pinned(&mut self) -> Pin<&mut dyn AsyncReadWrite> {
        match self {
            Transport::Polled(socket) => Pin::new(socket),
            Transport::Plain(stream) => Pin::new(&mut **stream),
            Transport::Tls(stream) => Pin::new(&mut **stream),
        }
    }
}

/// Both halves of a stream, as one trait object.
trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

/// A TCP stream shared by the tasks of one connection (by borrowing: it is
/// not reference-counted).
pub struct SharedStream {
    inner: RefCell<Transport>,
    fd: RawFd,
}

impl SharedStream {
    pub fn new(stream: TcpStream) -> Self {
        let fd = stream.as_raw_fd();
        SharedStream {
            inner: RefCell::new(Transport::Plain(Box::new(stream))),
            fd,
        }
    }

    /// A plain socket read and written through its shard's epoll set.
    pub(crate) fn polled(socket: Registered) -> Self {
        let fd = socket.fd();
        SharedStream {
            inner: RefCell::new(Transport::Polled(socket)),
            fd,
        }
    }

    /// A stream whose TLS handshake has completed.
    pub fn new_tls(stream: TlsStream<TcpStream>) -> Self {
        let fd = stream.get_ref().0.as_raw_fd();
        SharedStream {
            inner: RefCell::new(Transport::Tls(Box::new(stream))),
            fd,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn is_tls(&self) -> bool {
        matches!(*self.inner.borrow(), Transport::Tls(_))
    }

    /// Hands plaintext to the TLS session, which encrypts it into records
    /// to be written by [`SharedStream::flush`]; returns how much it took
    /// (0 when its buffer is full). Does no I/O.
    pub fn encrypt(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &mut *self.inner.borrow_mut() {
            Transport::Tls(stream) => stream.get_mut().1.writer().write_vectored(bufs),
            Transport::Plain(_) | Transport::Polled(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// One non-blocking gathered `sendmsg` of `slices` on the socket (a
    /// plain stream's frames; a TLS stream's records, see
    /// [`SharedStream::send_tls_now`]).
    pub fn send_now(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        send_gathered(self.fd, slices)
    }

    /// Writes the records the TLS session holds without waiting; `false`
    /// when the socket is full before they are all out (nothing to do for a
    /// plain stream: `true`).
    pub fn send_tls_now(&self) -> io::Result<bool> {
        let mut inner = self.inner.borrow_mut();
        let Transport::Tls(stream) = &mut *inner else {
            return Ok(true);
        };
        let session = stream.get_mut().1;
        let mut socket = Socket(self.fd);
        while session.wants_write() {
            match session.write_tls(&mut socket) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes out whatever the TLS session holds, waiting for the socket
    /// (nothing to do for plain).
    pub async fn flush(&self) -> io::Result<()> {
        futures_lite::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Reads into `buf` if the socket has data (the session's read loop).
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.inner.borrow_mut().pinned().poll_read(cx, buf)
    }

    /// Reads into `buf`, waiting for data.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::future::poll_fn(|cx| self.inner.borrow_mut().pinned().poll_read(cx, buf))
            .await
    }

    /// Writes some of `buf` if the socket has room (else registers for it).
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.inner.borrow_mut().pinned().poll_write(cx, buf)
    }

    /// Writes out what the TLS session holds if the socket has room (else
    /// registers for it).
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.borrow_mut().pinned().poll_flush(cx)
    }

    /// Writes some of `buf`, waiting for the socket to have room.
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        futures_lite::future::poll_fn(|cx| self.poll_write(cx, buf)).await
    }

    /// Writes all of `buf` (HTTP responses, before any WebSocket traffic).
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        self.flush().await
    }

    /// Closes after our last bytes (a response, a close frame) are written:
    /// FIN first, then discard what the client still sends until it closes
    /// too (at most a second, at most 1 MiB). Closing with unread bytes would
    /// make the kernel send a reset, which can destroy our last bytes in
    /// flight before the client reads them.
    pub async fn close_gracefully(&self) {
        const LINGER: Duration = Duration::from_secs(1);
        const DRAIN_LIMIT: usize = 1 << 20;
        self.finish().await;
        let _ = glommio::timer::timeout(LINGER, async {
            let mut scratch = vec![0u8; 4096];
            let mut drained = 0;
            while drained < DRAIN_LIMIT {
                match self.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            Ok(())
        })
        .await;
    }

    /// Ends our side: TLS `close_notify` first (at most a second), then FIN.
    pub async fn finish(&self) {
        const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);
        if self.is_tls() {
            let _ = glommio::timer::timeout(CLOSE_NOTIFY_TIMEOUT, async {
                let closed = futures_lite::future::poll_fn(|cx| {
                    self.inner.borrow_mut().pinned().poll_close(cx)
                });
                let _ = closed.await;
                Ok(())
            })
            .await;
        }
        self.shutdown_write();
    }

    /// Makes the close a reset (`SO_LINGER` 0): for a peer that has taken
    /// nothing for a long time, so the kernel does not keep our unsent bytes
    /// for it after we let go.
    pub fn reset_on_close(&self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a valid fd we own, reading the linger struct
        // we pass with its exact size; an error leaves a normal close.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    /// Half-closes the write side (sends FIN).
    pub fn shutdown_write(&self) {
        // SAFETY: shutdown on a valid fd we own; an error (already closed)
        // is harmless here.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_WR);
        }
    }
}

/// A socket written without waiting, for the TLS session's records.
struct Socket(RawFd);

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_gathered(self.0, &[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_gathered(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One non-blocking write of `slices`: `send` for one, `sendmsg` for more.
pub(crate) fn send_gathered(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let sent = match slices {
        // One slice (a run of copied frames, most often): a plain `send`
        // spares the kernel the message header and iovec import.
        // SAFETY: the slice is borrowed for the duration of the call.
        [one] => unsafe { libc::send(fd, one.as_ptr().cast(), one.len(), flags) },
        _ => {
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            // IoSlice is ABI-compatible with iovec on Unix; the kernel only reads.
            msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = slices.len() as _;
            // SAFETY: every iovec points into memory borrowed for the
            // duration of the call.
            unsafe { libc::sendmsg(fd, &msg, flags) }
        }
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}
