//! The HTTP/1.1 side of the single listening port: parsing a request head
//! (httparse), routing it, and writing responses — including the 101 that
//! upgrades to WebSocket. Pure functions over byte buffers; the connection
//! task does the I/O.

use super::{api_query, codec::Codec};
use crate::{
    channel::{self, Access},
    protocol::{self, ErrorCode},
    security::api_key::bearer,
};

/// Largest request head accepted (431 above).
pub(crate) const MAX_HEAD_BYTES: usize = 8192;
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Other,
}

/// The parts of a request head shardcast uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: Method,
    pub path: String,
    pub query: String,
    /// `Upgrade: websocket` and `Connection: upgrade` both present.
    pub wants_websocket: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// `Sec-WebSocket-Extensions`, every line of it joined by commas.
    pub ws_extensions: Option<String>,
    /// `Sec-WebSocket-Protocol`, every line of it joined by commas.
    pub ws_protocols: Option<String>,
    pub content_length: Option<usize>,
    /// A `Transfer-Encoding` header is present (its body is never read).
    pub chunked: bool,
    pub keep_alive: bool,
    /// HTTP/1.1 (else 1.0).
    pub http11: bool,
    /// `Origin` (browsers send it with every upgrade).
    pub origin: Option<String>,
    /// `Authorization` (a bearer token or API key).
    pub authorization: Option<String>,
    /// `X-API-Key`.
    pub api_key: Option<String>,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

impl Head {
    /// The connection token: `?token=`, else `Authorization: Bearer`.
    pub(crate) fn token(&self) -> Option<String> {
        query_values(&self.query, "token").next().or_else(|| {
            self.authorization
                .as_deref()
                .and_then(bearer)
                .map(str::to_owned)
        })
    }

    /// The API key: `X-API-Key`, else `Authorization: Bearer`.
    pub(crate) fn presented_api_key(&self) -> Option<&str> {
        self.api_key
            .as_deref()
            .or_else(|| self.authorization.as_deref().and_then(bearer))
    }
}

/// A request refused with an HTTP status and a JSON body
/// `{"error":code,"msg":..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpError {
    pub status: u16,
    pub code: &'static str,
    pub msg: String,
}

impl HttpError {
    pub(crate) fn new(status: u16, code: &'static str, msg: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            msg: msg.into(),
        }
    }
}

fn header_has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete.
///
/// Framing is strict (RFC 9112 §6.3): `Content-Length` must be one run of
/// digits (repeated lines must agree; a comma list is refused), and
/// `Transfer-Encoding` with it is refused, so no body can be read two ways.
/// An HTTP/1.1 request needs exactly one `Host` (§3.2). `Connection` and
/// `Upgrade` split over several lines are one list (RFC 9110 §5.3).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(HttpError::new(431, "bad_request", "request head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(431, "bad_request", "too many headers"))
        }
        Err(e) => {
            return Err(HttpError::new(
                400,
                "bad_request",
                format!("malformed request: {e}"),
            ))
        }
    };
    let bad = |msg: &str| HttpError::new(400, "bad_request", msg.to_owned());
    let method = match request.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let (path, query) = split_target(request.path.unwrap_or("/"));
    let http11 = request.version == Some(1);
    let mut head = Head {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        wants_websocket: false,
        ws_key: None,
        ws_version: None,
        ws_extensions: None,
        ws_protocols: None,
        content_length: None,
        chunked: false,
        keep_alive: http11,
        http11,
        origin: None,
        authorization: None,
        api_key: None,
        len,
    };
    let (mut upgrade, mut connection_upgrade) = (false, false);
    let (mut close, mut keep_alive) = (false, false);
    let mut hosts = 0;
    for header in request.headers.iter() {
        let name = header.name;
        // Framing headers count whatever their bytes: skipping one would
        // frame the body differently from a proxy that reads it.
        if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(header.value)
                .ok_or_else(|| bad("Content-Length must be one decimal number"))?;
            if head.content_length.is_some_and(|earlier| earlier != length) {
                return Err(bad("conflicting Content-Length headers"));
            }
            head.content_length = Some(length);
            continue;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            continue;
        }
        let Ok(value) = std::str::from_utf8(header.value) else {
            continue;
        };
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= header_has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= header_has_token(value, "upgrade");
            close |= header_has_token(value, "close");
            keep_alive |= header_has_token(value, "keep-alive");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            // A second line makes a list, which is no valid key.
            append_to_list(&mut head.ws_key, value);
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            append_to_list(&mut head.ws_extensions, value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            append_to_list(&mut head.ws_protocols, value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("x-api-key") {
            head.api_key = Some(value.trim().to_owned());
        }
    }
    if head.chunked && head.content_length.is_some() {
        return Err(bad("Transfer-Encoding and Content-Length together"));
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(bad("an HTTP/1.1 request needs exactly one Host header"));
    }
    if close {
        head.keep_alive = false;
    } else if keep_alive {
        head.keep_alive = true;
    }
    head.wants_websocket = upgrade && connection_upgrade;
    Ok(Some(head))
}

