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
//! can tell apart ([`ClientError::exit_code`]).

use std::{
    collections::HashMap,
    io::{self, BufRead, Read, Write},
    net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs},
    path::PathBuf,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use async_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
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
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Where a `ws://` or `wss://` URL points.
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
    /// `wss://`: the TLS to speak.
    tls: Option<Tls>,
}

fn parse_url(url: &str, tls: &TlsOptions) -> Result<Target, ClientError> {
    let (secure, rest) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            return Err(ClientError::Usage(format!(
                "{url}: use a ws:// or wss:// URL"
            )))
        }
    };
    let (host, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/ws"),
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|e| ClientError::Usage(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Usage(format!("{url}: no address")))?;
    let tls = match (secure, &tls.ca) {
        (false, _) => None,
        (true, None) => {
            return Err(ClientError::Usage(format!(
                "{url}: wss:// needs --tls-ca (the CA that signed the server's certificate)"
            )))
        }
        (true, Some(ca)) => {
            let name = match &tls.server_name {
                Some(name) => name.clone(),
                None => host_name(host),
            };
            Some(Tls::new(ca, &name).map_err(|e| ClientError::Usage(e.to_string()))?)
        }
    };
    Ok(Target {
        addr,
        host: host.to_owned(),
        path: path.to_owned(),
        tls,
    })
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_name(host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
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
    Server(Result<Option<Value>, ClientError>),
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

/// Opens the WebSocket, with the token as a bearer header if given.
async fn connect(target: &Target, token: Option<&str>) -> Result<Socket, ClientError> {
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
    let tcp = glommio::timer::timeout(CONNECT_TIMEOUT, async {
        Ok(TcpStream::connect(target.addr).await)
    })
    .await
    .map_err(|_| ClientError::Connection(format!("{}: timed out", target.addr)))?
    .map_err(|e| ClientError::Connection(format!("{}: {e}", target.addr)))?;
    let stream = match &target.tls {
        None => ClientStream::Plain(tcp),
        Some(tls) => ClientStream::Tls(Box::new(
            tls.connect(tcp)
                .await
                .map_err(|e| ClientError::Connection(format!("TLS: {e}")))?,
        )),
    };
    match async_tungstenite::client_async(request, stream).await {
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

async fn send(socket: &mut Socket, value: Value) -> Result<(), ClientError> {
    socket
        .send(Message::text(value.to_string()))
        .await
        .map_err(|e| ClientError::Connection(e.to_string()))
}

/// The next JSON envelope from the server; `None` when it closed.
async fn next_envelope(socket: &mut Socket) -> Result<Option<Value>, ClientError> {
    loop {
        match socket.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).map(Some).map_err(|e| {
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

/// Subscribes, prints, and (unless `--once`) reconnects and resumes.
async fn subscribe_loop(target: Target, options: SubOptions) -> Result<(), ClientError> {
    // Where each channel stands: the last seq printed and its epoch.
    let mut positions: HashMap<String, (u64, String)> = HashMap::new();
    if let (Some(seq), Some(epoch)) = (options.since, &options.epoch) {
        for ch in &options.channels {
            positions.insert(ch.clone(), (seq, epoch.clone()));
        }
    }
    let mut printed = 0u64;
    let mut backoff = Duration::from_millis(100);
    let stdout = std::io::stdout();
    loop {
        let ended = async {
            let mut socket = connect(&target, options.token.as_deref()).await?;
            // Channels being replayed from the start of a new epoch: their
            // live messages wait for the replay, which repeats them.
            let mut resyncing: Vec<String> = Vec::new();
            for (i, ch) in options.channels.iter().enumerate() {
                let mut sub = json!({"op": "sub", "ch": ch, "id": format!("s{i}")});
                if let Some((seq, epoch)) = positions.get(ch) {
                    sub["since"] = json!(seq);
                    sub["epoch"] = json!(epoch);
                }
                send(&mut socket, sub).await?;
            }
            while let Some(envelope) = next_envelope(&mut socket).await? {
                match envelope["op"].as_str() {
                    Some("msg") => {
                        let (Some(ch), Some(seq)) =
                            (envelope["ch"].as_str(), envelope["seq"].as_u64())
                        else {
                            continue;
                        };
                        if resyncing.iter().any(|r| r == ch) {
                            continue;
                        }
                        let epoch = positions.get(ch).map(|p| p.1.clone()).unwrap_or_default();
                        positions.insert(ch.to_owned(), (seq, epoch));
                        let line = match options.data_only {
                            true => envelope["data"].to_string(),
                            false => envelope.to_string(),
                        };
                        let mut out = stdout.lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                        printed += 1;
                        if options.count.is_some_and(|count| printed >= count) {
                            return Ok(true);
                        }
                    }
                    Some("ack") => {
                        // A sub ack names the channel's epoch and where it
                        // stands. A new epoch (the server restarted, or the
                        // channel's state was reclaimed) cannot resume from
                        // our seq: replay the new epoch's history from its
                        // start instead, so what was published since is not
                        // lost.
                        let id = envelope["id"].as_str().unwrap_or("");
                        let (kind, index) = id.split_at(id.len().min(1));
                        let ch = index.parse::<usize>().ok().and_then(|i| options.channels.get(i));
                        let (Some(ch), Some(epoch)) = (ch, envelope["epoch"].as_str()) else {
                            continue;
                        };
                        let seq = envelope["seq"].as_u64().unwrap_or(0);
                        if kind == "r" {
                            resyncing.retain(|r| r != ch);
                            continue;
                        }
                        match positions.get(ch) {
                            Some((_, known)) if known != epoch => {
                                let resync = json!({"op": "sub", "ch": ch, "id": format!("r{index}"),
                                                    "since": 0, "epoch": epoch});
                                send(&mut socket, resync).await?;
                                resyncing.push(ch.clone());
                                positions.insert(ch.clone(), (0, epoch.to_owned()));
                            }
                            Some(_) if envelope["recovered"] != json!(false) => {}
                            _ => {
                                positions.insert(ch.clone(), (seq, epoch.to_owned()));
                            }
                        }
                    }
                    Some("err") => return Err(refusal(&envelope)),
                    _ => {}
                }
            }
            Ok::<bool, ClientError>(false)
        }
        .await;
        match ended {
            Ok(true) => return Ok(()),
            Err(e @ (ClientError::Refused(_) | ClientError::Usage(_))) => return Err(e),
            Ok(false) if options.once => return Ok(()),
            Err(e) if options.once => return Err(e),
            Ok(false) => eprintln!("shardcast sub: the server closed; reconnecting"),
            Err(e) => eprintln!("shardcast sub: {e}; reconnecting in {backoff:?}"),
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Publishes each line and prints its acknowledged `seq`, in order.
async fn publish_all(target: Target, options: PubOptions) -> Result<(), ClientError> {
    let mut socket = connect(&target, options.token.as_deref()).await?;
    let mut input = Input::open(options.data.clone()).await?;
    for i in 0u64.. {
        let waited = async { Waited::Line(input.next().await) }
            .or(async { Waited::Server(next_envelope(&mut socket).await) })
            .await;
        let line = match waited {
            Waited::Line(Some(line)) => line,
            Waited::Line(None) => break,
            Waited::Server(Ok(Some(envelope))) if envelope["op"] == "err" => {
                return Err(refusal(&envelope))
            }
            Waited::Server(Ok(Some(_))) => continue,
            Waited::Server(Ok(None)) => {
                return Err(ClientError::Connection("the server closed".into()))
            }
            Waited::Server(Err(e)) => return Err(e),
        };
        let op = json!({"op": "pub", "ch": options.channel, "data": line_as_data(&line), "id": i});
        send(&mut socket, op).await?;
        loop {
            let Some(envelope) = next_envelope(&mut socket).await? else {
                return Err(ClientError::Connection(
                    "the server closed before the ack".into(),
                ));
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

/// One `POST /api/publish`; returns the `seq`.
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
    let connection = |e: std::io::Error| ClientError::Connection(format!("{}: {e}", target.addr));
    let mut stream =
        StdTcpStream::connect_timeout(&target.addr, CONNECT_TIMEOUT).map_err(connection)?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(connection)?;
    stream.write_all(request.as_bytes()).map_err(connection)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(connection)?;
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
        assert_eq!(host_name("localhost:8443"), "localhost");
        assert_eq!(host_name("[::1]:8443"), "::1");
    }
}
