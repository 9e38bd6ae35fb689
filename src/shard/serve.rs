//! One accepted socket, from its first byte to its close: read HTTP request
//! heads (keep-alive), answer plain HTTP routes, and hand upgraded
//! connections to their WebSocket session (`session.rs`), a task of its
//! own. Every HTTP read and write is bounded by `--handshake-timeout` and
//! yields to shutdown; every answer counts against the shard's memory
//! budget until it is written.

use std::{
    cell::Cell,
    future::Future,
    net::IpAddr,
    panic::AssertUnwindSafe,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_lite::FutureExt;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;

use super::{api::HttpPublication, session, Shard};
use crate::{
    channel::{Access, ChannelName},
    conn::{
        api_query::PresenceQuery,
        codec::Protocol,
        extension,
        http::{self, Head, HttpError, Route},
        permit::Permit,
        Side,
    },
    exposition, protocol,
    publication::Payload,
    security::{
        http_cap::HttpSlot,
        ip_cap::{IpCap, IpSlot},
        token,
    },
    stats::{bump, Stats},
    stream::SharedStream,
};

/// The live dashboard (`GET /`): one self-contained page, fed by `$stats`.
const DASHBOARD: &str = include_str!("../dashboard.html");

/// Serves one accepted socket until it closes: takes its places (or
/// refuses it), finishes TLS, then answers request after request until one
/// upgrades to WebSocket or the connection ends.
pub(crate) async fn serve(shard: Rc<Shard>, tcp: TcpStream, side: Side) {
    let tls = shard
        .shell
        .security
        .tls
        .as_ref()
        .filter(|_| side == Side::Public);
    let peer = tcp.peer_addr().ok().map(|peer| peer.ip());
    let places = match take_places(&shard, peer, side) {
        Ok(places) => places,
        Err(error) => {
            refuse_accepted(&shard, tcp, tls.is_some(), &error).await;
            return;
        }
    };
    let Some(stream) = open_stream(&shard, tcp, tls).await else {
        return;
    };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head = match read_head(&shard, &stream, &mut buf).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(error) => {
                bump(&shard.stats.handshake_failures, 1);
                respond_and_close(&shard, &stream, &http::error_response(&error, false)).await;
                return;
            }
        };
        bump(&shard.stats.http_requests, 1);
        let keep_alive = head.keep_alive && !shard.is_shutting_down();
        let route = http::route(&head, shard.config.limits.max_subscriptions)
            .and_then(|route| admit_route(&shard, side, &head, route));
        let reply = match route {
            Ok(Route::WebSocket(session)) => {
                upgrade(&shard, side, stream, &head, session, buf, places).await;
                return;
            }
            Ok(Route::Health) => health_answer(&shard, keep_alive),
            Ok(Route::Dashboard) => http::response(
                200,
                "text/html; charset=utf-8",
                DASHBOARD.as_bytes(),
                keep_alive,
            ),
            Ok(Route::Metrics) => {
                let text = exposition::render(&super::observe::gather(&shard).await);
                http::response(200, exposition::CONTENT_TYPE, text.as_bytes(), keep_alive)
            }
            Ok(Route::Stats) => {
                let stats = super::observe::gather(&shard).await;
                let json = serde_json::to_vec(&stats).unwrap_or_default();
                http::response(200, "application/json", &json, keep_alive)
            }
            Ok(Route::Drain) => {
                tracing::warn!(shard = shard.id, "POST /api/drain: draining the node");
                shard.drain_node();
                http::response(202, "application/json", b"{\"draining\":true}", false)
            }
            Ok(Route::Presence(query)) => presence_answer(&shard, query, keep_alive).await,
            Ok(Route::Publish) => match publish(&shard, &stream, &head, &mut buf).await {
                Ok((status, body)) => http::response(status, "application/json", &body, keep_alive),
                Err(error) => body_error(&error, &head, &buf, keep_alive),
            },
            Ok(route @ (Route::Disconnect | Route::Unsubscribe)) => {
                let disconnect = route == Route::Disconnect;
                match kick(&shard, &stream, &head, &mut buf, disconnect).await {
                    Ok(body) => http::response(200, "application/json", &body, keep_alive),
                    Err(error) => body_error(&error, &head, &buf, keep_alive),
                }
            }
            Ok(Route::History(query)) => {
                json_or_error(super::api::history_answer(&shard, query).await, keep_alive)
            }
            Ok(Route::Channels(query)) => {
                json_or_error(super::api::channels_answer(&shard, query).await, keep_alive)
            }
            Err(error) => refused_request(&shard, &error, &head, &buf, keep_alive),
        };
        if !send_reply(&shard, &stream, &head, &buf, reply, keep_alive).await {
            return;
        }
        let consumed = (head.len + head.content_length.unwrap_or(0)).min(buf.len());
        buf.drain(..consumed);
    }
}

