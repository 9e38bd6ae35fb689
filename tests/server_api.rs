//! The server API on one node of two shards (`docs/api.md`): publishing to
//! several channels and in batches, idempotency keys and their window,
//! `GET /api/history/<ch>`, `GET /api/channels` with a pattern and paging,
//! and `POST /api/disconnect` / `POST /api/unsubscribe` of a user's
//! connections wherever they are — each with and without the API key.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{
    secure::{claims, connect_with, hs256, http_with, secured_server, with_api_key, API_KEY},
    wait_until, Client, Server, DEADLINE,
};

/// A request with the API key; (status, body as JSON).
fn api(server: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = with_api_key(server, method, path, &body);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, json)
}

/// Waits until the node counts `n` subscriptions.
fn subscriptions(server: &Server, n: u64) {
    wait_until(&format!("{n} subscriptions"), || {
        support::get_json_with(server, "/api/stats", API_KEY)["total"]["subscriptions"] == n
    });
}

/// A client of `user` that may subscribe to and publish on anything.
fn user(server: &Server, user: &str) -> Client {
    let token = hs256(&claims(user, 300, &[">"], &[">"]));
    Client::connect(server, &format!("/ws?token={token}"))
}

/// The next publications `client` receives, as (channel, seq, data).
fn messages(client: &mut Client, n: usize) -> Vec<(String, u64, Value)> {
    (0..n)
        .map(|_| {
            let msg = client.recv_json();
            assert_eq!(msg["op"], "msg", "{msg}");
            let ch = msg["ch"].as_str().unwrap().to_owned();
            (ch, msg["seq"].as_u64().unwrap(), msg["data"].clone())
        })
        .collect()
}

#[test]
fn one_publication_to_several_channels_and_a_batch_in_order() {
    let server = secured_server(&[]);
    let mut sub = user(&server, "reader");
    for ch in ["a", "b", "c"] {
        sub.subscribe(ch);
    }
    let (status, answer) = api(
        &server,
        "POST",
        "/api/publish",
        json!({"channels": ["a", "b", "c"], "data": {"n": 1}}),
    );
    assert_eq!((status, &answer), (200, &json!({"seqs": [1, 1, 1]})));
    let mut got = messages(&mut sub, 3);
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        ["a", "b", "c"].map(|ch| (ch.to_owned(), 1, json!({"n": 1})))
    );
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"ch": if i % 2 == 0 { "a" } else { "b" }, "data": i}))
        .collect();
    let (status, answer) = api(
        &server,
        "POST",
        "/api/publish",
        json!({ "messages": batch }),
    );
    assert_eq!(status, 200, "{answer}");
    let seqs: Vec<u64> = answer["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..50).map(|i| 2 + i / 2).collect();
    assert_eq!(seqs, expected, "each channel's seqs in the batch's order");
    let mut per_channel: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    for (ch, seq, data) in messages(&mut sub, 50) {
        per_channel.entry(ch).or_default().push((seq, data));
    }
    let a: Vec<_> = (0..25).map(|i| (2 + i, json!(2 * i))).collect();
    let b: Vec<_> = (0..25).map(|i| (2 + i, json!(2 * i + 1))).collect();
    assert_eq!(per_channel["a"], a);
    assert_eq!(per_channel["b"], b);
    for (body, code) in [
        (json!({"channels": ["a", "a"], "data": 1}), "bad_json"),
        (json!({"messages": [{"ch": "a"}]}), "bad_json"),
        (json!({"ch": "a", "channels": ["b"], "data": 1}), "bad_json"),
        (json!({"channels": ["a", "$stats"], "data": 1}), "forbidden"),
    ] {
        let (status, answer) = api(&server, "POST", "/api/publish", body.clone());
        assert_eq!(answer["error"], code, "{body}: {status} {answer}");
    }
    let (status, _) = http_with(
        &server,
        "POST",
        "/api/publish",
        &[],
        r#"{"ch":"a","data":1}"#,
    );
    assert_eq!(status, 401, "publishing needs the key");
}