/// Adds one line of a header to what earlier lines of it said: repeated
/// lines make one comma-separated list (RFC 9110 §5.3).
fn append_to_list(list: &mut Option<String>, value: &str) {
    let value = value.trim();
    *list = Some(match list.take() {
        Some(earlier) => format!("{earlier}, {value}"),
        None => value.to_owned(),
    });
}

/// A `Content-Length` value: `1*DIGIT` (optional whitespace around it).
fn parse_content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Path and query of a request target: origin-form (`/p?q`), or
/// absolute-form (`http://host/p?q`, RFC 9112 §3.2.2), whose authority is
/// dropped.
fn split_target(target: &str) -> (&str, &str) {
    let scheme = ["http://", "https://"].iter().find(|scheme| {
        target
            .get(..scheme.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(scheme))
    });
    let target = match scheme {
        Some(scheme) => {
            let rest = &target[scheme.len()..];
            match rest.find(['/', '?']) {
                Some(at) if rest[at..].starts_with('/') => &rest[at..],
                // `http://host?q`: the path is `/`.
                Some(at) => return ("/", &rest[at + 1..]),
                None => "/",
            }
        }
        None => target,
    };
    target.split_once('?').unwrap_or((target, ""))
}

/// The subprotocol names of the JSON protocol and its MessagePack twin.
pub(crate) const JSON_PROTOCOL: &str = "shardcast.json";
pub(crate) const MSGPACK_PROTOCOL: &str = "shardcast.msgpack";

/// How a WebSocket session speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Session {
    /// `GET /ws[?sub=a,b][&batch=1][&delta=fossil]`: the JSON protocol,
    /// with channels to subscribe at connect time (with deltas if asked),
    /// and envelopes batched into frames if asked (`conn/batch.rs`).
    Json {
        subscribe: Vec<String>,
        batch: bool,
        delta: bool,
    },
    /// `GET /ws/<channel>[?echo=0]`: a raw room.
    /// `?since=N&epoch=E`: replay what the room published after `N`.
    Room {
        channel: String,
        echo: bool,
        since: Option<(u64, String)>,
    },
}

impl Session {
    /// The codec the session speaks.
    pub(crate) fn codec(&self) -> Codec {
        match self {
            Session::Json { .. } => Codec::JSON,
            Session::Room { .. } => Codec::RAW,
        }
    }

