//! A WebSocket session after the 101, as a task of its own: it reads the
//! client's bytes into the shard's scratch buffer and feeds them to the
//! connection's protocol state machine (`conn/machine.rs`), whose host it is on
//! the shard (subscribe, publish, queue a frame, close), until either side
//! closes. The connection was registered with the shard, whose flush pass
//! writes its queue. Teardown (unsubscribe, free the slot) runs from a
//! guard, so it happens however the task ends.

use std::{
    future::Future,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;

use super::Shard;
use crate::{
    channel::ChannelName,
    clock,
    close::CloseReason,
    conn::{
        codec::Codec,
        deflate::InflateError,
        http::Session,
        machine::{Connection, Host, Receipt, Refusal, Stop},
        permit::Permit,
        Conn,
    },
    mesh::Reply,
    protocol::{OpError, PresenceAsk, RequestId, Since, SubOptions},
    publication::{Payload, Skip},
    security::{
        rate::Verdict,
        token::{self, Verifier},
    },
    stats::bump,
};

/// How long the flush pass may take to write the queue and the close frame
/// at teardown.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads one connection may make (each at most the shard's scratch
/// buffer) before yielding to the others.
const READS_PER_POLL: usize = 4;

/// Unregisters the connection when the session ends, however it ends.
struct Registration {
    shard: Rc<Shard>,
    conn: Rc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let outbox = &self.conn.outbox;
        if outbox.closing().is_none() {
            outbox.close(CloseReason::SocketError);
        }
        outbox.cancel_blocked();
        self.shard.unregister(&self.conn);
    }
}

/// The session of one WebSocket connection, to be run as a task of its own.
/// `conn` was registered with the shard for it (see [`Shard::register`]);
/// however the future ends — or if it is dropped unpolled — the connection
/// is unregistered. What the URL asked for is subscribed before it returns,
/// so the future holds only what the read loop needs (an idle connection
/// keeps it for as long as it lives).
pub(super) fn serve(
    shard: Rc<Shard>,
    leftover: Vec<u8>,
    session: Session,
    conn: Rc<Conn>,
) -> impl Future<Output = ()> {
    let registration = Registration {
        shard: shard.clone(),
        conn: conn.clone(),
    };
    let max_message = shard.config.limits.max_message_bytes;
    let machine = Connection::open(session, max_message, &mut OnShard::new(&shard, &conn));
    // Shutdown began during the upgrade, after it closed every connection.
    if shard.is_shutting_down() {
        conn.outbox.close(CloseReason::Shutdown);
    }
    let mut reader = Reader {
        shard,
        conn,
        machine,
        backlog: leftover,
        waiting: None,
        counted: 0,
    };
    async move {
        (&mut reader).await;
        // Boxed: teardown runs once; its states need not live in every
        // idle connection's future.
        Box::pin(teardown(&reader.shard, &reader.conn)).await;
        drop(reader);
        drop(registration);
    }
}

/// The connection's host on its shard (see [`Host`]).
struct OnShard<'a> {
    shard: &'a Shard,
    conn: &'a Rc<Conn>,
}

impl<'a> OnShard<'a> {
    fn new(shard: &'a Shard, conn: &'a Rc<Conn>) -> Self {
        OnShard { shard, conn }
    }
}

