//! A WebSocket `pub` retried under its `idempotency_key` is published once
//! (issue 24, finding 16): with the memory engine, where the owner shard
//! remembers the key (and refuses a new one when it cannot), and with a
//! real Redis stalled (`SIGSTOP`) while a publication is in flight — the
//! publisher is told `outcome_unknown`, the stalled Redis applies it once
//! resumed, and the retry under the same key is answered with its `seq`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{
    brokers::Redis,
    secure::{claims, hs256, secured_server, with_api_key, API_KEY},
    Client, Server, DEADLINE,
};

/// Sends `op` and returns the answer to its `id` (an `ack` or an `err`),
/// skipping publications.
fn ask(client: &mut Client, op: Value) -> Value {
    let id = op["id"].clone();
    client.send_json(op);
    loop {
        let answer = client.recv_json();
        if answer["op"] != "msg" {
            assert_eq!(answer["id"], id, "{answer}");
            return answer;
        }
    }
}

/// The next publication on `channel`, as (seq, data).
fn next_on(client: &mut Client, channel: &str) -> (u64, Value) {
    loop {
        let msg = client.recv_json();
        if msg["ch"] == channel {
            assert_eq!(msg["op"], "msg", "{msg}");
            return (msg["seq"].as_u64().unwrap(), msg["data"].clone());
        }
    }
}

/// An HTTP publish with the API key: (status, answer).
fn http_publish(server: &Server, body: Value) -> (u16, Value) {
    let (status, text) = with_api_key(server, "POST", "/api/publish", &body.to_string());
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

#[test]
fn a_pub_retried_under_its_idempotency_key_is_published_once() {
    let server = secured_server(&[]);
    let token = hs256(&claims("writer", 300, &[">"], &[">"]));
    let mut subscriber = Client::connect(&server, &format!("/ws?token={token}"));
    subscriber.subscribe("orders");
    let mut publisher = Client::connect(&server, &format!("/ws?token={token}"));
    let order = |id: u64, ch: &str| json!({"op": "pub", "ch": ch, "data": {"order": 7}, "id": id, "idempotency_key": "order-7"});
    let first = ask(&mut publisher, order(1, "orders"));
    assert_eq!(first, json!({"op": "ack", "id": 1, "seq": 1}));
    for id in 2..5 {
        let again = ask(&mut publisher, order(id, "orders"));
        assert_eq!(
            again,
            json!({"op": "ack", "id": id, "seq": 1}),
            "answered, not published"
        );
    }
    // Without an id, a retry is still not published (nothing to answer).
    let mut quiet = order(0, "orders");
    quiet.as_object_mut().unwrap().remove("id");
    publisher.send_json(quiet);
    // The same key on another channel is another publication.
    assert_eq!(ask(&mut publisher, order(5, "audit"))["seq"], 1);
    // A `pub` is a single publish: an HTTP single publish under its key is
    // its retry; a `channels` publish under it is another request.
    let single = json!({"ch": "orders", "data": {"order": 7}, "idempotency_key": "order-7"});
    assert_eq!(http_publish(&server, single), (200, json!({"seq": 1})));
    let several = json!({"channels": ["orders"], "data": "several", "idempotency_key": "order-7"});
    assert_eq!(http_publish(&server, several), (200, json!({"seqs": [2]})));
    let refused = ask(
        &mut publisher,
        json!({"op": "pub", "ch": "orders", "data": 1, "id": 6, "idempotency_key": ""}),
    );
    assert_eq!(
        (&refused["op"], &refused["code"]),
        (&json!("err"), &json!("bad_json"))
    );
    let marker = ask(
        &mut publisher,
        json!({"op": "pub", "ch": "orders", "data": "marker", "id": 7}),
    );
    assert_eq!(marker["seq"], 3);
    let got: Vec<(u64, Value)> = (0..3).map(|_| next_on(&mut subscriber, "orders")).collect();
    assert_eq!(
        got,
        [
            (1, json!({"order": 7})),
            (2, json!("several")),
            (3, json!("marker"))
        ],
        "each publication delivered once"
    );
    assert!(subscriber
        .try_recv_json(Duration::from_millis(200))
        .is_none());
    let stats = support::get_json_with(&server, "/api/stats", API_KEY);
    assert_eq!(stats["total"]["publications_deduplicated"], 5, "{stats}");
}

#[test]
fn over_its_memory_budget_the_owner_refuses_a_pub_under_a_new_key() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--max-memory",
        "4MiB",
        "--history-ttl",
        "1m",
    ]);
    let mut client = Client::connect(&server, "/ws");
    let keyed = |id: u64, key: &str| json!({"op": "pub", "ch": "kept", "data": id, "id": id, "idempotency_key": key});
    assert_eq!(ask(&mut client, keyed(1, "early"))["seq"], 1);
    // 5 MB of history: over the 4 MiB budget.
    let pad = "h".repeat(50_000);
    for i in 0..100 {
        client.send_json(json!({"op": "pub", "ch": "kept", "data": {"i": i, "pad": pad}}));
    }
    let refused = ask(&mut client, keyed(2, "late"));
    assert_eq!(
        (&refused["op"], &refused["code"]),
        (&json!("err"), &json!("over_capacity")),
        "a key it could not remember is refused, nothing published: {refused}"
    );
    assert_eq!(
        ask(&mut client, keyed(3, "early"))["seq"],
        1,
        "a retry is served"
    );
    let unkeyed = ask(
        &mut client,
        json!({"op": "pub", "ch": "kept", "data": 4, "id": 4}),
    );
    assert_eq!(unkeyed["seq"], 102, "nothing published under `late`");
}