/// The places an accepted public socket holds: its address's connection
/// slot (`--max-connections-per-ip`, handed to the session on upgrade),
/// and until it upgrades or ends, its address's not-yet-upgraded slot
/// (`--max-http-connections-per-ip`) and one of `--max-http-connections`.
/// The admin listener holds none, so a flood of the public one cannot lock
/// monitoring out.
#[derive(Default)]
struct Places {
    ip: Option<IpSlot>,
    /// Held (given back when dropped).
    _http_ip: Option<IpSlot>,
    /// Held (given back when dropped).
    _http: Option<HttpSlot>,
}

/// Takes the places a socket accepted on `side` from `peer` needs, or the
/// refusal: 429 when its address has its share, 503 at
/// `--max-http-connections` (each refusal counted).
fn take_places(shard: &Shard, peer: Option<IpAddr>, side: Side) -> Result<Places, HttpError> {
    if side == Side::Admin {
        return Ok(Places::default());
    }
    let (security, stats) = (&shard.shell.security, &shard.stats);
    let ip = address_place(
        security.ip_cap.as_ref(),
        peer,
        &stats.ip_cap_refusals,
        "connections",
    )?;
    let http_ip = address_place(
        security.http_ip_cap.as_ref(),
        peer,
        &stats.http_cap_refusals,
        "HTTP connections (not upgraded)",
    )?;
    let http = match &security.http_cap {
        None => None,
        Some(cap) => Some(cap.try_acquire().ok_or_else(|| {
            bump(&stats.http_cap_refusals, 1);
            let msg = format!("server is at max-http-connections ({})", cap.limit());
            HttpError::new(503, "too_many_connections", msg)
        })?),
    };
    Ok(Places {
        ip,
        _http_ip: http_ip,
        _http: http,
    })
}

/// A place among `cap`'s for `peer`'s address (none to take without a
/// cap), or a 429 counted in `refusals`; `what` names what is capped.
fn address_place(
    cap: Option<&Arc<IpCap>>,
    peer: Option<IpAddr>,
    refusals: &Cell<u64>,
    what: &str,
) -> Result<Option<IpSlot>, HttpError> {
    let Some(cap) = cap else {
        return Ok(None);
    };
    match peer.and_then(|ip| cap.try_acquire(ip)) {
        Some(slot) => Ok(Some(slot)),
        None => {
            bump(refusals, 1);
            let limit = cap.limit();
            let msg = format!("at most {limit} {what} per client address");
            Err(HttpError::new(429, "too_many_connections", msg))
        }
    }
}

/// The accepted socket as a stream, over TLS when `tls` is given once its
/// handshake is done within `--handshake-timeout`; `None` (counted) when the
/// handshake fails, is late, or shutdown begins meanwhile.
async fn open_stream(
    shard: &Shard,
    tcp: TcpStream,
    tls: Option<&TlsAcceptor>,
) -> Option<SharedStream> {
    let Some(acceptor) = tls else {
        // A plain socket waits on the shard's epoll set if it has one.
        let registered = match &shard.shell.readiness {
            Some(readiness) => readiness.register(tcp).map(SharedStream::polled),
            None => Err(tcp),
        };
        return Some(registered.unwrap_or_else(SharedStream::new));
    };
    let limit = shard.config.timeouts.handshake;
    let handshake = glommio::timer::timeout(limit, async {
        let accepted = async { Some(acceptor.accept(tcp).await) };
        let stopped = async {
            shard.stopped().await;
            None
        };
        Ok(accepted.or(stopped).await)
    })
    .await;
    match handshake {
        Ok(Some(Ok(stream))) => Some(SharedStream::new_tls(stream)),
        _ => {
            bump(&shard.stats.handshake_failures, 1);
            None
        }
    }
}

