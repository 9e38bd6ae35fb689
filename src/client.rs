//! `shardcast sub` and `shardcast pub`: a command-line client of the JSON
//! protocol, on async-tungstenite over glommio (the client side is where a
//! general-purpose WebSocket implementation is the right tool). `sub` prints
//! one envelope (or its `data`) per line and, unless told `--once`,
//! reconnects with backoff and resumes every channel from the last `seq` it
//! printed; when the server answers with a new epoch (it restarted), it
//! replays the new epoch's history from its start, so what was published
//! while it was away is not lost as far as history holds it. `pub` publishes its argument or one publication per line of
//! standard input and prints each acknowledged `seq`; `--http` publishes
//! through `POST /api/publish` instead. Failures map to exit codes scripts
//! can tell apart ([`ClientError::exit_code`]); a close from the server is
//! reported with its code and reason.
//!
//! A server is not trusted to be well-behaved: connecting (TCP, TLS, the
//! upgrade) has a deadline, a connection on which the server sends nothing
//! at all (not even a ping) for the idle timeout is taken for lost, an HTTP
//! answer is read up to 1 MiB, messages up to 64 MiB, and what the socket
//! does not take (pongs to a server that does not read, a publication) is
//! held up to a bound — 64 KiB for `sub`, 64 MiB (the largest publication)
//! for `pub` — beyond which a single pong waits, each replacing the last.

use std::{
    collections::HashMap,
    io::{self, BufRead, Read, Write},
    net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs},
    path::PathBuf,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use async_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Message,
    },
    WebSocketStream,
};
use futures_lite::{AsyncRead, AsyncWrite, FutureExt, StreamExt};
use futures_rustls::client::TlsStream;
use glommio::{
    channels::shared_channel::{self, ConnectedReceiver},
    net::TcpStream,
};
use serde_json::{json, Value};

use crate::tls_client::Tls;

/// Longest wait between two reconnection attempts of `sub`.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Default of `--handshake-timeout`: connecting, TLS and the upgrade (and
/// the whole of an HTTP publish).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--idle-timeout`: twice a default server's ping interval plus
/// its ping timeout (2 × 25 s + 10 s, rounded up), so a live default server
/// always sends something (at least a ping) well within it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(70);
/// The largest HTTP answer `pub --http` reads (a publish answer is a few
/// bytes; an error page a few hundred).
const MAX_HTTP_ANSWER: usize = 1 << 20;
/// The largest message read from the server (a server's own limit is
/// 64 KiB of data by default; its envelopes and presence pages are larger).
const MAX_MESSAGE: usize = 64 << 20;
/// Bytes written but not yet taken by the socket (our publications, and the
/// pongs answering the server's pings). Over it a publication fails, and
/// pongs wait in tungstenite's single slot, each replacing the last.
const MAX_UNSENT: usize = 64 << 10;

/// Why the client stopped, as its exit code tells.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The arguments do not make sense (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The server refused: no or a wrong token, not permitted, an `err` (exit 3).
    #[error("refused: {0}")]
    Refused(String),
    /// The server could not be reached, or the connection broke (exit 4).
    #[error("connection failed: {0}")]
    Connection(String),
}

impl ClientError {
    /// 2 bad usage, 3 refused or unauthorized, 4 connection failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Refused(_) => 3,
            ClientError::Connection(_) => 4,
        }
    }
}

/// What `shardcast sub` was asked.
#[derive(Debug, Clone)]
pub struct SubOptions {
    /// `ws://HOST:PORT[/path]`; the path defaults to `/ws`.
    pub url: String,
    pub channels: Vec<String>,
    /// Print only each message's `data`.
    pub data_only: bool,
    /// Resume after this `seq` (with `epoch`).
    pub since: Option<u64>,
    pub epoch: Option<String>,
    pub token: Option<String>,
    /// Do not reconnect: the first disconnection ends the command.
    pub once: bool,
    /// Exit after printing this many messages.
    pub count: Option<u64>,
    pub tls: TlsOptions,
    pub timeouts: Timeouts,
}

