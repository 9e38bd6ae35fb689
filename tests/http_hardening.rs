//! Plain HTTP against clients that misbehave on purpose, over raw TCP: they
//! pipeline and never read, stall a body, frame it two ways, or hold
//! sockets open. Every response write is bounded by --handshake-timeout and
//! yields to shutdown; --max-http-connections caps what is not a WebSocket.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value;
use support::{get_json, http, raw_exchange, wait_until, Server, DEADLINE};

/// A connection that sends `requests` dashboard requests at once and then
/// never reads, with a small receive buffer so the server's writes stall.
fn pipeline_without_reading(server: &Server, requests: usize) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .write_all(
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                .repeat(requests)
                .as_bytes(),
        )
        .expect("pipeline requests");
    stream
}

/// Reads everything until the server closes (EOF or reset).
fn read_until_closed(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut all = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

fn shard_stat(server: &Server, name: &str) -> u64 {
    let stats = get_json(server, "/api/stats");
    stats["shard"][0][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

#[test]
fn a_client_that_pipelines_and_never_reads_is_dropped_after_the_write_timeout() {
    let server = Server::start(&["--shards", "1", "--handshake-timeout", "300ms"]);
    let requests = 600;
    let mut stalled = pipeline_without_reading(&server, requests);
    wait_until("the stalled response write to time out", || {
        shard_stat(&server, "handshake_failures") >= 1
    });
    let answered = read_until_closed(&mut stalled)
        .matches("HTTP/1.1 200")
        .count();
    assert!(answered < requests, "all {answered} responses were written");
    assert_eq!(http(&server, "GET", "/health", "").0, 200);
}

/// A server whose own timeouts are far longer than any test: whatever ends
/// a stalled client there is shutdown itself.
fn patient_server() -> Server {
    Server::start(&[
        "--shards",
        "1",
        "--handshake-timeout",
        "60s",
        "--shutdown-timeout",
        "60s",
    ])
}

#[test]
fn shutdown_does_not_wait_for_a_client_that_never_reads() {
    let mut server = patient_server();
    let stalled = pipeline_without_reading(&server, 600);
    // The first response has arrived: the server is writing to this socket.
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    stalled.peek(&mut [0u8; 1]).expect("a first response");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn a_stalled_publish_body_does_not_hold_shutdown() {
    let mut server = patient_server();
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .write_all(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    // Each poll counts itself; one more means the POST's head was read.
    let mut polls = 0;
    wait_until("the POST's head to be read", || {
        polls += 1;
        shard_stat(&server, "http_requests") > polls
    });
    server.signal(libc::SIGTERM);
    let reply = read_until_closed(&mut stalled);
    drop(stalled);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply:?}");
    assert!(reply.contains("shutting_down"), "{reply:?}");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn a_body_that_times_out_gets_one_400_that_closes() {
    let server = Server::start(&["--shards", "1", "--handshake-timeout", "300ms"]);
    let reply = raw_exchange(
        &server,
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"ch\":",
    );
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply:?}");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    assert!(reply.contains("Connection: close\r\n"), "{reply:?}");
    assert!(reply.contains("body not received"), "{reply:?}");
}

#[test]
fn conflicting_content_lengths_are_refused_and_close() {
    let server = Server::start(&["--shards", "1"]);
    let body = r#"{"ch":"smug","data":1}"#;
    for lengths in [
        format!("Content-Length: 5\r\nContent-Length: {}\r\n", body.len()),
        format!("Content-Length: +{}\r\n", body.len()),
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        ),
    ] {
        let request = format!("POST /api/publish HTTP/1.1\r\nHost: x\r\n{lengths}\r\n{body}");
        let reply = raw_exchange(&server, request.as_bytes());
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply:?}");
        assert!(reply.starts_with("HTTP/1.1 400"), "{lengths:?}: {reply:?}");
        assert!(reply.contains("Connection: close\r\n"), "{reply:?}");
    }
    let stats = get_json(&server, "/api/stats");
    assert_eq!(stats["total"]["messages_published"], 0, "{stats}");
}

#[test]
fn plain_http_connections_have_a_cap_of_their_own() {
    let server = Server::start(&["--shards", "2", "--max-http-connections", "1"]);
    let mut idle = TcpStream::connect(server.addr).unwrap();
    let mut refused = (0, String::new());
    wait_until("a request over the cap to be refused", || {
        refused = http(&server, "GET", "/health", "");
        if refused.0 == 503 {
            return true;
        }
        // The shards may have accepted the request before `idle`, which then
        // got the refusal itself: hold the one place with a new idle socket.
        idle.set_nonblocking(true).unwrap();
        let taken = idle.peek(&mut [0u8; 1]);
        if !matches!(&taken, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            idle = TcpStream::connect(server.addr).unwrap();
        }
        false
    });
    let body: Value = serde_json::from_str(&refused.1).unwrap();
    assert_eq!(body["error"], "too_many_connections", "{body}");
    drop(idle);
    // Each request below may still meet the previous one's socket closing,
    // so each is retried until it gets its place.
    let mut ws = None;
    wait_until("an upgrade once the idle connection is gone", || {
        ws = tungstenite::connect(server.url("/ws")).ok();
        ws.is_some()
    });
    // The upgraded connection is a WebSocket session: it left the count.
    wait_until("stats beside an open WebSocket", || {
        let (status, body) = http(&server, "GET", "/api/stats", "");
        status == 200
            && serde_json::from_str::<Value>(&body).unwrap()["total"]["http_cap_refusals"]
                .as_u64()
                .is_some_and(|n| n >= 1)
    });
    wait_until("the counter in /metrics", || {
        let (status, body) = http(&server, "GET", "/metrics", "");
        status == 200 && body.contains("shardcast_http_cap_refusals_total{")
    });
}

#[test]
fn a_bad_escape_in_sub_refuses_the_upgrade() {
    let server = Server::start(&["--shards", "1"]);
    assert_eq!(support::refused_upgrade(&server, "/ws?sub=news,%zz"), 400);
    assert_eq!(
        support::refused_upgrade(&server, "/ws?sub=news&token=%zz"),
        400
    );
}

/// Slowloris from one address: heads begun and never finished. With the
/// default share per address (`--max-http-connections-per-ip` 256, a
/// sixteenth of the default 4096), one address cannot hold every place
/// of `--max-http-connections` (300 here, so the test stays small): its
/// connections past its share are answered 429, and another address still
/// upgrades and publishes.
#[test]
fn one_address_sending_heads_slowly_cannot_take_every_http_place() {
    let server = Server::start(&["--shards", "2", "--max-http-connections", "300"]);
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut heads: Vec<TcpStream> = (0..300)
        .map(|_| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(&std::net::SocketAddr::new(attacker, 0).into())
                .expect("bind 127.0.0.2");
            socket.connect(&server.addr.into()).expect("connect");
            let mut stream: TcpStream = socket.into();
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect();
    // The heads past the address's share are answered at once.
    let mut refused = vec![false; heads.len()];
    wait_until("the heads over the share refused", || {
        for (stream, refused) in heads.iter_mut().zip(&mut refused) {
            let mut answer = [0u8; 12];
            if !*refused && matches!(stream.peek(&mut answer), Ok(12)) {
                assert_eq!(&answer, b"HTTP/1.1 429");
                *refused = true;
            }
        }
        refused.iter().filter(|r| **r).count() == 300 - 256
    });
    // Everyone else is served while the 256 heads still hang.
    let other: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let mut client = support::secure::connect_from(other, &server, "/ws").expect("an upgrade");
    client.subscribe("news");
    support::publish(&server, "news", serde_json::json!("still served"));
    assert_eq!(client.recv_json()["data"], "still served");
    let stats = get_json(&server, "/api/stats");
    assert!(
        stats["total"]["http_cap_refusals"].as_u64() >= Some(44),
        "{stats}"
    );
    drop(heads);
}