/// Upgrades to WebSocket: admits the connection (its permit, a connection
/// slot), registers and subscribes it, has the channels' owners in step,
/// answers 101 and hands the connection to its session, a task of its own.
/// Ends this socket's HTTP life whatever happens; a refusal is answered
/// and the socket closed.
async fn upgrade(
    shard: &Rc<Shard>,
    side: Side,
    stream: SharedStream,
    head: &Head,
    session: http::Session,
    mut buf: Vec<u8>,
    mut places: Places,
) {
    let admitted = upgrade_permit(shard, side, head, &session)
        .and_then(|permit| admit(shard).map(|()| permit));
    let (permit, deadline_ms) = match admitted {
        Ok(admitted) => admitted,
        Err(error) => {
            if error.status == 401 {
                bump(&shard.stats.auth_failures, 1);
            }
            respond_and_close(shard, &stream, &http::error_response(&error, false)).await;
            return;
        }
    };
    let key = head.ws_key.as_deref().unwrap_or_default();
    let deflate = match head.ws_extensions.as_deref() {
        Some(offers) if shard.config.compression.enabled => extension::negotiate(offers),
        _ => None,
    };
    let agreed = deflate.as_ref().map(|a| a.response.as_str());
    let subprotocol = session.subprotocol(head.ws_protocols.as_deref());
    let response = http::switching_protocols(key, agreed, subprotocol);
    // Bytes after the head already belong to the WebSocket stream.
    let leftover = buf.split_off(head.len.min(buf.len()));
    // Not held while the owners are synced below.
    drop(buf);
    let mut codec = session.codec().with_deflate(deflate.as_ref());
    if subprotocol == Some(http::MSGPACK_PROTOCOL) {
        codec.protocol = Protocol::MsgPack;
    }
    let owners = super::api::other_owners(shard, &session.channels());
    // Registered and subscribed before the response goes out,
    // but written to only after it (see `Outbox::hold`).
    let conn = shard.register(stream, codec, session.batches());
    conn.outbox.hold();
    let limit = shard.shell.security.publish_limit;
    conn.admit(permit, deadline_ms, limit, places.ip.take(), shard.now_ms());
    let session = session::serve(shard.clone(), leftover, session, conn.clone());
    // The owners have the subscriptions: whatever is published
    // once the client has its response reaches it.
    super::api::sync_with(shard, &owners).await;
    let Some(stream) = conn.outbox.stream() else {
        return;
    };
    if !write_response(shard, stream, &response).await {
        // Unregisters the connection (and frees its slot).
        drop(session);
        return;
    }
    conn.outbox.release();
    // The HTTP places are given back: the session counts under
    // max-connections.
    drop(places);
    // The session is a task of its own, so this task's handshake
    // state is freed instead of living as long as the connection.
    // Shutdown waits for it through the shard's connection count
    // (see `Shard::gate`).
    glommio::spawn_local(PanicsCounted {
        session,
        stats: shard.stats.clone(),
    })
    .detach();
}

/// `GET /health`: 200 while every engine link is up; 503 `degraded`
/// otherwise, so a load balancer drains the node while its engine is down.
fn health_answer(shard: &Shard, keep_alive: bool) -> Vec<u8> {
    match shard.shell.engine_up() {
        true => http::response(200, "text/plain", b"ok\n", keep_alive),
        false => http::response(503, "text/plain", b"degraded\n", keep_alive),
    }
}