/// How long the client waits on the server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To connect, finish TLS and the upgrade; `pub --http`: the whole
    /// exchange.
    pub handshake: Duration,
    /// Nothing at all from the server (not even a ping) for this long: the
    /// connection is taken for lost (`sub` reconnects).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: DEFAULT_HANDSHAKE_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// How a `wss://` URL's server is verified.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA (or self-signed certificate) to trust.
    pub ca: Option<PathBuf>,
    /// The name the certificate must carry (default: the URL's host).
    pub server_name: Option<String>,
}

/// What `shardcast pub` was asked.
#[derive(Debug, Clone)]
pub struct PubOptions {
    pub url: String,
    pub channel: String,
    /// One publication; `None`: one per line of standard input.
    pub data: Option<String>,
    pub token: Option<String>,
    /// Publish through `POST /api/publish` with this API key (if any).
    pub http: bool,
    pub api_key: Option<String>,
    pub tls: TlsOptions,
    pub timeouts: Timeouts,
}

/// Where a `ws://` or `wss://` URL points.
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
    /// `wss://`: the TLS to speak.
    tls: Option<Tls>,
}

/// Parses a `ws://` or `wss://` URL (the `url` crate; no port: 80 or 443,
/// no path: `/ws`) and looks its host up.
fn parse_url(text: &str, tls: &TlsOptions) -> Result<Target, ClientError> {
    let usage = |what: &dyn std::fmt::Display| ClientError::Usage(format!("{text}: {what}"));
    let not_ws = "use a ws:// or wss:// URL";
    let url = url::Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => usage(&not_ws),
        e => usage(&e),
    })?;
    let secure = match url.scheme() {
        "ws" => false,
        "wss" => true,
        _ => return Err(usage(&not_ws)),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(usage(&"credentials in the URL are not sent: use --token"));
    }
    let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
        return Err(usage(&"no host"));
    };
    let addr = format!("{host}:{port}")
        .to_socket_addrs()
        .map_err(|e| usage(&e))?
        .next()
        .ok_or_else(|| usage(&"no address"))?;
    let tls = match (secure, &tls.ca) {
        (false, _) => None,
        (true, None) => {
            return Err(usage(
                &"wss:// needs --tls-ca (the CA that signed the server's certificate)",
            ))
        }
        (true, Some(ca)) => {
            let name = match (&tls.server_name, &host) {
                (Some(name), _) => name.clone(),
                // A certificate names an IPv6 address without brackets.
                (None, url::Host::Ipv6(address)) => address.to_string(),
                (None, host) => host.to_string(),
            };
            Some(Tls::new(ca, &name).map_err(|e| ClientError::Usage(e.to_string()))?)
        }
    };
    // "/" is the dashboard, never a WebSocket: a URL without a path means /ws.
    let path = match &url[url::Position::BeforePath..url::Position::AfterQuery] {
        "/" => "/ws".to_owned(),
        query if query.starts_with("/?") => format!("/ws{}", &query[1..]),
        path => path.to_owned(),
    };
    Ok(Target {
        addr,
        // As the `Host` header has it: the port only when not the default.
        host: url[url::Position::BeforeHost..url::Position::AfterPort].to_owned(),
        path,
        tls,
    })
}

/// A JSON line of standard input as JSON, any other line as a JSON string.
pub fn line_as_data(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_owned()))
}

/// Runs `sub` to its end on an executor of its own.
pub fn run_sub(options: SubOptions) -> Result<(), ClientError> {
    let target = parse_url(&options.url, &options.tls)?;
    if options.channels.is_empty() {
        return Err(ClientError::Usage("name at least one channel".into()));
    }
    if options.since.is_some() != options.epoch.is_some() {
        return Err(ClientError::Usage("--since and --epoch go together".into()));
    }
    on_executor(subscribe_loop(target, options))
}

/// Runs `pub` to its end on an executor of its own.
pub fn run_pub(options: PubOptions) -> Result<(), ClientError> {
    let target = parse_url(&options.url, &options.tls)?;
    if options.http && target.tls.is_some() {
        return Err(ClientError::Usage(
            "--http publishes over plain HTTP only".into(),
        ));
    }
    if options.http {
        let lines: Box<dyn Iterator<Item = String>> = match options.data.clone() {
            Some(data) => Box::new(std::iter::once(data)),
            None => Box::new(std::io::stdin().lock().lines().map_while(Result::ok)),
        };
        for line in lines {
            let seq = http_publish(&target, &options, line_as_data(&line))?;
            println!("{seq}");
        }
        return Ok(());
    }
    on_executor(publish_all(target, options))
}

