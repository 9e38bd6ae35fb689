//! Nothing one client does makes the server hold memory without bound:
//! history keeps exactly the bytes of what it keeps (never the read buffer a
//! publication came in), an unfinished message and a queue the socket takes
//! nothing from have deadlines, and over its memory budget the server refuses
//! new connections and subscriptions instead of growing.

mod support;

use std::{net::TcpStream, time::Duration};

use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use support::{get_json, refused_upgrade, wait_until, Client, Server, DEADLINE};
use tungstenite::{
    protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    },
    Message,
};

/// Resident memory of the server process.
fn rss_bytes(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn totals(server: &Server) -> Value {
    get_json(server, "/api/stats")["total"].clone()
}

/// Sends `{"op":"ping","id":"sync"}` and reads until its pong: everything
/// sent before it has been handled.
fn sync(client: &mut Client) {
    client.send_json(json!({"op": "ping", "id": "sync"}));
    while client.recv_json()["id"] != "sync" {}
}

#[test]
fn history_holds_only_the_bytes_it_keeps_not_the_frames_they_came_in() {
    let server = Server::start(&["--shards", "1"]);
    let mut publisher = Client::connect(&server, "/ws");
    sync(&mut publisher);
    let before = rss_bytes(&server);
    // Tiny publications, each in a 60 KB frame (an ignored field), and each
    // after a 60 KB frame: 2,000 of them, all kept (20 channels x 100).
    let pad = "p".repeat(60_000);
    for i in 0..2000 {
        let ch = format!("pin{}", i % 20);
        if i % 2 == 0 {
            publisher.send_json(json!({"op": "pub", "ch": ch, "data": i, "pad": pad}));
        } else {
            publisher.send_json(json!({"op": "ping", "pad": pad}));
            publisher.send_json(json!({"op": "pub", "ch": ch, "data": i}));
        }
        if i % 100 == 99 {
            sync(&mut publisher);
        }
    }
    let totals = totals(&server);
    assert_eq!(totals["history_messages"], 2000, "{totals}");
    let accounted = totals["history_bytes"].as_u64().unwrap();
    let grown = rss_bytes(&server).saturating_sub(before);
    // Pinned frames held ~115 MiB here; what history keeps is ~250 KiB.
    assert!(
        grown < 32 << 20,
        "RSS grew by {} KiB for {} KiB of history",
        grown >> 10,
        accounted >> 10
    );
    assert!(
        (2000 * 100..2000 * 200).contains(&accounted),
        "each entry is counted with what it holds: {accounted}"
    );
}

#[test]
fn a_message_never_finished_is_closed_at_the_message_timeout() {
    let server = Server::start(&["--shards", "1", "--message-timeout", "1s"]);
    let mut bystander = Client::connect(&server, "/ws?sub=news");
    let mut holder = Client::connect(&server, "/ws");
    let first_fragment = Frame::message(vec![b'q'; 60_000], OpCode::Data(Data::Text), false);
    holder.ws.send(Message::Frame(first_fragment)).unwrap();
    wait_until("the unfinished message counted", || {
        totals_of_shard(&server)["unfinished_bytes"].as_u64() >= Some(60_000)
    });
    // Alive all along (pongs between fragments reset the heartbeat), yet
    // the message must be finished in time.
    holder.set_timeout(Some(Duration::from_millis(200)));
    let deadline = std::time::Instant::now() + DEADLINE;
    let close = loop {
        assert!(std::time::Instant::now() < deadline, "no close");
        match holder.ws.read() {
            Ok(Message::Close(frame)) => break frame.expect("a close frame"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                holder.ws.send(Message::Pong(Vec::new().into())).unwrap();
            }
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "message not finished in time")
    );
    wait_until("the holder counted as closed", || {
        totals(&server)["closed"]["message_timeout"] == 1
    });
    assert_eq!(totals_of_shard(&server)["unfinished_bytes"], 0);
    let seq = support::publish(&server, "news", json!("still here"));
    assert_eq!(bystander.recv_json()["seq"], seq);
}

fn totals_of_shard(server: &Server) -> Value {
    get_json(server, "/api/stats")["shard"][0].clone()
}

#[test]
fn a_queue_the_socket_takes_nothing_from_is_closed_at_the_send_timeout() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--send-timeout",
        "1s",
        "--max-queue-bytes",
        "16MiB",
    ]);
    // A subscriber that never reads, with a tiny receive buffer.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stalled = Client::connect_over(TcpStream::from(socket), &server, "/ws");
    stalled.subscribe("flood");
    let mut publisher = Client::connect(&server, "/ws");
    let pad = "f".repeat(16_000);
    // Publish until the kernel's buffers are full and bytes wait in the
    // server's queue (well under its bound: this is no slow-consumer close).
    let mut published = 0;
    while totals(&server)["outbox_bytes"].as_u64().unwrap() == 0 {
        for _ in 0..20 {
            publisher.send_json(json!({"op": "pub", "ch": "flood", "data": pad}));
        }
        sync(&mut publisher);
        published += 20;
        assert!(published < 1000, "16 MB published and nothing queued");
    }
    wait_until("the stalled subscriber closed", || {
        totals(&server)["closed"]["send_timeout"] == 1
    });
    let totals = totals(&server);
    assert_eq!(totals["connections"], 1, "{totals}");
    assert_eq!(totals["closed"]["slow_consumer"], 0, "{totals}");
    assert_eq!(totals["outbox_bytes"], 0, "{totals}");
    sync(&mut publisher);
}