/// `GET /api/presence/<ch>`: a page of the channel's members from its
/// owner shard, which has `--shutdown-timeout` (at least 1 s) to answer.
async fn presence_answer(shard: &Rc<Shard>, query: PresenceQuery, keep_alive: bool) -> Vec<u8> {
    let PresenceQuery {
        channel,
        cursor,
        limit,
    } = query;
    let ask = protocol::PresenceAsk::Page {
        cursor: cursor.map(Into::into),
        limit,
    };
    let wait = shard.config.timeouts.shutdown.max(Duration::from_secs(1));
    let answer = glommio::timer::timeout(wait, async {
        Ok(super::presence::ask_and_wait(shard, &channel, ask).await)
    })
    .await;
    match answer {
        Ok(Ok(Some(json))) => http::response(200, "application/json", &json, keep_alive),
        Ok(Err(error)) => http::error_response(
            &HttpError::new(404, error.code.as_str(), error.msg.into_owned()),
            keep_alive,
        ),
        _ => http::error_response(
            &HttpError::new(
                503,
                "unavailable",
                "the channel's owner shard did not answer",
            ),
            keep_alive,
        ),
    }
}

/// The answer to a request refused before it was served (counted; a 401
/// also as an authentication failure). The connection stays open only if
/// the request's body, if any, was read whole: a body left unread would be
/// parsed as the next request.
fn refused_request(
    shard: &Shard,
    error: &HttpError,
    head: &Head,
    buf: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    bump(&shard.stats.handshake_failures, 1);
    if error.status == 401 {
        bump(&shard.stats.auth_failures, 1);
    }
    http::error_response(error, keep_alive && body_buffered(head, buf))
}

/// Sends `reply` (counted against the memory budget until written or
/// dropped); `true` if the connection stays open for the next request,
/// else it was closed after the reply.
async fn send_reply(
    shard: &Shard,
    stream: &SharedStream,
    head: &Head,
    buf: &[u8],
    reply: Vec<u8>,
    keep_alive: bool,
) -> bool {
    let reply = HeldAnswer::new(&shard.stats, reply);
    let keep_alive = keep_alive && reply_keeps_alive(&reply) && body_buffered(head, buf);
    if !keep_alive {
        respond_and_close(shard, stream, &reply).await;
        return false;
    }
    write_response(shard, stream, &reply).await
}

/// An HTTP answer held until its client takes it, counted in the shard's
/// `http_answer_bytes` (its memory budget) meanwhile: a client that sends
/// requests and does not read holds at most one answer per connection, for
/// at most `--handshake-timeout`.
struct HeldAnswer {
    bytes: Vec<u8>,
    stats: Rc<Stats>,
}

impl HeldAnswer {
    fn new(stats: &Rc<Stats>, bytes: Vec<u8>) -> Self {
        let held = &stats.http_answer_bytes;
        held.set(held.get() + bytes.capacity() as u64);
        HeldAnswer {
            bytes,
            stats: stats.clone(),
        }
    }
}

impl std::ops::Deref for HeldAnswer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for HeldAnswer {
    fn drop(&mut self) {
        let held = &self.stats.http_answer_bytes;
        held.set(held.get().saturating_sub(self.bytes.capacity() as u64));
    }
}

/// The reply to a POST whose body could not be used: the connection stays
/// open only if the body was read whole.
fn body_error(error: &HttpError, head: &Head, buf: &[u8], keep_alive: bool) -> Vec<u8> {
    let reusable = error.status != 413 && body_buffered(head, buf);
    http::error_response(error, keep_alive && reusable)
}

/// A JSON answer, or the error in its place.
fn json_or_error(answer: Result<Vec<u8>, HttpError>, keep_alive: bool) -> Vec<u8> {
    match answer {
        Ok(json) => http::response(200, "application/json", &json, keep_alive),
        Err(error) => http::error_response(&error, keep_alive),
    }
}

