//! Channel history and recovery: a client that comes back with the last
//! `seq` it saw (and the channel's epoch) gets every publication it missed
//! that history still holds, then live ones, with no gap and no duplicate —
//! or is told `recovered:false` when that cannot be promised (another epoch,
//! history evicted or expired).

mod support;

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{get_json, publish, Client, Server, DEADLINE};

/// Subscribes with `since` and returns the ack.
fn resume(client: &mut Client, channel: &str, since: u64, epoch: &str) -> Value {
    client
        .send_json(json!({"op": "sub", "ch": channel, "id": "r", "since": since, "epoch": epoch}));
    let ack = client.recv_json();
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(ack["id"], "r");
    ack
}

/// Unsubscribes and waits for the ack, so nothing published after it can
/// still reach the client.
fn unsubscribe(client: &mut Client, channel: &str) {
    client.send_json(json!({"op": "unsub", "ch": channel, "id": "u"}));
    let ack = client.recv_json();
    assert_eq!(
        (&ack["op"], &ack["id"]),
        (&json!("ack"), &json!("u")),
        "{ack}"
    );
}

/// The `seq`s of the next `n` publications a client receives.
fn seqs(client: &mut Client, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| client.recv_json()["seq"].as_u64().expect("a msg"))
        .collect()
}

#[test]
fn missed_publications_are_replayed_then_live_ones_follow() {
    let server = Server::start(&["--shards", "2"]);
    // Eight channels and several connections: both a local and a remote
    // owner serve recoveries.
    let channels: Vec<String> = (0..8).map(|i| format!("feed-{i}")).collect();
    let mut epochs = Vec::new();
    for channel in &channels {
        for i in 0..10 {
            publish(&server, channel, json!({"i": i}));
        }
        let mut first = Client::connect(&server, "/ws");
        let ack = first.subscribe(channel);
        assert_eq!(ack["seq"], 10);
        epochs.push(ack["epoch"].as_str().unwrap().to_owned());
        for i in 10..15 {
            publish(&server, channel, json!({"i": i}));
        }
    }
    for _ in 0..4 {
        let mut client = Client::connect(&server, "/ws");
        for (channel, epoch) in channels.iter().zip(&epochs) {
            let ack = resume(&mut client, channel, 12, epoch);
            assert_eq!(ack["recovered"], true, "{ack}");
            assert_eq!(ack["seq"], 15, "{ack}");
            let missed: Vec<Value> = (0..3).map(|_| client.recv_json()).collect();
            assert_eq!(
                missed
                    .iter()
                    .map(|m| m["seq"].as_u64().unwrap())
                    .collect::<Vec<_>>(),
                [13, 14, 15]
            );
            assert_eq!(missed[0]["data"], json!({"i": 12}));
            assert_eq!(missed[0]["ch"], channel.as_str());
        }
        for channel in &channels {
            client.send_json(json!({"op": "unsub", "ch": channel}));
        }
    }
    // Live publications follow a recovery.
    let mut client = Client::connect(&server, "/ws");
    let ack = resume(&mut client, &channels[0], 15, &epochs[0]);
    assert_eq!(ack["recovered"], true);
    publish(&server, &channels[0], json!("live"));
    let live = client.recv_json();
    assert_eq!(
        (live["seq"].as_u64(), &live["data"]),
        (Some(16), &json!("live"))
    );
}