#[test]
fn a_pub_in_flight_when_redis_stalls_is_outcome_unknown_and_its_retry_publishes_once() {
    let redis = Redis::start();
    // Long enough for the WebSocket pub to be sent after the HTTP one on a
    // loaded machine, before the silent link is dropped.
    let node = redis.node("a", &["--engine-timeout", "3s"]);
    let mut subscriber = Client::connect(&node, "/ws");
    subscriber.subscribe("orders");
    let mut publisher = Client::connect(&node, "/ws");
    let warm = ask(
        &mut publisher,
        json!({"op": "pub", "ch": "orders", "data": "before", "id": 0}),
    );
    assert_eq!(warm["seq"], 1, "{warm}");
    let sent_to_redis =
        || support::get_json(&node, "/api/stats")["total"]["engine_publications"].clone();
    assert_eq!(sent_to_redis(), 1);
    let by_http = json!({"ch": "orders", "data": "http", "idempotency_key": "order-6"});
    let stalled = |id: u64| json!({"op": "pub", "ch": "orders", "data": "stalled", "id": id, "idempotency_key": "order-7"});
    // Redis reads nothing and answers nothing: the script calls are sent
    // and unanswered until --engine-timeout drops the link.
    redis.signal(libc::SIGSTOP);
    let http = std::thread::scope(|scope| {
        let http = scope.spawn(|| http_publish(&node, by_http.clone()));
        support::wait_until("the HTTP publish sent to Redis", || sent_to_redis() == 2);
        let unknown = ask(&mut publisher, stalled(1));
        let http = http.join().unwrap();
        redis.signal(libc::SIGCONT);
        assert_eq!(
            (&unknown["op"], &unknown["code"]),
            (&json!("err"), &json!("outcome_unknown")),
            "sent and unanswered: it may have been applied, not `unavailable`: {unknown}"
        );
        http
    });
    assert_eq!(
        (http.0, &http.1["error"]),
        (504, &json!("outcome_unknown")),
        "{http:?}"
    );
    // Both were: Redis, resumed, ran what it had read before the link
    // closed, in the order it was sent.
    assert_eq!(next_on(&mut subscriber, "orders"), (1, json!("before")));
    assert_eq!(next_on(&mut subscriber, "orders"), (2, json!("http")));
    assert_eq!(next_on(&mut subscriber, "orders"), (3, json!("stalled")));
    // The retry the error advises, under the same key, until the node is
    // back: answered with the first one's seq, not published again.
    let deadline = Instant::now() + DEADLINE;
    let mut id = 2;
    let retried = loop {
        let answer = ask(&mut publisher, stalled(id));
        if answer["op"] == "ack" {
            break answer;
        }
        let code = answer["code"].as_str();
        assert!(
            matches!(code, Some("unavailable" | "outcome_unknown")),
            "{answer}"
        );
        assert!(Instant::now() < deadline, "the node never got Redis back");
        std::thread::sleep(Duration::from_millis(50));
        id += 1;
    };
    assert_eq!(retried["seq"], 3, "{retried}");
    assert_eq!(http_publish(&node, by_http), (200, json!({"seq": 2})));
    // Over HTTP too (a single publish is the same request as a `pub`).
    let single = json!({"ch": "orders", "data": "stalled", "idempotency_key": "order-7"});
    assert_eq!(http_publish(&node, single), (200, json!({"seq": 3})));
    let marker = ask(
        &mut publisher,
        json!({"op": "pub", "ch": "orders", "data": "marker", "id": "m"}),
    );
    assert_eq!(marker["seq"], 4, "{marker}");
    assert_eq!(
        next_on(&mut subscriber, "orders"),
        (4, json!("marker")),
        "the stalled publications were delivered once"
    );
}
