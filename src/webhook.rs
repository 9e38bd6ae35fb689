//! Lifecycle webhooks (`--webhook-url`): events are queued on the shard
//! where they happen — connections on their own shard, channel events
//! (occupied, vacated, subscribed, unsubscribed) on the channel's owner, so
//! a channel's events are in one queue and keep their order — and each
//! shard's sender POSTs them as `{"events":[…]}`, at most `--webhook-batch`
//! per request and at most 100 ms after the first is queued, signed with
//! `X-Shardcast-Signature: sha256=<hex HMAC-SHA256 of the body>`. A failed
//! request (no connection, a status other than 2xx, no answer within 5 s)
//! is retried, the same batch, with backoff and jitter, before anything
//! newer. The queue is bounded in events and in bytes (and its bytes are
//! counted by the shard's memory budget): what does not fit is counted and
//! dropped, never waited for. The HTTP client is a few lines of HTTP/1.1 over
//! glommio's `TcpStream` (one connection per request, `Connection: close`),
//! through rustls for an `https` URL (the web's roots, or `--webhook-ca`).
//! Which events there are and where they are emitted is decided by the
//! core (`shardcast_core::lifecycle`, which also writes an [`Event`]'s
//! JSON); the shard's side is `shard::lifecycle`. [`settings`] declares the
//! webhook settings.

pub(crate) mod settings;

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::Path,
    rc::Rc,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) use shardcast_core::lifecycle::Event;

use crate::{
    engine::backoff::Backoff,
    random,
    stats::{bump, Stats},
    sync::WaitQueue,
    tls_client::{web_roots_config, Tls, TlsError},
};

/// How long a batch waits for more events after its first.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// Time allowed for one request, connect to status line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shard uses the receiver's address before looking it up again.
pub(crate) const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Why a webhook URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookUrlError {
    #[error("webhook-url must be http://host[:port]/path or https://host[:port]/path: {0}")]
    Form(String),
    #[error("webhook-url {url} does not resolve: {reason}")]
    Resolve { url: String, reason: String },
    #[error("webhook TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Where webhooks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `https://`: the request goes over TLS.
    pub tls: bool,
    /// The host, as the receiver's certificate must name it (an IPv6
    /// address without its brackets).
    pub host: String,
    /// `host:port` (the port given, or 80 / 443), for `Host:` and to
    /// connect to.
    pub host_port: String,
    /// The request target (`/` when the URL has no path).
    pub path: String,
    /// The URL as configured (`check-config` shows it).
    pub text: String,
}

impl WebhookUrl {
    /// Parses an `http://` or `https://` URL (the `url` crate: IDNA names,
    /// IPv6 literals, the scheme's default port). Refused: another scheme,
    /// no host, credentials (nothing would send them), and whitespace or
    /// control characters anywhere (the `url` crate would drop or escape
    /// them). A fragment is dropped (never sent).
    pub fn parse(text: &str) -> Result<Self, WebhookUrlError> {
        let bad = || WebhookUrlError::Form(text.into());
        if text
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad());
        }
        let url = url::Url::parse(text).map_err(|_| bad())?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(bad()),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad());
        }
        let (host, host_port) = match (url.host(), url.port_or_known_default()) {
            (Some(host), Some(port)) => (bare_host(&host), format!("{host}:{port}")),
            _ => return Err(bad()),
        };
        Ok(WebhookUrl {
            tls,
            host,
            host_port,
            path: url[url::Position::BeforePath..url::Position::AfterQuery].into(),
            text: text.into(),
        })
    }

    pub fn resolve(&self) -> Result<SocketAddr, WebhookUrlError> {
        crate::engine::addr::resolve(&self.host_port).map_err(|reason| WebhookUrlError::Resolve {
            url: self.host_port.clone(),
            reason,
        })
    }

    /// The TLS client for an `https` URL (`None` for `http`): the receiver
    /// must chain to the certificates in `ca` (PEM), or without it to the
    /// web's roots, and be named `host`.
    pub fn tls(&self, ca: Option<&Path>) -> Result<Option<Tls>, WebhookUrlError> {
        if !self.tls {
            return Ok(None);
        }
        let tls = match ca {
            Some(ca) => Tls::new(ca, &self.host)?,
            None => Tls::with_config(web_roots_config()?, &self.host)?,
        };
        Ok(Some(tls))
    }
}

