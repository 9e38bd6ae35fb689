//! A subscriber that stops reading is closed with 1008 "slow consumer" once
//! its queue passes --max-queue-bytes, while a healthy subscriber of the same
//! channel receives every message without delay.

mod support;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use serde_json::json;
use socket2::{Domain, Socket, Type};
use support::{Client, Server};

#[test]
fn slow_consumer_is_closed_and_healthy_subscriber_gets_everything() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--max-queue-bytes",
        "256KiB",
        "--max-message-bytes",
        "16KiB",
    ]);
    // The slow client asks for a tiny receive buffer so the kernel holds
    // little on its behalf; the server's queue fills quickly.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut slow = Client::connect_over(socket.into(), &server, "/ws?sub=firehose");
    let mut healthy = Client::connect(&server, "/ws?sub=firehose");
    let mut publisher = Client::connect(&server, "/ws");
    // Make sure both subscriptions are live before publishing.
    support::wait_until("subscribers ready", || {
        publisher.send_json(json!({"op": "pub", "ch": "firehose", "data": "ready?", "id": 0}));
        publisher.recv_json();
        healthy.recv_json()["data"] == "ready?"
    });

    let payload = "x".repeat(8000);
    let messages = 2500; // ~20 MB: far more than kernel buffers plus the queue.
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let reader = std::thread::spawn(move || {
        let mut last = 0;
        for _ in 0..messages {
            let msg = healthy.recv_json();
            let seq = msg["seq"].as_u64().unwrap();
            assert!(seq > last, "in order");
            last = seq;
            counted.fetch_add(1, Ordering::Relaxed);
        }
        last
    });
    for i in 0..messages {
        publisher.send_json(json!({"op": "pub", "ch": "firehose", "data": payload}));
        if i % 10 == 0 {
            // Healthy means keeping up: the publisher goes no more than 10
            // messages (80 KB) ahead of it, whatever the test machine's load,
            // while the slow subscriber's queue grows without bound.
            support::wait_until("the healthy subscriber keeping up", || {
                received.load(Ordering::Relaxed) + 10 >= i as u64
            });
        }
        if i % 100 == 0 {
            // Keep the publisher's own inbound acks from piling up.
            publisher.send_json(json!({"op": "ping", "id": i}));
            publisher.recv_json();
        }
    }
    let last = reader.join().expect("healthy subscriber got every message");
    assert!(last >= messages as u64);

    // The slow client now reads: some messages, then the close frame.
    let (code, reason, skipped) = slow.expect_close();
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    assert!(
        skipped < messages,
        "it was cut off before getting everything ({skipped})"
    );
}