#[test]
fn a_publish_retried_with_its_idempotency_key_is_published_once() {
    let server = secured_server(&["--idempotency-window", "2s"]);
    let mut sub = user(&server, "reader");
    sub.subscribe("orders");
    sub.subscribe("audit");
    let first = json!({"ch": "orders", "data": {"id": 7}, "idempotency_key": "order-7"});
    let (_, answer) = api(&server, "POST", "/api/publish", first.clone());
    assert_eq!(answer, json!({"seq": 1}));
    for _ in 0..3 {
        let (status, again) = api(&server, "POST", "/api/publish", first.clone());
        assert_eq!(
            (status, &again),
            (200, &json!({"seq": 1})),
            "answered, not published"
        );
    }
    // The same key on another channel is another publication.
    let other = json!({"ch": "audit", "data": "x", "idempotency_key": "order-7"});
    assert_eq!(
        api(&server, "POST", "/api/publish", other).1,
        json!({"seq": 1})
    );
    let batch = json!({
        "messages": [{"ch": "orders", "data": 1}, {"ch": "orders", "data": 2}],
        "idempotency_key": "batch-1",
    });
    let (_, seqs) = api(&server, "POST", "/api/publish", batch.clone());
    assert_eq!(
        seqs,
        json!({"seqs": [2, 3]}),
        "two messages to one channel are two"
    );
    assert_eq!(
        api(&server, "POST", "/api/publish", batch).1,
        json!({"seqs": [2, 3]})
    );
    assert_eq!(
        support::publish_with_key(&server, "orders", json!("marker"), API_KEY),
        4
    );
    let got = messages(&mut sub, 5);
    let orders: Vec<u64> = got
        .iter()
        .filter(|m| m.0 == "orders")
        .map(|m| m.1)
        .collect();
    assert_eq!(orders, [1, 2, 3, 4], "each publication delivered once");
    assert!(sub.try_recv_json(Duration::from_millis(200)).is_none());
    let stats = support::get_json_with(&server, "/api/stats", API_KEY);
    assert_eq!(stats["total"]["publications_deduplicated"], 5, "{stats}");
    // Past the window, the key is forgotten: the retry publishes again.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, again) = api(&server, "POST", "/api/publish", first.clone());
        if again["seq"] != 1 {
            assert_eq!(again, json!({"seq": 5}));
            break;
        }
        assert!(Instant::now() < deadline, "the key was never forgotten");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, answer) = api(
        &server,
        "POST",
        "/api/publish",
        json!({"ch": "orders", "data": 1, "idempotency_key": ""}),
    );
    assert_eq!((status, answer["error"].as_str()), (400, Some("bad_json")));
}

#[test]
fn idempotency_keys_of_different_forms_are_different_requests() {
    let server = secured_server(&[]);
    let mut sub = user(&server, "reader");
    sub.subscribe("orders");
    let single = json!({"ch": "orders", "data": "single", "idempotency_key": "order#0"});
    // A batch remembered its first message as `order#0`, the key the
    // single publish used (issue 24, finding 14).
    let batch =
        json!({"messages": [{"ch": "orders", "data": "batch"}], "idempotency_key": "order"});
    let several = json!({"channels": ["orders"], "data": "several", "idempotency_key": "order#0"});
    let expected = [
        json!({"seq": 1}),
        json!({"seqs": [2]}),
        json!({"seqs": [3]}),
    ];
    for round in 0..2 {
        for (body, answer) in [&single, &batch, &several].into_iter().zip(&expected) {
            let (status, got) = api(&server, "POST", "/api/publish", body.clone());
            assert_eq!((status, &got), (200, answer), "round {round}: {body}");
        }
    }
    let data: Vec<Value> = messages(&mut sub, 3).into_iter().map(|m| m.2).collect();
    assert_eq!(data, ["single", "batch", "several"], "each published once");
    assert!(sub.try_recv_json(Duration::from_millis(200)).is_none());
}