#[test]
fn reconnecting_while_publications_race_loses_and_repeats_nothing() {
    const TOTAL: u64 = 3000;
    const SUBSCRIBERS: usize = 6;
    let server = Server::start(&["--shards", "2", "--history-size", "10000"]);
    let mut subscribers: Vec<(Client, String)> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut client = Client::connect(&server, "/ws");
            let ack = client.subscribe("race");
            (client, ack["epoch"].as_str().unwrap().to_owned())
        })
        .collect();
    let mut publisher = Client::connect(&server, "/ws");
    let flood = thread::spawn(move || {
        for i in 1..=TOTAL {
            publisher.send_json(json!({"op": "pub", "ch": "race", "data": i}));
        }
        publisher
    });
    let url = server.url("/ws");
    let receivers: Vec<_> = subscribers
        .drain(..)
        .enumerate()
        .map(|(n, (mut client, epoch))| {
            let url = url.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                // Read a little, drop the connection mid-stream, come back
                // with `since`, and read to the end.
                let cut_after = 50 + 200 * n as u64;
                while got.last().copied().unwrap_or(0) < cut_after.min(TOTAL) {
                    got.push(client.recv_json()["seq"].as_u64().unwrap());
                }
                drop(client);
                let mut client = Client::connect_url(&url);
                let last = *got.last().unwrap();
                let ack = resume(&mut client, "race", last, &epoch);
                assert_eq!(ack["recovered"], true, "{ack}");
                while got.last().copied().unwrap_or(0) < TOTAL {
                    got.push(client.recv_json()["seq"].as_u64().unwrap());
                }
                got
            })
        })
        .collect();
    let _publisher = flood.join().unwrap();
    for receiver in receivers {
        let got = receiver.join().unwrap();
        let first = got[0];
        let expected: Vec<u64> = (first..=TOTAL).collect();
        assert_eq!(
            got, expected,
            "every seq once, in order, across the reconnect"
        );
    }
}

#[test]
fn not_recovered_when_history_cannot_vouch_for_the_gap() {
    let server = Server::start(&["--shards", "2", "--history-size", "3"]);
    let mut client = Client::connect(&server, "/ws");
    let epoch = client.subscribe("news")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    unsubscribe(&mut client, "news");
    for i in 1..=10 {
        publish(&server, "news", json!(i));
    }
    let mut other = Client::connect(&server, "/ws");
    for (since, epoch) in [
        (2, epoch.as_str()),
        (8, "another-epoch"),
        (99, epoch.as_str()),
    ] {
        let ack = resume(&mut other, "news", since, epoch);
        assert_eq!(
            ack["recovered"], false,
            "since {since} epoch {epoch}: {ack}"
        );
        assert_eq!(ack["seq"], 10);
    }
    // Nothing was replayed: the next message is live.
    publish(&server, "news", json!("live"));
    assert_eq!(other.recv_json()["seq"], 11);
    // At the edge of what history holds (8, 9, 10), it recovers.
    let mut edge = Client::connect(&server, "/ws");
    let ack = resume(&mut edge, "news", 7, &epoch);
    assert_eq!(ack["recovered"], false, "8 was evicted by 11");
    let ack = resume(&mut edge, "news", 8, &epoch);
    assert_eq!(ack["recovered"], true);
    assert_eq!(seqs(&mut edge, 3), [9, 10, 11]);
}

#[test]
fn history_expires_and_its_memory_is_released() {
    let server = Server::start(&["--shards", "2", "--history-ttl", "1s"]);
    let mut client = Client::connect(&server, "/ws");
    let epoch = client.subscribe("brief")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    unsubscribe(&mut client, "brief");
    for i in 1..=3 {
        publish(&server, "brief", json!(i));
    }
    let stats = get_json(&server, "/api/stats");
    assert_eq!(stats["total"]["history_messages"], 3);
    let ack = resume(&mut client, "brief", 1, &epoch);
    assert_eq!(ack["recovered"], true);
    assert_eq!(seqs(&mut client, 2), [2, 3]);
    unsubscribe(&mut client, "brief");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = get_json(&server, "/api/stats");
        if stats["total"]["history_messages"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "history never expired: {stats}");
        thread::sleep(Duration::from_millis(50));
    }
    let ack = resume(&mut client, "brief", 1, &epoch);
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(
        ack["epoch"],
        epoch.as_str(),
        "a forgotten channel comes back under a new epoch"
    );
    assert_eq!(ack["seq"], 0);
}