impl Host for OnShard<'_> {
    fn now_ms(&self) -> u64 {
        self.shard.now_ms()
    }

    fn unix_now(&self) -> u64 {
        token::unix_now()
    }

    fn verifier(&self) -> Option<&Verifier> {
        self.shard.shell.security.verifier.as_ref()
    }

    fn codec(&self) -> Codec {
        self.conn.codec
    }

    fn send(&mut self, frame: Bytes) {
        self.conn.send(frame);
    }

    fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        bump(&self.shard.stats.messages_inflated, 1);
        self.shard
            .scratch
            .inflater
            .borrow_mut()
            .inflate(compressed, limit)
    }

    fn recycle(&mut self, inflated: Vec<u8>) {
        self.shard.scratch.inflater.borrow_mut().recycle(inflated);
    }

    fn close(&mut self, reason: CloseReason) {
        self.conn.outbox.close(reason);
    }

    fn close_in_reply(&mut self, code: Option<u16>) {
        self.conn.outbox.close_in_reply(code);
    }

    fn is_closing(&self) -> bool {
        self.conn.outbox.closing().is_some()
    }

    fn heard(&mut self) {
        self.conn.heartbeat.seen(self.shard.now_ms());
    }

    fn refused(&mut self, refusal: Refusal) {
        let stats = &self.shard.stats;
        bump(
            match refusal {
                Refusal::Unauthorized => &stats.auth_failures,
                Refusal::Forbidden => &stats.forbidden,
                Refusal::RateLimited => &stats.rate_limited,
            },
            1,
        );
    }

    fn is_shutting_down(&self) -> bool {
        self.shard.is_shutting_down()
    }

    fn permit(&self) -> Permit {
        self.conn.permit().clone()
    }

    fn set_permit(&mut self, permit: Permit, deadline_ms: u64) {
        self.conn.set_permit(permit, deadline_ms);
    }

    fn take_publish_token(&mut self) -> Verdict {
        let Some(limit) = self.shard.shell.security.publish_limit else {
            return Verdict::Allowed;
        };
        (self.conn)
            .take_publish_token(limit, self.shard.now_ms())
            .unwrap_or(Verdict::Allowed)
    }

    fn take_channel_op_token(&mut self) -> Verdict {
        let Some(limit) = self.shard.shell.security.subscribe_limit else {
            return Verdict::Allowed;
        };
        (self.conn).take_channel_op_token(limit, self.shard.now_ms())
    }

    fn subscribe<'a>(
        &mut self,
        ch: &str,
        id: Option<RequestId<'a>>,
        since: Option<Since<'_>>,
        options: SubOptions,
    ) -> Result<(), OpError<'a>> {
        self.shard.subscribe(self.conn, ch, id, since, options)
    }

    fn presence<'a>(
        &mut self,
        ch: &str,
        id: Option<RequestId<'a>>,
        ask: PresenceAsk,
    ) -> Result<(), OpError<'a>> {
        super::presence::op(self.shard, self.conn, ch, id, ask)
    }

    fn unsubscribe<'a>(&mut self, ch: &str, id: Option<RequestId<'a>>) -> Result<(), OpError<'a>> {
        self.shard.unsubscribe(self.conn, ch, id)
    }

    fn subscribed_channels(&self) -> Vec<Rc<str>> {
        self.conn.subscribed_channels()
    }

    fn publish(
        &mut self,
        ch: ChannelName,
        payload: Payload,
        skip: Option<Skip>,
        ack_id: Option<RequestId<'_>>,
        idempotency_key: Option<&str>,
    ) -> Option<usize> {
        // A `pub` is a single publish: its key meets an HTTP single
        // publish's under the same key, never a batch's (`api::Form`).
        let idempotency_key = idempotency_key
            .map(|key| crate::api::remembered_key(crate::api::Form::One, key, 0).into());
        let reply = match ack_id {
            Some(id) => Reply::Ack {
                conn: self.conn.id,
                id: id.to_buf(),
                idempotency_key,
            },
            // Raw-room members are told nothing (no envelope to tell with),
            // and have no key.
            None if self.conn.codec.protocol == crate::conn::codec::Protocol::Raw => Reply::None,
            None => Reply::Quiet {
                conn: self.conn.id,
                idempotency_key,
            },
        };
        self.shard.publish(ch, payload, skip, reply)
    }

    fn as_skip(&self) -> Skip {
        Skip {
            shard: self.shard.id as u16,
            conn: self.conn.id,
        }
    }
}

/// The read loop of a session, written as a future by hand so that an idle
/// connection holds only these fields. It reads into the shard's scratch
/// buffer and the machine decodes in place; only what the decoder keeps (a
/// frame or message split over reads) stays with the connection. Ends when
/// the connection starts closing, from either side.
struct Reader {
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    machine: Connection,
    /// Bytes read and not yet decoded: what came with the HTTP head, or the
    /// rest of a read left while waiting for room towards an owner. Empty
    /// (no allocation) otherwise.
    backlog: Vec<u8>,
    /// Backpressure: waiting for room in the queue to a channel's owner.
    waiting: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// What the decoder holds, as last added to the shard's count of
    /// unfinished-message bytes.
    counted: u64,
}

impl Future for Reader {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        for _ in 0..READS_PER_POLL {
            if this.conn.outbox.poll_closed(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some(waiting) = this.waiting.as_mut() {
                if waiting.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.waiting = None;
            }
            if !this.backlog.is_empty() {
                let mut backlog = std::mem::take(&mut this.backlog);
                let receipt = this.receive(&mut backlog);
                if this.after_receive(receipt, &backlog).is_ready() {
                    return Poll::Ready(());
                }
                continue;
            }
            let shard = this.shard.clone();
            let mut buf = shard.scratch.read.borrow_mut();
            // The connection's socket lives in its outbox.
            let Some(stream) = this.conn.outbox.stream() else {
                return Poll::Ready(());
            };
            let read = match stream.poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(read) => read,
            };
            let n = match read {
                Ok(0) => {
                    this.conn.outbox.close(CloseReason::Normal);
                    return Poll::Ready(());
                }
                Ok(n) => n,
                Err(_) => {
                    this.conn.outbox.close(CloseReason::SocketError);
                    return Poll::Ready(());
                }
            };
            bump(&this.shard.stats.bytes_in, n as u64);
            let receipt = this.receive(&mut buf[..n]);
            if this.after_receive(receipt, &buf[..n]).is_ready() {
                return Poll::Ready(());
            }
        }
        // A client with a full socket would otherwise keep this task running
        // and starve every other connection of the shard.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Reader {
    /// Hands `bytes` to the machine (which unmasks them in place), then
    /// follows the message in progress.
    fn receive(&mut self, bytes: &mut [u8]) -> Receipt {
        let was_in_progress = self.machine.in_progress();
        let receipt = (self.machine).receive(bytes, &mut OnShard::new(&self.shard, &self.conn));
        self.follow_progress(was_in_progress, receipt.completed);
        receipt
    }

