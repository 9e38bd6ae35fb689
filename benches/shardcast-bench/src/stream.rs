//! The generator's byte stream to a server: plain TCP or TLS over glommio's
//! `TcpStream`. One enum, so the plain path costs a `match` and nothing else
//! (no TLS state, no extra copy). [`Shared`] lets a connection's reader and
//! publisher tasks use one stream; [`Shared::read_available`] and
//! [`Shared::send_available`] serve the bulk reader, which takes what each
//! socket holds without waiting (non-blocking `recv`/`send` on the fd; for
//! TLS, rustls decrypts what was received). Nothing here parses WebSocket.

use std::{
    cell::RefCell,
    io::{self, Read, Write},
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::client::TlsStream;
use glommio::net::TcpStream;
use rustls::ClientConnection;

/// Ciphertext read per non-blocking `recv` on a TLS connection.
const TLS_RECV_BYTES: usize = 64 << 10;

/// A connection's stream, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls' state is large and most runs are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    /// TLS: encrypts and sends what the socket takes; the rest waits in
    /// rustls until [`AsyncWrite::poll_flush`].
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // glommio writes straight to the socket: nothing to flush.
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

/// A stream shared by the tasks of one connection (one executor). Each
/// operation borrows the stream only inside a single poll, so the borrows
/// never overlap.
#[derive(Clone)]
pub struct Shared {
    inner: Rc<RefCell<Stream>>,
}

impl Shared {
    pub fn new(stream: Stream) -> Self {
        Shared {
            inner: Rc::new(RefCell::new(stream)),
        }
    }

    /// Reads into `buf`, waiting for data.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::future::poll_fn(|cx| {
            Pin::new(&mut *self.inner.borrow_mut()).poll_read(cx, buf)
        })
        .await
    }

    /// Writes all of `buf` and, for TLS, flushes the records out: callers
    /// batch what they send into one `buf`.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = futures_lite::future::poll_fn(|cx| {
                Pin::new(&mut *self.inner.borrow_mut()).poll_write(cx, buf)
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        futures_lite::future::poll_fn(|cx| Pin::new(&mut *self.inner.borrow_mut()).poll_flush(cx))
            .await
    }

    /// Hands `inbox` everything the socket holds now, without waiting.
    /// `Ok` once the socket is empty; an error once the connection is closed
    /// (by the server, or by `inbox`), broken, or sent invalid TLS.
    /// `scratch` holds ciphertext (TLS only; sized here on first use).
    pub fn read_available(&self, scratch: &mut Vec<u8>, inbox: &mut impl Inbox) -> io::Result<()> {
        match &mut *self.inner.borrow_mut() {
            Stream::Plain(s) => read_available(s.as_raw_fd(), None, scratch, inbox),
            Stream::Tls(s) => {
                if scratch.len() < TLS_RECV_BYTES {
                    scratch.resize(TLS_RECV_BYTES, 0);
                }
                let (tcp, session) = s.get_mut();
                read_available(tcp.as_raw_fd(), Some(session), scratch, inbox)
            }
        }
    }

    /// Sends `bytes` (small: pongs) without waiting; what the socket does not
    /// take is dropped (plain) or left in rustls for the next write (TLS).
    pub fn send_available(&self, bytes: &[u8]) {
        match &mut *self.inner.borrow_mut() {
            Stream::Plain(s) => {
                let _ = send_nonblocking(s.as_raw_fd(), bytes);
            }
            Stream::Tls(s) => {
                let (tcp, session) = s.get_mut();
                let fd = tcp.as_raw_fd();
                if session.writer().write_all(bytes).is_ok() {
                    let _ = flush_nonblocking(fd, session);
                }
            }
        }
    }
}

/// Where non-blocking reads put what they receive (the bulk reader's
/// per-connection parser).
pub trait Inbox {
    /// Room for the next read; never empty.
    fn spare(&mut self) -> &mut [u8];
    /// `n` bytes were written to the start of [`Inbox::spare`]. `false`:
    /// the connection is over (the server sent a close frame).
    fn received(&mut self, n: usize) -> bool;
}

fn closed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, what.to_owned())
}

