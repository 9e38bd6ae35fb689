//! Several shardcast nodes as one service, through a real Redis (and NATS)
//! started by the test: one order per channel on every node, recovery on
//! another node after a node is killed, publications refused (never lost)
//! while Redis is down, and the NATS engine's fan-out.

mod support;

use std::{collections::HashMap, time::Duration};

use serde_json::{json, Value};
use support::{
    brokers::{Nats, Redis},
    secure::{with_api_key, API_KEY},
    wait_until, Client, Server,
};

/// Publishes over HTTP (with the test API key, which a node without one
/// ignores); the status and the reply.
fn try_publish(server: &Server, channel: &str, data: Value) -> (u16, Value) {
    let body = json!({"ch": channel, "data": data}).to_string();
    let (status, body) = with_api_key(server, "POST", "/api/publish", &body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The next message about `channel` (a publication, a resync).
fn next_on(client: &mut Client, channel: &str) -> Value {
    loop {
        let msg = client.recv_json();
        if msg["ch"] == channel {
            return msg;
        }
    }
}

/// Reads `n` publications of `channel`; returns (seq, data) in arrival order.
fn read_messages(client: &mut Client, channel: &str, n: usize) -> Vec<(u64, Value)> {
    (0..n)
        .map(|_| {
            let msg = next_on(client, channel);
            assert_eq!(msg["op"], "msg", "{msg}");
            (msg["seq"].as_u64().unwrap(), msg["data"].clone())
        })
        .collect()
}

#[test]
fn three_nodes_deliver_every_publication_in_one_order() {
    let redis = Redis::start();
    let nodes: Vec<Server> = ["a", "b", "c"].iter().map(|n| redis.node(n, &[])).collect();
    let channels = ["room.1", "room.2"];
    // Two subscribers per node and channel.
    let mut subscribers = Vec::new();
    for node in &nodes {
        for channel in channels {
            for _ in 0..2 {
                let mut client = Client::connect(node, "/ws");
                let ack = client.subscribe(channel);
                assert_eq!(ack["seq"], 0, "{ack}");
                subscribers.push((channel, client));
            }
        }
    }
    // Publishers on every node at once, HTTP and WebSocket.
    const EACH: usize = 60;
    let acked: Vec<Vec<(String, u64, Value)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(n, node)| {
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    let mut ws = Client::connect(node, "/ws");
                    for i in 0..EACH {
                        let channel = channels[i % 2];
                        let data = json!({"node": n, "i": i});
                        if i % 3 == 0 {
                            ws.send_json(
                                json!({"op": "pub", "ch": channel, "id": i, "data": data}),
                            );
                            let ack = ws.recv_json();
                            assert_eq!(ack["op"], "ack", "{ack}");
                            acked.push((channel.to_string(), ack["seq"].as_u64().unwrap(), data));
                        } else {
                            let (status, reply) = try_publish(node, channel, data.clone());
                            assert_eq!(status, 200, "{reply}");
                            acked.push((channel.to_string(), reply["seq"].as_u64().unwrap(), data));
                        }
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every acknowledged seq names one publication, per channel 1..=N.
    let mut by_seq: HashMap<(String, u64), Value> = HashMap::new();
    for (channel, seq, data) in acked.into_iter().flatten() {
        assert!(
            by_seq.insert((channel, seq), data).is_none(),
            "seq given twice"
        );
    }
    let per_channel = EACH * nodes.len() / 2;
    for (channel, mut client) in subscribers {
        let got = read_messages(&mut client, channel, per_channel);
        let seqs: Vec<u64> = got.iter().map(|m| m.0).collect();
        assert_eq!(
            seqs,
            (1..=per_channel as u64).collect::<Vec<_>>(),
            "{channel}"
        );
        for (seq, data) in got {
            assert_eq!(
                by_seq[&(channel.to_string(), seq)],
                data,
                "{channel} seq {seq}"
            );
        }
    }
}

#[test]
fn a_client_of_a_killed_node_resumes_on_another_without_loss() {
    let redis = Redis::start();
    let history = ["--history-size", "1000"];
    let mut a = redis.node("a", &history);
    let b = redis.node("b", &history);
    let mut client = Client::connect(&a, "/ws");
    let ack = client.subscribe("feed");
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    const TOTAL: u64 = 300;
    // Publications go on through b while a is killed mid-stream.
    let last_seen = std::thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            for i in 0..TOTAL {
                assert_eq!(try_publish(&b, "feed", json!(i)).0, 200);
            }
        });
        let mut last = 0;
        while last < TOTAL / 3 {
            let msg = next_on(&mut client, "feed");
            assert_eq!(msg["seq"], last + 1, "{msg}");
            last += 1;
        }
        a.signal(libc::SIGKILL);
        a.wait_exit(Duration::from_secs(5));
        // What was already on its way still counts as seen.
        while let Some(msg) = client_read(&mut client) {
            assert_eq!(msg["seq"], last + 1, "{msg}");
            last += 1;
        }
        publisher.join().unwrap();
        last
    });
    assert!(last_seen < TOTAL, "a was killed before the end");
    let mut resumed = Client::connect(&b, "/ws");
    resumed
        .send_json(json!({"op": "sub", "ch": "feed", "id": 1, "since": last_seen, "epoch": epoch}));
    let ack = resumed.recv_json();
    assert_eq!(
        (ack["op"].as_str(), ack["recovered"].as_bool()),
        (Some("ack"), Some(true)),
        "{ack}"
    );
    assert_eq!(ack["seq"], TOTAL);
    let missed = read_messages(&mut resumed, "feed", (TOTAL - last_seen) as usize);
    assert_eq!(
        missed.iter().map(|m| m.0).collect::<Vec<_>>(),
        (last_seen + 1..=TOTAL).collect::<Vec<_>>()
    );
    assert_eq!(missed[0].1, json!(last_seen));
    assert_eq!(try_publish(&b, "feed", json!("live")).0, 200);
    assert_eq!(
        read_messages(&mut resumed, "feed", 1),
        vec![(TOTAL + 1, json!("live"))]
    );
    // An epoch Redis never gave is not recovered.
    let mut stranger = Client::connect(&b, "/ws");
    stranger.send_json(json!({"op": "sub", "ch": "feed", "id": 1, "since": 3, "epoch": "nope"}));
    let ack = stranger.recv_json();
    assert_eq!(ack["recovered"], false, "{ack}");
}

