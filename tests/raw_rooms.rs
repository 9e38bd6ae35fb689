//! Raw rooms (`GET /ws/<channel>`): frames delivered verbatim with their
//! opcode, `?echo=0`, and how they meet JSON subscribers of the same channel.

mod support;

use serde_json::json;
use support::{Client, Server};
use tungstenite::Message;

#[test]
fn text_and_binary_frames_reach_every_member_verbatim() {
    let server = Server::start(&["--shards", "2"]);
    let mut a = Client::connect(&server, "/ws/lobby");
    let mut b = Client::connect(&server, "/ws/lobby");
    let mut watcher = Client::connect(&server, "/ws");
    watcher.subscribe("lobby");
    // Members are live once their upgrade is answered: no warm-up.
    a.send_text("hello {not json");
    assert_eq!(
        a.recv(),
        Message::text("hello {not json"),
        "echo to the sender by default"
    );
    assert_eq!(b.recv(), Message::text("hello {not json"));
    let w = watcher.recv_json();
    assert_eq!(w["text"], "hello {not json");
    assert_eq!(w["ch"], "lobby");

    b.send_binary(&[0, 1, 2, 255]);
    assert_eq!(a.recv(), Message::binary(vec![0u8, 1, 2, 255]));
    assert_eq!(b.recv(), Message::binary(vec![0u8, 1, 2, 255]));
    assert_eq!(watcher.recv_json()["bin"], "AAEC/w==");

    a.send_text(r#"{"json":true}"#);
    assert_eq!(a.recv(), Message::text(r#"{"json":true}"#));
    assert_eq!(b.recv(), Message::text(r#"{"json":true}"#));
    assert_eq!(
        watcher.recv_json()["data"],
        json!({"json": true}),
        "JSON text becomes data"
    );

    // A JSON publication reaches room members as its data bytes.
    watcher.send_json(json!({"op": "pub", "ch": "lobby", "data": [1, 2], "id": 1}));
    assert_eq!(a.recv(), Message::text("[1,2]"));
    assert_eq!(b.recv(), Message::text("[1,2]"));
}

/// The upgrade is answered once the channel's owner (maybe another shard)
/// has the subscription, so a frame sent after both members connected
/// reaches both, and so does a publication made after a `?sub=` connect.
#[test]
fn members_are_live_once_their_upgrade_is_answered() {
    let server = Server::start(&["--shards", "2"]);
    // Rooms of both owners, members accepted by either shard.
    for i in 0..60 {
        let room = format!("live-{i}");
        let mut a = Client::connect(&server, &format!("/ws/{room}"));
        let mut b = Client::connect(&server, &format!("/ws/{room}?echo=0"));
        let mut json = Client::connect(&server, &format!("/ws?sub={room}"));
        b.send_text("first");
        assert_eq!(a.recv(), Message::text("first"), "room {room}");
        assert_eq!(json.recv_json()["text"], "first", "room {room}");
        support::publish(&server, &room, json!({"n": i}));
        assert_eq!(a.recv(), Message::text(format!("{{\"n\":{i}}}")));
        assert_eq!(b.recv(), Message::text(format!("{{\"n\":{i}}}")));
        assert_eq!(json.recv_json()["data"], json!({"n": i}));
    }
}

#[test]
fn echo_0_leaves_the_sender_out() {
    let server = Server::start(&["--shards", "1"]);
    let mut quiet = Client::connect(&server, "/ws/room?echo=0");
    let mut other = Client::connect(&server, "/ws/room");
    quiet.send_text("one");
    quiet.send_text("two");
    assert_eq!(other.recv(), Message::text("one"));
    assert_eq!(other.recv(), Message::text("two"));
    other.send_text("three");
    // The first thing the quiet sender receives is the other member's frame.
    assert_eq!(quiet.recv(), Message::text("three"));
}
