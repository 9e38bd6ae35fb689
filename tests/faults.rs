//! Faults and bad input. Clients that vanish (reset), stop reading, leave
//! all at once, flood, send malformed or truncated frames, never finish their
//! handshake, or send garbage instead of HTTP: the server stays up, the other
//! clients get every message, and the connection state returns to its
//! baseline (checked in `/api/stats`; memory checked by repeating a storm).
//! Message-size limits (1009, fragmented too) and the plain handshake timeout
//! are in `tests/limits.rs`.

mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use shardcast_wire::OpCode;
use socket2::{Domain, Socket, Type};
use support::{get_json, publish, Client, Server, DEADLINE};

const UPGRADE_HEADERS: &str = "Host: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Opens a WebSocket to `path` by hand (no client library), from `source`.
fn raw_upgrade(server: &Server, path: &str, source: Ipv4Addr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind source address");
    socket.connect(&server.addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\n{UPGRADE_HEADERS}").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("upgrade response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// Resets the connection (RST, no FIN, no close frame): a vanished peer.
fn reset(stream: TcpStream) {
    let socket = Socket::from(stream);
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);
}

/// A client frame (masked, as clients must), FIN set unless `more`.
fn client_frame(opcode: OpCode, payload: &[u8], more: bool) -> Vec<u8> {
    shardcast_wire::encode::client_frame(opcode, payload, more, [0x12, 0x34, 0x56, 0x78])
}

/// Polls `/api/stats` until `ok` holds for its totals; returns them.
fn wait_for_totals(server: &Server, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = get_json(server, "/api/stats");
        if ok(&stats["total"]) {
            return stats["total"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The connection state is back to `connections` clients holding
/// `subscriptions` subscriptions, with nothing queued.
fn back_to_baseline(server: &Server, connections: u64, subscriptions: u64) -> Value {
    wait_for_totals(server, "baseline", |t| {
        t["connections"] == connections
            && t["subscriptions"] == subscriptions
            && t["outbox_bytes"] == 0
            && t["channels"].as_u64() <= Some(subscriptions)
    })
}

/// Publishes `n` messages on `channel` over HTTP and checks that `bystander`
/// receives each, in order.
fn service_intact(server: &Server, bystander: &mut Client, channel: &str, n: u64) {
    let mut seqs = Vec::new();
    for i in 0..n {
        seqs.push(publish(server, channel, json!({"check": i})));
    }
    for (i, seq) in seqs.into_iter().enumerate() {
        let msg = bystander.recv_json();
        assert_eq!(msg["seq"], seq, "bystander got {msg}");
        assert_eq!(msg["data"]["check"], i as u64);
    }
}

#[test]
fn vanished_and_half_open_clients_are_cleaned_up() {
    let server = Server::start(&[
        "--shards",
        "2",
        "--max-queue-bytes",
        "64KiB",
        "--max-message-bytes",
        "8KiB",
    ]);
    let mut bystander = Client::connect(&server, "/ws");
    bystander.subscribe("news");
    back_to_baseline(&server, 1, 1);

    // Reset without a close: the server notices on its next read or write.
    let gone: Vec<TcpStream> = (0..20)
        .map(|_| raw_upgrade(&server, "/ws?sub=news", Ipv4Addr::LOCALHOST))
        .collect();
    wait_for_totals(&server, "21 connections", |t| t["connections"] == 21);
    gone.into_iter().for_each(reset);
    service_intact(&server, &mut bystander, "news", 20);
    let totals = back_to_baseline(&server, 1, 1);
    assert!(
        totals["closed"]["socket_error"].as_u64().unwrap()
            + totals["closed"]["normal"].as_u64().unwrap()
            >= 20
    );

    // Half-open: subscribed, never reads, never closes. Its queue fills and
    // it is closed as a slow consumer; the bystander misses nothing.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stalled: TcpStream = socket.into();
    write!(stalled, "GET /ws?sub=news HTTP/1.1\r\n{UPGRADE_HEADERS}").unwrap();
    wait_for_totals(&server, "stalled client in", |t| t["connections"] == 2);
    // 12 MB: more than the kernel buffers on both sides plus the queue.
    const MESSAGES: usize = 1500;
    let big = "z".repeat(8000);
    let (received, progress) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        for n in 1..=MESSAGES {
            bystander.recv();
            let _ = received.send(n);
        }
        bystander
    });
    // Published in batches the bystander keeps up with; the stalled client
    // falls behind by the whole stream.
    let mut publisher = Client::connect(&server, "/ws");
    for batch in 0..MESSAGES / 5 {
        for _ in 0..5 {
            publisher.send_json(json!({"op": "pub", "ch": "news", "data": big}));
        }
        while progress.recv_timeout(DEADLINE).expect("bystander reads") < (batch + 1) * 5 {}
    }
    let mut bystander = reader.join().unwrap();
    drop(publisher);
    let totals = back_to_baseline(&server, 1, 1);
    assert_eq!(totals["closed"]["slow_consumer"], 1);
    assert!(totals["frames_dropped"].as_u64().unwrap() > 0);
    service_intact(&server, &mut bystander, "news", 5);
    drop(stalled);
}

#[test]
fn five_thousand_clients_leaving_at_once_leave_nothing_behind() {
    const CLIENTS: usize = 5000;
    let server = Server::start(&["--shards", "2"]);
    let mut bystander = Client::connect(&server, "/ws");
    bystander.subscribe("storm-0");
    let baseline = back_to_baseline(&server, 1, 1);
    let mut rss_after = Vec::new();
    for round in 0..2 {
        let clients: Vec<TcpStream> = (0..CLIENTS)
            .map(|i| {
                // Spread over source addresses, as a real fleet would be.
                let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
                raw_upgrade(&server, &format!("/ws?sub=storm-{}", i % 100), source)
            })
            .collect();
        wait_for_totals(&server, "every client connected", |t| {
            t["connections"] == CLIENTS as u64 + 1
        });
        // All leave at once: half reset, half close cleanly (FIN).
        for (i, client) in clients.into_iter().enumerate() {
            if i % 2 == 0 {
                reset(client);
            } else {
                drop(client);
            }
        }
        service_intact(&server, &mut bystander, "storm-0", 10);
        let totals = back_to_baseline(&server, 1, 1);
        assert_eq!(
            totals["connections_closed"].as_u64().unwrap(),
            baseline["connections_closed"].as_u64().unwrap() + (round + 1) * CLIENTS as u64
        );
        rss_after.push(
            get_json(&server, "/api/stats")["process"]["rss_bytes"]
                .as_u64()
                .unwrap(),
        );
    }
    // A leak of connection state would grow memory by about 3 KiB per
    // client per round (15 MB); the allocator's reuse keeps it flat.
    let growth = rss_after[1].saturating_sub(rss_after[0]);
    assert!(
        growth < 4 << 20,
        "RSS grew {growth} bytes in the second storm: {rss_after:?}"
    );
}

#[test]
fn a_flooding_publisher_does_not_starve_or_cost_anyone_a_message() {
    const FLOOD: u64 = 20_000;
    let server = Server::start(&["--shards", "2"]);
    let mut subscriber = Client::connect(&server, "/ws");
    subscriber.subscribe("flood");
    let mut other = Client::connect(&server, "/ws");
    other.subscribe("calm");
    let mut flooder = Client::connect(&server, "/ws");
    let reader = thread::spawn(move || {
        let mut last = 0;
        for _ in 0..FLOOD {
            let seq = subscriber.recv_json()["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "every flood message, in order");
            last = seq;
        }
        last
    });
    let flood = thread::spawn(move || {
        for i in 0..FLOOD {
            flooder.send_json(json!({"op": "pub", "ch": "flood", "data": i}));
        }
        flooder
    });
    // While the flood runs, others are served.
    for i in 0..20 {
        other.send_json(json!({"op": "ping", "id": i}));
        assert_eq!(other.recv_json(), json!({"op": "pong", "id": i}));
    }
    service_intact(&server, &mut other, "calm", 20);
    let _flooder = flood.join().unwrap();
    assert_eq!(reader.join().unwrap(), FLOOD);
}

#[test]
fn malformed_and_truncated_frames_close_only_their_connection() {
    let server = Server::start(&["--shards", "2"]);
    let mut bystander = Client::connect(&server, "/ws");
    bystander.subscribe("news");

    // Each case: what the client sends, the close code expected (None: the
    // connection just goes away).
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], Some(1002)),
        (
            "reserved bits",
            {
                let mut f = client_frame(OpCode::Text, b"hi", false);
                f[0] |= 0x40;
                f
            },
            Some(1002),
        ),
        (
            "control frame over 125 bytes",
            client_frame(OpCode::Ping, &[0; 200], false),
            Some(1002),
        ),
        (
            "fragmented control frame",
            client_frame(OpCode::Ping, b"p", true),
            Some(1002),
        ),
        (
            "continuation without a start",
            client_frame(OpCode::Continuation, b"x", false),
            Some(1002),
        ),
        (
            "length over the limit",
            {
                let mut f = vec![0x81, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 40).to_be_bytes());
                f.extend_from_slice(&[1, 2, 3, 4]); // the mask key
                f
            },
            Some(1009),
        ),
        (
            // RFC 6455 §5.2: the most significant bit MUST be 0.
            "length with its top bit set",
            {
                let mut f = vec![0x81, 0x80 | 127];
                f.extend_from_slice(&u64::MAX.to_be_bytes());
                f.extend_from_slice(&[1, 2, 3, 4]);
                f
            },
            Some(1002),
        ),
        (
            "truncated frame, then reset",
            client_frame(OpCode::Text, &[b'a'; 1000], false)[..100].to_vec(),
            None,
        ),
        ("garbage bytes", vec![0xff; 64], Some(1002)),
    ];
    for (what, bytes, expected) in cases {
        let mut stream = raw_upgrade(&server, "/ws?sub=news", Ipv4Addr::LOCALHOST);
        stream.write_all(&bytes).unwrap();
        match expected {
            Some(code) => {
                let mut reply = Vec::new();
                let _ = stream.read_to_end(&mut reply);
                // The last frame is the close frame: 0x88, length, code.
                let close = reply
                    .windows(4)
                    .rev()
                    .find(|w| w[0] == 0x88)
                    .unwrap_or_else(|| panic!("{what}: no close frame in {reply:?}"));
                assert_eq!(u16::from_be_bytes([close[2], close[3]]), code, "{what}");
            }
            None => reset(stream),
        }
        back_to_baseline(&server, 1, 1);
    }
    // Bad JSON is an error frame, not a close.
    let mut json_client = Client::connect(&server, "/ws");
    json_client.send_text("{\"op\":\"pub\",\"ch\":");
    assert_eq!(json_client.recv_json()["code"], "bad_json");
    json_client.send_text("[]");
    assert_eq!(json_client.recv_json()["code"], "bad_json");
    service_intact(&server, &mut bystander, "news", 10);
}

#[test]
fn slow_handshakes_and_garbage_requests_are_cut_off() {
    let server = Server::start(&["--shards", "2", "--handshake-timeout", "1s"]);
    let mut bystander = Client::connect(&server, "/ws");
    bystander.subscribe("news");
    // Slowloris: heads that never finish.
    let slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            stream
                .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            stream
        })
        .collect();
    // Meanwhile new clients get in.
    let mut late = Client::connect(&server, "/ws");
    late.subscribe("late-news");
    for mut stream in slow {
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    }
    // Garbage instead of HTTP.
    for garbage in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"GET\r\n\r\n",
        &[b'A'; 9000],
    ] {
        let reply = support::raw_exchange(&server, garbage);
        assert!(reply.starts_with("HTTP/1.1 4"), "{reply:?}");
    }
    let totals = back_to_baseline(&server, 2, 2);
    assert!(totals["handshake_failures"].as_u64().unwrap() >= 54);
    service_intact(&server, &mut bystander, "news", 5);
    service_intact(&server, &mut late, "late-news", 3);
}