/// The next message of a connection whose server may be gone (`None`
/// once it is).
fn client_read(client: &mut Client) -> Option<Value> {
    match client.ws.read() {
        Ok(tungstenite::Message::Text(text)) => serde_json::from_str(text.as_str()).ok(),
        Ok(_) => client_read(client),
        Err(_) => None,
    }
}

#[test]
fn while_redis_is_down_publications_are_refused_and_none_acknowledged_is_lost() {
    let mut redis = Redis::start_durable();
    let a = redis.node("a", &[]);
    let b = redis.node("b", &[]);
    let mut subscriber = Client::connect(&b, "/ws");
    subscriber.subscribe("orders");
    let mut acked = Vec::new();
    let publish = |i: u64, acked: &mut Vec<u64>| -> u16 {
        let (status, reply) = try_publish(&a, "orders", json!(i));
        match status {
            200 => acked.push(i),
            503 => assert_eq!(reply["error"], "unavailable", "{reply}"),
            other => panic!("publish answered {other}: {reply}"),
        }
        status
    };
    for i in 0..20 {
        assert_eq!(publish(i, &mut acked), 200);
    }
    redis.kill();
    wait_until("the node reports degraded", || support::health(&a) == 503);
    let mut i = 20;
    let mut refused = 0;
    while refused < 5 {
        if publish(i, &mut acked) == 503 {
            refused += 1;
        }
        i += 1;
    }
    // Over WebSocket too: with an id the err names it; without, it is
    // still sent (errors always are).
    let mut ws = Client::connect(&a, "/ws");
    ws.send_json(json!({"op": "pub", "ch": "orders", "id": 9, "data": "x"}));
    let err = ws.recv_json();
    assert_eq!(
        (err["op"].as_str(), err["code"].as_str(), &err["id"]),
        (Some("err"), Some("unavailable"), &json!(9)),
        "{err}"
    );
    ws.send_json(json!({"op": "pub", "ch": "orders", "data": "y"}));
    let err = ws.recv_json();
    assert_eq!(
        (err["code"].as_str(), err.get("id")),
        (Some("unavailable"), None),
        "{err}"
    );
    redis.restart();
    support::wait_healthy(&a);
    support::wait_healthy(&b);
    for _ in 0..20 {
        publish(i, &mut acked);
        i += 1;
    }
    assert!(acked.len() >= 40, "{} acknowledged", acked.len());
    // Every acknowledged publication reaches the subscriber, once, in order.
    let mut seen = Vec::new();
    let mut last_seq = 0;
    while seen.len() < acked.len() || seen.last() != acked.last() {
        let msg = next_on(&mut subscriber, "orders");
        if msg["op"] == "resync" {
            panic!("a durable Redis lost nothing, yet: {msg}");
        }
        let seq = msg["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "seq {seq} after {last_seq}");
        last_seq = seq;
        seen.push(msg["data"].as_u64().unwrap());
    }
    for i in &acked {
        assert!(seen.contains(i), "acknowledged {i} was not delivered");
    }
}

#[test]
fn nats_fans_out_to_every_node_at_most_once_and_refuses_while_down() {
    let nats = Nats::start();
    let node = |id: &str| nats.node(id, &[]);
    let (a, b) = (node("a"), node("b"));
    let mut on_a = Client::connect(&a, "/ws");
    on_a.subscribe("news");
    let mut on_b = Client::connect(&b, "/ws");
    on_b.subscribe("news");
    // NATS does not confirm a SUB: probe until b hears a's publications.
    let deadline = std::time::Instant::now() + support::DEADLINE;
    loop {
        assert!(std::time::Instant::now() < deadline, "b never heard from a");
        assert_eq!(try_publish(&a, "news", json!("probe")).0, 200);
        if on_b
            .try_recv_json(Duration::from_millis(100))
            .is_some_and(|m| m["data"] == "probe")
        {
            break;
        }
    }
    // Drain the probes on both sides.
    while on_a.try_recv_json(Duration::from_millis(100)).is_some() {}
    while on_b.try_recv_json(Duration::from_millis(100)).is_some() {}
    for i in 0..50 {
        assert_eq!(try_publish(&a, "news", json!(i)).0, 200);
    }
    let expected: Vec<Value> = (0..50).map(|i| json!(i)).collect();
    let from_b: Vec<Value> = (0..50)
        .map(|_| next_on(&mut on_b, "news")["data"].clone())
        .collect();
    assert_eq!(
        from_b, expected,
        "another node: every one, in the publisher's order"
    );
    let from_a: Vec<(u64, Value)> = read_messages(&mut on_a, "news", 50);
    assert_eq!(
        from_a.iter().map(|m| m.1.clone()).collect::<Vec<_>>(),
        expected,
        "the publisher's node"
    );
    drop(nats);
    wait_until("a reports degraded", || support::health(&a) == 503);
    let (status, reply) = try_publish(&a, "news", json!("lost?"));
    assert_eq!(
        (status, reply["error"].as_str()),
        (503, Some("unavailable")),
        "{reply}"
    );
}

#[test]
fn a_redis_that_lost_everything_makes_live_subscribers_resync() {
    let mut redis = Redis::start();
    let a = redis.node("a", &["--engine-timeout", "500ms"]);
    let b = redis.node("b", &["--engine-timeout", "500ms"]);
    let mut subscriber = Client::connect(&b, "/ws");
    let first_epoch = subscriber.subscribe("book")["epoch"].clone();
    for i in 0..5 {
        assert_eq!(try_publish(&a, "book", json!(i)).0, 200);
    }
    assert_eq!(
        read_messages(&mut subscriber, "book", 5).last().unwrap().0,
        5
    );
    // Not durable: the restarted Redis has no offset, no stream, no epoch.
    redis.restart();
    wait_until("both nodes are back", || {
        support::health(&a) == 200 && support::health(&b) == 200
    });
    let resync = next_on(&mut subscriber, "book");
    assert_eq!(resync["op"], "resync", "{resync}");
    assert_ne!(resync["epoch"], first_epoch);
    assert_eq!(resync["seq"], 0);
    let (status, reply) = try_publish(&a, "book", json!("after"));
    assert_eq!((status, &reply["seq"]), (200, &json!(1)), "{reply}");
    assert_eq!(
        read_messages(&mut subscriber, "book", 1),
        vec![(1, json!("after"))]
    );
    let stats = support::get_json(&b, "/api/stats");
    assert!(
        stats["total"]["engine_resyncs"].as_u64() >= Some(1),
        "{}",
        stats["total"]
    );
}

#[test]
fn scripts_flushed_from_redis_are_loaded_again() {
    let redis = Redis::start();
    let a = redis.node("a", &[]);
    assert_eq!(try_publish(&a, "c", json!(1)).0, 200);
    assert_eq!(
        redis.command(&["SCRIPT", "FLUSH"]).as_deref(),
        Some("+OK\r\n")
    );
    // The publication that met NOSCRIPT is refused (it was not applied),
    // and the next one goes through the reloaded script.
    let (status, reply) = try_publish(&a, "c", json!(2));
    assert_eq!(
        (status, reply["error"].as_str()),
        (503, Some("unavailable")),
        "{reply}"
    );
    let (status, reply) = try_publish(&a, "c", json!(3));
    assert_eq!((status, &reply["seq"]), (200, &json!(2)), "{reply}");
}

#[test]
fn channels_spread_over_several_redis_servers() {
    let (one, two) = (Redis::start(), Redis::start());
    let urls = format!("{},{}", one.url(), two.url());
    let node = |id| {
        let server = Server::start(&[
            "--shards",
            "2",
            "--engine",
            "redis",
            "--redis-url",
            &urls,
            "--node-id",
            id,
        ]);
        support::wait_healthy(&server);
        server
    };
    let (a, b) = (node("a"), node("b"));
    let channels: Vec<String> = (0..16).map(|i| format!("spread.{i}")).collect();
    let mut subscriber = Client::connect(&b, "/ws");
    for channel in &channels {
        subscriber.subscribe(channel);
    }
    for channel in &channels {
        assert_eq!(try_publish(&a, channel, json!(channel)).0, 200);
    }
    let mut got: Vec<String> = (0..channels.len())
        .map(|_| subscriber.recv_json()["data"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut expected = channels.clone();
    expected.sort();
    assert_eq!(got, expected);
    let keys = |redis: &Redis| {
        redis
            .command(&["KEYS", "shardcast:{*}:m"])
            .unwrap()
            .matches(":m")
            .count()
    };
    let (on_one, on_two) = (keys(&one), keys(&two));
    assert_eq!(on_one + on_two, channels.len());
    assert!(
        on_one > 0 && on_two > 0,
        "{on_one} and {on_two}: both Redis servers carry channels"
    );
}

/// Waits for `n` log lines of `server` containing `text`.
fn wait_for_log(log: &std::sync::mpsc::Receiver<String>, text: &str, n: usize) {
    let deadline = std::time::Instant::now() + support::DEADLINE;
    let mut seen = 0;
    while seen < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(text) => seen += 1,
            Ok(_) => {}
            Err(_) => panic!("no {n} log lines with {text:?} (saw {seen})"),
        }
    }
}

#[test]
fn a_node_cut_off_from_redis_catches_up_without_duplicates_or_reordering() {
    let host = support::netns::Namespace::new(1);
    let redis = Redis::start_bound(&[&host.host_ip]);
    let redis_url = format!("redis://{}:{}", host.host_ip, redis.port);
    let listen = format!("{}:0", host.inner_ip);
    // Node a on a host of its own; node b beside Redis.
    let (a, log) = Server::start_wrapped(
        &host.wrapper(),
        &listen,
        &[
            "--shards",
            "2",
            "--engine",
            "redis",
            "--redis-url",
            &redis_url,
            "--node-id",
            "a",
            "--engine-timeout",
            "300ms",
            "--history-size",
            "10000",
        ],
        &[("RUST_LOG", "warn,shardcast::engine=info")],
    );
    wait_for_log(&log, "connected to Redis", 2);
    support::wait_healthy(&a);
    let b = redis.node("b", &["--history-size", "10000"]);
    let mut subscriber = Client::connect(&a, "/ws");
    subscriber.subscribe("ticks");
    let mut acked = Vec::new();
    let publish_some = |n: usize, acked: &mut Vec<u64>| {
        for _ in 0..n {
            let (status, reply) = try_publish(&b, "ticks", json!(acked.len()));
            assert_eq!(status, 200, "b is not cut off: {reply}");
            acked.push(reply["seq"].as_u64().unwrap());
        }
    };
    publish_some(50, &mut acked);
    host.cut();
    // Both of a's links notice the silence, reset or not.
    wait_for_log(&log, "lost Redis", 2);
    publish_some(200, &mut acked);
    host.heal();
    wait_for_log(&log, "connected to Redis", 2);
    publish_some(50, &mut acked);
    // What a missed is filled from the stream: every one, in order, once.
    let got = read_messages(&mut subscriber, "ticks", acked.len());
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), acked);
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(data, &json!(i));
    }
    let stats = support::get_json(&a, "/api/stats");
    assert!(
        stats["total"]["engine_gaps_filled"].as_u64() >= Some(1),
        "{}",
        stats["total"]
    );
    assert!(
        stats["total"]["engine_reconnects"].as_u64() >= Some(1),
        "{}",
        stats["total"]
    );
}

