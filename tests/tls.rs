//! `wss://` and `https://` with `--tls-cert`/`--tls-key`: a certificate made
//! in the test (rcgen), clients that trust it, and what happens to clients
//! that do not, to plain-text clients, and to a handshake that never ends.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::json;
use support::{
    secure::{connect_tls, https, TestCert},
    Server,
};

fn tls_server(cert: &TestCert, extra: &[&str]) -> Server {
    let args = cert.args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    Server::start(&all)
}

#[test]
fn wss_carries_subscriptions_and_publications() {
    let cert = TestCert::generate("tls-traffic");
    let server = tls_server(&cert, &["--shards", "2"]);
    let config = cert.client_config();
    let mut subscribers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = connect_tls(&server, "/ws", config.clone()).expect("wss");
            client.subscribe("news");
            client
        })
        .collect();
    let mut publisher = connect_tls(&server, "/ws", config.clone()).unwrap();
    // Small and large messages: the large ones span several TLS records.
    let big = "x".repeat(60_000);
    for i in 0..50 {
        let data = if i % 10 == 9 { json!(big) } else { json!(i) };
        publisher.send_json(json!({"op":"pub","ch":"news","data":data,"id":i}));
        assert_eq!(publisher.recv_json()["op"], "ack");
    }
    for subscriber in &mut subscribers {
        for i in 0..50 {
            let msg = subscriber.recv_json();
            if i % 10 == 9 {
                assert_eq!(msg["data"].as_str().map(str::len), Some(big.len()));
            } else {
                assert_eq!(msg["data"], i);
            }
        }
    }
    // HTTPS on the same port: health, publish, stats.
    assert_eq!(
        https(&server, config.clone(), "GET", "/health", ""),
        (200, "ok\n".into())
    );
    let body = json!({"ch":"news","data":"over https"}).to_string();
    let (status, reply) = https(&server, config.clone(), "POST", "/api/publish", &body);
    assert_eq!(status, 200, "{reply}");
    for subscriber in &mut subscribers {
        assert_eq!(subscriber.recv_json()["data"], "over https");
    }
    // A raw room over TLS.
    let mut room = connect_tls(&server, "/ws/lobby", config.clone()).unwrap();
    let mut other = connect_tls(&server, "/ws/lobby?echo=0", config).unwrap();
    support::wait_until("both in the room", || {
        let (_, stats) = https(&server, cert.client_config(), "GET", "/api/stats", "");
        serde_json::from_str::<serde_json::Value>(&stats).unwrap()["total"]["subscriptions"] == 6
    });
    other.send_binary(&[1, 2, 3]);
    assert_eq!(room.recv(), tungstenite::Message::binary(vec![1u8, 2, 3]));
    // Closing over TLS is a clean close handshake.
    room.close_and_wait();
}

#[test]
fn clients_that_do_not_trust_it_or_speak_plain_text_are_refused() {
    let cert = TestCert::generate("tls-refusals");
    let server = tls_server(&cert, &[]);
    // A client trusting another certificate fails its handshake.
    let stranger = TestCert::generate("tls-stranger");
    assert!(connect_tls(&server, "/ws", stranger.client_config()).is_err());
    // Plain HTTP to the TLS port gets no HTTP answer, just a close.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(support::DEADLINE)).unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(!reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
    // The server is still fine for a trusting client.
    let mut client = connect_tls(&server, "/ws", cert.client_config()).unwrap();
    client.subscribe("news");
}

#[test]
fn a_handshake_that_never_comes_is_cut_off() {
    let cert = TestCert::generate("tls-slow");
    let server = tls_server(&cert, &["--handshake-timeout", "500ms"]);
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(support::DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    // The server closes: end of stream (or a reset), not the test deadline.
    let read = silent.read(&mut byte);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut client = connect_tls(&server, "/ws", cert.client_config()).unwrap();
    client.subscribe("news");
}

#[test]
fn a_pending_handshake_does_not_hold_up_shutdown() {
    let cert = TestCert::generate("tls-shutdown");
    let mut server = tls_server(&cert, &["--handshake-timeout", "30s"]);
    let _silent = TcpStream::connect(server.addr).unwrap();
    // A full request after it: the server is accepting, the silent one is
    // in its handshake.
    assert_eq!(
        https(&server, cert.client_config(), "GET", "/health", "").0,
        200
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
}
