//! The protocol of one WebSocket session, without I/O: a [`Connection`] is
//! fed the bytes a read returned, decodes them with the frame codec
//! (`shardcast-wire`) and acts on what they say — the JSON protocol's ops,
//! raw-room publications, the auth state machine (awaiting a token,
//! authenticated, refreshed; expiry is the sweep's), the publish rate limit,
//! pings, the close handshake. Whatever it needs of the world goes through
//! [`Host`]: queue a frame, close, subscribe, publish, the permit and the
//! clocks. The session task (`shard/session.rs`) is the host on a shard and does the
//! reading; the tests here are a host of their own, without sockets or an
//! executor (quinn-proto's `Connection` and mini-redis's parse/apply split
//! are the models).

use std::{borrow::Cow, rc::Rc};

use bytes::Bytes;
use shardcast_wire::{DecodeError, Decoder, Event, Limits};

use super::{
    codec::{Codec, Protocol},
    deflate::InflateError,
    http::Session,
    msgpack,
    permit::Permit,
};
use crate::{
    channel::{Access, ChannelName},
    close::CloseReason,
    frame,
    protocol::{
        self, ClientOp, ErrorCode, OpError, PayloadKind, PresenceAsk, RequestId, RequestIdBuf,
        Since, SubOptions,
    },
    publication::{Payload, Skip},
    security::{
        rate::Verdict,
        token::{self, TokenError, Verifier},
    },
};

/// What a connection asks of the shard it runs on.
pub(crate) trait Host {
    /// The shard's clock, in milliseconds (deadlines).
    fn now_ms(&self) -> u64;
    /// Unix time in seconds (token expiry).
    fn unix_now(&self) -> u64;
    /// The verifier of tokens, when tokens are required.
    fn verifier(&self) -> Option<&Verifier>;
    /// How the connection's frames are written.
    fn codec(&self) -> Codec;
    /// Queues a frame for the client; a full queue closes the connection as
    /// a slow consumer.
    fn send(&mut self, frame: Bytes);
    /// Inflates a whole compressed message (permessage-deflate) with the
    /// shard's inflater, at most `limit` bytes of it; the buffer goes back
    /// through [`Host::recycle`].
    fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError>;
    fn recycle(&mut self, inflated: Vec<u8>);
    /// Starts closing; the first reason wins.
    fn close(&mut self, reason: CloseReason);
    /// Answers the client's close frame, echoing its code.
    fn close_in_reply(&mut self, code: Option<u16>);
    /// Whether the connection is closing, for whatever reason, from wherever.
    fn is_closing(&self) -> bool;
    /// The client sent something: it is alive.
    fn heard(&mut self);
    /// Counts a refusal.
    fn refused(&mut self, refusal: Refusal);
    fn is_shutting_down(&self) -> bool;
    /// What the connection may do now.
    fn permit(&self) -> Permit;
    /// Replaces it; the connection must renew by `deadline_ms` (shard clock;
    /// `u64::MAX`: never).
    fn set_permit(&mut self, permit: Permit, deadline_ms: u64);
    /// One publication's worth of the publish rate limit (always allowed
    /// without a limit).
    fn take_publish_token(&mut self) -> Verdict;
    /// One channel operation's worth (`sub`, `unsub`, `presence`,
    /// `occupancy`) of `--subscribe-rate` (always allowed without a limit).
    fn take_channel_op_token(&mut self) -> Verdict;
    /// Subscribes the connection to `ch` (acknowledged to `id`, resuming
    /// after `since`, as `options` say).
    fn subscribe<'a>(
        &mut self,
        ch: &str,
        id: Option<RequestId<'a>>,
        since: Option<Since<'_>>,
        options: SubOptions,
    ) -> Result<(), OpError<'a>>;
    /// Answers `presence` or `occupancy` of `ch` to `id` (later: the
    /// channel's owner shard holds its members).
    fn presence<'a>(
        &mut self,
        ch: &str,
        id: Option<RequestId<'a>>,
        ask: PresenceAsk,
    ) -> Result<(), OpError<'a>>;
    fn unsubscribe<'a>(&mut self, ch: &str, id: Option<RequestId<'a>>) -> Result<(), OpError<'a>>;
    /// The channels the connection is subscribed to.
    fn subscribed_channels(&self) -> Vec<Rc<str>>;
    /// Publishes `payload` on `ch`, leaving out `skip`; the `seq` it gets is
    /// acknowledged to `ack_id`. Under `idempotency_key` (a `pub`'s, as the
    /// client sent it), a retry within the window is answered with the
    /// first one's `seq` and not published again. Returns the owner shard
    /// whose queue is congested, if any (the host then reads no more until
    /// it drains).
    fn publish(
        &mut self,
        ch: ChannelName,
        payload: Payload,
        skip: Option<Skip>,
        ack_id: Option<RequestId<'_>>,
        idempotency_key: Option<&str>,
    ) -> Option<usize>;
    /// This connection, as a publication's `skip` names it.
    fn as_skip(&self) -> Skip;
}

/// A refusal the host counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A token refused, or an op before `auth`.
    Unauthorized,
    /// Outside the token's permissions.
    Forbidden,
    /// Over the publish rate limit.
    RateLimited,
}

/// Why [`Connection::receive`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Every byte handled.
    Done,
    /// A publication found the way to its owner shard congested: the rest
    /// of the bytes wait until it drains.
    Congested(usize),
    /// The connection is closing.
    Closed,
}

/// What one call of [`Connection::receive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    /// Bytes used (all of them unless the connection is closing or
    /// congested).
    pub used: usize,
    pub stop: Stop,
    /// Whether a message was completed (a control frame between fragments
    /// completes none).
    pub completed: bool,
}