    /// After a batch: keeps what was not used (while waiting), starts the
    /// wait. Ready when the connection is closing.
    fn after_receive(&mut self, receipt: Receipt, bytes: &[u8]) -> Poll<()> {
        match receipt.stop {
            Stop::Closed => Poll::Ready(()),
            Stop::Done => Poll::Pending,
            Stop::Congested(peer) => {
                // Read nothing more from this publisher until the queue to
                // the channel's owner drains. Rare, so boxed.
                self.backlog = bytes[receipt.used..].to_vec();
                let links = self.shard.links.clone();
                self.waiting = Some(Box::pin(async move { links.wait_for_room(peer).await }));
                Poll::Pending
            }
        }
    }

    /// Stamps when an unfinished message began (the sweep closes it after
    /// `message-timeout`) and keeps the shard's count of what the decoder
    /// holds for it.
    fn follow_progress(&mut self, was_in_progress: bool, completed: bool) {
        let started = &self.conn.message_started_ns;
        if !self.machine.in_progress() {
            started.set(0);
        } else if completed || !was_in_progress {
            started.set(clock::now_ns());
        }
        self.recount(self.machine.held_bytes() as u64);
    }

    /// Sets what the shard's count of unfinished-message bytes holds for
    /// this connection.
    fn recount(&mut self, held: u64) {
        let total = &self.shard.stats.unfinished_bytes;
        total.set(total.get() + held - std::mem::replace(&mut self.counted, held));
    }
}

impl Drop for Reader {
    /// What the decoder held no longer counts against the shard.
    fn drop(&mut self) {
        self.recount(0);
    }
}

/// Stops deliveries, lets the flush pass write what is queued and the close
/// frame, then closes: gracefully (waiting for the client's side, reading
/// and discarding what it still sends) when the server closed, so the close
/// frame is not destroyed by a reset — also after an oversized or malformed
/// frame whose rest is still unread.
async fn teardown(shard: &Shard, conn: &Conn) {
    shard.unregister_subscriptions(conn);
    // A socket that took nothing for send-timeout will not take the rest.
    let stalled = conn.outbox.closing() == Some(CloseReason::SendTimeout);
    let flushed = !stalled
        && glommio::timer::timeout(CLOSE_FLUSH_TIMEOUT, async {
            conn.outbox.written_out().await;
            Ok(())
        })
        .await
        .is_ok();
    conn.outbox.cancel_blocked();
    let Some(stream) = conn.outbox.stream() else {
        return;
    };
    let server_closed = conn
        .outbox
        .closing()
        .is_some_and(|r| r != CloseReason::Normal);
    if stalled {
        stream.reset_on_close();
    } else if flushed && server_closed {
        stream.close_gracefully().await;
    } else {
        stream.finish().await;
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::{config::Config, mesh::PeerLinks};

    /// Memory per idle connection is a budget (docs/design.md): the session
    /// future lives as long as the connection, so its size is guarded here.
    #[test]
    fn idle_session_future_stays_small() {
        crate::sync::on_test_executor(async {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let _client = std::net::TcpStream::connect(addr).unwrap();
            let stream = crate::stream::SharedStream::new(listener.accept().await.unwrap());
            let config = Config::default();
            let (links, _) = PeerLinks::new(0, 1, crate::mesh::new_congestion(1), Rc::default());
            let parts = crate::shard::ShardParts::alone(links, 1);
            let shard = Rc::new(Shard::new(0, None, config, parts));
            let conn = shard.register(stream, crate::conn::codec::Codec::JSON, false);
            let session = serve(
                shard,
                Vec::new(),
                Session::Json {
                    subscribe: Vec::new(),
                    batch: false,
                    delta: false,
                },
                conn,
            );
            let size = std::mem::size_of_val(&session);
            assert!(size <= 224, "session future grew to {size} bytes");
        });
    }
}
