//! `shardcast sub` and `shardcast pub` against the real server: what they
//! print, publishing from standard input and over HTTP, the exit codes
//! scripts rely on, and `sub` resuming without loss after its connection
//! breaks (through a proxy the test cuts).

mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{publish, wait_for_subscriptions, Client, Server};

fn shardcast() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    command
        .env_remove("SHARDCAST_TOKEN")
        .env_remove("SHARDCAST_API_KEY");
    command
}

/// Starts `shardcast sub ARGS...` with its output captured.
fn spawn_sub(args: &[&str]) -> Child {
    shardcast()
        .arg("sub")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ws_url(server: &Server) -> String {
    format!("ws://{}", server.addr)
}

/// Waits for a child to exit, killing it after `within`.
fn wait_output(mut child: Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the client did not exit in {within:?}: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn pub_sends_each_line_of_its_input_and_sub_prints_each_message() {
    let server = Server::start(&["--shards", "2"]);
    let sub = spawn_sub(&["--data-only", "--count", "3", &ws_url(&server), "news"]);
    wait_for_subscriptions(&server, 1);
    let mut publisher = shardcast()
        .args(["pub", &ws_url(&server), "news"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"a\":1}\nhello there\n")
        .unwrap();
    let published = wait_output(publisher, Duration::from_secs(10));
    assert!(published.status.success(), "{published:?}");
    assert_eq!(lines(&published), [json!(1), json!(2)], "the acks' seqs");
    let over_http = shardcast()
        .args(["pub", "--http", &ws_url(&server), "news", "[1,2]"])
        .output()
        .unwrap();
    assert!(over_http.status.success(), "{over_http:?}");
    assert_eq!(lines(&over_http), [json!(3)]);
    let printed = wait_output(sub, Duration::from_secs(10));
    assert!(printed.status.success(), "{printed:?}");
    assert_eq!(
        lines(&printed),
        [json!({"a": 1}), json!("hello there"), json!([1, 2])]
    );
}

/// `pub` publishes each line as it comes: a quiet input (`tail -f`) is not
/// read to its end first.
#[test]
fn pub_publishes_each_line_before_its_input_ends() {
    let server = Server::start(&[]);
    let mut publisher = shardcast()
        .args(["pub", &ws_url(&server), "live"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = publisher.stdin.take().unwrap();
    input.write_all(b"first\n").unwrap();
    input.flush().unwrap();
    support::wait_until("the first line published, the input still open", || {
        support::get_json(&server, "/api/stats")["total"]["messages_published"] == 1
    });
    input.write_all(b"second\n").unwrap();
    drop(input);
    let published = wait_output(publisher, Duration::from_secs(10));
    assert!(published.status.success(), "{published:?}");
    assert_eq!(lines(&published), [json!(1), json!(2)]);
}

#[test]
fn exit_codes_tell_usage_refusal_and_connection_apart() {
    let status = |args: &[&str]| shardcast().args(args).output().unwrap().status.code();
    assert_eq!(status(&["sub", "ws://127.0.0.1:1"]), Some(2), "no channel");
    assert_eq!(
        status(&["pub", "http://x", "ch", "1"]),
        Some(2),
        "not ws://"
    );
    // Nothing listens on port 1.
    assert_eq!(status(&["pub", "ws://127.0.0.1:1", "ch", "1"]), Some(4));
    assert_eq!(
        status(&["sub", "--once", "ws://127.0.0.1:1", "ch"]),
        Some(4)
    );
    let secret = "a-test-secret-that-is-long-enough-0123";
    let server = Server::start(&["--jwt-secret", secret]);
    let url = ws_url(&server);
    assert_eq!(status(&["pub", &url, "ch", "1"]), Some(3), "no token");
    assert_eq!(status(&["sub", &url, "ch"]), Some(3), "no token");
    assert_eq!(
        status(&["pub", "--token", "not-a-token", &url, "ch", "1"]),
        Some(3),
        "a bad token"
    );
}

/// Forwards connections to its target (`None`: refuses them, closing at
/// once) until told to cut every one of them.
struct Proxy {
    addr: std::net::SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    target: Arc<Mutex<Option<std::net::SocketAddr>>>,
}

impl Proxy {
    fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let registry = open.clone();
        let target = Arc::new(Mutex::new(Some(target)));
        let current = target.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Some(target) = *current.lock().unwrap() else {
                    continue;
                };
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                let mut open = registry.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(upstream.try_clone().unwrap());
                pump(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pump(upstream, client);
            }
        });
        Proxy { addr, open, target }
    }

    /// Forwards new connections to `target` (`None`: refuses them).
    fn point_at(&self, target: Option<std::net::SocketAddr>) {
        *self.target.lock().unwrap() = target;
    }

    /// Breaks every connection through the proxy.
    fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// A `sub` of `feed` through a proxy to `server`, subscribed, that prints
/// six messages' data and exits.
fn six_through_a_proxy(server: &Server) -> (Proxy, Child) {
    let proxy = Proxy::start(server.addr);
    let url = format!("ws://{}", proxy.addr);
    let sub = spawn_sub(&["--data-only", "--count", "6", &url, "feed"]);
    wait_for_subscriptions(server, 1);
    (proxy, sub)
}

/// Waits until `server` has written `n` deliveries.
fn wait_delivered(server: &Server, n: u64) {
    support::wait_until(&format!("{n} deliveries written"), || {
        let stats = support::get_json(server, "/api/stats");
        stats["total"]["messages_delivered"].as_u64() >= Some(n)
    });
}

#[test]
fn sub_resumes_after_its_connection_breaks_without_losing_a_message() {
    let server = Server::start(&[]);
    let (proxy, sub) = six_through_a_proxy(&server);
    for i in 1..=2 {
        publish(&server, "feed", json!(i));
    }
    // Its connection breaks; what is published meanwhile waits in history.
    let mut witness = Client::connect(&server, "/ws");
    witness.subscribe("feed");
    wait_for_subscriptions(&server, 2);
    wait_delivered(&server, 2);
    proxy.cut();
    support::wait_until("sub gone", || {
        support::get_json(&server, "/api/stats")["total"]["subscriptions"] == 1
    });
    for i in 3..=4 {
        publish(&server, "feed", json!(i));
    }
    // It reconnects (backoff from 100 ms), resumes after seq 2, and gets 3
    // and 4 from history, then the live ones.
    wait_for_subscriptions(&server, 2);
    for i in 5..=6 {
        publish(&server, "feed", json!(i));
    }
    let printed = wait_output(sub, Duration::from_secs(20));
    assert!(printed.status.success(), "{printed:?}");
    assert_eq!(
        lines(&printed),
        (1..=6).map(|i| json!(i)).collect::<Vec<_>>()
    );
    drop(witness);
}

#[test]
fn sub_and_pub_speak_wss_with_the_given_ca() {
    let cert = support::secure::TestCert::generate("client-wss");
    let args = cert.args();
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("wss://localhost:{}", server.addr.port());
    let ca = cert.cert.display().to_string();
    let sub = spawn_sub(&["--data-only", "--count", "1", "--tls-ca", &ca, &url, "tls"]);
    let published = shardcast()
        .args(["pub", "--tls-ca", &ca, &url, "tls", "{\"secure\":true}"])
        .output()
        .unwrap();
    // The subscriber may not be subscribed yet: publish until it prints.
    assert!(published.status.success(), "{published:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sub = sub;
    while sub.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sub printed nothing");
        let again = shardcast()
            .args(["pub", "--tls-ca", &ca, &url, "tls", "{\"secure\":true}"])
            .output()
            .unwrap();
        assert!(again.status.success(), "{again:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let printed = sub.wait_with_output().unwrap();
    assert!(printed.status.success(), "{printed:?}");
    assert_eq!(lines(&printed), [json!({"secure": true})]);
    // Without the CA, or for another name, the server is not trusted.
    let status = |args: &[&str]| shardcast().args(args).output().unwrap().status.code();
    assert_eq!(
        status(&["pub", &url, "tls", "1"]),
        Some(2),
        "wss:// needs --tls-ca"
    );
    let other_name = [
        "pub",
        "--tls-ca",
        &ca,
        "--tls-server-name",
        "example.com",
        &url,
        "tls",
        "1",
    ];
    assert_eq!(status(&other_name), Some(4));
}

#[test]
fn sub_resumes_after_a_server_restart_with_what_the_new_history_holds() {
    let first = Server::start(&[]);
    let (proxy, sub) = six_through_a_proxy(&first);
    publish(&first, "feed", json!("a1"));
    publish(&first, "feed", json!("a2"));
    wait_delivered(&first, 2);
    // The server restarts: a new process, a new epoch, an empty history.
    // While sub cannot get in, three publications land in the new history.
    proxy.point_at(None);
    proxy.cut();
    drop(first);
    let second = Server::start(&[]);
    for data in ["b1", "b2", "b3"] {
        publish(&second, "feed", json!(data));
    }
    proxy.point_at(Some(second.addr));
    wait_for_subscriptions(&second, 1);
    // Replayed or live, whichever way it reaches sub: once.
    publish(&second, "feed", json!("b4"));
    let printed = wait_output(sub, Duration::from_secs(20));
    assert!(printed.status.success(), "{printed:?}");
    let expected = ["a1", "a2", "b1", "b2", "b3", "b4"].map(|d| json!(d));
    assert_eq!(lines(&printed), expected);
}

#[test]
fn a_publication_over_the_servers_limit_reports_the_close_code_and_exits_3() {
    let server = Server::start(&["--max-message-bytes", "64KiB"]);
    let big = format!("\"{}\"", "x".repeat(70_000));
    let output = shardcast()
        .args(["pub", &ws_url(&server), "news", &big])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("1009 message too large"), "{stderr}");
}

#[test]
fn a_ca_certificate_presented_as_the_servers_own_is_explained_in_words() {
    // What `openssl req -x509` makes by default: a self-signed certificate
    // with basicConstraints CA:TRUE, which TLS clients refuse as a server's.
    let cert = support::secure::TestCert::generate_ca("client-ca-as-server");
    let args = cert.args();
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("wss://localhost:{}", server.addr.port());
    let ca = cert.cert.display().to_string();
    let output = shardcast()
        .args(["pub", "--tls-ca", &ca, &url, "tls", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("is a CA certificate"), "{stderr}");
    assert!(stderr.contains("CA:FALSE"), "{stderr}");
    assert!(!stderr.contains("CaUsedAsEndEntity"), "{stderr}");
}

#[test]
fn sub_once_ends_with_the_servers_close_code_and_reason() {
    let mut server = Server::start(&["--drain-spread", "0s"]);
    let sub = spawn_sub(&["--once", &ws_url(&server), "news"]);
    wait_for_subscriptions(&server, 1);
    server.signal(libc::SIGTERM);
    let output = wait_output(sub, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("1012 service restart"), "{stderr}");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}
