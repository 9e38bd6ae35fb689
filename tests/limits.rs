//! Limits and their close codes: message size (1009, also when fragmented),
//! invalid UTF-8 (1007), protocol violations (1002), --max-connections (503).

mod support;

use serde_json::json;
use support::{Client, Server};
use tungstenite::{
    protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    },
    Message,
};

#[test]
fn oversized_message_closes_with_1009_and_others_carry_on() {
    let server = Server::start(&["--shards", "1", "--max-message-bytes", "1KiB"]);
    let mut bystander = Client::connect(&server, "/ws?sub=a");
    let mut big = Client::connect(&server, "/ws");
    big.send_text(&"x".repeat(2000));
    assert_eq!(big.expect_close().0, 1009);

    // Fragmented: each fragment is small, the message is not.
    let mut fragmented = Client::connect(&server, "/ws/a");
    let part = vec![b'y'; 600];
    fragmented
        .ws
        .send(Message::Frame(Frame::message(
            part.clone(),
            OpCode::Data(Data::Text),
            false,
        )))
        .unwrap();
    fragmented
        .ws
        .send(Message::Frame(Frame::message(
            part,
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
    assert_eq!(fragmented.expect_close().0, 1009);

    support::publish(&server, "a", json!("still here"));
    assert_eq!(bystander.recv_json()["data"], "still here");
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = Server::start(&["--shards", "1"]);
    let mut c = Client::connect(&server, "/ws");
    c.ws.send(Message::Frame(Frame::message(
        vec![0xff, 0xfe, 0x41],
        OpCode::Data(Data::Text),
        true,
    )))
    .unwrap();
    assert_eq!(c.expect_close().0, 1007);
}

#[test]
fn reserved_opcode_closes_with_1002() {
    let server = Server::start(&["--shards", "1"]);
    let mut c = Client::connect(&server, "/ws");
    c.ws.send(Message::Frame(Frame::message(
        vec![1],
        OpCode::Data(Data::Reserved(3)),
        true,
    )))
    .unwrap();
    assert_eq!(c.expect_close().0, 1002);
}

#[test]
fn max_connections_answers_503() {
    let server = Server::start(&["--shards", "2", "--max-connections", "2"]);
    let first = Client::connect(&server, "/ws");
    let _second = Client::connect(&server, "/ws");
    assert_eq!(support::refused_upgrade(&server, "/ws"), 503);
    // A slot frees when a connection closes.
    drop(first);
    support::wait_until("slot freed", || {
        tungstenite::connect(server.url("/ws")).is_ok()
    });
}

#[test]
fn handshake_that_never_completes_is_cut_off() {
    let server = Server::start(&["--shards", "1", "--handshake-timeout", "300ms"]);
    let reply = support::raw_exchange(&server, b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
}
