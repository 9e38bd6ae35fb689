//! A WebSocket session after the 101: the connection is registered with its
//! shard (whose flush pass writes its queue), subscribes what the URL asked for, then
//! reads the client's bytes into the shard's scratch buffer, decodes them
//! with the frame codec (`shardcast-wire`) and acts on what they say — JSON
//! ops on `/ws`, verbatim publication in raw rooms, pings answered, the
//! close handshake — until either side closes. Teardown (unsubscribe, free
//! the slot) runs from a guard, so it happens even if the task is cancelled
//! or panics.

use std::{
    future::Future,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use shardcast_wire::{DecodeError, Decoder, Event, Limits};

use super::{http::Session, permit::Permit, Conn};
use crate::close::CloseReason;
use crate::{
    channel::Access,
    clock, frame,
    mesh::Reply,
    protocol::{self, ClientOp, ErrorCode, OpError, PayloadKind, Since},
    publication::{Payload, Skip},
    security::{
        rate::Verdict,
        token::{self, TokenError},
    },
    shard::Shard,
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
pub fn serve(
    shard: Rc<Shard>,
    leftover: Vec<u8>,
    session: Session,
    conn: Rc<Conn>,
) -> impl Future<Output = ()> {
    let registration = Registration {
        shard: shard.clone(),
        conn: conn.clone(),
    };
    let (room, skip, room_may_publish) = start(&shard, &conn, session);
    // Shutdown began during the upgrade, after it closed every connection.
    if shard.is_shutting_down() {
        conn.outbox.close(CloseReason::Shutdown);
    }
    let limits = Limits {
        max_message: shard.config.max_message_bytes,
        rsv1: false,
    };
    let mut reader = Reader {
        shard,
        conn,
        decoder: Decoder::new(limits),
        backlog: leftover,
        room,
        skip,
        room_may_publish,
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

/// Subscribes what the URL asked for. Returns the raw room's channel (if a
/// room), who to leave out of this connection's own publications
/// (`?echo=0`), and whether the connection may publish in its room.
fn start(shard: &Shard, conn: &Rc<Conn>, session: Session) -> (Option<Bytes>, Option<Skip>, bool) {
    // A room member's permissions cannot change (a raw room has no `auth`
    // frame), so whether it may publish is decided once.
    let room_may_publish = match &session {
        Session::Room { channel, .. } => {
            conn.permit().check(Access::Publish, channel, None).is_ok()
        }
        Session::Json { .. } => true,
    };
    let (room, echo) = match session {
        Session::Json { subscribe } => {
            for name in subscribe {
                if let Err(error) = shard.subscribe(conn, &name, None, None) {
                    conn.send(protocol::encode_err(&error));
                }
            }
            (None, true)
        }
        Session::Room {
            channel,
            echo,
            since,
        } => {
            let since = since.map(|(seq, epoch)| Since {
                seq,
                epoch: epoch.into(),
            });
            if let Err(error) = shard.subscribe(conn, &channel, None, since) {
                conn.send(protocol::encode_err(&error));
            }
            (Some(Bytes::from(channel.into_bytes())), echo)
        }
    };
    let skip = (!echo).then_some(Skip {
        shard: shard.id as u16,
        conn: conn.id,
    });
    (room, skip, room_may_publish)
}

/// The read loop of a session, written as a future by hand so that an idle
/// connection holds only these fields. It reads into the shard's scratch
/// buffer and decodes in place with the frame codec; only what the decoder
/// keeps (a frame or message split over reads) stays with the connection.
/// Ends when the connection starts closing, from either side.
struct Reader {
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    decoder: Decoder,
    /// Bytes read and not yet decoded: what came with the HTTP head, or the
    /// rest of a read left while waiting for room towards an owner. Empty
    /// (no allocation) otherwise.
    backlog: Vec<u8>,
    /// The channel of a raw room; `None` for the JSON protocol.
    room: Option<Bytes>,
    skip: Option<Skip>,
    /// Whether the token allows publishing to the raw room.
    room_may_publish: bool,
    /// Backpressure: waiting for room in the queue to a channel's owner.
    waiting: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// What the decoder holds, as last added to the shard's count of
    /// unfinished-message bytes.
    counted: u64,
}

/// What decoding a batch of bytes led to.
enum Decoded {
    /// All of them handled.
    Done,
    /// A publication found the way to its owner congested: the rest waits.
    Congested(usize),
    /// The connection is closing.
    Closed,
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
                let used = this.decode_all(&mut backlog);
                if this.after_decode(used, &backlog).is_ready() {
                    return Poll::Ready(());
                }
                continue;
            }
            let shard = this.shard.clone();
            let mut buf = shard.read_scratch().borrow_mut();
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
            let used = this.decode_all(&mut buf[..n]);
            if this.after_decode(used, &buf[..n]).is_ready() {
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
    /// Decodes and handles `bytes` (unmasking them in place). Returns how
    /// many were used and why it stopped.
    fn decode_all(&mut self, bytes: &mut [u8]) -> (usize, Decoded) {
        let was_in_progress = self.decoder.in_progress();
        let mut completed = false;
        let mut at = 0;
        let handler = Handler {
            shard: &self.shard,
            conn: &self.conn,
            room: &self.room,
            skip: self.skip,
            room_may_publish: self.room_may_publish,
        };
        let outcome = loop {
            if at == bytes.len() {
                break Decoded::Done;
            }
            let decoded = match self.decoder.decode(&mut bytes[at..]) {
                Ok(decoded) => decoded,
                Err(error) => {
                    handler.conn.outbox.close(match error {
                        DecodeError::TooLarge => CloseReason::TooLarge,
                        DecodeError::InvalidUtf8 => CloseReason::BadUtf8,
                        _ => CloseReason::Protocol,
                    });
                    break Decoded::Closed;
                }
            };
            at += decoded.consumed;
            let Some(event) = decoded.event else {
                continue;
            };
            // A control frame between fragments does not end the message.
            completed |= matches!(
                event,
                Event::Text(_) | Event::Binary(_) | Event::Compressed { .. }
            );
            handler.conn.heartbeat.seen(handler.shard.now_ms());
            let congested = handler.handle(event);
            if handler.conn.outbox.closing().is_some() {
                break Decoded::Closed;
            }
            if let Some(peer) = congested {
                break Decoded::Congested(peer);
            }
        };
        self.follow_progress(was_in_progress, completed);
        (at, outcome)
    }

    /// After a batch: keeps what was not used (while waiting), starts the
    /// wait. Ready when the connection is closing.
    fn after_decode(&mut self, (used, outcome): (usize, Decoded), bytes: &[u8]) -> Poll<()> {
        match outcome {
            Decoded::Closed => Poll::Ready(()),
            Decoded::Done => Poll::Pending,
            Decoded::Congested(peer) => {
                // Read nothing more from this publisher until the queue to
                // the channel's owner drains. Rare, so boxed.
                self.backlog = bytes[used..].to_vec();
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
        if !self.decoder.in_progress() {
            started.set(0);
        } else if completed || !was_in_progress {
            started.set(clock::now_ns());
        }
        self.recount(self.decoder.held_bytes() as u64);
    }

    /// Sets what the shard's count of unfinished-message bytes holds for
    /// this connection.
    fn recount(&mut self, held: u64) {
        let total = &self.shard.stats.unfinished_bytes;
        total.set(total.get() + held - std::mem::replace(&mut self.counted, held));
    }
}

/// What handling one event needs of the session: all of the reader but the
/// decoder, which the event borrows.
struct Handler<'s, 'a> {
    shard: &'a Shard,
    conn: &'a Rc<Conn>,
    room: &'s Option<Bytes>,
    skip: Option<Skip>,
    room_may_publish: bool,
}

impl Drop for Reader {
    /// What the decoder held no longer counts against the shard.
    fn drop(&mut self) {
        self.recount(0);
    }
}

impl Handler<'_, '_> {
    /// Whether a raw-room member may publish this message: the token must
    /// allow publishing to the room (else the connection closes: a raw room
    /// has no way to say `err`), and the rate limit must have room (else the
    /// message is dropped, and sustained abuse closes the connection).
    fn may_publish_in_room(&self) -> bool {
        let conn = self.conn;
        if !self.room_may_publish {
            bump(&self.shard.stats.forbidden, 1);
            conn.outbox.close(CloseReason::Forbidden);
            return false;
        }
        match rate_verdict(self.shard, conn) {
            Verdict::Allowed => true,
            Verdict::Refused => false,
            Verdict::Abusive => {
                conn.outbox.close(CloseReason::RateLimited);
                false
            }
        }
    }

    /// Publishes a raw-room message, if the member may.
    fn publish_in_room(&self, channel: &Bytes, kind: PayloadKind, bytes: &[u8]) -> Option<usize> {
        if !self.may_publish_in_room() {
            return None;
        }
        let payload = Payload::copy_of(kind, bytes);
        self.shard
            .publish(channel.clone(), payload, self.skip, Reply::None)
    }

    /// Acts on one thing the client said. Returns the congested owner shard
    /// of a publication, if any (the reader then waits for it).
    fn handle(&self, event: Event<'_>) -> Option<usize> {
        let (shard, conn) = (self.shard, self.conn);
        match event {
            Event::Text(text) => match self.room {
                Some(channel) => self.publish_in_room(channel, PayloadKind::Text, text.as_bytes()),
                None => handle_op(shard, conn, text),
            },
            Event::Binary(bytes) => match self.room {
                Some(channel) => self.publish_in_room(channel, PayloadKind::Binary, bytes),
                None if matches!(*conn.permit(), Permit::AwaitingAuth) => {
                    refuse_before_auth(shard, conn, None);
                    None
                }
                None => {
                    conn.send(protocol::encode_err(&OpError::new(
                        ErrorCode::BadJson,
                        "binary frames are not part of the JSON protocol; use a raw room (/ws/<channel>)",
                        None,
                    )));
                    None
                }
            },
            Event::Ping(payload) => {
                conn.send(frame::encode(frame::OpCode::Pong, payload));
                None
            }
            Event::Pong(_) => None,
            Event::Close(close) => {
                conn.outbox.close_in_reply(close.map(|(code, _)| code));
                None
            }
            // No extension sets RSV1 yet (the decoder refuses it): never
            // seen until compression is negotiated.
            Event::Compressed { .. } => {
                conn.outbox.close(CloseReason::Protocol);
                None
            }
        }
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

/// Executes one JSON-protocol text frame. Returns the peer shard whose queue
/// is congested after a publication (the reader then waits for it).
fn handle_op(shard: &Shard, conn: &Rc<Conn>, text: &str) -> Option<usize> {
    let awaiting_auth = matches!(*conn.permit(), Permit::AwaitingAuth);
    let op = match protocol::parse_client_op(text) {
        Ok(op) => op,
        Err(error) if awaiting_auth => {
            refuse_before_auth(shard, conn, error.id);
            return None;
        }
        Err(error) => {
            conn.send(protocol::encode_err(&error));
            return None;
        }
    };
    let mut congested = None;
    if awaiting_auth && !matches!(op, ClientOp::Auth { .. }) {
        refuse_before_auth(shard, conn, op_id(&op));
        return None;
    }
    let result = match op {
        ClientOp::Auth { token, id } => {
            authenticate(shard, conn, &token, id);
            Ok(())
        }
        ClientOp::Sub { ch, id, since } => permitted(shard, conn, Access::Subscribe, &ch, id)
            .and_then(|()| shard.subscribe(conn, &ch, id, since)),
        ClientOp::Unsub { ch, id } => shard.unsubscribe(conn, &ch, id),
        ClientOp::Ping { id } => {
            conn.send(protocol::encode_pong(id));
            Ok(())
        }
        ClientOp::Pub { ch, data, id } => {
            if shard.is_shutting_down() {
                Err(OpError::new(
                    ErrorCode::ShuttingDown,
                    "server is shutting down",
                    id,
                ))
            } else if let Err(refused) = permitted(shard, conn, Access::Publish, &ch, id) {
                Err(refused)
            } else if let Some(refused) = over_rate(shard, conn, id) {
                Err(refused)
            } else {
                // Copies, not slices of the frame: what is published outlives
                // the read (history keeps it for minutes), and a slice would
                // pin the whole read buffer the frame came in.
                let ch = Bytes::copy_from_slice(ch.as_bytes());
                let payload = Payload::copy_of(PayloadKind::Json, data.as_bytes());
                let reply = match id {
                    Some(id) => Reply::Ack {
                        conn: conn.id,
                        id: id.into(),
                    },
                    None => Reply::None,
                };
                congested = shard.publish(ch, payload, None, reply);
                Ok(())
            }
        }
    };
    if let Err(error) = result {
        conn.send(protocol::encode_err(&error));
    }
    congested
}

/// Anything but a valid `auth` from a connection that must authenticate
/// first: `err unauthorized`, then close 4001.
fn refuse_before_auth(shard: &Shard, conn: &Conn, id: Option<&str>) {
    refuse_auth(
        shard,
        conn,
        "the first message must be {\"op\":\"auth\",\"token\":...}".into(),
        id,
        CloseReason::Unauthorized,
    );
}

/// Counts an authentication failure, says why (`err unauthorized`) and
/// closes the connection with `reason` (4001).
fn refuse_auth(
    shard: &Shard,
    conn: &Conn,
    msg: std::borrow::Cow<'static, str>,
    id: Option<&str>,
    reason: CloseReason,
) {
    bump(&shard.stats.auth_failures, 1);
    conn.send(protocol::encode_err(&OpError::new(
        ErrorCode::Unauthorized,
        msg,
        id,
    )));
    conn.outbox.close(reason);
}

/// The `id` of any operation.
fn op_id<'a>(op: &ClientOp<'a>) -> Option<&'a str> {
    match op {
        ClientOp::Sub { id, .. }
        | ClientOp::Unsub { id, .. }
        | ClientOp::Pub { id, .. }
        | ClientOp::Ping { id }
        | ClientOp::Auth { id, .. } => *id,
    }
}

/// Checks the connection's permit for `access` to `ch`, counting refusals.
fn permitted<'a>(
    shard: &Shard,
    conn: &Conn,
    access: Access,
    ch: &str,
    id: Option<&'a str>,
) -> Result<(), OpError<'a>> {
    let checked = conn.permit().check(access, ch, id);
    if checked.is_err() {
        bump(&shard.stats.forbidden, 1);
    }
    checked
}

/// What the publish rate limit says about one more publication (always
/// allowed without a limit). Refusals are counted.
fn rate_verdict(shard: &Shard, conn: &Conn) -> Verdict {
    let Some(limit) = shard.security.publish_limit else {
        return Verdict::Allowed;
    };
    let Some(verdict) = conn.take_publish_token(limit, shard.now_ms()) else {
        return Verdict::Allowed;
    };
    if verdict != Verdict::Allowed {
        bump(&shard.stats.rate_limited, 1);
    }
    verdict
}

/// `Some(err)` when a JSON publication is over the rate limit; sustained
/// abuse also closes the connection with 1008.
fn over_rate<'a>(shard: &Shard, conn: &Conn, id: Option<&'a str>) -> Option<OpError<'a>> {
    let verdict = rate_verdict(shard, conn);
    if verdict == Verdict::Abusive {
        conn.outbox.close(CloseReason::RateLimited);
    }
    (verdict != Verdict::Allowed).then(|| {
        OpError::new(
            ErrorCode::RateLimited,
            "over the publish rate limit; the publication was dropped",
            id,
        )
    })
}

/// `{"op":"auth"}`: verifies the token and replaces the connection's permit
/// (a refresh must be for the same user). Subscriptions the new token no
/// longer allows end with an `err forbidden` each. A refused token ends the
/// connection with 4001 after an `err unauthorized` that says why.
fn authenticate(shard: &Shard, conn: &Conn, token_text: &str, id: Option<&str>) {
    let verifier = match (&shard.security.verifier, &*conn.permit()) {
        (Some(verifier), Permit::Token(_) | Permit::AwaitingAuth) => verifier,
        // Anonymous mode or the admin listener: nothing to check.
        _ => {
            if let Some(id) = id {
                conn.send(protocol::encode_ack(id, None));
            }
            return;
        }
    };
    let refuse = |msg: String, reason| refuse_auth(shard, conn, msg.into(), id, reason);
    let grant = match verifier.verify(token_text, token::unix_now()) {
        Ok(grant) => grant,
        Err(error) => {
            let reason = match error {
                TokenError::Expired => CloseReason::TokenExpired,
                _ => CloseReason::Unauthorized,
            };
            return refuse(error.to_string(), reason);
        }
    };
    if conn
        .permit()
        .user()
        .is_some_and(|user| user != &*grant.user)
    {
        return refuse(
            "a refreshed token must be for the same user (sub)".into(),
            CloseReason::Unauthorized,
        );
    }
    let deadline = token::deadline_ms(shard.now_ms(), grant.expires_at, token::unix_now());
    let grant = Rc::new(grant);
    conn.set_permit(Permit::Token(grant.clone()), deadline);
    for ch in conn.subscribed_channels() {
        if !grant.allows(Access::Subscribe, &ch) {
            let _ = shard.unsubscribe(conn, &ch, None);
            conn.send(protocol::encode_err(&OpError::new(
                ErrorCode::Forbidden,
                format!("subscription to {ch:?} ended: the refreshed token does not allow it"),
                None,
            )));
        }
    }
    if let Some(id) = id {
        conn.send(protocol::encode_ack(id, None));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::AtomicUsize, Arc};

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
            let stream = super::super::stream::SharedStream::new(listener.accept().await.unwrap());
            let config = Config::default();
            let (links, _) = PeerLinks::new(0, 1, crate::mesh::new_congestion(1), Rc::default());
            let shard = Rc::new(Shard::new(
                0,
                None,
                config,
                links,
                Arc::new(AtomicUsize::new(0)),
                1,
                Arc::default(),
            ));
            let conn = shard.register(stream, crate::conn::codec::Codec::Json);
            let session = serve(
                shard,
                Vec::new(),
                Session::Json {
                    subscribe: Vec::new(),
                },
                conn,
            );
            let size = std::mem::size_of_val(&session);
            assert!(size <= 224, "session future grew to {size} bytes");
        });
    }
}