/// What `pub` publishes: its one DATA, or the lines of standard input as
/// they come, read on a thread of its own so that the connection is served
/// (pings answered, a close noticed) while the input is quiet.
enum Input {
    One(Option<String>),
    Stdin(ConnectedReceiver<String>),
}

impl Input {
    async fn open(data: Option<String>) -> Result<Input, ClientError> {
        if let Some(data) = data {
            return Ok(Input::One(Some(data)));
        }
        let (lines, received) = shared_channel::new_bounded(64);
        let executor = glommio::LocalExecutorBuilder::default().io_memory(64 << 10);
        executor
            .spawn(move || async move {
                let lines = lines.connect().await;
                for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                    if lines.send(line).await.is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| ClientError::Connection(format!("cannot read standard input: {e}")))?;
        Ok(Input::Stdin(received.connect().await))
    }

    /// The next line; `None` at the end of the input.
    async fn next(&mut self) -> Option<String> {
        match self {
            Input::One(data) => data.take(),
            Input::Stdin(lines) => lines.recv().await,
        }
    }
}

/// What came first while `pub` waited for its next line.
enum Waited {
    Line(Option<String>),
    Server(Result<Incoming, ClientError>),
}

fn on_executor<T: 'static>(
    future: impl std::future::Future<Output = Result<T, ClientError>> + 'static,
) -> Result<T, ClientError> {
    glommio::LocalExecutorBuilder::default()
        .io_memory(64 << 10)
        .make()
        .map_err(|e| ClientError::Connection(format!("cannot start an executor: {e}")))?
        .run(future)
}

type Socket = WebSocketStream<ClientStream>;

/// A client's socket, with or without TLS over it.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    fn pinned(&mut self) -> Pin<&mut (dyn ReadWrite + Unpin)> {
        match self {
            ClientStream::Plain(stream) => Pin::new(stream),
            ClientStream::Tls(stream) => Pin::new(&mut **stream),
        }
    }
}

/// Both halves of a stream, as one trait object.
trait ReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> ReadWrite for T {}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.pinned().poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pinned().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pinned().poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pinned().poll_close(cx)
    }
}

/// Opens the WebSocket, with the token as a bearer header if given; the
/// TCP connect, TLS and the upgrade together within the handshake timeout.
async fn connect(
    target: &Target,
    token: Option<&str>,
    timeouts: Timeouts,
    max_unsent: usize,
) -> Result<Socket, ClientError> {
    let scheme = if target.tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{}{}", target.host, target.path);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Usage(format!("{url}: {e}")))?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ClientError::Usage("the token is not a valid header value".into()))?;
        request.headers_mut().insert("Authorization", value);
    }
    let config = WebSocketConfig::default()
        .write_buffer_size(0)
        .max_write_buffer_size(max_unsent)
        .max_message_size(Some(MAX_MESSAGE));
    let handshake = async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| ClientError::Connection(format!("{}: {e}", target.addr)))?;
        let stream = match &target.tls {
            None => ClientStream::Plain(tcp),
            Some(tls) => {
                ClientStream::Tls(Box::new(tls.connect(tcp).await.map_err(|e| {
                    ClientError::Connection(format!("TLS: {}", tls_failure(&e)))
                })?))
            }
        };
        Ok(async_tungstenite::client_async_with_config(request, stream, Some(config)).await)
    };
    let upgraded = glommio::timer::timeout(timeouts.handshake, async { Ok(handshake.await) })
        .await
        .map_err(|_| {
            ClientError::Connection(format!(
                "{}: no WebSocket connection within {:?} (--handshake-timeout)",
                target.addr, timeouts.handshake
            ))
        })??;
    match upgraded {
        Ok((socket, _)) => Ok(socket),
        Err(async_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            Err(match status.as_u16() {
                401 | 403 | 429 => ClientError::Refused(format!("HTTP {status}: {body}")),
                _ => ClientError::Connection(format!("HTTP {status}: {body}")),
            })
        }
        Err(e) => Err(ClientError::Connection(e.to_string())),
    }
}