#[test]
fn over_its_memory_budget_the_server_refuses_new_connections_and_subscriptions() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--max-memory",
        "4MiB",
        "--history-ttl",
        "3s",
    ]);
    let mut client = Client::connect(&server, "/ws");
    client.subscribe("before");
    // 5 MB of history: over the 4 MiB budget until it expires.
    let pad = "h".repeat(50_000);
    for i in 0..100 {
        client.send_json(json!({"op": "pub", "ch": "kept", "data": {"i": i, "pad": pad}}));
    }
    sync(&mut client);
    assert_eq!(refused_upgrade(&server, "/ws"), 503);
    client.send_json(json!({"op": "sub", "ch": "after", "id": 1}));
    let refused = client.recv_json();
    assert_eq!(
        (&refused["op"], &refused["code"], &refused["id"]),
        (&json!("err"), &json!("over_capacity"), &json!(1)),
        "{refused}"
    );
    let shard = totals_of_shard(&server);
    assert!(
        shard["memory_counted_bytes"].as_u64() >= shard["memory_budget_bytes"].as_u64(),
        "{shard}"
    );
    assert_eq!(totals(&server)["memory_refusals"], 2);
    // Subscribing again to a channel (a replacement) takes nothing more.
    client.subscribe("before");
    assert_eq!(totals(&server)["memory_refusals"], 2);
    // Existing subscriptions are served all along.
    let seq = support::publish(&server, "before", json!("served"));
    assert_eq!(client.recv_json()["seq"], seq);
    // Once history expires, the server takes new work again.
    wait_until("history expired", || {
        totals(&server)["history_messages"] == 0
    });
    client.subscribe("after");
    Client::connect(&server, "/ws").subscribe("after");
}

/// Subscriptions and channels are counted: connections that each subscribe
/// to 250 channels of their own reach a 4 MiB budget after ~20 of them
/// (~730 B of memory a subscription; counted at a flat 4 KiB a
/// connection, a thousand would have been let in), and one publication to
/// each of 20,000 channels leaves only what `--history-max-bytes` allows
/// once the sweep ran (each channel's entry is counted beside its history).
#[test]
fn subscriptions_and_channels_count_against_the_memory_budget() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--max-memory",
        "4MiB",
        "--history-max-bytes",
        "1MiB",
    ]);
    let mut held = Vec::new();
    let refused_after = (0..200).find(|c| {
        let names: Vec<String> = (0..250).map(|j| format!("l{c}.{j}")).collect();
        let path = format!("/ws?sub={}", names.join(","));
        match support::secure::connect_with(&server, &path, &[]) {
            Ok(client) => {
                held.push(client);
                false
            }
            Err((status, body)) => {
                assert_eq!(status, 503, "{body}");
                true
            }
        }
    });
    assert!(
        matches!(refused_after, Some(10..=30)),
        "refused after {refused_after:?} connections of 250 subscriptions"
    );
    assert!(totals(&server)["memory_refusals"].as_u64() >= Some(1));
    drop(held);
    wait_until("the subscriptions gone", || {
        totals(&server)["connections"] == 0
    });
    for batch in 0..20 {
        let channels: Vec<String> = (0..1000).map(|j| format!("u{batch}.{j}")).collect();
        let body = json!({"channels": channels, "data": 1}).to_string();
        let (status, answer) = support::http(&server, "POST", "/api/publish", &body);
        assert_eq!(status, 200, "{answer}");
    }
    wait_until("channels beyond the history budget reclaimed", || {
        let shard = totals_of_shard(&server);
        shard["history_bytes"].as_u64() <= Some(1 << 20)
            && shard["channels_owned"].as_u64() < Some(3000)
    });
}
