//! Graceful shutdown on SIGTERM/SIGINT: queued messages are flushed, every
//! client gets close 1001, the process exits 0 within the shutdown timeout.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, Server};

#[test]
fn sigterm_flushes_closes_with_1001_and_exits_0() {
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
    // Everything is ordered and queued; now stop the server.
    server.signal(libc::SIGTERM);
    for sub in subscribers.iter_mut() {
        for i in 0..200 {
            assert_eq!(sub.recv_json()["data"], i, "queued messages are flushed");
        }
        let (code, reason, _) = sub.expect_close();
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    }
    assert_eq!(publisher.expect_close().0, 1001);
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
