//! Conflation (`--conflate`): a subscriber that stops reading, on a channel
//! that conflates, is not closed as a slow consumer when the publications
//! carry keys: past `--conflate-after-bytes` queued, each keyed publication
//! takes the place of the older one with its key still queued, and says how
//! many it stands for (`"conflated":N`). What it then receives is in `seq`
//! order, ends with the latest value of every key, and accounts for every
//! publication. A fast subscriber of the same channel gets everything; a
//! slow one on a channel that does not conflate is still closed with 1008.

mod support;

use std::collections::HashMap;

use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use support::{Client, Server};

const KEYS: [&str; 3] = ["AAPL", "MSFT", "GOOG"];
const MESSAGES: usize = 2500;

/// A subscriber with a tiny receive buffer, so the kernel holds little on
/// its behalf and the server's queue fills.
fn slow_subscriber(server: &Server, channel: &str) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut client = Client::connect_over(socket.into(), server, "/ws");
    client.subscribe(channel);
    client
}

#[test]
fn a_slow_subscriber_of_a_conflated_channel_gets_the_latest_of_every_key() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--conflate",
        "prices.*",
        "--max-queue-bytes",
        "256KiB",
        "--max-message-bytes",
        "16KiB",
    ]);
    let mut slow = slow_subscriber(&server, "prices.us");
    let mut unconflated = slow_subscriber(&server, "news");
    let mut fast = Client::connect(&server, "/ws");
    // The ack says seqs may skip here (the client's gap guard allows it).
    assert_eq!(fast.subscribe("prices.us")["conflate"], true);
    let mut other = Client::connect(&server, "/ws");
    assert!(other.subscribe("news").get("conflate").is_none());
    // It never reads: gone before the news would close it as a second slow
    // consumer (the count below is of the one the test makes slow).
    drop(other);
    let mut publisher = Client::connect(&server, "/ws");
    let pad = "x".repeat(8000);
    // ~20 MB per channel: far more than kernel buffers and the queue bound.
    let fast_reader = std::thread::spawn(move || {
        let mut last = 0;
        for _ in 0..MESSAGES {
            let msg = fast.recv_json();
            let seq = msg["seq"].as_u64().unwrap();
            assert!(seq > last && msg.get("conflated").is_none(), "{seq}");
            last = seq;
        }
        last
    });
    // The slow subscriber of the channel that does not conflate is closed
    // while the publisher goes on: it reads its close once the server
    // dropped what overflowed its queue, or the server, finding it still
    // not reading when its close flush runs out, would reset it (as on a
    // loaded machine it did).
    let stat = |field: &str| support::get_json(&server, "/api/stats")["total"][field].clone();
    let mut latest = HashMap::new();
    let unconflated_close = std::thread::scope(|scope| {
        let closer = scope.spawn(|| {
            support::wait_until("the unconflated slow subscriber's overflow", || {
                stat("frames_dropped").as_u64() > Some(0)
            });
            unconflated.expect_close()
        });
        for i in 0..MESSAGES {
            let key = KEYS[i % KEYS.len()];
            for ch in ["prices.us", "news"] {
                let data = json!({"k": key, "i": i, "pad": pad});
                publisher.send_json(json!({"op":"pub","ch":ch,"key":key,"data":data}));
            }
            latest.insert(key, i);
            if i % 4 == 0 {
                // Keep the publisher near the fast subscriber (4 messages,
                // 32 KB a channel, under the default --conflate-after-bytes
                // of 64 KiB): a subscriber that keeps up is never conflated.
                publisher.send_json(json!({"op":"ping","id":i}));
                while publisher.recv_json()["op"] != "pong" {}
            }
        }
        closer.join().unwrap()
    });
    assert_eq!(fast_reader.join().unwrap(), MESSAGES as u64);
    // The channel that does not conflate: its slow subscriber was closed.
    let (code, reason, _) = unconflated_close;
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    // The conflated one is still there, and now reads what is left.
    let (mut accounted, mut conflated_frames, mut last_seq) = (0, 0, 0);
    let mut last_of: HashMap<String, u64> = HashMap::new();
    while accounted < MESSAGES as u64 {
        let msg: Value = slow.recv_json();
        let seq = msg["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "seq order: {seq} after {last_seq}");
        last_seq = seq;
        let stands_for = msg["conflated"].as_u64().unwrap_or(0);
        conflated_frames += u64::from(stands_for > 0);
        accounted += 1 + stands_for;
        let key = msg["data"]["k"].as_str().unwrap().to_owned();
        last_of.insert(key, msg["data"]["i"].as_u64().unwrap());
    }
    assert_eq!(
        accounted, MESSAGES as u64,
        "every publication accounted for once"
    );
    assert!(conflated_frames > 0, "conflation happened");
    for key in KEYS {
        assert_eq!(last_of[key], latest[key] as u64, "the latest {key}");
    }
    let total = &support::get_json(&server, "/api/stats")["total"];
    assert!(
        total["publications_conflated"].as_u64() > Some(0),
        "{total}"
    );
    support::wait_until("the unconflated slow subscriber's close counted", || {
        stat("closed")["slow_consumer"] == 1
    });
}