#[test]
fn a_node_cut_off_by_redis_output_buffer_limit_refills_from_the_stream() {
    let redis = Redis::start();
    // Redis drops a pub/sub client whose pending output passes 300 KiB.
    let limit = redis.command(&[
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 300kb 300kb 0",
    ]);
    assert_eq!(limit.as_deref(), Some("+OK\r\n"));
    let big = [
        "--history-size",
        "1000",
        "--max-message-bytes",
        "256KiB",
        "--max-queue-bytes",
        "64MiB",
    ];
    let a = redis.node("a", &big);
    let b = redis.node("b", &big);
    let mut subscriber = Client::connect(&b, "/ws");
    subscriber.subscribe("big");
    // b stalls (stopped): what Redis pushes to it piles up past the limit.
    b.signal(libc::SIGSTOP);
    let filler = "x".repeat(200_000);
    const COUNT: u64 = 60;
    for i in 0..COUNT {
        let (status, reply) = try_publish(&a, "big", json!({"i": i, "filler": filler}));
        assert_eq!(status, 200, "{reply}");
    }
    b.signal(libc::SIGCONT);
    // b was cut off, came back, and filled the gap from the stream in
    // pages each under the limit: every publication, in order, once.
    let got = read_messages(&mut subscriber, "big", COUNT as usize);
    assert_eq!(
        got.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=COUNT).collect::<Vec<_>>()
    );
    assert!(got.iter().enumerate().all(|(i, m)| m.1["i"] == json!(i)));
    let stats = support::get_json(&b, "/api/stats");
    let total = &stats["total"];
    assert!(
        total["engine_reconnects"].as_u64() >= Some(1),
        "b was never cut off: {}",
        total["engine_reconnects"]
    );
    assert!(
        total["engine_gaps_filled"].as_u64() >= Some(1),
        "{}",
        total["engine_gaps_filled"]
    );
}