/// Whether `route` is served on this side, and with the API key it needs.
fn admit_route(shard: &Shard, side: Side, head: &Head, route: Route) -> Result<Route, HttpError> {
    let separate_admin = shard.config.listeners.admin.is_some();
    let served = match side {
        Side::Public => !(separate_admin && route.is_admin()),
        Side::Admin => {
            route.is_admin()
                || route.is_operator()
                || matches!(
                    route,
                    Route::Health | Route::WebSocket(http::Session::Json { .. })
                )
        }
    };
    if !served {
        return Err(HttpError::new(
            404,
            "not_found",
            format!("no route for {} on this address", head.path),
        ));
    }
    if route.is_operator() && side == Side::Public && shard.shell.security.api_key.is_none() {
        return Err(HttpError::new(
            403,
            "api_key_required",
            format!(
                "{} needs --api-key (or a request on --admin-listen): it acts on other \
                 people's connections",
                head.path
            ),
        ));
    }
    if route.needs_api_key() {
        if let Some(key) = &shard.shell.security.api_key {
            if !key.accepts(head.presented_api_key()) {
                return Err(HttpError::new(
                    401,
                    protocol::ErrorCode::Unauthorized.as_str(),
                    "missing or wrong API key (X-API-Key or Authorization: Bearer)",
                ));
            }
        }
    }
    Ok(route)
}

/// What an upgrade may do: checks the origin, then the token (if tokens are
/// required) and the channels the URL names. Returns the permit and the
/// deadline by which the connection must (re)authenticate. The admin
/// listener needs no origin or token (its dashboard page is served from its
/// own origin) and may only subscribe.
fn upgrade_permit(
    shard: &Shard,
    side: Side,
    head: &Head,
    session: &http::Session,
) -> Result<(Permit, u64), HttpError> {
    let security = &shard.shell.security;
    if side == Side::Admin {
        return Ok((Permit::ReadOnly, u64::MAX));
    }
    if !security.origins.allows(head.origin.as_deref()) {
        return Err(HttpError::new(
            403,
            "origin_not_allowed",
            "this Origin may not connect (allowed-origins)",
        ));
    }
    let Some(verifier) = &security.verifier else {
        return Ok((Permit::Everything, u64::MAX));
    };
    let now = shard.now_ms();
    let unauthorized =
        |msg: String| HttpError::new(401, protocol::ErrorCode::Unauthorized.as_str(), msg);
    let Some(token) = head.token() else {
        return match session {
            http::Session::Json { subscribe, .. } if subscribe.is_empty() => Ok((
                Permit::AwaitingAuth,
                now.saturating_add(security.auth_timeout.as_millis() as u64),
            )),
            _ => Err(unauthorized(
                "a token is required: ?token=, Authorization: Bearer, or connect to /ws \
                 and send {\"op\":\"auth\",\"token\":...}"
                    .into(),
            )),
        };
    };
    let grant = verifier
        .verify(&token, token::unix_now())
        .map_err(|e| unauthorized(e.to_string()))?;
    if let Some(refused) = session
        .channels()
        .iter()
        .find(|ch| !grant.allows(Access::Subscribe, ch))
    {
        return Err(HttpError::new(
            403,
            protocol::ErrorCode::Forbidden.as_str(),
            format!("the token does not allow subscribing to {refused:?}"),
        ));
    }
    let deadline = token::deadline_ms(now, grant.expires_at, token::unix_now());
    Ok((Permit::Token(Rc::new(grant)), deadline))
}

/// Whether the whole request body (if any) is in `buf`, so the next request
/// starts right after it. A chunked body is never read.
fn body_buffered(head: &Head, buf: &[u8]) -> bool {
    !head.chunked && buf.len() >= head.len + head.content_length.unwrap_or(0)
}

/// Whether a response we built says `Connection: keep-alive`.
fn reply_keeps_alive(reply: &[u8]) -> bool {
    reply
        .windows(22)
        .take(256)
        .any(|w| w == b"Connection: keep-alive")
}

/// Sends a last response and closes gracefully (see
/// [`SharedStream::close_gracefully`]); just closes if the client does not
/// take the response (see [`write_response`]).
async fn respond_and_close(shard: &Shard, stream: &SharedStream, response: &[u8]) {
    if write_response(shard, stream, response).await {
        stream.close_gracefully().await;
    }
}

