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
    // The room subscriptions were made at upgrade; a JSON sub ack on the same
    // channel from a third connection does not prove theirs are confirmed,
    // so wait until a message flows to both.
    support::wait_until("both members receive", || {
        a.send_text("warmup");
        let (x, y) = (a.recv(), b.recv());
        while watcher.recv_json()["text"] != "warmup" {}
        x == Message::text("warmup") && y == Message::text("warmup")
    });

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