/// Sends an op with `id` and returns its answer (skipping anything else).
fn ask(client: &mut Client, op: Value) -> Value {
    let id = op["id"].clone();
    client.send_json(op);
    loop {
        let answer = client.recv_json();
        if answer["id"] == id && answer["op"] != "msg" {
            return answer;
        }
    }
}

#[test]
fn presence_spans_nodes_and_a_dead_node_drops_out_within_the_ttl() {
    let redis = Redis::start();
    let presence = ["--presence", "room.*", "--presence-ttl", "1s"];
    let a = redis.node("a", &presence);
    let mut b = redis.node("b", &presence);
    let mut watcher = Client::connect(&a, "/ws");
    watcher.send_json(json!({"op": "sub", "ch": "room.1", "id": 1, "join_leave": true}));
    assert_eq!(watcher.recv_json()["op"], "ack");
    // Its own join, though its position came from Redis: a member is
    // announced once its subscription is live.
    let own = next_on(&mut watcher, "room.1");
    assert_eq!(own["op"], "join", "{own}");
    let mut members = Vec::new();
    for node in [&a, &a, &b, &b] {
        let mut client = Client::connect(node, "/ws");
        client.subscribe("room.1");
        members.push(client);
    }
    // Every other member's join reaches the watcher, from both nodes.
    let mut joins = std::collections::BTreeSet::<String>::new();
    while joins.len() < 4 || joins.iter().filter(|c| c.starts_with("b.")).count() < 2 {
        let event = next_on(&mut watcher, "room.1");
        assert_eq!(event["op"], "join", "{event}");
        joins.insert(event["conn"].as_str().unwrap().to_string());
    }
    let on_b = joins.iter().filter(|c| c.starts_with("b.")).count();
    assert_eq!(on_b, 2, "{joins:?}");
    // Lists and counts are every node's, asked on either.
    let listed = ask(
        &mut watcher,
        json!({"op": "presence", "ch": "room.1", "id": "p"}),
    );
    assert_eq!(listed["count"], 5, "{listed}");
    let conns: std::collections::BTreeSet<String> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["conn"].as_str().unwrap().to_string())
        .collect();
    assert!(
        conns.is_superset(&joins) && conns.len() == 5,
        "{conns:?} {joins:?}"
    );
    // Pages of 2, read from Redis a page at a time, cover everyone once.
    let (mut paged, mut cursor) = (Vec::new(), None::<String>);
    for page in 0.. {
        let mut op =
            json!({"op": "presence", "ch": "room.1", "id": format!("page{page}"), "limit": 2});
        if let Some(cursor) = &cursor {
            op["cursor"] = json!(cursor);
        }
        let answer = ask(&mut watcher, op);
        assert_eq!(answer["count"], 5, "{answer}");
        let members = answer["members"].as_array().unwrap();
        assert!(members.len() <= 2, "{answer}");
        paged.extend(
            members
                .iter()
                .map(|m| m["conn"].as_str().unwrap().to_string()),
        );
        cursor = answer["cursor"].as_str().map(String::from);
        if cursor.is_none() {
            break;
        }
        assert!(page < 5, "the pages do not end");
    }
    let mut sorted = paged.clone();
    sorted.sort();
    assert_eq!(paged, sorted, "in conn order");
    assert_eq!(
        paged.into_iter().collect::<std::collections::BTreeSet<_>>(),
        conns
    );
    let mut on_b_client = Client::connect(&b, "/ws");
    let count = ask(
        &mut on_b_client,
        json!({"op": "occupancy", "ch": "room.1", "id": "o"}),
    );
    assert_eq!(count["count"], 5, "{count}");
    // A leave on b reaches the watcher on a.
    members[2].send_json(json!({"op": "unsub", "ch": "room.1", "id": "u"}));
    let leave = next_on(&mut watcher, "room.1");
    assert_eq!(
        (
            leave["op"].as_str(),
            leave["conn"].as_str().map(|c| c.starts_with("b."))
        ),
        (Some("leave"), Some(true)),
        "{leave}"
    );
    // b dies: its last member drops out once its refreshes stop (1 s).
    b.signal(libc::SIGKILL);
    b.wait_exit(Duration::from_secs(5));
    wait_until("b's members expire", || {
        ask(
            &mut watcher,
            json!({"op": "occupancy", "ch": "room.1", "id": "later"}),
        )["count"]
            == 3
    });
}