    /// The subprotocol to answer for a client that offered `offers`
    /// (`Sec-WebSocket-Protocol`): `shardcast.msgpack` if offered on `/ws`
    /// (the JSON protocol's ops in MessagePack), else `shardcast.json` if
    /// offered there; none for a raw room or other offers (the JSON
    /// protocol, or the room, as without the header).
    pub(crate) fn subprotocol(&self, offers: Option<&str>) -> Option<&'static str> {
        let offered = |name: &str| offers.is_some_and(|o| o.split(',').any(|p| p.trim() == name));
        match self {
            Session::Json { .. } if offered(MSGPACK_PROTOCOL) => Some(MSGPACK_PROTOCOL),
            Session::Json { .. } if offered(JSON_PROTOCOL) => Some(JSON_PROTOCOL),
            _ => None,
        }
    }

    /// The channels the URL subscribes at connect time.
    pub(crate) fn channels(&self) -> Vec<&str> {
        match self {
            Session::Json { subscribe, .. } => subscribe.iter().map(String::as_str).collect(),
            Session::Room { channel, .. } => vec![channel.as_str()],
        }
    }

    /// Whether the client asked for envelopes batched into frames.
    pub(crate) fn batches(&self) -> bool {
        matches!(self, Session::Json { batch: true, .. })
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    WebSocket(Session),
    Publish,
    Health,
    /// `GET /`: the live dashboard page.
    Dashboard,
    /// `GET /metrics`: Prometheus exposition.
    Metrics,
    /// `GET /api/stats`: the same figures as JSON.
    Stats,
    /// `POST /api/drain`: the node drains and exits.
    Drain,
    /// `GET /api/presence/<ch>?cursor=..&limit=..`: a presence channel's
    /// members.
    Presence(api_query::PresenceQuery),
    /// `GET /api/history/<ch>?since=..&epoch=..&limit=..`.
    History(api_query::HistoryQuery),
    /// `GET /api/channels?pattern=..&cursor=..&limit=..`.
    Channels(api_query::ChannelsQuery),
    /// `POST /api/disconnect`.
    Disconnect,
    /// `POST /api/unsubscribe`.
    Unsubscribe,
}

impl Route {
    /// Admin routes: on `--admin-listen` when it is set.
    pub(crate) fn is_admin(&self) -> bool {
        matches!(self, Route::Dashboard | Route::Metrics | Route::Stats)
    }

    /// Routes that act on other people's connections or on the node
    /// (`POST /api/drain`, `/api/disconnect`, `/api/unsubscribe`): without
    /// `--api-key` they are served on `--admin-listen` only.
    pub(crate) fn is_operator(&self) -> bool {
        matches!(self, Route::Drain | Route::Disconnect | Route::Unsubscribe)
    }

    /// Routes that need the API key when one is configured.
    pub(crate) fn needs_api_key(&self) -> bool {
        !matches!(self, Route::Health | Route::Dashboard | Route::WebSocket(_))
    }
}

/// Routes a parsed head. WebSocket routes are checked for a valid upgrade.
pub(crate) fn route(head: &Head, max_subscriptions: usize) -> Result<Route, HttpError> {
    let path = head.path.as_str();
    if let Some((route, method)) = plain_route(path) {
        return only(method, head).map(|()| route);
    }
    if let Some(route) = api_query_route(head) {
        return route;
    }
    let session = websocket_session(path, &head.query, max_subscriptions)?;
    check_upgrade(head)?;
    Ok(Route::WebSocket(session))
}

/// The routes whose path is all there is to them, and the one method each
/// takes.
fn plain_route(path: &str) -> Option<(Route, Method)> {
    let route = match path {
        "/health" => (Route::Health, Method::Get),
        "/" | "/dashboard" => (Route::Dashboard, Method::Get),
        "/metrics" => (Route::Metrics, Method::Get),
        "/api/stats" => (Route::Stats, Method::Get),
        "/api/publish" => (Route::Publish, Method::Post),
        "/api/drain" => (Route::Drain, Method::Post),
        "/api/disconnect" => (Route::Disconnect, Method::Post),
        "/api/unsubscribe" => (Route::Unsubscribe, Method::Post),
        _ => return None,
    };
    Some(route)
}

