//! The HTTP/1.1 side of the single listening port: parsing a request head
//! (httparse), routing it, and writing responses — including the 101 that
//! upgrades to WebSocket. Pure functions over byte buffers; the connection
//! task does the I/O.

use crate::{
    channel::{self, Access},
    protocol::{self, ErrorCode},
    security::api_key::bearer,
};

/// Largest request head accepted (431 above).
pub const MAX_HEAD_BYTES: usize = 8192;
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// The parts of a request head shardcast uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    pub path: String,
    pub query: String,
    /// `Upgrade: websocket` and `Connection: upgrade` both present.
    pub wants_websocket: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub keep_alive: bool,
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
    pub fn token(&self) -> Option<String> {
        query_values(&self.query, "token").next().or_else(|| {
            self.authorization
                .as_deref()
                .and_then(bearer)
                .map(str::to_owned)
        })
    }

    /// The API key: `X-API-Key`, else `Authorization: Bearer`.
    pub fn presented_api_key(&self) -> Option<&str> {
        self.api_key
            .as_deref()
            .or_else(|| self.authorization.as_deref().and_then(bearer))
    }
}

/// A request refused with an HTTP status and a JSON body
/// `{"error":code,"msg":..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub code: &'static str,
    pub msg: String,
}

impl HttpError {
    pub fn new(status: u16, code: &'static str, msg: impl Into<String>) -> Self {
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
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
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
    let method = match request.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let http11 = request.version == Some(1);
    let mut head = Head {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        wants_websocket: false,
        ws_key: None,
        ws_version: None,
        content_length: None,
        chunked: false,
        keep_alive: http11,
        origin: None,
        authorization: None,
        api_key: None,
        len,
    };
    let (mut upgrade, mut connection_upgrade) = (false, false);
    for header in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            continue;
        };
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = header_has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade = header_has_token(value, "upgrade");
            if header_has_token(value, "close") {
                head.keep_alive = false;
            } else if header_has_token(value, "keep-alive") {
                head.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            let parsed = value.trim().parse().map_err(|_| {
                HttpError::new(400, "bad_request", "Content-Length is not a number")
            })?;
            head.content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("x-api-key") {
            head.api_key = Some(value.trim().to_owned());
        }
    }
    head.wants_websocket = upgrade && connection_upgrade;
    Ok(Some(head))
}

/// How a WebSocket session speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// `GET /ws[?sub=a,b]`: the JSON protocol, with channels to subscribe at
    /// connect time.
    Json { subscribe: Vec<String> },
    /// `GET /ws/<channel>[?echo=0]`: a raw room.
    /// `?since=N&epoch=E`: replay what the room published after `N`.
    Room {
        channel: String,
        echo: bool,
        since: Option<(u64, String)>,
    },
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    WebSocket(Session),
    Publish,
    Health,
    /// `GET /`: the live dashboard page.
    Dashboard,
    /// `GET /metrics`: Prometheus exposition.
    Metrics,
    /// `GET /api/stats`: the same figures as JSON.
    Stats,
}

impl Route {
    /// Admin routes: on `--admin-listen` when it is set.
    pub fn is_admin(&self) -> bool {
        matches!(self, Route::Dashboard | Route::Metrics | Route::Stats)
    }

    /// Routes that need the API key when one is configured.
    pub fn needs_api_key(&self) -> bool {
        matches!(self, Route::Publish | Route::Metrics | Route::Stats)
    }
}

/// Routes a parsed head. WebSocket routes are checked for a valid upgrade.
pub fn route(head: &Head, max_subscriptions: usize) -> Result<Route, HttpError> {
    let path = head.path.as_str();
    let page = match path {
        "/health" => Some(Route::Health),
        "/" | "/dashboard" => Some(Route::Dashboard),
        "/metrics" => Some(Route::Metrics),
        "/api/stats" => Some(Route::Stats),
        _ => None,
    };
    if let Some(page) = page {
        return match head.method {
            Method::Get => Ok(page),
            _ => Err(method_not_allowed()),
        };
    }
    if path == "/api/publish" {
        return match head.method {
            Method::Post => Ok(Route::Publish),
            _ => Err(method_not_allowed()),
        };
    }
    let session = if path == "/ws" {
        let mut subscribe = Vec::new();
        for value in query_values(&head.query, "sub") {
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
        Session::Json { subscribe }
    } else if let Some(room) = path.strip_prefix("/ws/") {
        let channel = percent_decode(room).ok_or_else(|| {
            HttpError::new(
                400,
                ErrorCode::BadChannel.as_str(),
                "bad percent-encoding in channel",
            )
        })?;
        check_channel(&channel, Access::Publish)?;
        let echo = !query_values(&head.query, "echo").any(|v| v == "0" || v == "false");
        let since = room_since(&head.query)?;
        Session::Room {
            channel,
            echo,
            since,
        }
    } else {
        return Err(HttpError::new(
            404,
            "not_found",
            format!("no route for {path}"),
        ));
    };
    if head.method != Method::Get {
        return Err(method_not_allowed());
    }
    if !head.wants_websocket {
        return Err(HttpError::new(
            426,
            "upgrade_required",
            "this endpoint speaks WebSocket: send Upgrade: websocket",
        ));
    }
    if head.ws_version.as_deref() != Some("13") {
        return Err(HttpError::new(
            426,
            "upgrade_required",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    if head.ws_key.is_none() {
        return Err(HttpError::new(
            400,
            "bad_request",
            "missing Sec-WebSocket-Key",
        ));
    }
    Ok(Route::WebSocket(session))
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

fn check_channel(name: &str, access: Access) -> Result<(), HttpError> {
    channel::validate(name, access).map_err(|e| {
        let code = protocol::channel_error_code(e);
        HttpError::new(code.http_status(), code.as_str(), format!("{name:?}: {e}"))
    })
}

/// Percent-decoded values of `key` in a query string.
fn query_values<'a>(query: &'a str, key: &'a str) -> impl Iterator<Item = String> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v)).flatten()
    })
}

/// Decodes `%XX` escapes (and `+` as space); `None` if malformed or not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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
        _ => "Unknown",
    }
}

/// A complete response with a body.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
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
pub fn error_response(error: &HttpError, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({ "error": error.code, "msg": error.msg }).to_string();
    response(
        error.status,
        "application/json",
        body.as_bytes(),
        keep_alive,
    )
}

/// The 101 response completing a WebSocket handshake.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    let accept = async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
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
                subscribe: vec!["a".into(), "b".into(), "c".into()]
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
        let h = head("POST /api/publish HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(route(&h, 1), Ok(Route::Publish));
        assert_eq!(h.content_length, Some(12));
        assert!(h.keep_alive);
        let h = head("GET /health HTTP/1.0\r\n\r\n");
        assert_eq!(route(&h, 1), Ok(Route::Health));
        assert!(!h.keep_alive);
        let h = head("GET /api/publish HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(route(&h, 1).unwrap_err().status, 405);
        assert!(!h.keep_alive);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let text = String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb+c"), Some("a,b c".into()));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