/// A raw room: its channel, and what its member may do.
struct Room {
    channel: ChannelName,
    /// The member itself, when it connected with `?echo=0`.
    skip: Option<Skip>,
    /// Whether the token allows publishing in the room (decided once: a room
    /// has no `auth` frame, so its permissions cannot change).
    may_publish: bool,
}

/// The protocol state of one WebSocket session.
pub(crate) struct Connection {
    decoder: Decoder,
    /// `None`: the JSON protocol. Boxed: most connections are not rooms.
    room: Option<Box<Room>>,
}

impl Connection {
    /// Opens the session the upgrade asked for, subscribing what the URL
    /// named (a refused subscription is answered with an `err`).
    pub(crate) fn open(session: Session, max_message: usize, host: &mut impl Host) -> Self {
        let limits = Limits {
            max_message,
            rsv1: host.codec().inflates(),
        };
        let room = match session {
            Session::Json {
                subscribe, delta, ..
            } => {
                let options = SubOptions {
                    delta,
                    join_leave: false,
                };
                for name in subscribe {
                    if let Err(error) = host.subscribe(&name, None, None, options) {
                        host.send(host.codec().err(&error));
                    }
                }
                None
            }
            Session::Room {
                channel,
                echo,
                since,
            } => {
                let may_publish = host.permit().check(Access::Publish, &channel, None).is_ok();
                let since = since.map(|(seq, epoch)| Since {
                    seq,
                    epoch: epoch.into(),
                });
                if let Err(error) = host.subscribe(&channel, None, since, SubOptions::default()) {
                    host.send(host.codec().err(&error));
                }
                Some(Box::new(Room {
                    channel: ChannelName::of_valid(&channel),
                    skip: (!echo).then(|| host.as_skip()),
                    may_publish,
                }))
            }
        };
        Connection {
            decoder: Decoder::new(limits),
            room,
        }
    }

    /// Whether a message is begun and not finished.
    pub(crate) fn in_progress(&self) -> bool {
        self.decoder.in_progress()
    }

    /// Bytes the decoder holds for a message or frame split over reads.
    pub(crate) fn held_bytes(&self) -> usize {
        self.decoder.held_bytes()
    }

    /// Decodes `bytes` (unmasking them in place) and acts on every message
    /// in them, until they are used up, the connection closes, or a
    /// publication finds its owner congested.
    pub(crate) fn receive(&mut self, bytes: &mut [u8], host: &mut impl Host) -> Receipt {
        let mut receipt = Receipt {
            used: 0,
            stop: Stop::Done,
            completed: false,
        };
        // The limit the decoder checks on what arrives applies to inflated
        // messages too.
        let max_message = self.decoder.limits().max_message;
        while receipt.used < bytes.len() {
            let decoded = match self.decoder.decode(&mut bytes[receipt.used..]) {
                Ok(decoded) => decoded,
                Err(error) => {
                    host.close(match error {
                        DecodeError::TooLarge => CloseReason::TooLarge,
                        DecodeError::InvalidUtf8 => CloseReason::BadUtf8,
                        _ => CloseReason::Protocol,
                    });
                    receipt.stop = Stop::Closed;
                    return receipt;
                }
            };
            receipt.used += decoded.consumed;
            let Some(event) = decoded.event else {
                continue;
            };
            receipt.completed |= matches!(
                event,
                Event::Text(_) | Event::Binary(_) | Event::Compressed { .. }
            );
            host.heard();
            let congested = match event {
                Event::Compressed { text, payload } => {
                    inflate_and_act(self.room.as_deref(), text, payload, max_message, host)
                }
                event => act(self.room.as_deref(), event, host),
            };
            if host.is_closing() {
                receipt.stop = Stop::Closed;
                return receipt;
            }
            if let Some(peer) = congested {
                receipt.stop = Stop::Congested(peer);
                return receipt;
            }
        }
        receipt
    }
}

/// Acts on one thing the client said. Returns the congested owner shard of
/// a publication, if any.
fn act(room: Option<&Room>, event: Event<'_>, host: &mut impl Host) -> Option<usize> {
    match event {
        Event::Text(text) => match room {
            Some(room) => publish_in_room(room, PayloadKind::Text, text.as_bytes(), host),
            None if host.codec().protocol == Protocol::MsgPack => {
                host.send(host.codec().err(&OpError::new(
                    ErrorCode::BadJson,
                    "text frames are not part of the MessagePack protocol",
                    None,
                )));
                None
            }
            None => handle_op(text, None, host),
        },
        Event::Binary(bytes) => match room {
            Some(room) => publish_in_room(room, PayloadKind::Binary, bytes, host),
            None if host.codec().protocol == Protocol::MsgPack => handle_msgpack_op(bytes, host),
            None if matches!(host.permit(), Permit::AwaitingAuth) => {
                refuse_before_auth(None, host);
                None
            }
            None => {
                host.send(host.codec().err(&OpError::new(
                    ErrorCode::BadJson,
                    "binary frames are not part of the JSON protocol; use a raw room (/ws/<channel>)",
                    None,
                )));
                None
            }
        },
        Event::Ping(payload) => {
            host.send(frame::encode(frame::OpCode::Pong, payload));
            None
        }
        Event::Pong(_) => None,
        Event::Close(close) => {
            host.close_in_reply(close.map(|(code, _)| code));
            None
        }
        // Inflated first (`inflate_and_act`).
        Event::Compressed { .. } => {
            host.close(CloseReason::Protocol);
            None
        }
    }
}