/// Writes an HTTP response; `false` if the socket failed, the client did
/// not take it within `--handshake-timeout` (it pipelines and does not
/// read), or shutdown began while it waited for the client to read. What
/// the socket takes at once is written even during shutdown.
async fn write_response(shard: &Shard, stream: &SharedStream, response: &[u8]) -> bool {
    let write = async { stream.write_all(response).await.is_ok() };
    let stopped = async {
        shard.stopped().await;
        false
    };
    let limit = shard.config.timeouts.handshake;
    match glommio::timer::timeout(limit, async { Ok(write.or(stopped).await) }).await {
        Ok(written) => written,
        Err(_) => {
            bump(&shard.stats.handshake_failures, 1);
            false
        }
    }
}

/// Refuses an accepted socket before anything is read from it: a JSON
/// answer and a close, or over TLS just a close (a plain answer would be
/// noise, and a handshake is not worth spending on it).
async fn refuse_accepted(shard: &Shard, tcp: TcpStream, tls: bool, error: &HttpError) {
    if !tls {
        let stream = SharedStream::new(tcp);
        respond_and_close(shard, &stream, &http::error_response(error, false)).await;
    }
}

/// Reserves a connection slot for an upgrade, or says why not (503).
fn admit(shard: &Shard) -> Result<(), HttpError> {
    if shard.is_shutting_down() {
        return Err(HttpError::new(
            503,
            "shutting_down",
            "server is shutting down",
        ));
    }
    if shard.refuses_for_memory() {
        return Err(HttpError::new(
            503,
            protocol::ErrorCode::OverCapacity.as_str(),
            "the server is over its memory budget (max-memory); try again later",
        ));
    }
    if !shard.shell.lifetime.try_reserve_connection() {
        bump(&shard.stats.http_503, 1);
        return Err(HttpError::new(
            503,
            "too_many_connections",
            format!(
                "server is at max-connections ({})",
                shard.config.limits.max_connections
            ),
        ));
    }
    Ok(())
}

/// Reads until `buf` holds a complete request head, within the handshake
/// timeout. `Ok(None)`: the client closed, or shutdown began, between
/// requests.
async fn read_head(
    shard: &Shard,
    stream: &SharedStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Head>, HttpError> {
    let read = async {
        loop {
            if let Some(head) = http::parse_head(buf)? {
                return Ok(Some(head));
            }
            if read_more(&shard.stats, stream, buf).await? == 0 {
                return Ok(None);
            }
        }
    };
    let stopped = async {
        shard.stopped().await;
        Ok(None)
    };
    let limit = shard.config.timeouts.handshake;
    match glommio::timer::timeout(limit, async { Ok(read.or(stopped).await) }).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::new(
            408,
            "timeout",
            "request head not received in time",
        )),
    }
}

/// Appends what the socket has to `buf`; 0 at end of stream. Cancel-safe:
/// dropped while it waits (a timeout, shutdown), it leaves `buf` as it was.
async fn read_more(
    stats: &Stats,
    stream: &SharedStream,
    buf: &mut Vec<u8>,
) -> Result<usize, HttpError> {
    const CHUNK: usize = 2048;
    let start = buf.len();
    buf.resize(start + CHUNK, 0);
    let mut filled = Filled { buf, len: start };
    let read = stream.read(&mut filled.buf[start..]).await;
    let n = read.as_ref().copied().unwrap_or(0);
    filled.len = start + n;
    drop(filled);
    bump(&stats.bytes_in, n as u64);
    read.map_err(|e| HttpError::new(400, "bad_request", format!("read failed: {e}")))
}

/// Cuts a buffer grown for a read back to the bytes the read filled
/// (`len`), however the read ends, so the padding is never taken for data.
struct Filled<'a> {
    buf: &'a mut Vec<u8>,
    len: usize,
}

impl Drop for Filled<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.len);
    }
}

/// The most bytes an API request's body may have: a batch of publications
/// may carry several messages of up to `max-message-bytes` each.
fn max_body_bytes(shard: &Shard) -> usize {
    shard.config.limits.max_message_bytes.saturating_mul(16)
}