/// The API's `GET` routes that read a channel from the path or values from
/// the query (a malformed escape in the query: 400 `bad_json`, as other bad
/// values there); `None` for other paths.
fn api_query_route(head: &Head) -> Option<Result<Route, HttpError>> {
    type Parse = fn(&str, &str) -> Result<Route, HttpError>;
    let (path, query) = (head.path.as_str(), head.query.as_str());
    let (channel, parse): (&str, Parse) = if path == "/api/channels" {
        ("", |_, query| {
            api_query::parse_channels(query).map(Route::Channels)
        })
    } else if let Some(channel) = path.strip_prefix("/api/history/") {
        (channel, |channel, query| {
            api_query::parse_history(channel, query).map(Route::History)
        })
    } else if let Some(channel) = path.strip_prefix("/api/presence/") {
        (channel, |channel, query| {
            api_query::parse_presence(channel, query).map(Route::Presence)
        })
    } else {
        return None;
    };
    Some(only(Method::Get, head).and_then(|()| {
        refuse_bad_escapes(query, |_| ErrorCode::BadJson.as_str())?;
        parse(channel, query)
    }))
}

/// `/ws` (the JSON protocol, `?sub=` channels) or `/ws/<channel>` (a raw
/// room); 404 for any other path. A malformed escape in any query value is
/// refused (`?sub=` with one: `bad_channel`, like the room's name).
fn websocket_session(
    path: &str,
    query: &str,
    max_subscriptions: usize,
) -> Result<Session, HttpError> {
    let room = match path {
        "/ws" => None,
        _ => Some(
            path.strip_prefix("/ws/")
                .ok_or_else(|| HttpError::new(404, "not_found", format!("no route for {path}")))?,
        ),
    };
    refuse_bad_escapes(query, |key| match key {
        "sub" => ErrorCode::BadChannel.as_str(),
        _ => "bad_request",
    })?;
    match room {
        None => json_session(query, max_subscriptions),
        Some(room) => room_session(room, query),
    }
}

/// `/ws?sub=a,b&batch=1&delta=fossil`: the channels to subscribe at
/// connect time (each checked, repeats dropped, at most
/// `max_subscriptions`), batching and deltas.
fn json_session(query: &str, max_subscriptions: usize) -> Result<Session, HttpError> {
    let mut subscribe = Vec::new();
    for value in query_values(query, "sub") {
        for name in value.split(',').filter(|n| !n.is_empty()) {
            check_channel(name, Access::Subscribe)?;
            if !subscribe.iter().any(|s| s == name) {
                subscribe.push(name.to_owned());
            }
        }
    }
    if subscribe.len() > max_subscriptions {
        return Err(HttpError::new(
            400,
            ErrorCode::TooManySubscriptions.as_str(),
            format!("at most {max_subscriptions} channels in ?sub="),
        ));
    }
    let batch = query_values(query, "batch").any(|v| v == "1" || v == "true");
    let delta = match query_values(query, "delta").last() {
        None => false,
        Some(value) => protocol::read_delta(Some(&value), None)
            .map_err(|e| HttpError::new(400, e.code.as_str(), e.msg))?,
    };
    Ok(Session::Json {
        subscribe,
        batch,
        delta,
    })
}

/// `/ws/<channel>?echo=0&since=N&epoch=E`: a raw room (its name
/// percent-decoded and checked as a channel one may publish on).
fn room_session(room: &str, query: &str) -> Result<Session, HttpError> {
    let channel = percent_decode(room).ok_or_else(|| {
        HttpError::new(
            400,
            ErrorCode::BadChannel.as_str(),
            "bad percent-encoding in channel",
        )
    })?;
    check_channel(&channel, Access::Publish)?;
    let echo = !query_values(query, "echo").any(|v| v == "0" || v == "false");
    let since = room_since(query)?;
    Ok(Session::Room {
        channel,
        echo,
        since,
    })
}