#[test]
fn history_is_paged_and_says_whether_it_is_complete() {
    let server = secured_server(&["--history-size", "4"]);
    for i in 1..=6 {
        support::publish_with_key(&server, "h", json!({"n": i}), API_KEY);
    }
    let (status, page) = api(
        &server,
        "GET",
        "/api/history/h?since=2&limit=2",
        Value::Null,
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["seq"], 6);
    assert_eq!(
        (page["complete"].as_bool(), page["more"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(
        page["publications"],
        json!([
            {"op": "msg", "ch": "h", "seq": 3, "data": {"n": 3}},
            {"op": "msg", "ch": "h", "seq": 4, "data": {"n": 4}},
        ])
    );
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    let rest = api(
        &server,
        "GET",
        &format!("/api/history/h?since=4&epoch={epoch}"),
        Value::Null,
    )
    .1;
    assert_eq!(
        (rest["complete"].as_bool(), rest["more"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(rest["publications"].as_array().unwrap().len(), 2);
    let trimmed = api(&server, "GET", "/api/history/h", Value::Null).1;
    assert_eq!(
        trimmed["complete"], false,
        "1 and 2 are no longer kept: {trimmed}"
    );
    assert_eq!(trimmed["publications"][0]["seq"], 3);
    let stale = api(
        &server,
        "GET",
        "/api/history/h?since=4&epoch=other",
        Value::Null,
    )
    .1;
    assert_eq!(stale["complete"], false);
    let empty = api(&server, "GET", "/api/history/never.used", Value::Null).1;
    assert_eq!(
        (empty["seq"].as_u64(), empty["complete"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(
        api(&server, "GET", "/api/history/h?limit=0", Value::Null).0,
        400
    );
    assert_eq!(api(&server, "POST", "/api/history/h", Value::Null).0, 405);
    assert_eq!(http_with(&server, "GET", "/api/history/h", &[], "").0, 401);
}

#[test]
fn the_channel_list_counts_subscribers_over_shards_and_pages() {
    let server = secured_server(&[]);
    // Enough connections that both shards have some (the kernel spreads
    // them), each subscribed to one or two channels.
    let mut clients: Vec<Client> = (0..8).map(|i| user(&server, &format!("u{i}"))).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.subscribe(&format!("room.{}", i % 3));
        if i < 2 {
            client.subscribe("lobby");
        }
    }
    subscriptions(&server, 10);
    support::publish_with_key(&server, "room.1", json!(1), API_KEY);
    support::publish_with_key(&server, "room.1", json!(2), API_KEY);
    let (status, list) = api(&server, "GET", "/api/channels", Value::Null);
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list,
        json!({"channels": [
            {"ch": "lobby", "subscribers": 2, "seq": 0},
            {"ch": "room.0", "subscribers": 3, "seq": 0},
            {"ch": "room.1", "subscribers": 3, "seq": 2},
            {"ch": "room.2", "subscribers": 2, "seq": 0},
        ]})
    );
    let rooms = api(&server, "GET", "/api/channels?pattern=room.*", Value::Null).1;
    assert_eq!(rooms["channels"].as_array().unwrap().len(), 3);
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/channels?limit=1&cursor={c}"),
            None => "/api/channels?limit=1".to_owned(),
        };
        let page = api(&server, "GET", &path, Value::Null).1;
        for row in page["channels"].as_array().unwrap() {
            walked.push(row["ch"].as_str().unwrap().to_owned());
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(walked.len() <= 4, "paging never ends: {walked:?}");
    }
    assert_eq!(walked, ["lobby", "room.0", "room.1", "room.2"]);
    assert_eq!(
        api(&server, "GET", "/api/channels?pattern=a..b", Value::Null).0,
        400
    );
    assert_eq!(http_with(&server, "GET", "/api/channels", &[], "").0, 401);
    drop(clients);
}

#[test]
fn every_channel_is_listed_once_across_pages_and_shards() {
    let server = secured_server(&[]);
    // Six connections (the kernel spreads them over both shards), 300
    // channels of the pattern and 20 outside it; every fifth channel has
    // two subscribers, on two connections.
    let mut clients: Vec<Client> = (0..6).map(|i| user(&server, &format!("p{i}"))).collect();
    let mut expected = BTreeMap::new();
    for i in 0..320 {
        let ch = match i < 300 {
            true => format!("t.{:03}", (i * 7) % 300),
            false => format!("other.{i}"),
        };
        clients[i % 6].subscribe(&ch);
        let mut n = 1;
        if i % 5 == 0 {
            clients[(i + 1) % 6].subscribe(&ch);
            n = 2;
        }
        if i < 300 {
            expected.insert(ch, n);
        }
    }
    subscriptions(&server, 320 + 64);
    let mut walked: Vec<(String, u64)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/channels?pattern=t.*&limit=7&cursor={c}"),
            None => "/api/channels?pattern=t.*&limit=7".to_owned(),
        };
        let (status, page) = api(&server, "GET", &path, Value::Null);
        assert_eq!(status, 200, "{page}");
        let rows = page["channels"].as_array().unwrap();
        assert!(rows.len() <= 7);
        for row in rows {
            let ch = row["ch"].as_str().unwrap().to_owned();
            walked.push((ch, row["subscribers"].as_u64().unwrap()));
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(walked.len() <= 300, "paging never ends");
    }
    let expected: Vec<(String, u64)> = expected.into_iter().collect();
    assert_eq!(
        walked, expected,
        "each channel once, in order, counted over shards"
    );
    drop(clients);
}

#[test]
fn a_user_is_disconnected_or_unsubscribed_wherever_connected() {
    let server = secured_server(&[]);
    let mut alice: Vec<Client> = (0..4).map(|_| user(&server, "alice")).collect();
    let mut bob = user(&server, "bob");
    for client in alice.iter_mut().chain([&mut bob]) {
        client.subscribe("room");
    }
    let token = hs256(&claims("bob", 300, &["chat"], &["chat"]));
    let mut bob_in_room = connect_with(&server, &format!("/ws/chat?token={token}"), &[]).unwrap();
    subscriptions(&server, 6);
    let (status, _) = http_with(
        &server,
        "POST",
        "/api/disconnect",
        &[],
        r#"{"user":"alice"}"#,
    );
    assert_eq!(status, 401, "the key is needed");
    let (status, answer) = api(
        &server,
        "POST",
        "/api/disconnect",
        json!({"user": "alice", "code": 4100, "reason": "banned"}),
    );
    assert_eq!((status, &answer), (200, &json!({"disconnected": 4})));
    for client in &mut alice {
        let (code, reason, _) = client.expect_close();
        assert_eq!((code, reason.as_str()), (4100, "banned"));
    }
    subscriptions(&server, 2);
    support::publish_with_key(&server, "room", json!("still here"), API_KEY);
    assert_eq!(bob.recv_json()["data"], "still here");
    let (_, answer) = api(
        &server,
        "POST",
        "/api/unsubscribe",
        json!({"user": "bob", "ch": "room"}),
    );
    assert_eq!(answer, json!({"unsubscribed": 1}));
    assert_eq!(
        bob.recv_json(),
        json!({"op": "unsubscribed", "ch": "room", "reason": "server"})
    );
    support::publish_with_key(&server, "room", json!("gone"), API_KEY);
    assert!(bob.try_recv_json(Duration::from_millis(300)).is_none());
    bob.send_json(json!({"op": "ping", "id": 1}));
    assert_eq!(bob.recv_json()["op"], "pong", "still connected");
    // A raw-room member leaves its room by being closed.
    let (_, answer) = api(
        &server,
        "POST",
        "/api/unsubscribe",
        json!({"user": "bob", "ch": "chat"}),
    );
    assert_eq!(answer, json!({"unsubscribed": 1}));
    assert_eq!(bob_in_room.expect_close().0, 4000);
    let (_, nobody) = api(&server, "POST", "/api/disconnect", json!({"user": "carol"}));
    assert_eq!(nobody, json!({"disconnected": 0}));
    for body in [
        json!({"user": "bob", "code": 1000}),
        json!({"user": "bob", "reason": "r".repeat(124)}),
        json!({}),
    ] {
        assert_eq!(
            api(&server, "POST", "/api/disconnect", body.clone()).0,
            400,
            "{body}"
        );
    }
    let stats = support::get_json_with(&server, "/api/stats", API_KEY);
    assert_eq!(stats["total"]["api_kicks"], 6, "{stats}");
    wait_until("5 closed as disconnected", || {
        let stats = support::get_json_with(&server, "/api/stats", API_KEY);
        stats["total"]["closed"]["disconnected"] == 5
    });
}