/// A failed TLS handshake in words: what rustls found wrong with the
/// server's certificate, and what to do about it.
fn tls_failure(error: &io::Error) -> String {
    let shown = error.to_string();
    // rustls reports a CA certificate presented as the server's own (what
    // `openssl req -x509` makes by default) as an opaque webpki error.
    if shown.contains("CaUsedAsEndEntity") {
        return "the server's certificate is a CA certificate (basicConstraints CA:TRUE, \
                what `openssl req -x509` makes unless told otherwise), which TLS clients \
                refuse as a server's own. Give the server a certificate made with \
                `-addext basicConstraints=critical,CA:FALSE` (README.md shows the command), \
                or one signed by a CA and pass that CA with --tls-ca"
            .into();
    }
    let Some(rustls::Error::InvalidCertificate(why)) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return shown;
    };
    match why {
        rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => {
            "the server's certificate is not signed by the --tls-ca given (pass the CA that \
             signed it, or the server's own self-signed certificate)"
                .into()
        }
        rustls::CertificateError::NotValidForName
        | rustls::CertificateError::NotValidForNameContext { .. } => format!(
            "the server's certificate is not for this name ({shown}); connect by a name it \
             carries, or say which with --tls-server-name"
        ),
        rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
            format!("the server's certificate has expired ({shown})")
        }
        _ => shown,
    }
}

async fn send(socket: &mut Socket, value: Value) -> Result<(), ClientError> {
    socket
        .send(Message::text(value.to_string()))
        .await
        .map_err(|e| ClientError::Connection(e.to_string()))
}

/// What the server sent next.
enum Incoming {
    Envelope(Value),
    /// The connection ended: the server's close frame (code, reason), if
    /// it sent one.
    Closed(Option<(u16, String)>),
}

/// A closed connection as the error it is: a close code that says the
/// client was refused (a message too large, a policy such as the publish
/// rate, not authorized, disconnected by the API) is a refusal (exit 3),
/// anything else (a restart, a ping timeout, no close frame) a lost
/// connection (exit 4).
fn closed_error(close: &Option<(u16, String)>) -> ClientError {
    match close {
        Some((1003 | 1007 | 1008 | 1009 | 4000..=4999, _)) => ClientError::Refused(closing(close)),
        _ => ClientError::Connection(closing(close)),
    }
}

/// "the server closed the connection: 1009 message too large".
fn closing(close: &Option<(u16, String)>) -> String {
    match close {
        Some((code, reason)) => format!("the server closed the connection: {code} {reason}"),
        None => "the server closed the connection (no close frame)".into(),
    }
}

/// The next JSON envelope from the server, or how the connection ended.
/// Silence (not even a ping) for the idle timeout is an error.
async fn next_envelope(socket: &mut Socket, idle: Duration) -> Result<Incoming, ClientError> {
    loop {
        let next = glommio::timer::timeout(idle, async { Ok(socket.next().await) })
            .await
            .map_err(|_| {
                ClientError::Connection(format!(
                    "nothing from the server for {idle:?}, not even a ping (--idle-timeout): \
                     taken for lost"
                ))
            })?;
        match next {
            None => return Ok(Incoming::Closed(None)),
            Some(Ok(Message::Close(frame))) => {
                let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                return Ok(Incoming::Closed(close));
            }
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .map(Incoming::Envelope)
                    .map_err(|e| {
                        ClientError::Connection(format!("not JSON from the server: {e}"))
                    });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ClientError::Connection(e.to_string())),
        }
    }
}

/// An `err` envelope as the error it is.
fn refusal(envelope: &Value) -> ClientError {
    let code = envelope["code"].as_str().unwrap_or("error");
    let msg = envelope["msg"].as_str().unwrap_or("");
    ClientError::Refused(format!("{code}: {msg}"))
}

/// How one connection of `sub` ended, when not with an error.
enum SubEnd {
    /// `--count` messages were printed.
    Counted,
    /// The server closed (its close code and reason, if it sent them).
    Closed(Option<(u16, String)>),
}