/// Reads the body of a POST into `buf` (after the head) and returns it as
/// text. A body that is not all there is an error whose reply closes the
/// connection.
async fn read_body<'b>(
    shard: &Shard,
    stream: &SharedStream,
    head: &Head,
    buf: &'b mut Vec<u8>,
) -> Result<&'b str, HttpError> {
    if head.chunked {
        return Err(HttpError::new(
            411,
            "bad_request",
            "send a Content-Length, not chunked encoding",
        ));
    }
    let length = head
        .content_length
        .ok_or_else(|| HttpError::new(411, "bad_request", "Content-Length required"))?;
    let max = max_body_bytes(shard);
    if length > max {
        return Err(HttpError::new(
            413,
            protocol::ErrorCode::TooLarge.as_str(),
            format!("body is over {max} bytes (16 times max-message-bytes)"),
        ));
    }
    let end = head.len + length;
    let limit = shard.config.timeouts.handshake;
    let body_read = glommio::timer::timeout(limit, async {
        let read = async {
            while buf.len() < end {
                if read_more(&shard.stats, stream, buf).await.unwrap_or(0) == 0 {
                    return false;
                }
            }
            true
        };
        let stopped = async {
            shard.stopped().await;
            false
        };
        Ok(read.or(stopped).await)
    })
    .await;
    if !matches!(body_read, Ok(true)) {
        if shard.is_shutting_down() {
            return Err(shutting_down());
        }
        return Err(HttpError::new(400, "bad_request", "body not received"));
    }
    let body = std::str::from_utf8(&buf[head.len..end]).map_err(|_| {
        HttpError::new(
            400,
            protocol::ErrorCode::BadJson.as_str(),
            "body is not UTF-8",
        )
    })?;
    if shard.is_shutting_down() {
        return Err(shutting_down());
    }
    Ok(body)
}

fn shutting_down() -> HttpError {
    HttpError::new(503, "shutting_down", "server is shutting down")
}

/// `POST /api/publish`: reads the body, publishes, answers the `seq`s.
async fn publish(
    shard: &Shard,
    stream: &SharedStream,
    head: &Head,
    buf: &mut Vec<u8>,
) -> Result<(u16, Vec<u8>), HttpError> {
    let body = read_body(shard, stream, head, buf).await?;
    let request = crate::api::parse_publish(body, shard.config.limits.max_message_bytes)?;
    let publications = request
        .publications
        .iter()
        .map(|p| {
            let mut payload = Payload::json(p.data.as_bytes());
            if let Some(key) = &p.key {
                payload = payload.with_key(key);
            }
            HttpPublication {
                ch: ChannelName::of_valid(&p.ch),
                payload,
                idempotency_key: p.idempotency_key.as_deref().map(Into::into),
            }
        })
        .collect();
    let seqs = super::api::publish_all_and_wait(shard, publications).await;
    Ok(crate::api::publish_answer(request.single, &seqs))
}

/// `POST /api/disconnect` and `POST /api/unsubscribe`.
async fn kick(
    shard: &Shard,
    stream: &SharedStream,
    head: &Head,
    buf: &mut Vec<u8>,
    disconnect: bool,
) -> Result<Vec<u8>, HttpError> {
    let body = read_body(shard, stream, head, buf).await?;
    let kick = match disconnect {
        true => crate::api::parse_disconnect(body)?,
        false => crate::api::parse_unsubscribe(body)?,
    };
    super::api::kick_answer(shard, kick).await
}

pin_project_lite::pin_project! {
    /// A session task whose panic ends only its own connection: caught,
    /// counted and logged; dropping the session then tears the connection
    /// down (its guard), and the shard carries on.
    struct PanicsCounted<F> {
        #[pin]
        session: F,
        stats: Rc<Stats>,
    }
}

impl<F: Future<Output = ()>> Future for PanicsCounted<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let session = this.session;
        match std::panic::catch_unwind(AssertUnwindSafe(|| session.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                bump(&this.stats.connection_panics, 1);
                tracing::error!("WebSocket session panicked; connection dropped");
                Poll::Ready(())
            }
        }
    }
}
