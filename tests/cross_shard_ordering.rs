//! With two shards, publishers and subscribers land on both (SO_REUSEPORT
//! spreads connections by address hash); every subscriber of a channel must
//! see the same messages, in the same order, numbered 1, 2, 3, ... by the
//! channel's owner.

mod support;

use std::collections::HashMap;

use serde_json::{json, Value};
use support::{Client, Server};

const SUBSCRIBERS: usize = 12;
const PUBLISHERS: usize = 6;
const PER_PUBLISHER: usize = 60;

#[test]
fn every_subscriber_sees_the_same_order_on_every_channel() {
    let server = Server::start(&["--shards", "2"]);
    for channel in ["alpha", "beta", "gamma"] {
        let mut subscribers: Vec<Client> = (0..SUBSCRIBERS)
            .map(|_| {
                let mut c = Client::connect(&server, "/ws");
                c.subscribe(channel);
                c
            })
            .collect();
        // Publishers on separate threads, interleaving freely.
        let url = server.url("/ws");
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let url = url.clone();
                let channel = channel.to_owned();
                std::thread::spawn(move || {
                    let mut c = Client::connect_url(&url);
                    for i in 0..PER_PUBLISHER {
                        c.send_json(
                            json!({"op": "pub", "ch": channel, "data": {"p": p, "i": i}, "id": i}),
                        );
                    }
                    // Each publisher's acks carry increasing seqs.
                    let seqs: Vec<u64> = (0..PER_PUBLISHER)
                        .map(|_| c.recv_json()["seq"].as_u64().unwrap())
                        .collect();
                    assert!(
                        seqs.windows(2).all(|w| w[0] < w[1]),
                        "acks in order: {seqs:?}"
                    );
                })
            })
            .collect();
        for p in publishers {
            p.join().expect("publisher");
        }
        let total = PUBLISHERS * PER_PUBLISHER;
        let mut reference: Option<Vec<Value>> = None;
        for sub in subscribers.iter_mut() {
            let mut got = Vec::with_capacity(total);
            let mut last_from: HashMap<u64, i64> = HashMap::new();
            for expected_seq in 1..=total as u64 {
                let msg = sub.recv_json();
                assert_eq!(
                    msg["seq"].as_u64(),
                    Some(expected_seq),
                    "gap-free, in order: {msg}"
                );
                assert_eq!(msg["ch"], channel);
                // Each publisher's own messages keep their order too.
                let p = msg["data"]["p"].as_u64().unwrap();
                let i = msg["data"]["i"].as_i64().unwrap();
                assert!(last_from.insert(p, i).is_none_or(|prev| prev < i));
                got.push(msg["data"].clone());
            }
            match &reference {
                None => reference = Some(got),
                Some(first) => assert_eq!(first, &got, "same sequence for every subscriber"),
            }
        }
    }
}

#[test]
fn an_acknowledged_subscription_misses_nothing_published_after_the_ack() {
    let server = Server::start(&["--shards", "2"]);
    // Many channels, so both "owner is my shard" and "owner is the other
    // shard" happen, with publishers on either shard.
    for n in 0..40 {
        let channel = format!("fresh-{n}");
        let mut sub = Client::connect(&server, "/ws");
        sub.subscribe(&channel);
        let seq = support::publish(&server, &channel, json!(n));
        assert_eq!(seq, 1);
        assert_eq!(
            sub.recv_json(),
            json!({"op": "msg", "ch": channel, "seq": 1, "data": n})
        );
    }
}