/// Subscribes, prints, and (unless `--once`) reconnects and resumes.
async fn subscribe_loop(target: Target, options: SubOptions) -> Result<(), ClientError> {
    let mut subscriber = Subscriber::new(&options);
    let mut backoff = Duration::from_millis(100);
    loop {
        match subscriber.connection(&target).await {
            Ok(SubEnd::Counted) => return Ok(()),
            Err(e @ (ClientError::Refused(_) | ClientError::Usage(_))) => return Err(e),
            // --once: a normal close ends it well; any other is its error.
            Ok(SubEnd::Closed(Some((1000, _)))) if options.once => return Ok(()),
            Ok(SubEnd::Closed(close)) if options.once => return Err(closed_error(&close)),
            Err(e) if options.once => return Err(e),
            Ok(SubEnd::Closed(close)) => {
                eprintln!(
                    "shardcast sub: {}; reconnecting in {backoff:?}",
                    closing(&close)
                )
            }
            Err(e) => eprintln!("shardcast sub: {e}; reconnecting in {backoff:?}"),
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What `sub` keeps across its connections: where each channel stands and
/// how much it printed.
struct Subscriber<'a> {
    options: &'a SubOptions,
    /// The last seq printed of each channel, and its epoch.
    positions: HashMap<String, (u64, String)>,
    printed: u64,
}

impl<'a> Subscriber<'a> {
    /// Every channel starts at `--since`/`--epoch` when given.
    fn new(options: &'a SubOptions) -> Self {
        let mut positions = HashMap::new();
        if let (Some(seq), Some(epoch)) = (options.since, &options.epoch) {
            for ch in &options.channels {
                positions.insert(ch.clone(), (seq, epoch.clone()));
            }
        }
        Subscriber {
            options,
            positions,
            printed: 0,
        }
    }

    /// One connection: subscribes every channel (resuming where it stands),
    /// then prints until `--count`, a close, an `err` or a failure.
    async fn connection(&mut self, target: &Target) -> Result<SubEnd, ClientError> {
        let options = self.options;
        // `sub` sends only its subscriptions: what the socket does not
        // take beyond 64 KiB (pongs to a server that does not read) is
        // not kept.
        let mut socket = connect(
            target,
            options.token.as_deref(),
            options.timeouts,
            MAX_UNSENT,
        )
        .await?;
        for (i, ch) in options.channels.iter().enumerate() {
            let mut sub = json!({"op": "sub", "ch": ch, "id": format!("s{i}")});
            if let Some((seq, epoch)) = self.positions.get(ch) {
                sub["since"] = json!(seq);
                sub["epoch"] = json!(epoch);
            }
            send(&mut socket, sub).await?;
        }
        // Channels being replayed from the start of a new epoch: their
        // live messages wait for the replay, which repeats them.
        let mut resyncing: Vec<String> = Vec::new();
        loop {
            let envelope = match next_envelope(&mut socket, options.timeouts.idle).await? {
                Incoming::Envelope(envelope) => envelope,
                Incoming::Closed(close) => return Ok(SubEnd::Closed(close)),
            };
            match envelope["op"].as_str() {
                Some("msg") if self.print(&envelope, &resyncing) => return Ok(SubEnd::Counted),
                Some("ack") => {
                    if let Some(resync) = self.acknowledged(&envelope, &mut resyncing) {
                        send(&mut socket, resync).await?;
                    }
                }
                Some("err") => return Err(refusal(&envelope)),
                _ => {}
            }
        }
    }

    /// Prints a `msg` (unless its channel is being replayed) and moves its
    /// channel's position; `true` once `--count` messages are printed.
    fn print(&mut self, envelope: &Value, resyncing: &[String]) -> bool {
        let (Some(ch), Some(seq)) = (envelope["ch"].as_str(), envelope["seq"].as_u64()) else {
            return false;
        };
        if resyncing.iter().any(|r| r == ch) {
            return false;
        }
        let epoch = self
            .positions
            .get(ch)
            .map(|p| p.1.clone())
            .unwrap_or_default();
        self.positions.insert(ch.to_owned(), (seq, epoch));
        let line = match self.options.data_only {
            true => envelope["data"].to_string(),
            false => envelope.to_string(),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        self.printed += 1;
        self.options
            .count
            .is_some_and(|count| self.printed >= count)
    }

    /// A sub ack names the channel's epoch and where it stands. A new
    /// epoch (the server restarted, or the channel's state was reclaimed)
    /// cannot resume from our seq: the new epoch's history is replayed from
    /// its start instead, so what was published since is not lost. Returns
    /// the `sub` that asks for that replay.
    fn acknowledged(&mut self, envelope: &Value, resyncing: &mut Vec<String>) -> Option<Value> {
        let id = envelope["id"].as_str().unwrap_or("");
        let (kind, index) = id.split_at(id.len().min(1));
        let ch = index
            .parse::<usize>()
            .ok()
            .and_then(|i| self.options.channels.get(i));
        let (Some(ch), Some(epoch)) = (ch, envelope["epoch"].as_str()) else {
            return None;
        };
        let seq = envelope["seq"].as_u64().unwrap_or(0);
        if kind == "r" {
            resyncing.retain(|r| r != ch);
            return None;
        }
        match self.positions.get(ch) {
            Some((_, known)) if known != epoch => {
                resyncing.push(ch.clone());
                self.positions.insert(ch.clone(), (0, epoch.to_owned()));
                Some(json!({"op": "sub", "ch": ch, "id": format!("r{index}"),
                            "since": 0, "epoch": epoch}))
            }
            Some(_) if envelope["recovered"] != json!(false) => None,
            _ => {
                self.positions.insert(ch.clone(), (seq, epoch.to_owned()));
                None
            }
        }
    }
}

/// Publishes each line and prints its acknowledged `seq`, in order.
async fn publish_all(target: Target, options: PubOptions) -> Result<(), ClientError> {
    let idle = options.timeouts.idle;
    let mut socket = connect(
        &target,
        options.token.as_deref(),
        options.timeouts,
        MAX_MESSAGE,
    )
    .await?;
    let mut input = Input::open(options.data.clone()).await?;
    for i in 0u64.. {
        let waited = async { Waited::Line(input.next().await) }
            .or(async { Waited::Server(next_envelope(&mut socket, idle).await) })
            .await;
        let line = match waited {
            Waited::Line(Some(line)) => line,
            Waited::Line(None) => break,
            Waited::Server(Ok(Incoming::Envelope(envelope))) if envelope["op"] == "err" => {
                return Err(refusal(&envelope))
            }
            Waited::Server(Ok(Incoming::Envelope(_))) => continue,
            Waited::Server(Ok(Incoming::Closed(close))) => return Err(closed_error(&close)),
            Waited::Server(Err(e)) => return Err(e),
        };
        let op = json!({"op": "pub", "ch": options.channel, "data": line_as_data(&line), "id": i});
        if let Err(error) = send(&mut socket, op).await {
            // The server may have closed while we wrote (a message over its
            // limit): its close frame, if it got through, says why.
            return Err(
                match next_envelope(&mut socket, Duration::from_secs(1)).await {
                    Ok(Incoming::Closed(close @ Some(_))) => closed_error(&close),
                    _ => error,
                },
            );
        }
        loop {
            let envelope = match next_envelope(&mut socket, idle).await? {
                Incoming::Envelope(envelope) => envelope,
                Incoming::Closed(close) => return Err(closed_error(&close)),
            };
            match envelope["op"].as_str() {
                Some("ack") if envelope["id"] == json!(i) => {
                    println!("{}", envelope["seq"]);
                    break;
                }
                Some("err") => return Err(refusal(&envelope)),
                _ => {}
            }
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}

/// One `POST /api/publish`, answered within the handshake timeout and in
/// at most [`MAX_HTTP_ANSWER`] bytes; returns the `seq`.
fn http_publish(target: &Target, options: &PubOptions, data: Value) -> Result<u64, ClientError> {
    let body = json!({"ch": options.channel, "data": data}).to_string();
    let mut request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        target.host,
        body.len()
    );
    if let Some(key) = &options.api_key {
        request.push_str(&format!("X-API-Key: {key}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let within = options.timeouts.handshake;
    let deadline = Instant::now() + within;
    let connection = |e: std::io::Error| ClientError::Connection(format!("{}: {e}", target.addr));
    let late = || {
        ClientError::Connection(format!(
            "{}: no complete answer within {within:?} (--handshake-timeout)",
            target.addr
        ))
    };
    let mut stream = StdTcpStream::connect_timeout(&target.addr, within).map_err(connection)?;
    stream.set_write_timeout(Some(within)).map_err(connection)?;
    stream.write_all(request.as_bytes()).map_err(connection)?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(late)?;
        stream.set_read_timeout(Some(left)).map_err(connection)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(late())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(connection(e)),
        };
        if response.len() + n > MAX_HTTP_ANSWER {
            return Err(ClientError::Connection(format!(
                "{}: the answer is over {} KiB; not an answer of shardcast's",
                target.addr,
                MAX_HTTP_ANSWER >> 10
            )));
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let response = String::from_utf8_lossy(&response);
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Connection("not an HTTP response".into()))?;
    let reply = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let reply: Value = serde_json::from_str(reply).unwrap_or(Value::Null);
    match status {
        200 => reply["seq"]
            .as_u64()
            .ok_or_else(|| ClientError::Connection("no seq in the answer".into())),
        400..=499 => Err(refusal(&reply)),
        _ => Err(ClientError::Connection(format!("HTTP {status}: {reply}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_json_and_any_other_line_a_string() {
        assert_eq!(line_as_data(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(line_as_data("42"), json!(42));
        assert_eq!(line_as_data("hello there"), json!("hello there"));
    }

    #[test]
    fn urls_name_the_json_protocol_by_default() {
        let plain = TlsOptions::default();
        let target = parse_url("ws://127.0.0.1:8080", &plain).unwrap();
        assert_eq!((target.path.as_str(), target.addr.port()), ("/ws", 8080));
        let target = parse_url("ws://127.0.0.1:8080/ws?token=x", &plain).unwrap();
        assert_eq!(target.path, "/ws?token=x");
        let code = |url| parse_url(url, &plain).err().map(|e| e.exit_code());
        assert_eq!(code("http://x:1"), Some(2));
        assert_eq!(code("wss://127.0.0.1:1"), Some(2), "wss:// needs --tls-ca");
        assert_eq!(code("127.0.0.1:8080"), Some(2));
        assert_eq!(code("ws://u:p@127.0.0.1:1"), Some(2), "credentials");
        assert_eq!(code("ws://:1"), Some(2), "no host");
        assert_eq!(code("ws://h:99999"), Some(2), "no such port");
        let message = |url| parse_url(url, &plain).err().unwrap().to_string();
        assert_eq!(
            message("http://x:1"),
            "http://x:1: use a ws:// or wss:// URL"
        );
        assert_eq!(message("x"), "x: use a ws:// or wss:// URL");
        let target = parse_url("ws://127.0.0.1:8080?sub=a", &plain).unwrap();
        assert_eq!(target.path, "/ws?sub=a", "no path: /ws");
        let target = parse_url("ws://127.0.0.1:8080/#top", &plain).unwrap();
        assert_eq!(
            target.path, "/ws",
            "/ is the dashboard; a fragment is not sent"
        );
    }

    #[test]
    fn a_url_without_a_port_takes_its_schemes_default() {
        let plain = TlsOptions::default();
        assert_eq!(parse_url("ws://127.0.0.1", &plain).unwrap().addr.port(), 80);
        let target = parse_url("ws://127.0.0.1/ws?sub=news", &plain).unwrap();
        assert_eq!(
            (target.addr.port(), target.host.as_str()),
            (80, "127.0.0.1")
        );
        let port = |url| parse_url(url, &plain).unwrap().addr.port();
        assert_eq!(port("ws://localhost"), 80);
        assert_eq!(port("ws://localhost:8443"), 8443);
        assert_eq!(port("ws://[::1]"), 80);
        assert_eq!(port("ws://[::1]:8443"), 8443);
        let target = parse_url("ws://[::1]:8443/ws", &plain).unwrap();
        assert_eq!(target.host, "[::1]:8443", "the Host header");
    }

    #[test]
    fn wss_urls_name_the_server_as_its_certificate_does() {
        // The port a wss:// URL defaults to, and the name TLS checks: an
        // IPv6 address without brackets (with them, no valid server name).
        let dir = std::env::temp_dir().join(format!("shardcast-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let tls = TlsOptions {
            ca: Some(ca),
            server_name: None,
        };
        assert_eq!(parse_url("wss://localhost", &tls).unwrap().addr.port(), 443);
        assert_eq!(parse_url("wss://[::1]", &tls).unwrap().addr.port(), 443);
        assert_eq!(
            parse_url("wss://[::1]:8443", &tls).unwrap().host,
            "[::1]:8443"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
