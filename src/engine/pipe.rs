//! What the Redis and NATS links share: the buffer their commands are
//! appended to and the two halves of a connection's life — one writer
//! sending whatever has been appended since its last write (a burst of
//! commands costs one write), one reader handing each chunk read to the
//! link's decoder — and connecting with a deadline.

use std::{cell::RefCell, net::SocketAddr, time::Duration};

use bytes::BytesMut;
use futures_lite::FutureExt;
use glommio::net::TcpStream;

use super::backoff::Backoff;
use crate::{
    random,
    stats::{bump, Stats},
    stream::SharedStream,
    sync::WaitQueue,
};

/// Most bytes read from a broker's socket at once.
const READ_CHUNK: usize = 64 << 10;

/// Commands waiting to be written, and the writer waiting for them.
#[derive(Default)]
pub(crate) struct Pipe {
    out: RefCell<BytesMut>,
    writer: WaitQueue,
    /// Something is gathered elsewhere to be written at the writer's next
    /// turn (the Redis link's batch of publications).
    held: std::cell::Cell<bool>,
}

impl Pipe {
    /// Appends to what goes out next, and wakes the writer.
    pub(crate) fn write(&self, append: impl FnOnce(&mut BytesMut)) {
        append(&mut self.out.borrow_mut());
        self.writer.wake_all();
    }

    /// Wakes the writer for what is held elsewhere: its `seal` (see
    /// [`Pipe::serve`]) appends it before the next write.
    pub(crate) fn hold(&self) {
        self.held.set(true);
        self.writer.wake_all();
    }

    /// Forgets what was not written (the connection it was for is gone).
    pub(crate) fn clear(&self) {
        self.out.borrow_mut().clear();
    }

    /// Bytes appended and not yet written.
    pub(crate) fn unwritten(&self) -> usize {
        self.out.borrow().len()
    }

    /// Writes what is appended, and reads into `decode` (which takes every
    /// complete unit off the front of the buffer it is given), until
    /// either fails; returns why. `broker` names the peer in the reason.
    /// Before each write, after [`Pipe::hold`], `seal` appends what was
    /// held (it runs after the tasks of the turn that held it).
    pub(crate) async fn serve(
        &self,
        stream: &SharedStream,
        broker: &str,
        mut decode: impl FnMut(&mut BytesMut) -> Result<(), String>,
        seal: impl Fn(),
    ) -> String {
        let read = async {
            let mut chunk = vec![0u8; READ_CHUNK];
            let mut buf = BytesMut::new();
            loop {
                let n = match stream.read(&mut chunk).await {
                    Ok(0) => return format!("closed by {broker}"),
                    Ok(n) => n,
                    Err(error) => return error.to_string(),
                };
                buf.extend_from_slice(&chunk[..n]);
                if let Err(reason) = decode(&mut buf) {
                    return reason;
                }
            }
        };
        let write = async {
            loop {
                self.writer
                    .until(|| self.held.get() || !self.out.borrow().is_empty())
                    .await;
                if self.held.replace(false) {
                    seal();
                }
                let chunk = self.out.borrow_mut().split().freeze();
                if chunk.is_empty() {
                    continue;
                }
                if let Err(error) = stream.write_all(&chunk).await {
                    return error.to_string();
                }
            }
        };
        read.or(write).await
    }
}

/// Time allowed to connect to a broker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps a link connected until the caller drops the future: connect, run
/// `session` on the connection until it ends, wait (backoff with full
/// jitter), look `host_port` up again ([`super::addr::lookup`]: the
/// broker's name may point elsewhere now), again. Reconnects are counted;
/// failures to connect are logged at the first attempt and then at powers
/// of two.
pub(crate) async fn keep_connected(
    first: SocketAddr,
    host_port: &str,
    shown: &str,
    stats: &Stats,
    mut session: impl AsyncFnMut(SharedStream),
) {
    let mut backoff = Backoff::default();
    let mut attempts = 0u64;
    let mut socket = first;
    loop {
        attempts += 1;
        if attempts > 1 {
            socket = super::addr::lookup(host_port, socket, shown).await;
        }
        match connect(socket, CONNECT_TIMEOUT).await {
            Ok(tcp) => {
                if attempts > 1 {
                    bump(&stats.engine_reconnects, 1);
                }
                backoff.reset();
                session(SharedStream::new(tcp)).await;
            }
            Err(error) => {
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(broker = %shown, %error, attempts, "cannot reach the broker");
                }
            }
        }
        glommio::timer::sleep(backoff.next_delay(random::u64())).await;
    }
}

/// Connects to `socket` within `timeout`, with Nagle off (commands are
/// already batched by the pipe).
pub(crate) async fn connect(socket: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let connected =
        glommio::timer::timeout(timeout, async { TcpStream::connect(socket).await }).await;
    let tcp = connected.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