/// Reads everything `fd` holds into `inbox`, decrypting with `tls` if given.
/// See [`Shared::read_available`].
pub fn read_available(
    fd: RawFd,
    tls: Option<&mut ClientConnection>,
    scratch: &mut [u8],
    inbox: &mut impl Inbox,
) -> io::Result<()> {
    let Some(session) = tls else {
        // Plain: straight into the parser's buffer.
        loop {
            match recv_nonblocking(fd, inbox.spare()) {
                Ok(0) => return Err(closed("closed by the server")),
                Ok(n) => {
                    if !inbox.received(n) {
                        return Err(closed("close frame"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    loop {
        let n = match recv_nonblocking(fd, scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // n == 0 (EOF): an empty read tells rustls the socket is closed,
        // and its reader then ends the plaintext (clean or not).
        let mut wire = &scratch[..n];
        loop {
            let fed = session.read_tls(&mut wire)?;
            session
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            loop {
                match session.reader().read(inbox.spare()) {
                    Ok(0) => return Err(closed("TLS closed by the server")),
                    Ok(k) => {
                        if !inbox.received(k) {
                            return Err(closed("close frame"));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if wire.is_empty() && n > 0 {
                break;
            }
            if fed == 0 {
                // EOF seen, or rustls took nothing (cannot happen with its
                // plaintext drained): never spin.
                return Err(closed("closed by the server"));
            }
        }
    }
    // Anything rustls must answer (alerts, key updates).
    flush_nonblocking(fd, session)
}

/// Sends what rustls has queued, until the socket is full.
fn flush_nonblocking(fd: RawFd, session: &mut ClientConnection) -> io::Result<()> {
    while session.wants_write() {
        match session.write_tls(&mut FdWriter(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `recv` without waiting: `WouldBlock` when the socket is empty, 0 at EOF.
fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into a buffer we own, on a socket we own.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send` without waiting: `WouldBlock` when the socket is full.
fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send from a buffer we own, on a socket we own.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// rustls writes its records to the socket through this.
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_nonblocking(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::tls::tests::handshaken;

    /// Collects what it is given; says "closed" after `limit` bytes.
    struct Collect {
        buf: Vec<u8>,
        filled: usize,
        limit: usize,
    }

    impl Collect {
        fn new(limit: usize) -> Self {
            Collect {
                buf: vec![0; 1 << 20],
                filled: 0,
                limit,
            }
        }
    }

    impl Inbox for Collect {
        fn spare(&mut self) -> &mut [u8] {
            // Small reads, to exercise the loops.
            let end = (self.filled + 1000).min(self.buf.len());
            &mut self.buf[self.filled..end]
        }

        fn received(&mut self, n: usize) -> bool {
            self.filled += n;
            self.filled < self.limit
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn plain_reads_until_empty_then_until_closed() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let data = pattern(5000);
        theirs.write_all(&data).unwrap();
        let mut inbox = Collect::new(usize::MAX);
        read_available(ours.as_raw_fd(), None, &mut [], &mut inbox).unwrap();
        assert_eq!(&inbox.buf[..inbox.filled], &data[..]);
        drop(theirs);
        assert!(read_available(ours.as_raw_fd(), None, &mut [], &mut inbox).is_err());
    }

    #[test]
    fn tls_decrypts_several_records_then_sees_the_close() {
        let (mut client, mut server) = handshaken("localhost");
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        // Three records' worth, more than one recv of scratch.
        let data = pattern(40_000);
        server.writer().write_all(&data).unwrap();
        while server.wants_write() {
            server.write_tls(&mut theirs).unwrap();
        }
        let mut scratch = vec![0u8; 7000];
        let mut inbox = Collect::new(usize::MAX);
        read_available(
            ours.as_raw_fd(),
            Some(&mut client),
            &mut scratch,
            &mut inbox,
        )
        .unwrap();
        assert_eq!(inbox.filled, data.len());
        assert_eq!(&inbox.buf[..inbox.filled], &data[..]);

        // A pong from our side reaches the server intact.
        client.writer().write_all(b"pong").unwrap();
        flush_nonblocking(ours.as_raw_fd(), &mut client).unwrap();
        let mut wire = vec![0u8; 4096];
        let n = theirs.read(&mut wire).unwrap();
        server.read_tls(&mut &wire[..n]).unwrap();
        server.process_new_packets().unwrap();
        let mut got = [0u8; 4];
        server.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");

        server.send_close_notify();
        while server.wants_write() {
            server.write_tls(&mut theirs).unwrap();
        }
        let end = read_available(
            ours.as_raw_fd(),
            Some(&mut client),
            &mut scratch,
            &mut inbox,
        );
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn tls_without_close_notify_and_the_inbox_stopping_are_errors() {
        let (mut client, mut server) = handshaken("localhost");
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        server.writer().write_all(&pattern(3000)).unwrap();
        while server.wants_write() {
            server.write_tls(&mut theirs).unwrap();
        }
        drop(theirs);
        let mut scratch = vec![0u8; 1 << 16];
        let mut inbox = Collect::new(usize::MAX);
        let end = read_available(
            ours.as_raw_fd(),
            Some(&mut client),
            &mut scratch,
            &mut inbox,
        );
        assert_eq!(inbox.filled, 3000, "data before the EOF is delivered");
        assert!(end.is_err());

        let (mut client, mut server) = handshaken("localhost");
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        server.writer().write_all(&pattern(3000)).unwrap();
        while server.wants_write() {
            server.write_tls(&mut theirs).unwrap();
        }
        let mut inbox = Collect::new(1500);
        let end = read_available(
            ours.as_raw_fd(),
            Some(&mut client),
            &mut scratch,
            &mut inbox,
        );
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }
}