/// Inflates a compressed message (the decoder allows RSV1 only once
/// permessage-deflate was negotiated) and acts on it as if it had come
/// uncompressed. Over `max_message` once inflated closes with 1009, a
/// stream that does not inflate with 1007, as invalid text does.
fn inflate_and_act(
    room: Option<&Room>,
    text: bool,
    payload: &[u8],
    max_message: usize,
    host: &mut impl Host,
) -> Option<usize> {
    let inflated = match host.inflate(payload, max_message) {
        Ok(inflated) => inflated,
        Err(error) => {
            host.close(match error {
                InflateError::TooLarge => CloseReason::TooLarge,
                InflateError::Corrupt => CloseReason::BadCompression,
            });
            return None;
        }
    };
    let congested = match (text, std::str::from_utf8(&inflated)) {
        (true, Ok(text)) => act(room, Event::Text(text), host),
        (true, Err(_)) => {
            host.close(CloseReason::BadUtf8);
            None
        }
        (false, _) => act(room, Event::Binary(&inflated), host),
    };
    host.recycle(inflated);
    congested
}

/// Publishes a raw-room message, if the member may: the token must allow
/// publishing to the room (else the connection closes: a raw room has no
/// way to say `err`), and the rate limit must have room (else the message
/// is dropped, and sustained abuse closes the connection).
fn publish_in_room(
    room: &Room,
    kind: PayloadKind,
    bytes: &[u8],
    host: &mut impl Host,
) -> Option<usize> {
    if !room.may_publish {
        host.refused(Refusal::Forbidden);
        host.close(CloseReason::Forbidden);
        return None;
    }
    match rate_verdict(host) {
        Verdict::Allowed => {}
        Verdict::Refused => return None,
        Verdict::Abusive => {
            host.close(CloseReason::RateLimited);
            return None;
        }
    }
    // A copy, not a slice of the frame: history keeps it for minutes, and a
    // slice would pin the whole read buffer the frame came in.
    let payload = Payload::copy_of(kind, bytes);
    // No envelope, so no idempotency key: a room frame is published once
    // per frame sent.
    host.publish(room.channel.clone(), payload, room.skip, None, None)
}

/// Executes one JSON-protocol text frame. Returns the congested owner
/// shard of a publication, if any.
/// Executes one MessagePack op: the same op as JSON (see `conn/msgpack.rs`),
/// with binary data when the client sent `bin`.
fn handle_msgpack_op(bytes: &[u8], host: &mut impl Host) -> Option<usize> {
    match msgpack::parse_op(bytes) {
        Ok(msgpack::Op::Json(text)) => handle_op(&text, None, host),
        Ok(msgpack::Op::BinaryPub { op, data }) => handle_op(&op, Some(&data), host),
        Err(refused) if matches!(host.permit(), Permit::AwaitingAuth) => {
            refuse_before_auth(refused.id.as_ref().map(RequestIdBuf::as_id), host);
            None
        }
        Err(refused) => {
            host.send(host.codec().err(&refused.error()));
            None
        }
    }
}

/// Executes one JSON-protocol op (`binary`: the data of a `pub` whose
/// `data` came as MessagePack `bin`, in place of its JSON `data`). Returns
/// the congested owner shard of a publication, if any.
fn handle_op(text: &str, binary: Option<&[u8]>, host: &mut impl Host) -> Option<usize> {
    let awaiting_auth = matches!(host.permit(), Permit::AwaitingAuth);
    let op = match protocol::parse_client_op(text) {
        Ok(op) => op,
        Err(error) if awaiting_auth => {
            refuse_before_auth(error.id, host);
            return None;
        }
        Err(error) => {
            host.send(host.codec().err(&error));
            return None;
        }
    };
    if awaiting_auth && !matches!(op, ClientOp::Auth { .. }) {
        refuse_before_auth(op_id(&op), host);
        return None;
    }
    let mut congested = None;
    let channel_op = match &op {
        ClientOp::Sub { id, .. }
        | ClientOp::Unsub { id, .. }
        | ClientOp::Presence { id, .. }
        | ClientOp::Occupancy { id, .. } => Some(*id),
        _ => None,
    };
    if let Some(id) = channel_op {
        let verdict = host.take_channel_op_token();
        if let Some(refused) = limited(verdict, "over the subscribe rate limit", id, host) {
            host.send(host.codec().err(&refused));
            return None;
        }
    }
    let result = match op {
        ClientOp::Auth { token, id } => {
            authenticate(&token, id, host);
            Ok(())
        }
        ClientOp::Sub {
            ch,
            id,
            since,
            delta,
            join_leave,
        } => permitted(Access::Subscribe, &ch, id, host)
            .and_then(|()| host.subscribe(&ch, id, since, SubOptions { delta, join_leave })),
        ClientOp::Presence {
            ch,
            id,
            cursor,
            limit,
        } => permitted(Access::Subscribe, &ch, id, host).and_then(|()| {
            let cursor = cursor.map(|c| c.as_ref().into());
            host.presence(&ch, id, PresenceAsk::Page { cursor, limit })
        }),
        ClientOp::Occupancy { ch, id } => permitted(Access::Subscribe, &ch, id, host)
            .and_then(|()| host.presence(&ch, id, PresenceAsk::Count)),
        ClientOp::Unsub { ch, id } => host.unsubscribe(&ch, id),
        ClientOp::Ping { id } => {
            host.send(host.codec().pong(id));
            Ok(())
        }
        ClientOp::Pub {
            ch,
            data,
            id,
            key,
            idempotency_key,
        } => {
            if host.is_shutting_down() {
                Err(OpError::new(
                    ErrorCode::ShuttingDown,
                    "server is shutting down",
                    id,
                ))
            } else if let Err(refused) = permitted(Access::Publish, &ch, id, host) {
                Err(refused)
            } else if let Some(refused) = over_rate(id, host) {
                Err(refused)
            } else {
                // Copies, not slices of the frame (see `publish_in_room`).
                let mut payload = match binary {
                    Some(bytes) => Payload::copy_of(PayloadKind::Binary, bytes),
                    None => Payload::json(data.as_bytes()),
                };
                if let Some(key) = key {
                    payload = payload.with_key(&key);
                }
                let ch = ChannelName::of_valid(&ch);
                congested = host.publish(ch, payload, None, id, idempotency_key.as_deref());
                Ok(())
            }
        }
    };
    if let Err(error) = result {
        host.send(host.codec().err(&error));
    }
    congested
}

