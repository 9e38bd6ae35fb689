//! The JSON protocol of `GET /ws`: every op, every error code, `?sub=`.

mod support;

use serde_json::json;
use support::{Client, Server};

#[test]
fn sub_pub_unsub_ping_and_their_acks() {
    let server = Server::start(&["--shards", "1"]);
    let mut alice = Client::connect(&server, "/ws");
    let mut bob = Client::connect(&server, "/ws");
    alice.subscribe("news");

    bob.send_text(r#"{"op":"pub","ch":"news","data":{"headline": "hi", "n": 1.50},"id":7}"#);
    assert_eq!(bob.recv_json(), json!({"op": "ack", "id": 7, "seq": 1}));
    let msg = alice.recv();
    // The publisher's bytes arrive verbatim (1.50 is not re-serialised).
    assert_eq!(
        msg.to_text().unwrap(),
        r#"{"op":"msg","ch":"news","seq":1,"data":{"headline": "hi", "n": 1.50}}"#
    );

    alice.send_json(json!({"op": "ping", "id": "p1"}));
    assert_eq!(alice.recv_json(), json!({"op": "pong", "id": "p1"}));
    alice.send_json(json!({"op": "ping"}));
    assert_eq!(alice.recv_json(), json!({"op": "pong"}));

    alice.send_json(json!({"op": "unsub", "ch": "news", "id": 2}));
    assert_eq!(alice.recv_json(), json!({"op": "ack", "id": 2}));
    bob.send_json(json!({"op": "pub", "ch": "news", "data": 2, "id": 8}));
    assert_eq!(bob.recv_json(), json!({"op": "ack", "id": 8, "seq": 2}));
    // Alice no longer gets news: the next thing she sees is her own pong.
    alice.send_json(json!({"op": "ping", "id": "after"}));
    assert_eq!(alice.recv_json(), json!({"op": "pong", "id": "after"}));
}

#[test]
fn pub_without_id_is_not_acknowledged_but_delivered() {
    let server = Server::start(&["--shards", "1"]);
    let mut sub = Client::connect(&server, "/ws?sub=a");
    let mut publisher = Client::connect(&server, "/ws");
    publisher.send_json(json!({"op": "pub", "ch": "a", "data": null}));
    assert_eq!(
        sub.recv_json(),
        json!({"op": "msg", "ch": "a", "seq": 1, "data": null})
    );
    publisher.send_json(json!({"op": "ping", "id": 1}));
    assert_eq!(
        publisher.recv_json(),
        json!({"op": "pong", "id": 1}),
        "no ack was sent before"
    );
}

#[test]
fn subscribe_at_connect_time_with_query() {
    let server = Server::start(&["--shards", "2"]);
    let mut listener = Client::connect(&server, "/ws?sub=a,b");
    // Subscriptions from ?sub= are in place once the upgrade completes, but
    // their interest may still be travelling to another shard: ping the
    // listener until its pong proves its own queue has been processed.
    listener.send_json(json!({"op": "ping", "id": 0}));
    assert_eq!(listener.recv_json(), json!({"op": "pong", "id": 0}));
    let mut seen = std::collections::HashSet::new();
    support::wait_until("messages on both channels", || {
        for ch in ["a", "b"] {
            support::publish(&server, ch, json!(ch));
        }
        listener.set_timeout(Some(std::time::Duration::from_millis(200)));
        while let Ok(msg) = listener.ws.read() {
            if let Ok(text) = msg.to_text() {
                let v: serde_json::Value = serde_json::from_str(text).unwrap();
                seen.insert(v["ch"].as_str().unwrap().to_owned());
            }
        }
        seen.len() == 2
    });
}

#[test]
fn every_error_code_keeps_the_connection_open() {
    let server = Server::start(&["--shards", "1", "--max-subscriptions", "2"]);
    let mut c = Client::connect(&server, "/ws");
    let cases = [
        ("this is not json".to_owned(), "bad_json"),
        ("[1,2,3]".to_owned(), "bad_json"),
        (json!({"ch": "x", "id": 1}).to_string(), "bad_json"),
        (
            json!({"op": "pub", "ch": "x", "id": 1}).to_string(),
            "bad_json",
        ),
        (
            json!({"op": "sub", "ch": "x", "id": {"nested": 1}}).to_string(),
            "bad_json",
        ),
        (json!({"op": "dance", "id": 1}).to_string(), "unknown_op"),
        (
            json!({"op": "sub", "ch": "has space", "id": 1}).to_string(),
            "bad_channel",
        ),
        (
            json!({"op": "sub", "ch": "", "id": 1}).to_string(),
            "bad_channel",
        ),
        (
            json!({"op": "sub", "ch": "x".repeat(129), "id": 1}).to_string(),
            "bad_channel",
        ),
        (
            json!({"op": "sub", "ch": "$sys", "id": 1}).to_string(),
            "bad_channel",
        ),
        (
            json!({"op": "pub", "id": 1, "data": 1}).to_string(),
            "bad_channel",
        ),
        (
            json!({"op": "unsub", "ch": "never", "id": 1}).to_string(),
            "not_subscribed",
        ),
    ];
    for (frame, code) in cases {
        c.send_text(&frame);
        let reply = c.recv_json();
        assert_eq!(reply["op"], "err", "{frame} -> {reply}");
        assert_eq!(reply["code"], code, "{frame} -> {reply}");
        assert!(reply["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let reply = {
        c.send_json(json!({"op": "dance", "id": "x"}));
        c.recv_json()
    };
    assert_eq!(reply["id"], "x", "errors carry the request id");

    c.subscribe("one");
    c.subscribe("two");
    c.send_json(json!({"op": "sub", "ch": "three", "id": 3}));
    let reply = c.recv_json();
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_i64()),
        (Some("too_many_subscriptions"), Some(3))
    );
    // Subscribing again to a channel you have is fine and not counted twice.
    c.subscribe("one");

    c.send_binary(b"\x00\x01");
    assert_eq!(c.recv_json()["code"], "bad_json");

    // Still fully working.
    c.send_json(json!({"op": "pub", "ch": "one", "data": "ok", "id": 9}));
    let mut got = [c.recv_json(), c.recv_json()];
    got.sort_by_key(|v| v["op"].as_str().unwrap().to_owned());
    assert_eq!(got[0], json!({"op": "ack", "id": 9, "seq": 1}));
    assert_eq!(
        got[1],
        json!({"op": "msg", "ch": "one", "seq": 1, "data": "ok"})
    );
}

#[test]
fn bad_channel_in_query_is_refused_at_upgrade() {
    let server = Server::start(&["--shards", "1"]);
    assert_eq!(
        support::refused_upgrade(&server, "/ws?sub=ok,not%20ok"),
        400
    );
}