/// A host as a certificate names it: an IPv6 address without brackets.
fn bare_host(host: &url::Host<&str>) -> String {
    match host {
        url::Host::Ipv6(address) => address.to_string(),
        host => host.to_string(),
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// `{"events":[e1,e2,…]}`.
pub(crate) fn batch_body(events: &[Bytes]) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + events.iter().map(|e| e.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.extend_from_slice(b"]}");
    body
}

/// The request for `body`.
pub(crate) fn request(url: &WebhookUrl, body: &[u8], signature: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: shardcast/{}\r\n",
        url.path,
        url.host_port,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(signature) = signature {
        head.push_str("X-Shardcast-Signature: ");
        head.push_str(signature);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// The status code of an HTTP response's first line, once it has come.
pub(crate) fn status_of(response: &[u8]) -> Option<u16> {
    let line_end = memchr::memmem::find(response, b"\r\n")?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// What one queued event is counted as: its JSON, its allocation's
/// header, and its slot in the queue.
fn event_weight(json: &Bytes) -> usize {
    json.len() + 16 + std::mem::size_of::<Bytes>()
}

/// What the whole node shares for its webhooks.
pub(crate) struct WebhookSettings {
    pub url: WebhookUrl,
    /// The receiver's address as resolved at start (each shard looks it
    /// up again, see [`RESOLVE_EVERY`]).
    pub socket: SocketAddr,
    /// For an `https` URL.
    pub tls: Option<Tls>,
    pub secret: Option<String>,
    pub batch: usize,
    /// Events one shard may hold before it drops new ones.
    pub queue: usize,
    /// Bytes of events one shard may hold before it drops new ones (an
    /// event carries a user id and a channel name a client chose).
    pub queue_bytes: usize,
    pub node: String,
    /// The node's event counter (every shard's events).
    pub seq: Arc<AtomicU64>,
}

/// A queued event, and the connection it is about.
struct Queued {
    json: Bytes,
    conn: Option<Rc<str>>,
}

/// The share of the queue one connection's events may hold: a connection
/// that churns (or many events of one) cannot crowd out everyone else's.
fn share_per_connection(queue: usize) -> u32 {
    u32::try_from(queue / 64).unwrap_or(u32::MAX).max(16)
}

/// One shard's queue of events and its sender.
pub(crate) struct Webhooks {
    settings: Arc<WebhookSettings>,
    queue: RefCell<VecDeque<Queued>>,
    /// Events queued per connection (those about one), to hold each to
    /// [`share_per_connection`].
    per_conn: RefCell<HashMap<Rc<str>, u32>>,
    /// What the queued events hold ([`event_weight`]).
    queued_bytes: Cell<usize>,
    /// When the oldest queued event was queued (shard ns; 0: none).
    oldest: Cell<u64>,
    waiting: WaitQueue,
    /// The receiver's address, and when it was looked up (shard ns).
    resolved: Cell<(SocketAddr, u64)>,
}

impl Webhooks {
    pub(crate) fn new(settings: Arc<WebhookSettings>) -> Self {
        Webhooks {
            resolved: Cell::new((settings.socket, crate::clock::now_ns())),
            settings,
            queue: RefCell::new(VecDeque::new()),
            per_conn: RefCell::new(HashMap::new()),
            queued_bytes: Cell::new(0),
            oldest: Cell::new(0),
            waiting: WaitQueue::default(),
        }
    }

    /// The receiver's address: looked up again once [`RESOLVE_EVERY`] has
    /// passed or a connect failed (a receiver behind DNS moves), on the
    /// executor's blocking thread — a lookup blocks, the shard must not.
    /// A failed lookup keeps the address known.
    async fn address(&self) -> SocketAddr {
        let (known, at) = self.resolved.get();
        let age = Duration::from_nanos(crate::clock::now_ns().saturating_sub(at));
        if age < RESOLVE_EVERY {
            return known;
        }
        let host_port = &self.settings.url.host_port;
        let addr = crate::engine::addr::lookup(host_port, known, "the webhook receiver").await;
        self.resolved.set((addr, crate::clock::now_ns()));
        addr
    }

    /// What the queued events hold, for the shard's memory budget.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Queues `event`; counted and dropped when the queue is full, or
    /// holds its connection's share already.
    pub(crate) fn emit(&self, event: Event<'_>, stats: &Stats) {
        // A dropped event's seq is skipped: the receiver sees the gap.
        let seq = self.settings.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let time_ms = (crate::process::unix_seconds() * 1e3) as u64;
        let json = event.json(&self.settings.node, seq, time_ms);
        let mut queue = self.queue.borrow_mut();
        let mut per_conn = self.per_conn.borrow_mut();
        let bytes = self.queued_bytes.get() + event_weight(&json);
        let conn = event.conn();
        let held = conn.and_then(|c| per_conn.get(c)).copied().unwrap_or(0);
        if queue.len() >= self.settings.queue
            || bytes > self.settings.queue_bytes
            || held >= share_per_connection(self.settings.queue)
        {
            bump(&stats.webhook_events_dropped, 1);
            if stats.webhook_events_dropped.get().is_power_of_two() {
                tracing::warn!(
                    dropped = stats.webhook_events_dropped.get(),
                    "webhook queue full (or one connection's share of it): events dropped"
                );
            }
            return;
        }
        let conn: Option<Rc<str>> = conn.map(|c| match per_conn.get_key_value(c) {
            Some((key, _)) => key.clone(),
            None => Rc::from(c),
        });
        if let Some(conn) = &conn {
            *per_conn.entry(conn.clone()).or_insert(0) += 1;
        }
        self.queued_bytes.set(bytes);
        queue.push_back(Queued { json, conn });
        if queue.len() == 1 {
            self.oldest.set(crate::clock::now_ns());
        }
        drop((queue, per_conn));
        bump(&stats.webhook_events, 1);
        self.waiting.wake_all();
    }

    /// Takes the first `sent` events out of the queue.
    fn sent(&self, sent: usize) {
        let mut queue = self.queue.borrow_mut();
        let mut per_conn = self.per_conn.borrow_mut();
        let sent = sent.min(queue.len());
        for event in queue.drain(..sent) {
            self.queued_bytes
                .set(self.queued_bytes.get() - event_weight(&event.json));
            if let Some(conn) = event.conn {
                if let Some(held) = per_conn.get_mut(&conn) {
                    *held -= 1;
                    if *held == 0 {
                        per_conn.remove(&conn);
                    }
                }
            }
        }
        if !queue.is_empty() {
            self.oldest.set(crate::clock::now_ns());
        }
    }

    /// Sends queued events until the shard drops the future: a batch when
    /// it is full or its first event is 100 ms old, retried until it is
    /// taken.
    pub(crate) async fn run(&self, stats: &Stats) {
        let mut backoff = Backoff::default();
        loop {
            self.waiting.until(|| !self.queue.borrow().is_empty()).await;
            let full = || self.queue.borrow().len() >= self.settings.batch;
            if !full() {
                let age =
                    Duration::from_nanos(crate::clock::now_ns().saturating_sub(self.oldest.get()));
                if let Some(left) = BATCH_WINDOW.checked_sub(age) {
                    let _ = glommio::timer::timeout(left, async {
                        self.waiting.until(full).await;
                        Ok(())
                    })
                    .await;
                }
            }
            let batch: Vec<Bytes> = {
                let queue = self.queue.borrow();
                queue
                    .iter()
                    .take(self.settings.batch)
                    .map(|e| e.json.clone())
                    .collect()
            };
            let body = batch_body(&batch);
            let signature = self
                .settings
                .secret
                .as_deref()
                .map(|s| signature(s.as_bytes(), &body));
            let request = request(&self.settings.url, &body, signature.as_deref());
            bump(&stats.webhook_requests, 1);
            match self.send(&request).await {
                Ok(status) if (200..300).contains(&status) => {
                    backoff.reset();
                    self.sent(batch.len());
                }
                outcome => {
                    bump(&stats.webhook_failures, 1);
                    let delay = backoff.next_delay(random::u64());
                    tracing::warn!(?outcome, retry_in = ?delay, events = batch.len(), "webhook request failed");
                    glommio::timer::sleep(delay).await;
                }
            }
        }
    }

    /// One request; the response's status.
    async fn send(&self, request: &[u8]) -> Result<u16, String> {
        let exchange = async {
            let addr = self.address().await;
            let tcp = match glommio::net::TcpStream::connect(addr).await {
                Ok(tcp) => tcp,
                Err(error) => {
                    // Look it up again before the retry.
                    self.resolved.set((addr, 0));
                    return Err(error.to_string());
                }
            };
            match &self.settings.tls {
                Some(tls) => {
                    let stream = tls.connect(tcp).await.map_err(|e| format!("TLS: {e}"))?;
                    exchange(stream, request).await
                }
                None => exchange(tcp, request).await,
            }
        };
        glommio::timer::timeout(REQUEST_TIMEOUT, async { Ok(exchange.await) })
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }
}

/// Writes `request` and reads until the response's status line.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &[u8],
) -> Result<u16, String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut response = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(status) = status_of(&response) {
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 || response.len() > 8192 {
            return Err("no status line".to_string());
        }
        response.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings for `http://localhost:9/hooks`, resolved at start to
    /// `socket`, holding `queue` events and `queue_bytes` bytes.
    fn settings(socket: &str, queue: usize, queue_bytes: usize) -> Arc<WebhookSettings> {
        Arc::new(WebhookSettings {
            url: WebhookUrl::parse("http://localhost:9/hooks").unwrap(),
            socket: socket.parse().unwrap(),
            tls: None,
            secret: None,
            batch: 100,
            queue,
            queue_bytes,
            node: "n".into(),
            seq: Arc::default(),
        })
    }

    #[test]
    fn urls_parse_and_refuse_what_is_not_http_or_https() {
        let url = WebhookUrl::parse("http://127.0.0.1:9000/hooks/shardcast").unwrap();
        assert_eq!(
            (url.host_port.as_str(), url.path.as_str()),
            ("127.0.0.1:9000", "/hooks/shardcast")
        );
        assert_eq!(WebhookUrl::parse("http://h:1").unwrap().path, "/");
        let https = WebhookUrl::parse("https://hooks.example.com/in").unwrap();
        assert_eq!(
            (https.tls, https.host.as_str(), https.host_port.as_str()),
            (true, "hooks.example.com", "hooks.example.com:443")
        );
        assert_eq!(WebhookUrl::parse("http://h/").unwrap().host_port, "h:80");
        let v6 = WebhookUrl::parse("https://[::1]:8443/x").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.host_port.as_str()),
            ("::1", "[::1]:8443")
        );
        assert_eq!(
            WebhookUrl::parse("http://[::1]").unwrap().host_port,
            "[::1]:80"
        );
        let url = WebhookUrl::parse("HTTPS://Hooks.Example.com:443/in?via=sc#top").unwrap();
        assert_eq!(
            (url.host.as_str(), url.host_port.as_str(), url.path.as_str()),
            ("hooks.example.com", "hooks.example.com:443", "/in?via=sc")
        );
        let idna = WebhookUrl::parse("https://bücher.example/").unwrap();
        assert_eq!(idna.host_port, "xn--bcher-kva.example:443");
        for bad in [
            "http://h:1/\ta",
            "hooks.example.com/in",
            "http://user:pw@h/",
            "http://h:+1/",
            "http://h^/",
            "http://:1/",
            "ftp://h:1",
            "http://h:1/a b",
            "http://h:99999/",
            "http://h:x/",
            "http://user@h/",
            "http://[::1/",
            "http://[::1]x/",
            "https://",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_receivers_address_is_looked_up_again_when_stale() {
        // Resolved at start to an address the name has since moved from.
        let settings = settings("192.0.2.7:9", 10, 1 << 20);
        let webhooks = Webhooks::new(settings);
        crate::sync::on_test_executor(async {
            let moved: SocketAddr = "192.0.2.7:9".parse().unwrap();
            assert_eq!(webhooks.address().await, moved, "fresh: not looked up");
            // As after a failed connect (or RESOLVE_EVERY later).
            webhooks.resolved.set((moved, 0));
            let now = webhooks.address().await;
            assert!(now.ip().is_loopback() && now.port() == 9, "{now}");
            assert_eq!(webhooks.address().await, now, "kept until stale again");
        });
    }

    /// Long user ids (a token's `sub` is the client's to choose) fill the
    /// queue's bytes long before its count: new events are dropped and
    /// counted, their seqs skipped, and what is held stays under the bound.
    #[test]
    fn the_queue_is_bounded_in_bytes_and_drops_skip_their_seq() {
        let settings = settings("127.0.0.1:9", 100_000, 64 << 10);
        let webhooks = Webhooks::new(settings.clone());
        let stats = Stats::default();
        let user = "u".repeat(2700);
        for _ in 0..100 {
            let event = Event::Connected {
                user: &user,
                conn: "c",
            };
            webhooks.emit(event, &stats);
        }
        let held = webhooks.queue.borrow().len();
        assert!((20..24).contains(&held), "{held} events held");
        assert!(webhooks.queued_bytes() <= 64 << 10);
        assert_eq!(stats.webhook_events_dropped.get(), 100 - held as u64);
        assert_eq!(settings.seq.load(Ordering::Relaxed), 100);
    }

    /// One connection's events hold at most its share of the queue; the
    /// others' still get in, and a sent batch frees the share.
    #[test]
    fn one_connection_gets_its_share_of_the_queue_not_all_of_it() {
        let settings = settings("127.0.0.1:9", 6400, 16 << 20);
        let webhooks = Webhooks::new(settings);
        let stats = Stats::default();
        fn subscribed(conn: &str) -> Event<'_> {
            Event::Subscribed {
                ch: "room",
                user: "u",
                conn,
            }
        }
        for _ in 0..1000 {
            webhooks.emit(subscribed("churner"), &stats);
        }
        for user in 0..20 {
            webhooks.emit(subscribed(&format!("user{user}")), &stats);
        }
        webhooks.emit(Event::ChannelOccupied { ch: "room" }, &stats);
        assert_eq!(webhooks.queue.borrow().len(), 100 + 20 + 1);
        assert_eq!(stats.webhook_events_dropped.get(), 900);
        webhooks.sent(50);
        webhooks.emit(subscribed("churner"), &stats);
        assert_eq!(webhooks.per_conn.borrow()["churner"], 51);
        webhooks.sent(1000);
        assert!(webhooks.per_conn.borrow().is_empty());
        assert_eq!(webhooks.queued_bytes(), 0);
    }

    #[test]
    fn events_batches_and_signatures_are_what_receivers_check() {
        let event = Event::Disconnected {
            user: "alice",
            conn: "n.0.1.1",
            reason: "slow_consumer",
        };
        let json: serde_json::Value =
            serde_json::from_slice(&event.json("node-a", 7, 1000)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event":"disconnected","user":"alice","conn":"n.0.1.1","reason":"slow_consumer","node":"node-a","seq":7,"time_ms":1000})
        );
        let anonymous = Event::Connected {
            user: "",
            conn: "c",
        }
        .json("n", 1, 0);
        assert!(!String::from_utf8_lossy(&anonymous).contains("user"));
        let body = batch_body(&[
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ]);
        assert_eq!(body, b"{\"events\":[{\"a\":1},{\"b\":2}]}");
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let request = request(
            &WebhookUrl::parse("http://h:1/x").unwrap(),
            &body,
            Some("sha256=ab"),
        );
        let text = String::from_utf8(request).unwrap();
        assert!(text.starts_with("POST /x HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(text.contains("\r\nX-Shardcast-Signature: sha256=ab\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"events\":[{\"a\":1},{\"b\":2}]}"));
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.1 500"), None, "not a whole line yet");
        assert_eq!(status_of(b"SSH-2.0\r\n"), None);
    }
}