/// Anything but a valid `auth` from a connection that must authenticate
/// first: `err unauthorized`, then close 4001.
fn refuse_before_auth(id: Option<RequestId<'_>>, host: &mut impl Host) {
    refuse_auth(
        "the first message must be {\"op\":\"auth\",\"token\":...}".into(),
        id,
        CloseReason::Unauthorized,
        host,
    );
}

/// Counts an authentication failure, says why (`err unauthorized`) and
/// closes the connection with `reason` (4001).
fn refuse_auth(
    msg: Cow<'static, str>,
    id: Option<RequestId<'_>>,
    reason: CloseReason,
    host: &mut impl Host,
) {
    host.refused(Refusal::Unauthorized);
    host.send(
        host.codec()
            .err(&OpError::new(ErrorCode::Unauthorized, msg, id)),
    );
    host.close(reason);
}

/// The `id` of any operation.
fn op_id<'a>(op: &ClientOp<'a>) -> Option<RequestId<'a>> {
    match op {
        ClientOp::Sub { id, .. }
        | ClientOp::Presence { id, .. }
        | ClientOp::Occupancy { id, .. }
        | ClientOp::Unsub { id, .. }
        | ClientOp::Pub { id, .. }
        | ClientOp::Ping { id }
        | ClientOp::Auth { id, .. } => *id,
    }
}

/// Checks the connection's permit for `access` to `ch`, counting refusals.
fn permitted<'a>(
    access: Access,
    ch: &str,
    id: Option<RequestId<'a>>,
    host: &mut impl Host,
) -> Result<(), OpError<'a>> {
    let checked = host.permit().check(access, ch, id);
    if checked.is_err() {
        host.refused(Refusal::Forbidden);
    }
    checked
}

/// What the publish rate limit says about one more publication; refusals
/// are counted.
fn rate_verdict(host: &mut impl Host) -> Verdict {
    let verdict = host.take_publish_token();
    if verdict != Verdict::Allowed {
        host.refused(Refusal::RateLimited);
    }
    verdict
}

/// `Some(err)` when a JSON publication is over the rate limit; sustained
/// abuse also closes the connection with 1008.
fn over_rate<'a>(id: Option<RequestId<'a>>, host: &mut impl Host) -> Option<OpError<'a>> {
    let verdict = host.take_publish_token();
    limited(
        verdict,
        "over the publish rate limit; the publication was dropped",
        id,
        host,
    )
}

/// `Some(err)` (saying `msg`) when a rate limit's `verdict` refuses an op;
/// the refusal is counted, and sustained abuse closes the connection with
/// 1008.
fn limited<'a>(
    verdict: Verdict,
    msg: &'static str,
    id: Option<RequestId<'a>>,
    host: &mut impl Host,
) -> Option<OpError<'a>> {
    if verdict == Verdict::Allowed {
        return None;
    }
    host.refused(Refusal::RateLimited);
    if verdict == Verdict::Abusive {
        host.close(CloseReason::RateLimited);
    }
    Some(OpError::new(ErrorCode::RateLimited, msg, id))
}