/// What a WebSocket upgrade needs (RFC 6455 §4.2.1): `GET` over HTTP/1.1,
/// `Upgrade: websocket`, version 13 and a well-formed key.
fn check_upgrade(head: &Head) -> Result<(), HttpError> {
    only(Method::Get, head)?;
    let refuse = |status, code, msg| Err(HttpError::new(status, code, msg));
    if !head.http11 {
        return refuse(400, "bad_request", "a WebSocket upgrade needs HTTP/1.1");
    }
    if !head.wants_websocket {
        return refuse(
            426,
            "upgrade_required",
            "this endpoint speaks WebSocket: send Upgrade: websocket",
        );
    }
    if head.ws_version.as_deref() != Some("13") {
        return refuse(426, "upgrade_required", "Sec-WebSocket-Version must be 13");
    }
    match head.ws_key.as_deref() {
        None => refuse(400, "bad_request", "missing Sec-WebSocket-Key"),
        Some(key) if !valid_ws_key(key) => refuse(
            400,
            "bad_request",
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        ),
        Some(_) => Ok(()),
    }
}

/// 405 unless the request's method is `method`.
fn only(method: Method, head: &Head) -> Result<(), HttpError> {
    match head.method == method {
        true => Ok(()),
        false => Err(method_not_allowed()),
    }
}

/// RFC 6455 §4.2.1: the key is base64 that decodes to exactly 16 bytes.
fn valid_ws_key(key: &str) -> bool {
    use base64::Engine as _;
    // 16 bytes are 24 base64 characters; a longer key cannot be valid.
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
}

/// Refuses (400, with the code `code_for` gives the value's key) a query
/// any of whose values [`percent_decode`] would refuse, instead of
/// [`query_values`] dropping the value. Allocates only for a value with
/// escapes (to check the decoded bytes are UTF-8).
fn refuse_bad_escapes(
    query: &str,
    code_for: impl Fn(&str) -> &'static str,
) -> Result<(), HttpError> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decodes = escapes_are_well_formed(value.as_bytes())
            && percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .is_ok();
        if !decodes {
            return Err(HttpError::new(
                400,
                code_for(key),
                format!("bad percent-encoding in the value of {key:?}"),
            ));
        }
    }
    Ok(())
}

/// `since` and `epoch` of a raw room's query (both or neither).
fn room_since(query: &str) -> Result<Option<(u64, String)>, HttpError> {
    let Some(since) = query_values(query, "since").next() else {
        return Ok(None);
    };
    let bad = |msg: &str| HttpError::new(400, "bad_request", msg.to_owned());
    let seq = since
        .parse()
        .map_err(|_| bad("since must be a sequence number"))?;
    let epoch = query_values(query, "epoch")
        .next()
        .filter(|e| !e.is_empty() && e.len() <= 64)
        .ok_or_else(|| bad("since needs the epoch it belongs to"))?;
    Ok(Some((seq, epoch)))
}

fn method_not_allowed() -> HttpError {
    HttpError::new(405, "method_not_allowed", "method not allowed here")
}

/// Refuses a channel name as the WebSocket routes and the API do.
pub(crate) fn check_channel(name: &str, access: Access) -> Result<(), HttpError> {
    channel::validate(name, access).map_err(|e| {
        let code = protocol::channel_error_code(e);
        HttpError::new(code.http_status(), code.as_str(), format!("{name:?}: {e}"))
    })
}

/// Percent-decoded values of `key` in a query string (a routed query has
/// none that fail to decode: [`refuse_bad_escapes`]).
pub(crate) fn query_values<'a>(query: &'a str, key: &'a str) -> impl Iterator<Item = String> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v)).flatten()
    })
}

/// Decodes `%XX` escapes (and `+` as space, as forms send it); `None` if an
/// escape is malformed (a `%` not followed by two hex digits: `%zz`, `%4`,
/// `%+1`) or the bytes are not UTF-8. One allocation, the result's.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    if !escapes_are_well_formed(text.as_bytes()) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    // `+` is split on before decoding, so an escaped `%2B` stays a `+`.
    for (i, part) in text.split('+').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend(percent_encoding::percent_decode_str(part));
    }
    String::from_utf8(out).ok()
}

