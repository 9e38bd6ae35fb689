//! Presence on one node of two shards (`--presence`): who is subscribed
//! (with the token's user and `info`), how many (exact across shards, also
//! for anonymous connections), `join` and `leave` events for subscribers
//! that asked, paging with a cursor, `GET /api/presence/<ch>` under the API
//! key, and refusals: a channel that is not a presence channel, one the
//! token may not subscribe to.

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use support::{
    secure::{claims, hs256, http_with, secured_server, with_api_key},
    wait_until, Client, Server,
};

fn server() -> Server {
    secured_server(&["--presence", "room.*,doc.>"])
}

/// A client of `user` (with `info`, if given) that may subscribe to
/// `room.*` and `doc.>` and nothing else.
fn user(server: &Server, user: &str, info: Option<Value>) -> Client {
    let mut claims = claims(user, 300, &["room.*", "doc.>", "plain"], &[]);
    if let Some(info) = info {
        claims["info"] = info;
    }
    let token = hs256(&claims);
    Client::connect(server, &format!("/ws?token={token}"))
}

/// Sends an op with `id` and returns its answer (skipping anything else).
fn ask(client: &mut Client, op: Value) -> Value {
    let id = op["id"].clone();
    client.send_json(op);
    loop {
        let answer = client.recv_json();
        if answer["id"] == id {
            return answer;
        }
    }
}

fn presence(client: &mut Client, ch: &str) -> Value {
    ask(client, json!({"op": "presence", "ch": ch, "id": "p"}))
}

fn users(answer: &Value) -> BTreeSet<String> {
    answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn members_are_listed_counted_and_announced_across_shards() {
    let server = server();
    let mut watcher = user(&server, "watcher", None);
    watcher.send_json(json!({"op": "sub", "ch": "room.1", "id": 1, "join_leave": true}));
    assert_eq!(watcher.recv_json()["op"], "ack");
    // Its own join comes first, once it is live.
    let own = watcher.recv_json();
    assert_eq!(
        (own["op"].as_str(), own["user"].as_str()),
        (Some("join"), Some("watcher")),
        "{own}"
    );
    // Members on both shards (connections spread over them by the kernel).
    let mut members = Vec::new();
    for i in 0..6 {
        let info = (i == 0).then(|| json!({"name": "Alice", "color": "red"}));
        let mut client = user(&server, &format!("user{i}"), info);
        client.subscribe("room.1");
        members.push(client);
    }
    let mut joined = BTreeSet::new();
    while joined.len() < 6 {
        let event = watcher.recv_json();
        assert_eq!(
            (event["op"].as_str(), event["ch"].as_str()),
            (Some("join"), Some("room.1")),
            "{event}"
        );
        assert!(event["conn"].is_string(), "{event}");
        if event["user"] != "watcher" {
            joined.insert(event["user"].as_str().unwrap().to_string());
        }
    }
    let answer = presence(&mut watcher, "room.1");
    assert_eq!(answer["count"], 7, "{answer}");
    let expected: BTreeSet<String> = (0..6)
        .map(|i| format!("user{i}"))
        .chain(["watcher".into()])
        .collect();
    assert_eq!(users(&answer), expected);
    let alice = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "user0")
        .unwrap();
    assert_eq!(alice["info"], json!({"name": "Alice", "color": "red"}));
    let count = ask(
        &mut watcher,
        json!({"op": "occupancy", "ch": "room.1", "id": 9}),
    );
    assert_eq!(
        count,
        json!({"op": "occupancy", "id": 9, "ch": "room.1", "count": 7})
    );
    // A second sub of the same connection is not a second member.
    members[1].subscribe("room.1");
    assert_eq!(presence(&mut watcher, "room.1")["count"], 7);
    // Leaving: an unsub, and a closed connection.
    members[2].send_json(json!({"op": "unsub", "ch": "room.1", "id": "u"}));
    members.remove(3).close_and_wait();
    let mut left = BTreeSet::new();
    while left.len() < 2 {
        let event = watcher.recv_json();
        assert_eq!(event["op"], "leave", "{event}");
        left.insert(event["user"].as_str().unwrap().to_string());
    }
    assert_eq!(
        left,
        BTreeSet::from(["user2".to_string(), "user3".to_string()])
    );
    assert_eq!(presence(&mut watcher, "room.1")["count"], 5);
}