/// `{"op":"auth"}`: verifies the token and replaces the connection's permit
/// (a refresh must be for the same user). Subscriptions the new token no
/// longer allows end with an `err forbidden` each. A refused token ends the
/// connection with 4001 after an `err unauthorized` that says why.
fn authenticate(token_text: &str, id: Option<RequestId<'_>>, host: &mut impl Host) {
    let permit = host.permit();
    let checked = match (host.verifier(), &permit) {
        (Some(verifier), Permit::Token(_) | Permit::AwaitingAuth) => {
            Some(verifier.verify(token_text, host.unix_now()))
        }
        // Anonymous mode or the admin listener: nothing to check.
        _ => None,
    };
    let grant = match checked {
        None => {
            if let Some(id) = id {
                host.send(host.codec().ack(id, None));
            }
            return;
        }
        Some(Ok(grant)) => grant,
        Some(Err(error)) => {
            let reason = match error {
                TokenError::Expired => CloseReason::TokenExpired,
                _ => CloseReason::Unauthorized,
            };
            return refuse_auth(error.to_string().into(), id, reason, host);
        }
    };
    if permit.user().is_some_and(|user| user != &*grant.user) {
        return refuse_auth(
            "a refreshed token must be for the same user (sub)".into(),
            id,
            CloseReason::Unauthorized,
            host,
        );
    }
    let deadline = token::deadline_ms(host.now_ms(), grant.expires_at, host.unix_now());
    let grant = Rc::new(grant);
    host.set_permit(Permit::Token(grant.clone()), deadline);
    for ch in host.subscribed_channels() {
        if !grant.allows(Access::Subscribe, &ch) {
            let _ = host.unsubscribe(&ch, None);
            host.send(host.codec().err(&OpError::new(
                ErrorCode::Forbidden,
                format!("subscription to {ch:?} ended: the refreshed token does not allow it"),
                None,
            )));
        }
    }
    if let Some(id) = id {
        host.send(host.codec().ack(id, None));
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};
    use shardcast_wire::{encode::client_frame, OpCode};

    use super::*;
    use crate::publication::ConnRef;

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123";
    const NOW: u64 = 1_800_000_000;
    const MASK: [u8; 4] = [1, 2, 3, 4];

    /// A publication the connection made: channel, payload, skip, ack id.
    type Published = (String, Vec<u8>, Option<Skip>, Option<String>);

    /// A host that records what the connection asked of it.
    #[derive(Default)]
    struct Recorder {
        verifier: Option<Verifier>,
        permit: Option<Permit>,
        deadline_ms: u64,
        /// Frames sent.
        sent: Vec<Vec<u8>>,
        closed: Option<CloseReason>,
        closed_in_reply: Option<Option<u16>>,
        subscribed: Vec<String>,
        published: Vec<Published>,
        /// The idempotency key of each publication in `published`.
        idempotency_keys: Vec<Option<String>>,
        refusals: Vec<Refusal>,
        heard: usize,
        /// What `take_publish_token` answers.
        verdict: Option<Verdict>,
        channel_op_verdict: Option<Verdict>,
        /// What `publish` answers.
        congested: Option<usize>,
        /// permessage-deflate's window, 0: not negotiated.
        deflate_window: u8,
        inflater: crate::conn::deflate::Inflater,
    }

    impl Recorder {
        fn anonymous() -> Self {
            Recorder {
                permit: Some(Permit::Everything),
                ..Recorder::default()
            }
        }

        fn with_tokens(permit: Permit) -> Self {
            Recorder {
                verifier: Some(Verifier::new(Some(SECRET), None, None, None).unwrap()),
                permit: Some(permit),
                ..Recorder::default()
            }
        }

        /// The sent frames' JSON (each frame's header cut off).
        fn sent_json(&self) -> Vec<Value> {
            self.sent
                .iter()
                .map(|frame| {
                    let start = frame.iter().position(|b| *b == b'{').unwrap();
                    serde_json::from_slice(&frame[start..]).unwrap()
                })
                .collect()
        }
    }

    impl Host for Recorder {
        fn now_ms(&self) -> u64 {
            1_000
        }
        fn unix_now(&self) -> u64 {
            NOW
        }
        fn verifier(&self) -> Option<&Verifier> {
            self.verifier.as_ref()
        }
        fn codec(&self) -> Codec {
            Codec {
                deflate_window: self.deflate_window,
                ..Codec::JSON
            }
        }
        fn send(&mut self, frame: Bytes) {
            self.sent.push(frame.to_vec());
        }
        fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
            self.inflater.inflate(compressed, limit)
        }
        fn recycle(&mut self, inflated: Vec<u8>) {
            self.inflater.recycle(inflated);
        }
        fn close(&mut self, reason: CloseReason) {
            self.closed.get_or_insert(reason);
        }
        fn close_in_reply(&mut self, code: Option<u16>) {
            self.closed_in_reply = Some(code);
        }
        fn is_closing(&self) -> bool {
            self.closed.is_some() || self.closed_in_reply.is_some()
        }
        fn heard(&mut self) {
            self.heard += 1;
        }
        fn refused(&mut self, refusal: Refusal) {
            self.refusals.push(refusal);
        }
        fn is_shutting_down(&self) -> bool {
            false
        }
        fn permit(&self) -> Permit {
            self.permit.clone().unwrap_or(Permit::Everything)
        }
        fn set_permit(&mut self, permit: Permit, deadline_ms: u64) {
            self.permit = Some(permit);
            self.deadline_ms = deadline_ms;
        }
        fn take_publish_token(&mut self) -> Verdict {
            self.verdict.unwrap_or(Verdict::Allowed)
        }

        fn take_channel_op_token(&mut self) -> Verdict {
            self.channel_op_verdict.unwrap_or(Verdict::Allowed)
        }
        fn subscribe<'a>(
            &mut self,
            ch: &str,
            _id: Option<RequestId<'a>>,
            _since: Option<Since<'_>>,
            _options: SubOptions,
        ) -> Result<(), OpError<'a>> {
            self.subscribed.push(ch.into());
            Ok(())
        }
        fn presence<'a>(
            &mut self,
            _ch: &str,
            id: Option<RequestId<'a>>,
            _ask: PresenceAsk,
        ) -> Result<(), OpError<'a>> {
            Err(OpError::new(ErrorCode::NoPresence, "no", id))
        }
        fn unsubscribe<'a>(
            &mut self,
            ch: &str,
            id: Option<RequestId<'a>>,
        ) -> Result<(), OpError<'a>> {
            match self.subscribed.iter().position(|s| s == ch) {
                Some(at) => {
                    self.subscribed.remove(at);
                    Ok(())
                }
                None => Err(OpError::new(ErrorCode::NotSubscribed, "no", id)),
            }
        }
        fn subscribed_channels(&self) -> Vec<Rc<str>> {
            self.subscribed
                .iter()
                .map(|s| Rc::from(s.as_str()))
                .collect()
        }
        fn publish(
            &mut self,
            ch: ChannelName,
            payload: Payload,
            skip: Option<Skip>,
            ack_id: Option<RequestId<'_>>,
            idempotency_key: Option<&str>,
        ) -> Option<usize> {
            let ch = ch.as_str().to_owned();
            let ack = ack_id.map(|id| id.as_json().to_owned());
            self.published.push((ch, payload.bytes.to_vec(), skip, ack));
            self.idempotency_keys
                .push(idempotency_key.map(String::from));
            self.congested
        }
        fn as_skip(&self) -> Skip {
            Skip {
                shard: 3,
                conn: ConnRef { key: 7, gen: 1 },
            }
        }
    }

    fn json_session() -> Session {
        Session::Json {
            subscribe: Vec::new(),
            batch: false,
            delta: false,
        }
    }

    fn text(payload: &str) -> Vec<u8> {
        client_frame(OpCode::Text, payload.as_bytes(), false, MASK)
    }

    fn token(claims: Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    fn auth_frame(claims: Value) -> Vec<u8> {
        let op = json!({"op": "auth", "token": token(claims), "id": "a"});
        text(&op.to_string())
    }

    #[test]
    fn ops_in_one_read_are_each_acted_on() {
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let mut bytes = text(r#"{"op":"sub","ch":"news"}"#);
        bytes.extend(text(r#"{"op":"pub","ch":"news","data":{"x":1},"id":"p1"}"#));
        bytes.extend(text(r#"{"op":"ping","id":"q"}"#));
        let receipt = conn.receive(&mut bytes, &mut host);
        assert_eq!(receipt.stop, Stop::Done);
        assert_eq!(receipt.used, bytes.len());
        assert!(receipt.completed);
        assert_eq!(host.subscribed, ["news"]);
        let (ch, data, skip, ack) = &host.published[0];
        assert_eq!(
            (ch.as_str(), &data[..], *skip),
            ("news", &br#"{"x":1}"#[..], None)
        );
        assert_eq!(ack.as_deref(), Some(r#""p1""#), "the id as it was sent");
        assert_eq!(host.sent_json(), [json!({"op":"pong","id":"q"})]);
        assert_eq!(host.heard, 3);
    }

    #[test]
    fn the_url_subscriptions_are_made_at_open() {
        let mut host = Recorder::anonymous();
        let session = Session::Json {
            subscribe: vec!["a".into(), "b".into()],
            batch: false,
            delta: false,
        };
        Connection::open(session, 1 << 16, &mut host);
        assert_eq!(host.subscribed, ["a", "b"]);
    }

    #[test]
    fn a_message_split_over_reads_is_acted_on_once_complete() {
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let mut first = client_frame(OpCode::Text, br#"{"op":"sub","#, true, MASK);
        let mut rest = client_frame(OpCode::Continuation, br#""ch":"x"}"#, false, MASK);
        let (head, tail) = rest.split_at_mut(3);
        first.extend_from_slice(head);
        let receipt = conn.receive(&mut first, &mut host);
        assert!(!receipt.completed && conn.in_progress());
        assert!(host.subscribed.is_empty());
        let receipt = conn.receive(tail, &mut host);
        assert!(receipt.completed && !conn.in_progress());
        assert_eq!(host.subscribed, ["x"]);
    }

    #[test]
    fn pings_are_answered_and_a_close_is_echoed() {
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let mut bytes = client_frame(OpCode::Ping, b"hi", false, MASK);
        bytes.extend(client_frame(
            OpCode::Close,
            &4000u16.to_be_bytes(),
            false,
            MASK,
        ));
        bytes.extend(text(r#"{"op":"sub","ch":"after"}"#));
        let receipt = conn.receive(&mut bytes, &mut host);
        assert_eq!(receipt.stop, Stop::Closed);
        assert_eq!(host.sent[0], [0x8A, 2, b'h', b'i']);
        assert_eq!(host.closed_in_reply, Some(Some(4000)));
        assert!(
            host.subscribed.is_empty(),
            "nothing is read after the close"
        );
    }

    #[test]
    fn bad_frames_close_with_the_codes_the_rfc_names() {
        let cases: [(Vec<u8>, CloseReason); 3] = [
            (
                client_frame(OpCode::Text, b"\xff", false, MASK),
                CloseReason::BadUtf8,
            ),
            (
                client_frame(OpCode::Text, &[b'x'; 200], false, MASK),
                CloseReason::TooLarge,
            ),
            (vec![0x81, 0x01, b'x'], CloseReason::Protocol), // not masked
        ];
        for (mut bytes, reason) in cases {
            let mut host = Recorder::anonymous();
            let mut conn = Connection::open(json_session(), 125, &mut host);
            assert_eq!(conn.receive(&mut bytes, &mut host).stop, Stop::Closed);
            assert_eq!(host.closed, Some(reason));
        }
    }

    #[test]
    fn before_auth_only_auth_is_accepted() {
        let mut host = Recorder::with_tokens(Permit::AwaitingAuth);
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let mut bytes = text(r#"{"op":"sub","ch":"news","id":"s"}"#);
        assert_eq!(conn.receive(&mut bytes, &mut host).stop, Stop::Closed);
        assert_eq!(host.closed, Some(CloseReason::Unauthorized));
        assert_eq!(host.refusals, [Refusal::Unauthorized]);
        assert_eq!(host.sent_json()[0]["code"], "unauthorized");
        assert_eq!(host.sent_json()[0]["id"], "s");
        assert!(host.subscribed.is_empty());
    }

    #[test]
    fn auth_grants_the_token_and_a_refresh_keeps_only_what_it_allows() {
        let mut host = Recorder::with_tokens(Permit::AwaitingAuth);
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let claims = json!({"sub":"ann","exp":NOW + 60,"channels":{"sub":["a","b"]}});
        let mut bytes = auth_frame(claims);
        bytes.extend(text(r#"{"op":"sub","ch":"a"}"#));
        bytes.extend(text(r#"{"op":"sub","ch":"b"}"#));
        bytes.extend(text(r#"{"op":"sub","ch":"c","id":"no"}"#));
        assert_eq!(conn.receive(&mut bytes, &mut host).stop, Stop::Done);
        assert!(matches!(host.permit, Some(Permit::Token(_))));
        assert_eq!(host.deadline_ms, 1_000 + 60_000, "at the token's expiry");
        assert_eq!(host.subscribed, ["a", "b"]);
        let sent = host.sent_json();
        assert_eq!(sent[0], json!({"op":"ack","id":"a"}));
        assert_eq!(
            (sent[1]["code"].as_str(), sent[1]["id"].as_str()),
            (Some("forbidden"), Some("no"))
        );
        assert_eq!(host.refusals, [Refusal::Forbidden]);

        // The refresh drops "b": that subscription ends with an err.
        host.sent.clear();
        let claims = json!({"sub":"ann","exp":NOW + 120,"channels":{"sub":["a"]}});
        conn.receive(&mut auth_frame(claims), &mut host);
        assert_eq!(host.subscribed, ["a"]);
        let sent = host.sent_json();
        assert_eq!(sent[0]["code"], "forbidden");
        assert_eq!(sent[1], json!({"op":"ack","id":"a"}));
        assert_eq!(host.deadline_ms, 1_000 + 120_000);
        assert_eq!(host.closed, None);

        // Another user's token is refused: 4001.
        let claims = json!({"sub":"bob","exp":NOW + 60,"channels":{"sub":["a"]}});
        conn.receive(&mut auth_frame(claims), &mut host);
        assert_eq!(host.closed, Some(CloseReason::Unauthorized));
    }

    #[test]
    fn an_expired_token_closes_as_expired() {
        let mut host = Recorder::with_tokens(Permit::AwaitingAuth);
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let claims = json!({"sub":"ann","exp":NOW - 1,"channels":{"sub":["a"]}});
        conn.receive(&mut auth_frame(claims), &mut host);
        assert_eq!(host.closed, Some(CloseReason::TokenExpired));
        assert_eq!(host.refusals, [Refusal::Unauthorized]);
    }

    #[test]
    fn channel_operations_have_a_rate_limit_of_their_own() {
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        host.channel_op_verdict = Some(Verdict::Refused);
        for op in [
            r#"{"op":"sub","ch":"x","id":"s1"}"#,
            r#"{"op":"unsub","ch":"x","id":"s1"}"#,
            r#"{"op":"presence","ch":"x","id":"s1"}"#,
            r#"{"op":"occupancy","ch":"x","id":"s1"}"#,
        ] {
            conn.receive(&mut text(op), &mut host);
            let answer = host.sent_json().pop().unwrap();
            assert_eq!(
                (&answer["code"], &answer["id"]),
                (&json!("rate_limited"), &json!("s1"))
            );
        }
        assert!(host.subscribed.is_empty());
        // Publishing and pings are not channel operations.
        conn.receive(&mut text(r#"{"op":"pub","ch":"x","data":1}"#), &mut host);
        assert_eq!(host.published.len(), 1);
        host.channel_op_verdict = Some(Verdict::Abusive);
        let mut bytes = text(r#"{"op":"sub","ch":"y"}"#);
        assert_eq!(conn.receive(&mut bytes, &mut host).stop, Stop::Closed);
        assert_eq!(host.closed, Some(CloseReason::RateLimited));
        assert_eq!(host.refusals, [Refusal::RateLimited; 5]);
    }

    #[test]
    fn the_rate_limit_drops_then_closes() {
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        host.verdict = Some(Verdict::Refused);
        conn.receive(
            &mut text(r#"{"op":"pub","ch":"x","data":1,"id":"1"}"#),
            &mut host,
        );
        assert!(host.published.is_empty());
        assert_eq!(host.sent_json()[0]["code"], "rate_limited");
        assert_eq!(host.closed, None);
        host.verdict = Some(Verdict::Abusive);
        let mut bytes = text(r#"{"op":"pub","ch":"x","data":2}"#);
        assert_eq!(conn.receive(&mut bytes, &mut host).stop, Stop::Closed);
        assert_eq!(host.closed, Some(CloseReason::RateLimited));
        assert_eq!(host.refusals, [Refusal::RateLimited, Refusal::RateLimited]);
    }

    #[test]
    fn a_pub_hands_its_idempotency_key_to_the_publish() {
        // Issue 24, finding 16: the key was not read, so a retry of a `pub`
        // refused during a Redis stall published it twice.
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let mut bytes = text(r#"{"op":"pub","ch":"a","data":1,"id":1,"idempotency_key":"k-1"}"#);
        bytes.extend(text(
            r#"{"op":"pub","ch":"a","data":2,"idempotency_key":"k-2"}"#,
        ));
        bytes.extend(text(r#"{"op":"pub","ch":"a","data":3,"id":3}"#));
        bytes.extend(text(
            r#"{"op":"pub","ch":"a","data":4,"id":4,"idempotency_key":""}"#,
        ));
        conn.receive(&mut bytes, &mut host);
        assert_eq!(host.published.len(), 3, "the empty key is refused");
        assert_eq!(
            host.idempotency_keys,
            [Some("k-1".to_owned()), Some("k-2".to_owned()), None]
        );
        let sent = host.sent_json();
        assert_eq!(
            (&sent[0]["code"], &sent[0]["id"]),
            (&json!("bad_json"), &json!(4))
        );
    }

    #[test]
    fn a_room_publishes_its_frames_verbatim_and_skips_its_member_when_asked() {
        let mut host = Recorder::anonymous();
        let session = Session::Room {
            channel: "lobby".into(),
            echo: false,
            since: None,
        };
        let mut conn = Connection::open(session, 1 << 16, &mut host);
        assert_eq!(host.subscribed, ["lobby"]);
        let mut bytes = text("hi there");
        bytes.extend(client_frame(OpCode::Binary, &[0, 1, 2], false, MASK));
        conn.receive(&mut bytes, &mut host);
        assert_eq!(host.published.len(), 2);
        assert_eq!(host.published[0].1, b"hi there");
        assert_eq!(host.published[1].1, [0, 1, 2]);
        assert_eq!(host.published[0].2, Some(host.as_skip()), "echo=0");
        assert_eq!(host.idempotency_keys, [None, None], "no envelope, no key");
        assert!(host.sent.is_empty(), "no envelope in a room");
    }

    #[test]
    fn a_room_member_without_publish_permission_is_closed() {
        let grant = Verifier::new(Some(SECRET), None, None, None)
            .unwrap()
            .verify(
                &token(json!({"exp":NOW + 60,"channels":{"sub":["lobby"]}})),
                NOW,
            )
            .unwrap();
        let mut host = Recorder::with_tokens(Permit::Token(Rc::new(grant)));
        let session = Session::Room {
            channel: "lobby".into(),
            echo: true,
            since: None,
        };
        let mut conn = Connection::open(session, 1 << 16, &mut host);
        assert_eq!(conn.receive(&mut text("hi"), &mut host).stop, Stop::Closed);
        assert_eq!(host.closed, Some(CloseReason::Forbidden));
        assert!(host.published.is_empty());
        assert_eq!(host.refusals, [Refusal::Forbidden]);
    }

    #[test]
    fn a_congested_owner_stops_the_read_after_the_publication() {
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        host.congested = Some(1);
        let first = text(r#"{"op":"pub","ch":"x","data":1}"#);
        let mut bytes = first.clone();
        bytes.extend(text(r#"{"op":"pub","ch":"x","data":2}"#));
        let receipt = conn.receive(&mut bytes, &mut host);
        assert_eq!(receipt.stop, Stop::Congested(1));
        assert_eq!(receipt.used, first.len(), "the second waits");
        assert_eq!(host.published.len(), 1);
    }

    #[test]
    fn binary_frames_are_not_json_ops() {
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        conn.receive(
            &mut client_frame(OpCode::Binary, b"{}", false, MASK),
            &mut host,
        );
        assert_eq!(host.sent_json()[0]["code"], "bad_json");
        assert_eq!(host.closed, None);
    }

    /// A compressed client message as permessage-deflate frames it: RSV1
    /// on the first frame, split into frames of `chunk` bytes.
    fn compressed(opcode: OpCode, message: &[u8], chunk: usize) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut c = Compress::new(Compression::new(6), false);
        let mut deflated = Vec::with_capacity(message.len() + 64);
        c.compress_vec(message, &mut deflated, FlushCompress::Sync)
            .unwrap();
        deflated.truncate(deflated.len() - 4);
        let pieces: Vec<&[u8]> = deflated.chunks(chunk).collect();
        let mut bytes = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            let mut frame = client_frame(op, piece, i + 1 < pieces.len(), MASK);
            if i == 0 {
                frame[0] |= 0x40;
            }
            bytes.extend(frame);
        }
        bytes
    }

    fn deflate_host() -> Recorder {
        Recorder {
            deflate_window: 15,
            ..Recorder::anonymous()
        }
    }

    #[test]
    fn compressed_ops_are_inflated_whole_and_acted_on() {
        let mut host = deflate_host();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let op = format!(r#"{{"op":"pub","ch":"x","data":"{}"}}"#, "abc".repeat(300));
        // In one frame, then split over three frames and two reads.
        let mut bytes = compressed(OpCode::Text, op.as_bytes(), 1 << 20);
        conn.receive(&mut bytes, &mut host);
        let mut split = compressed(OpCode::Text, op.as_bytes(), 10);
        let (first, second) = split.split_at_mut(7);
        conn.receive(first, &mut host);
        conn.receive(second, &mut host);
        assert_eq!(host.published.len(), 2);
        for published in &host.published {
            assert_eq!(published.1, format!("\"{}\"", "abc".repeat(300)).as_bytes());
        }
        // Uncompressed messages still work beside them.
        conn.receive(&mut text(r#"{"op":"sub","ch":"y"}"#), &mut host);
        assert_eq!(host.subscribed, ["y"]);
        assert_eq!(host.closed, None);
    }

    #[test]
    fn a_deflate_bomb_closes_with_1009_at_the_inflated_limit() {
        let mut host = deflate_host();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let bomb = format!(
            r#"{{"op":"pub","ch":"x","data":"{}"}}"#,
            "a".repeat(1 << 20)
        );
        let mut bytes = compressed(OpCode::Text, bomb.as_bytes(), 1 << 20);
        assert!(bytes.len() < 4096, "small on the wire");
        assert_eq!(conn.receive(&mut bytes, &mut host).stop, Stop::Closed);
        assert_eq!(host.closed, Some(CloseReason::TooLarge));
        assert!(host.published.is_empty());
    }

    #[test]
    fn bad_compressed_messages_close_the_connection() {
        // Not deflate at all.
        let mut host = deflate_host();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let mut frame = client_frame(OpCode::Text, &[0xff; 8], false, MASK);
        frame[0] |= 0x40;
        assert_eq!(conn.receive(&mut frame, &mut host).stop, Stop::Closed);
        assert_eq!(host.closed, Some(CloseReason::BadCompression));
        // Inflates to invalid UTF-8 in a text message.
        let mut host = deflate_host();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let mut bytes = compressed(OpCode::Text, &[0xc3, 0x28, b'a', b'b'], 100);
        assert_eq!(conn.receive(&mut bytes, &mut host).stop, Stop::Closed);
        assert_eq!(host.closed, Some(CloseReason::BadUtf8));
        // RSV1 without permessage-deflate negotiated.
        let mut host = Recorder::anonymous();
        let mut conn = Connection::open(json_session(), 1 << 16, &mut host);
        let mut bytes = compressed(OpCode::Text, br#"{"op":"ping"}"#, 100);
        assert_eq!(conn.receive(&mut bytes, &mut host).stop, Stop::Closed);
        assert_eq!(host.closed, Some(CloseReason::Protocol));
    }

    #[test]
    fn a_room_publishes_inflated_binary_messages() {
        let mut host = deflate_host();
        let session = Session::Room {
            channel: "lobby".into(),
            echo: true,
            since: None,
        };
        let mut conn = Connection::open(session, 1 << 16, &mut host);
        let message: Vec<u8> = (0..2000u32).map(|i| (i % 7) as u8).collect();
        let mut bytes = compressed(OpCode::Binary, &message, 300);
        conn.receive(&mut bytes, &mut host);
        assert_eq!(host.published[0].1, message);
    }
}
