//! Test support: start the real `shardcast` binary on 127.0.0.1 port 0 and
//! drive it with real WebSocket clients (tungstenite) and raw HTTP. Every wait
//! is bounded by a deadline; nothing sleeps to "let things happen".
#![allow(dead_code)]

pub mod brokers;
pub mod netns;
pub mod secure;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tungstenite::{
    client::IntoClientRequest, protocol::frame::coding::CloseCode, stream::MaybeTlsStream, Message,
    WebSocket,
};

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running server process, killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    /// The admin address, when started with `--admin-listen`.
    pub admin: Option<SocketAddr>,
    pub child: Child,
}

impl Server {
    /// Starts `shardcast serve --listen 127.0.0.1:0 <args>` and waits for its
    /// "listening" line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables (e.g.
    /// `SHARDCAST_*` settings).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(args, env, Stdio::inherit())
    }

    /// Like [`Server::start_with_env`], and hands over the server's log
    /// (stderr) line by line.
    pub fn start_logged(args: &[&str], env: &[(&str, &str)]) -> (Server, mpsc::Receiver<String>) {
        let mut server = Server::spawn(args, env, Stdio::piped());
        let stderr = server.child.stderr.take().expect("stderr");
        (server, lines_of(stderr))
    }

    /// Starts the server through `wrapper` (e.g. `ip netns exec NS`),
    /// listening on `listen`, with its log handed over line by line.
    pub fn start_wrapped(
        wrapper: &[&str],
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, mpsc::Receiver<String>) {
        let mut server = Server::spawn_with(wrapper, listen, args, env, Stdio::piped());
        let stderr = server.child.stderr.take().expect("stderr");
        (server, lines_of(stderr))
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Server {
        Server::spawn_with(&[], "127.0.0.1:0", args, env, stderr)
    }

    fn spawn_with(
        wrapper: &[&str],
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Server {
        let binary = env!("CARGO_BIN_EXE_shardcast");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["serve", "--listen", listen])
            .args(args)
            .env(
                "RUST_LOG",
                // The start-up warnings about anonymous mode and a missing API
                // key would repeat for every test server.
                std::env::var("SHARDCAST_TEST_LOG")
                    .unwrap_or_else(|_| "warn,shardcast::runtime=error".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .stdin(Stdio::null())
            .spawn()
            .expect("start shardcast");
        let stdout = child.stdout.take().expect("stdout");
        let line = lines_of(stdout)
            .recv_timeout(DEADLINE)
            .expect("server printed its address");
        // "shardcast listening on http(s)://ADDR[, admin on http://ADDR]"
        let address_after = |marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|rest| rest.split_once("://"))
                .and_then(|(_, a)| a.split(',').next())
                .and_then(|a| a.parse().ok())
        };
        let addr = address_after("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        Server {
            addr,
            admin: address_after("admin on "),
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for the process to exit; returns its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines a child writes to `pipe`, read by a thread of their own.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Polls `condition` until it holds or the deadline passes.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A blocking WebSocket client with a read deadline.
pub struct Client {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects to `path` on the server (from 127.0.0.1).
    pub fn connect(server: &Server, path: &str) -> Client {
        Client::connect_url(&server.url(path))
    }

    pub fn connect_url(url: &str) -> Client {
        let request = url.into_client_request().expect("request");
        let (ws, response) = tungstenite::connect(request).expect("websocket connect");
        assert_eq!(response.status(), 101);
        let client = Client { ws };
        client.set_timeout(Some(DEADLINE));
        client
    }

    /// Connects over a socket prepared by the caller (e.g. a small receive
    /// buffer), to `path`.
    pub fn connect_over(stream: TcpStream, server: &Server, path: &str) -> Client {
        let request = server.url(path).into_client_request().expect("request");
        let (ws, _) =
            tungstenite::client(request, MaybeTlsStream::Plain(stream)).expect("handshake");
        let client = Client { ws };
        client.set_timeout(Some(DEADLINE));
        client
    }

    pub fn tcp(&self) -> &TcpStream {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => s,
            MaybeTlsStream::Rustls(s) => s.get_ref(),
            _ => unreachable!("tests use plain TCP or rustls"),
        }
    }

    pub fn set_timeout(&self, timeout: Option<Duration>) {
        self.tcp().set_read_timeout(timeout).expect("set timeout");
    }

    pub fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .expect("send");
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).expect("send");
    }

    /// The next data message (pings are answered and skipped).
    pub fn recv(&mut self) -> Message {
        loop {
            match self.ws.read().expect("read within deadline") {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next JSON message if one comes `within` (pings skipped).
    pub fn try_recv_json(&mut self, within: Duration) -> Option<Value> {
        match self.try_read(within)? {
            Message::Text(text) => serde_json::from_str(text.as_str()).ok(),
            other => panic!("expected JSON text, got {other:?}"),
        }
    }

    /// The next JSON message, or close frame (as
    /// `{"close":code,"reason":..}`), if one comes `within`.
    pub fn try_recv_event(&mut self, within: Duration) -> Option<Value> {
        match self.try_read(within)? {
            Message::Text(text) => serde_json::from_str(text.as_str()).ok(),
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                Some(serde_json::json!({"close": code, "reason": reason}))
            }
            other => panic!("expected JSON text or a close, got {other:?}"),
        }
    }

    /// The next message other than a ping or pong, if one comes `within`.
    fn try_read(&mut self, within: Duration) -> Option<Message> {
        self.set_timeout(Some(within));
        let got = loop {
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(message) => break Some(message),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                Err(error) => panic!("read: {error}"),
            }
        };
        self.set_timeout(Some(DEADLINE));
        got
    }

    /// The next message, parsed as JSON.
    pub fn recv_json(&mut self) -> Value {
        match self.recv() {
            Message::Text(text) => serde_json::from_str(text.as_str()).expect("JSON from server"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    /// Data messages before it are skipped (and counted).
    pub fn expect_close(&mut self) -> (u16, String, usize) {
        let mut skipped = 0;
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string(), skipped)
                }
                Ok(Message::Close(None)) => {
                    return (u16::from(CloseCode::Status), String::new(), skipped)
                }
                Ok(_) => skipped += 1,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }

    /// The next JSON message that is not a publication on `channel`.
    pub fn recv_json_skipping(&mut self, channel: &str) -> Value {
        loop {
            let msg = self.recv_json();
            if msg["op"] != "msg" || msg["ch"] != channel {
                return msg;
            }
        }
    }

    /// Closes normally and waits for the server's close reply.
    pub fn close_and_wait(mut self) {
        self.ws.close(None).expect("send close");
        loop {
            match self.ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(e) => panic!("close handshake failed: {e}"),
            }
        }
    }

    /// Subscribes with an `id` and waits for the ack; returns it (it carries
    /// the channel's `seq` and `epoch`).
    pub fn subscribe(&mut self, channel: &str) -> Value {
        self.send_json(serde_json::json!({"op": "sub", "ch": channel, "id": channel}));
        let ack = self.recv_json();
        assert_eq!(ack["op"], "ack", "sub ack: {ack}");
        assert_eq!(ack["id"], channel, "sub ack: {ack}");
        assert!(ack["seq"].is_u64(), "sub ack has the seq: {ack}");
        assert!(ack["epoch"].is_string(), "sub ack has the epoch: {ack}");
        assert!(ack.get("recovered").is_none(), "no since, no recovered");
        ack
    }
}

/// Tries a WebSocket upgrade of `path` that the server must refuse; returns
/// the HTTP status it answered with.
pub fn refused_upgrade(server: &Server, path: &str) -> u16 {
    match tungstenite::connect(server.url(path)) {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("expected {path} to be refused, got {:?}", other.map(|_| ())),
    }
}

/// A raw HTTP/1.1 exchange on a new connection; returns (status, body).
/// `GET /health`'s status.
pub fn health(server: &Server) -> u16 {
    http(server, "GET", "/health", "").0
}

/// Waits until the node's engine links are up (`/health` answers 200).
pub fn wait_healthy(server: &Server) {
    wait_until("the node's engine links are up", || health(server) == 200);
}

pub fn http(server: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    secure::http_with(server, method, path, &[], body)
}

/// Waits until the server counts `n` subscriptions over all shards.
pub fn wait_for_subscriptions(server: &Server, n: u64) {
    wait_until(&format!("{n} subscriptions"), || {
        get_json(server, "/api/stats")["total"]["subscriptions"] == n
    });
}

/// Writes raw bytes on a new connection and returns everything the server
/// answers until it closes.
pub fn raw_exchange(server: &Server, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(bytes).expect("write");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

/// Splits a raw response into status and body.
pub fn parse_response(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (status, body.to_owned())
}

/// `GET path` and the body parsed as JSON (status must be 200).
pub fn get_json(server: &Server, path: &str) -> Value {
    let (status, body) = http(server, "GET", path, "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// `GET path` with the API key, the body parsed as JSON (status 200).
pub fn get_json_with(server: &Server, path: &str, api_key: &str) -> Value {
    let (status, body) = secure::http_with(server, "GET", path, &[("X-API-Key", api_key)], "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// Publishes over HTTP and returns the assigned seq.
pub fn publish(server: &Server, channel: &str, data: Value) -> u64 {
    publish_with_headers(server, channel, data, &[])
}

/// Like [`publish`], with the API key.
pub fn publish_with_key(server: &Server, channel: &str, data: Value, api_key: &str) -> u64 {
    publish_with_headers(server, channel, data, &[("X-API-Key", api_key)])
}

fn publish_with_headers(
    server: &Server,
    channel: &str,
    data: Value,
    headers: &[(&str, &str)],
) -> u64 {
    let body = serde_json::json!({"ch": channel, "data": data}).to_string();
    let (status, body) = secure::http_with(server, "POST", "/api/publish", headers, &body);
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    reply["seq"].as_u64().expect("seq")
}

/// Runs `command` with `input` on its standard input and waits for it;
/// `what` names the program for the message if it cannot be started.
pub fn run_with_input(command: &mut Command, input: &[u8], what: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