#[test]
fn pages_cover_every_member_once_and_the_api_answers_the_same() {
    let server = server();
    let mut clients: Vec<Client> = (0..5)
        .map(|i| user(&server, &format!("u{i}"), None))
        .collect();
    // Anonymous-style: a token without `sub` is listed by connection only.
    let nameless =
        hs256(&json!({"exp": support::secure::unix_now() + 300, "channels": {"sub": ["doc.>"]}}));
    let mut anonymous = Client::connect(&server, &format!("/ws?token={nameless}"));
    anonymous.subscribe("doc.a.b");
    for client in &mut clients {
        client.subscribe("doc.a.b");
    }
    let asker = &mut clients[0];
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut op = json!({"op": "presence", "ch": "doc.a.b", "id": seen.len(), "limit": 2});
        if let Some(cursor) = &cursor {
            op["cursor"] = json!(cursor);
        }
        let page = ask(asker, op);
        assert_eq!(page["count"], 6, "{page}");
        for member in page["members"].as_array().unwrap() {
            seen.push(member["conn"].as_str().unwrap().to_string());
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        (seen.len(), unique.len()),
        (6, 6),
        "every member once: {seen:?}"
    );
    // The HTTP API: the same members, under the API key only.
    let path = "/api/presence/doc.a.b";
    let (status, _) = http_with(&server, "GET", path, &[], "");
    assert_eq!(status, 401);
    let (status, body) = with_api_key(&server, "GET", path, "");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let conns: BTreeSet<String> = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["conn"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(conns, seen.iter().cloned().collect::<BTreeSet<_>>());
    let without_user = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.get("user").is_none())
        .count();
    assert_eq!(without_user, 1, "the connection without a user: {answer}");
    let (status, body) = with_api_key(&server, "GET", "/api/presence/doc.a.b?limit=2", "");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            status,
            page["members"].as_array().unwrap().len(),
            page["cursor"].is_string()
        ),
        (200, 2, true)
    );
    // Bad questions.
    let (status, body) = with_api_key(&server, "GET", "/api/presence/plain", "");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no_presence"), "{body}");
    let (status, _) = with_api_key(&server, "GET", "/api/presence/doc.a.b?limit=0", "");
    assert_eq!(status, 400);
    let (status, _) = with_api_key(&server, "GET", "/api/presence/bad..name", "");
    assert_eq!(status, 400);
}

#[test]
fn presence_is_refused_outside_presence_channels_and_permissions() {
    let server = server();
    let mut client = user(&server, "x", None);
    let refused = ask(
        &mut client,
        json!({"op": "presence", "ch": "plain", "id": 1}),
    );
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("err"), Some("no_presence")),
        "{refused}"
    );
    let forbidden = ask(
        &mut client,
        json!({"op": "occupancy", "ch": "secret.x", "id": 2}),
    );
    assert_eq!(forbidden["code"], "forbidden", "{forbidden}");
    let bad = ask(
        &mut client,
        json!({"op": "presence", "ch": "room.1", "id": 3, "limit": 5000}),
    );
    assert_eq!(bad["code"], "bad_json", "{bad}");
    // An empty presence channel: nobody, counted exactly.
    let empty = ask(
        &mut client,
        json!({"op": "presence", "ch": "room.empty", "id": 4}),
    );
    assert_eq!(
        (
            empty["count"].as_u64(),
            empty["members"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    wait_until("the server is still fine", || {
        support::http(&server, "GET", "/health", "").0 == 200
    });
}
