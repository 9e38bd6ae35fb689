//! Plain HTTP on the WebSocket port: publish, health, errors, keep-alive.

mod support;

use std::io::{Read, Write};

use serde_json::json;
use support::{http, Client, Server};

#[test]
fn publish_assigns_seq_and_delivers() {
    let server = Server::start(&["--shards", "2"]);
    let mut sub = Client::connect(&server, "/ws");
    sub.subscribe("news");
    assert_eq!(support::publish(&server, "news", json!({"a": 1})), 1);
    assert_eq!(support::publish(&server, "news", json!("two")), 2);
    assert_eq!(
        sub.recv_json(),
        json!({"op": "msg", "ch": "news", "seq": 1, "data": {"a": 1}})
    );
    assert_eq!(
        sub.recv_json(),
        json!({"op": "msg", "ch": "news", "seq": 2, "data": "two"})
    );
}

#[test]
fn health_and_errors() {
    let server = Server::start(&["--shards", "1", "--max-message-bytes", "1KiB"]);
    assert_eq!(http(&server, "GET", "/health", ""), (200, "ok\n".into()));
    assert_eq!(http(&server, "GET", "/nowhere", "").0, 404);
    assert_eq!(http(&server, "GET", "/api/publish", "").0, 405);
    assert_eq!(http(&server, "GET", "/ws", "").0, 426);
    let (status, body) = http(&server, "POST", "/api/publish", "{nope");
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "bad_json"
    );
    let (status, body) = http(&server, "POST", "/api/publish", r#"{"ch":"a b","data":1}"#);
    assert_eq!((status, body.contains("bad_channel")), (400, true));
    let big = format!(r#"{{"ch":"x","data":"{}"}}"#, "y".repeat(2000));
    let (status, body) = http(&server, "POST", "/api/publish", &big);
    assert_eq!((status, body.contains("too_large")), (413, true));
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(support::DEADLINE)).unwrap();
    let body = r#"{"ch":"k","data":1}"#;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Two requests in one write (pipelined), then a third after.
    stream
        .write_all(format!("{request}{request}").as_bytes())
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
    assert!(
        all.contains(r#"{"seq":1}"#) && all.contains(r#"{"seq":2}"#),
        "{all}"
    );
}

#[test]
fn garbage_instead_of_http_gets_400_and_server_carries_on() {
    let server = Server::start(&["--shards", "1"]);
    let reply = support::raw_exchange(&server, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    assert_eq!(http(&server, "GET", "/health", "").0, 200);
}
