//! Graceful shutdown on SIGTERM/SIGINT and `POST /api/drain`: queued
//! messages are flushed, every JSON client is told when to reconnect (the
//! points spread over `--drain-spread`, so 1,000 clients do not come back at
//! once), then gets close 1012, and the process exits 0 within the shutdown
//! timeout.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, Server};

#[test]
fn sigterm_flushes_advises_closes_with_1012_and_exits_0() {
    let mut server = Server::start(&["--shards", "2", "--shutdown-timeout", "5s"]);
    let mut subscribers: Vec<Client> = (0..6)
        .map(|_| {
            let mut c = Client::connect(&server, "/ws");
            c.subscribe("last-words");
            c
        })
        .collect();
    let mut publisher = Client::connect(&server, "/ws");
    for i in 0..200 {
        publisher.send_json(json!({"op": "pub", "ch": "last-words", "data": i, "id": i}));
    }
    for _ in 0..200 {
        assert_eq!(publisher.recv_json()["op"], "ack");
    }
    // Everything is ordered and on its way to the subscribers' shards: wait
    // until it is queued for all six (a delivery still crossing shards when
    // the shutdown begins would meet a closed queue), then stop the server.
    // Six sub acks and 1,200 deliveries, 200 pub acks.
    support::wait_until("every frame queued", || {
        support::get_json(&server, "/api/stats")["total"]["frames_queued"].as_u64()
            >= Some(6 * (1 + 200) + 200)
    });
    server.signal(libc::SIGTERM);
    for sub in subscribers.iter_mut() {
        for i in 0..200 {
            assert_eq!(sub.recv_json()["data"], i, "queued messages are flushed");
        }
        let advice = sub.recv_json();
        assert_eq!(advice["op"], "reconnect", "{advice}");
        assert!(
            advice["after_ms"].as_u64() < Some(10_000),
            "within the default spread: {advice}"
        );
        let (code, reason, skipped) = sub.expect_close();
        assert_eq!(
            (code, reason.as_str(), skipped),
            (1012, "service restart", 0)
        );
    }
    assert_eq!(publisher.expect_close().0, 1012);
    assert_eq!(server.wait_exit(Duration::from_secs(8)), Some(0));
}

#[test]
fn sigint_with_idle_http_connection_exits_promptly() {
    let mut server = Server::start(&["--shards", "1", "--shutdown-timeout", "5s"]);
    // A keep-alive connection between requests must not hold shutdown up.
    let _idle = std::net::TcpStream::connect(server.addr).unwrap();
    let _ws = Client::connect(&server, "/ws");
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(4)), Some(0));
}

/// Reads a drained client's advice and close; its `after_ms`.
fn drained(client: &mut Client) -> u64 {
    let advice = client.recv_json();
    assert_eq!(advice["op"], "reconnect", "{advice}");
    let (code, _, _) = client.expect_close();
    assert_eq!(code, 1012);
    advice["after_ms"].as_u64().unwrap()
}

#[test]
fn a_drain_of_1000_clients_spreads_their_reconnects_over_the_window() {
    let mut server = Server::start(&[
        "--shards",
        "2",
        "--drain-spread",
        "2s",
        "--shutdown-timeout",
        "5s",
    ]);
    let mut clients: Vec<Client> = (0..1000).map(|_| Client::connect(&server, "/ws")).collect();
    support::wait_until("1000 connections", || {
        support::get_json(&server, "/api/stats")["total"]["connections"] == 1000
    });
    server.signal(libc::SIGTERM);
    let mut after: Vec<u64> = clients.iter_mut().map(drained).collect();
    assert_eq!(server.wait_exit(Duration::from_secs(8)), Some(0));
    after.sort();
    assert!(after.iter().all(|ms| *ms < 2000), "{after:?}");
    // Spread evenly: every tenth of the window holds about a tenth.
    for tenth in 0..10 {
        let n = after.iter().filter(|ms| **ms / 200 == tenth).count();
        assert!(
            (60..=140).contains(&n),
            "{n} clients in {}..{} ms",
            tenth * 200,
            tenth * 200 + 200
        );
    }
}

#[test]
fn post_api_drain_drains_every_shard_and_exits() {
    let key = "drain-test-api-key-0123456789";
    let mut server = Server::start(&["--shards", "2", "--api-key", key, "--drain-spread", "1s"]);
    let mut clients: Vec<Client> = (0..8).map(|_| Client::connect(&server, "/ws")).collect();
    let (status, _) = support::http(&server, "POST", "/api/drain", "");
    assert_eq!(status, 401, "the API key is needed");
    let (status, body) =
        support::secure::http_with(&server, "POST", "/api/drain", &[("X-API-Key", key)], "");
    assert_eq!((status, body.as_str()), (202, r#"{"draining":true}"#));
    for client in &mut clients {
        assert!(drained(client) < 1000);
    }
    assert_eq!(server.wait_exit(Duration::from_secs(8)), Some(0));
}