/// A client of `user` on `server` (nodes started with `--jwt-secret`).
fn user_on(server: &Server, user: &str) -> Client {
    let token = support::secure::hs256(&support::secure::claims(user, 300, &[">"], &[">"]));
    Client::connect(server, &format!("/ws?token={token}"))
}

/// Asks `via` for `kick` until `client` (on another node) sees its effect
/// — the other node's control subscription may be a moment behind its
/// health — and returns what the client saw.
fn kick_until_seen(via: &Server, path: &str, kick: Value, client: &mut Client) -> Option<Value> {
    let deadline = std::time::Instant::now() + support::DEADLINE;
    loop {
        let (status, body) = with_api_key(via, "POST", path, &kick.to_string());
        assert_eq!(status, 200, "{body}");
        match client.try_recv_event(Duration::from_millis(200)) {
            Some(seen) => return Some(seen),
            None if std::time::Instant::now() > deadline => return None,
            None => {}
        }
    }
}

#[test]
fn the_server_api_spans_nodes_on_redis() {
    let redis = Redis::start();
    let secret = [
        "--jwt-secret",
        support::secure::SECRET,
        "--api-key",
        API_KEY,
    ];
    let a = redis.node("a", &secret);
    let b = redis.node("b", &secret);
    let mut on_b = user_on(&b, "reader");
    on_b.subscribe("orders");
    // A retry that reaches another node is recognised: Redis keeps the key.
    let publish = json!({"ch": "orders", "data": {"id": 1}, "idempotency_key": "o-1"}).to_string();
    for node in [&a, &b, &a] {
        let (status, body) = with_api_key(node, "POST", "/api/publish", &publish);
        assert_eq!((status, body.as_str()), (200, r#"{"seq":1}"#));
    }
    let batch = json!({"channels": ["orders", "audit"], "data": 2, "idempotency_key": "o-2"});
    for node in [&b, &a] {
        let (_, body) = with_api_key(node, "POST", "/api/publish", &batch.to_string());
        assert_eq!(body, r#"{"seqs":[2,1]}"#);
    }
    assert_eq!(
        read_messages(&mut on_b, "orders", 2),
        [(1, json!({"id": 1})), (2, json!(2))]
    );
    let (status, _) = try_publish(&a, "orders", json!(3));
    assert_eq!(status, 200);
    assert_eq!(
        read_messages(&mut on_b, "orders", 1),
        [(3, json!(3))],
        "no duplicate between"
    );
    // History comes from Redis's stream on any node.
    let history = support::get_json_with(&b, "/api/history/orders?since=1", API_KEY);
    assert_eq!(history["seq"], 3);
    assert_eq!(history["complete"], true, "{history}");
    let seqs: Vec<u64> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    // A disconnect asked of node a reaches alice on node b.
    let mut alice_on_a = user_on(&a, "alice");
    let mut alice_on_b = user_on(&b, "alice");
    alice_on_b.subscribe("room");
    let disconnect = json!({"user": "alice", "code": 4200, "reason": "bye"});
    let seen = kick_until_seen(&a, "/api/disconnect", disconnect, &mut alice_on_b);
    assert_eq!(seen, Some(json!({"close": 4200, "reason": "bye"})));
    assert_eq!(alice_on_a.expect_close().0, 4200);
    // An unsubscribe too.
    let mut bob_on_b = user_on(&b, "bob");
    bob_on_b.subscribe("room");
    let unsubscribe = json!({"user": "bob", "ch": "room"});
    let seen = kick_until_seen(&a, "/api/unsubscribe", unsubscribe, &mut bob_on_b);
    assert_eq!(
        seen,
        Some(json!({"op": "unsubscribed", "ch": "room", "reason": "server"}))
    );
}

#[test]
fn a_disconnect_reaches_every_node_through_nats() {
    let nats = Nats::start();
    let node = |id: &str| {
        let secured = [
            "--jwt-secret",
            support::secure::SECRET,
            "--api-key",
            API_KEY,
        ];
        nats.node(id, &secured)
    };
    let (a, b) = (node("a"), node("b"));
    let mut alice_on_b = user_on(&b, "alice");
    let mut carol_on_b = user_on(&b, "carol");
    let seen = kick_until_seen(
        &a,
        "/api/disconnect",
        json!({"user": "alice"}),
        &mut alice_on_b,
    );
    assert_eq!(seen, Some(json!({"close": 4000, "reason": "disconnected"})));
    carol_on_b.send_json(json!({"op": "ping", "id": 1}));
    assert_eq!(carol_on_b.recv_json()["op"], "pong", "carol stays");
}