#[test]
fn raw_rooms_replay_since() {
    let server = Server::start(&["--shards", "2"]);
    let mut json_client = Client::connect(&server, "/ws");
    let epoch = json_client.subscribe("lobby")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=5 {
        publish(&server, "lobby", json!({"n": i}));
    }
    let mut member = Client::connect(&server, &format!("/ws/lobby?since=2&epoch={epoch}"));
    for n in 3..=5 {
        assert_eq!(member.recv_json(), json!({"n": n}));
    }
    publish(&server, "lobby", json!({"n": 6}));
    assert_eq!(member.recv_json(), json!({"n": 6}));
    assert_eq!(support::refused_upgrade(&server, "/ws/lobby?since=2"), 400);
}

#[test]
fn a_restarted_server_has_a_new_epoch() {
    let first = Server::start(&["--shards", "1"]);
    publish(&first, "news", json!(1));
    let mut client = Client::connect(&first, "/ws");
    let old = client.subscribe("news")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(client);
    drop(first);
    let second = Server::start(&["--shards", "1"]);
    publish(&second, "news", json!(1));
    let mut client = Client::connect(&second, "/ws");
    let ack = resume(&mut client, "news", 1, &old);
    assert_eq!(ack["recovered"], false);
    assert_ne!(ack["epoch"], old.as_str());
}

#[test]
fn every_sub_is_answered_even_when_unsubscribed_or_replaced_before_its_answer() {
    let server = Server::start(&["--shards", "2"]);
    let mut client = Client::connect(&server, "/ws");
    // Eight channels: on a 2-shard server most have a remote owner, whose
    // answer arrives after the unsub and the second sub were handled.
    for n in 0..8 {
        let ch = format!("quick-{n}");
        client.send_json(json!({"op": "sub", "ch": ch, "id": "a"}));
        client.send_json(json!({"op": "unsub", "ch": ch, "id": "u"}));
        client.send_json(json!({"op": "sub", "ch": ch, "id": "b"}));
        client.send_json(json!({"op": "sub", "ch": ch, "id": "c"}));
        client.send_json(json!({"op": "ping", "id": "p"}));
        let mut ids: Vec<String> = (0..5)
            .map(|_| client.recv_json()["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        assert_eq!(ids, ["a", "b", "c", "p", "u"], "channel {ch}");
        // The last sub is the one in effect.
        let seq = publish(&server, &ch, json!(n));
        let msg = client.recv_json();
        assert_eq!(
            (msg["ch"].as_str(), msg["seq"].as_u64()),
            (Some(ch.as_str()), Some(seq))
        );
    }
}

/// A client that was away while large messages went by: what it missed is
/// more than its queue may hold, so instead of a slow-consumer close before
/// the ack (and the same resume again on every reconnect), it is told
/// `recovered:false` and goes on live.
#[test]
fn a_resume_bigger_than_the_queue_is_answered_not_recovered() {
    let server = Server::start(&["--shards", "2", "--max-queue-bytes", "1MiB"]);
    let mut first = Client::connect(&server, "/ws");
    let epoch = first.subscribe("big")["epoch"].as_str().unwrap().to_owned();
    let pad = "r".repeat(20_000);
    // 1.8 MB, all still in history (100 per channel) after the 3 below.
    for i in 1..=90 {
        assert_eq!(publish(&server, "big", json!({"i": i, "pad": pad})), i);
    }
    for attempt in 0..3 {
        let mut client = Client::connect(&server, "/ws");
        let ack = resume(&mut client, "big", 0, &epoch);
        assert_eq!(ack["recovered"], false, "{ack}");
        assert_eq!(ack["seq"], 90 + attempt, "{ack}");
        let seq = publish(&server, "big", json!("live"));
        let msg = client.recv_json();
        assert_eq!(
            (msg["seq"].as_u64(), &msg["data"]),
            (Some(seq), &json!("live"))
        );
    }
    // What fits is still replayed.
    let mut near = Client::connect(&server, "/ws");
    let ack = resume(&mut near, "big", 90, &epoch);
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(seqs(&mut near, 3), [91, 92, 93]);
    let stats = get_json(&server, "/api/stats");
    assert_eq!(stats["total"]["replays_refused"], 3, "{stats}");
}