/// Every `%` starts `%XX` with two hex digits (the `percent-encoding` crate
/// passes a malformed escape through as text; here it is refused).
fn escapes_are_well_formed(text: &[u8]) -> bool {
    memchr::memchr_iter(b'%', text).all(|at| {
        matches!(text.get(at + 1..at + 3), Some([high, low])
            if high.is_ascii_hexdigit() && low.is_ascii_hexdigit())
    })
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// A complete response with a body.
pub(crate) fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            status_text(status),
            body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        )
        .as_bytes(),
    );
    if status == 426 {
        out.extend_from_slice(b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A JSON response `{"error":code,"msg":..}` for `error`.
pub(crate) fn error_response(error: &HttpError, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({ "error": error.code, "msg": error.msg }).to_string();
    response(
        error.status,
        "application/json",
        body.as_bytes(),
        keep_alive,
    )
}

/// The 101 response completing a WebSocket handshake, with the extensions
/// agreed (a `Sec-WebSocket-Extensions` value) and the subprotocol chosen,
/// if any.
pub(crate) fn switching_protocols(
    key: &str,
    extensions: Option<&str>,
    protocol: Option<&str>,
) -> Vec<u8> {
    let accept = async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(extensions) = extensions {
        response.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
    }
    if let Some(protocol) = protocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    response.push_str("\r\n");
    response.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "Host: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        assert_eq!(parse_head(b"GET /ws HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse_head(big.as_bytes()).unwrap_err().status, 431);
        assert_eq!(
            parse_head(b"\x16\x03\x01garbage\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn websocket_routes() {
        let h = head(&format!("GET /ws?sub=a,b&sub=c,a HTTP/1.1\r\n{UPGRADE}"));
        assert_eq!(
            route(&h, 10),
            Ok(Route::WebSocket(Session::Json {
                subscribe: vec!["a".into(), "b".into(), "c".into()],
                batch: false,
                delta: false,
            }))
        );
        let h = head(&format!("GET /ws/lobby?echo=0 HTTP/1.1\r\n{UPGRADE}"));
        assert_eq!(
            route(&h, 10),
            Ok(Route::WebSocket(Session::Room {
                channel: "lobby".into(),
                echo: false,
                since: None,
            }))
        );
        let h = head(&format!(
            "GET /ws/lobby?since=41&epoch=ab-1 HTTP/1.1\r\n{UPGRADE}"
        ));
        assert!(matches!(
            route(&h, 10),
            Ok(Route::WebSocket(Session::Room { since: Some((41, ref e)), .. })) if e == "ab-1"
        ));
        let h = head(&format!("GET /ws/lobby?since=41 HTTP/1.1\r\n{UPGRADE}"));
        assert_eq!(route(&h, 10).unwrap_err().status, 400, "since needs epoch");
        let h = head(&format!("GET /ws/lobby HTTP/1.1\r\n{UPGRADE}"));
        assert!(matches!(
            route(&h, 10),
            Ok(Route::WebSocket(Session::Room { echo: true, .. }))
        ));
    }

    #[test]
    fn websocket_route_errors() {
        let status = |text: String| route(&head(&text), 2).unwrap_err().status;
        assert_eq!(status("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".into()), 426);
        assert_eq!(
            status(format!("GET /ws?sub=a%20b HTTP/1.1\r\n{UPGRADE}")),
            400
        );
        assert_eq!(
            status(format!("GET /ws?sub=a,b,c HTTP/1.1\r\n{UPGRADE}")),
            400
        );
        assert_eq!(status(format!("GET /ws/$sys HTTP/1.1\r\n{UPGRADE}")), 400);
        assert_eq!(status(format!("POST /ws HTTP/1.1\r\n{UPGRADE}")), 405);
        assert_eq!(status(format!("GET /nope HTTP/1.1\r\n{UPGRADE}")), 404);
        let old = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(status(format!("GET /ws HTTP/1.1\r\n{old}")), 426);
        let keyless = UPGRADE.replace("Sec-WebSocket-Key", "X-Key");
        assert_eq!(status(format!("GET /ws HTTP/1.1\r\n{keyless}")), 400);
    }

    #[test]
    fn http_routes_and_keep_alive() {
        let h = head("POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(route(&h, 1), Ok(Route::Publish));
        assert_eq!(h.content_length, Some(12));
        assert!(h.keep_alive);
        let h = head("GET /health HTTP/1.0\r\n\r\n");
        assert_eq!(route(&h, 1), Ok(Route::Health));
        assert!(!h.keep_alive);
        let h = head("GET /api/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(route(&h, 1).unwrap_err().status, 405);
        assert!(!h.keep_alive);
    }

    #[test]
    fn content_length_is_one_number() {
        let parse = |lines: &str| {
            parse_head(format!("POST /api/publish HTTP/1.1\r\nHost: x\r\n{lines}\r\n").as_bytes())
                .map(|h| h.unwrap().content_length)
                .map_err(|e| e.status)
        };
        assert_eq!(parse("Content-Length:  22 \r\n"), Ok(Some(22)));
        assert_eq!(
            parse("Content-Length: 22\r\nContent-Length: 22\r\n"),
            Ok(Some(22))
        );
        for refused in [
            "Content-Length: 5\r\nContent-Length: 22\r\n",
            "Content-Length: +22\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 22, 22\r\n",
            "Content-Length: 0x16\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999999\r\n",
            "Content-Length: 22\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip\r\nContent-Length: 22\r\n",
        ] {
            assert_eq!(parse(refused), Err(400), "{refused:?}");
        }
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\xff\r\n\r\n";
        assert_eq!(parse_head(raw).unwrap_err().status, 400, "not UTF-8");
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        let status = |text: &str| {
            parse_head(text.as_bytes())
                .map(|_| ())
                .map_err(|e| e.status)
        };
        assert_eq!(status("GET /health HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(
            status("GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            status("GET /health HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"),
            Err(400)
        );
        assert_eq!(status("GET /health HTTP/1.0\r\n\r\n"), Ok(()));
        assert_eq!(status("GET /health HTTP/1.1\r\nHost:\r\n\r\n"), Ok(()));
    }

    #[test]
    fn upgrades_are_checked_as_rfc_6455_says() {
        let status = |text: String| route(&head(&text), 2).map(|_| ()).map_err(|e| e.status);
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        for bad_key in [
            "abc",
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=!",
        ] {
            let text = format!("GET /ws HTTP/1.1\r\n{}", UPGRADE.replace(key, bad_key));
            assert_eq!(status(text), Err(400), "key {bad_key:?}");
        }
        let twice = UPGRADE.replace("\r\n\r\n", &format!("\r\nSec-WebSocket-Key: {key}\r\n\r\n"));
        assert_eq!(status(format!("GET /ws HTTP/1.1\r\n{twice}")), Err(400));
        assert_eq!(status(format!("GET /ws HTTP/1.0\r\n{UPGRADE}")), Err(400));
        // RFC 9110 §5.3: header lines of one name combine into one list.
        let split = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Connection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(status(format!("GET /ws HTTP/1.1\r\n{split}")), Ok(()));
        let split = UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c\r\nUpgrade: websocket");
        assert_eq!(status(format!("GET /ws HTTP/1.1\r\n{split}")), Ok(()));
        let h = head("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n");
        assert!(!h.keep_alive, "close anywhere in the list wins");
    }

    #[test]
    fn absolute_form_targets_route_by_path_and_query() {
        let h = head("GET http://127.0.0.1:8080/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(
            (h.path.as_str(), route(&h, 1)),
            ("/health", Ok(Route::Health))
        );
        let h = head(&format!(
            "GET HTTPS://example.com/ws?sub=a HTTP/1.1\r\n{UPGRADE}"
        ));
        assert_eq!(
            route(&h, 1),
            Ok(Route::WebSocket(Session::Json {
                subscribe: vec!["a".into()],
                batch: false,
                delta: false,
            }))
        );
        assert_eq!(split_target("http://example.com"), ("/", ""));
        assert_eq!(split_target("http://example.com?x=1"), ("/", "x=1"));
        assert_eq!(split_target("/a/b?c=d?e"), ("/a/b", "c=d?e"));
    }

    #[test]
    fn malformed_escapes_in_query_values_are_refused() {
        let error = |target: &str| {
            route(&head(&format!("GET {target} HTTP/1.1\r\n{UPGRADE}")), 8).unwrap_err()
        };
        for target in ["/ws?sub=news,%zz", "/ws?sub=%+1", "/ws/%+1", "/ws/a%2"] {
            let refused = error(target);
            assert_eq!(
                (refused.status, refused.code),
                (400, "bad_channel"),
                "{target}"
            );
        }
        for target in [
            "/ws?token=%zz",
            "/ws?token=%+1",
            "/ws?sub=news&other=%4",
            "/ws/lobby?echo=%zz",
            "/ws/lobby?since=1&epoch=%e9",
            "/ws/lobby?since=%31%",
        ] {
            let refused = error(target);
            assert_eq!(
                (refused.status, refused.code),
                (400, "bad_request"),
                "{target}"
            );
        }
        let h = head(&format!(
            "GET /ws?sub=a%2Cb&token=x%2By HTTP/1.1\r\n{UPGRADE}"
        ));
        assert!(route(&h, 8).is_ok());
        assert_eq!(h.token().as_deref(), Some("x+y"));
    }

    #[test]
    fn malformed_escapes_in_api_queries_are_refused() {
        let error = |target: &str| {
            route(
                &head(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n")),
                8,
            )
            .unwrap_err()
        };
        for target in [
            "/api/history/news?since=%+1",
            "/api/history/news?limit=%zz",
            "/api/history/%+1",
            "/api/channels?pattern=news.%2",
            "/api/presence/room?cursor=%e9",
            "/api/presence/%zz",
        ] {
            let refused = error(target);
            assert_eq!(
                (refused.status, refused.code),
                (400, "bad_json"),
                "{target}"
            );
        }
        let h = head("GET /api/history/a%2Eb?since=%31 HTTP/1.1\r\nHost: x\r\n\r\n");
        let Ok(Route::History(query)) = route(&h, 8) else {
            panic!("{:?}", route(&h, 8));
        };
        assert_eq!((query.ch.as_str(), query.since), ("a.b", 1));
        let post = head("POST /api/channels?pattern=%zz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(route(&post, 8).unwrap_err().status, 405, "the method first");
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let text =
            String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", None, None)).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb+c"), Some("a,b c".into()));
        assert_eq!(percent_decode("a%2Bb"), Some("a+b".into()), "an escaped +");
        assert_eq!(percent_decode("%e2%82%AC"), Some("€".into()), "either case");
        assert_eq!(percent_decode("café"), Some("café".into()));
        assert_eq!(percent_decode(""), Some(String::new()));
        assert_eq!(percent_decode("%25"), Some("%".into()));
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for text in [
            "%zz", "%4", "%", "a%", "%+1", "%-1", "% 1", "%1g", "%%41", "a%2", "%é0",
        ] {
            assert_eq!(percent_decode(text), None, "{text:?}");
        }
        assert_eq!(percent_decode("%e9"), None, "Latin-1, not UTF-8");
        assert_eq!(percent_decode("%c3%28"), None, "a broken sequence");
    }
}
