//! Fossil deltas against the real server: a subscriber that asked for them
//! (`"delta":"fossil"` or `?delta=fossil`) gets each publication that
//! follows the one it was last sent as a delta against it, made once by the
//! channel's owner on whichever shard; the first message, and the first
//! after a resume, come whole; subscribers that did not ask never see one.
//! Deltas are rebuilt here with the `fossil-delta` crate from the JSON
//! string as docs/protocol.md defines it (each character one byte).

mod support;

use serde_json::{json, Value};
use support::{get_json, publish, refused_upgrade, Client, Server};

/// An order book whose update `n` changes a few levels.
fn book(n: u64) -> Value {
    let levels: Vec<Value> = (0..200u64)
        .map(|i| {
            let qty = if (i + n) % 40 == 0 { 5000 + n } else { 100 + i };
            json!([10_000 - i, qty])
        })
        .collect();
    json!({"sym": "AAPL", "n": n, "levels": levels})
}

/// The data text of a whole `msg` envelope (its last field), as sent.
fn data_text(envelope: &str) -> String {
    let at = envelope.find(",\"data\":").expect("a data field") + 8;
    envelope[at..envelope.len() - 1].to_owned()
}

/// Reads a `msg`, rebuilding it from `base` if it is a delta; returns the
/// data text, the seq and whether it came as a delta.
fn read(client: &mut Client, base: &str) -> (String, u64, bool) {
    let text = match client.recv() {
        tungstenite::Message::Text(text) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    };
    let envelope: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(envelope["op"], "msg", "{text}");
    let seq = envelope["seq"].as_u64().unwrap();
    if envelope["delta"] == true {
        let delta: Vec<u8> = envelope["data"]
            .as_str()
            .unwrap()
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("one byte per character"))
            .collect();
        let rebuilt = fossil_delta::apply(base.as_bytes(), &delta).expect("a valid delta");
        (String::from_utf8(rebuilt).unwrap(), seq, true)
    } else {
        (data_text(&text), seq, false)
    }
}

#[test]
fn deltas_follow_the_last_publication_sent_and_only_to_who_asked() {
    // Two shards: the channel's owner computes the delta once and ships it
    // to the other shard with the publication.
    let server = Server::start(&["--shards", "2"]);
    let mut subscribers: Vec<Client> = (0..4)
        .map(|_| {
            let mut c = Client::connect(&server, "/ws");
            c.send_json(json!({"op":"sub","ch":"book","id":1,"delta":"fossil"}));
            assert_eq!(c.recv_json()["op"], "ack");
            c
        })
        .collect();
    let mut whole = Client::connect(&server, "/ws");
    whole.subscribe("book");
    let published: Vec<String> = (1..=20)
        .map(|n| {
            let data = book(n);
            publish(&server, "book", data.clone());
            data.to_string()
        })
        .collect();
    for client in subscribers.iter_mut() {
        let mut base = String::new();
        for (i, expected) in published.iter().enumerate() {
            let (data, seq, delta) = read(client, &base);
            assert_eq!(seq, i as u64 + 1);
            assert_eq!(delta, i > 0, "only the first comes whole");
            assert_eq!(&data, expected);
            base = data;
        }
    }
    for expected in &published {
        let (data, _, delta) = read(&mut whole, "");
        assert!(!delta);
        assert_eq!(&data, expected);
    }
    let total = &get_json(&server, "/api/stats")["total"];
    assert_eq!(total["deltas_computed"], 19, "once per publication");
    assert_eq!(total["deliveries_delta"], 4 * 19);
}

#[test]
fn a_resumed_subscriber_is_replayed_whole_then_gets_deltas() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = Client::connect(&server, "/ws?sub=book&delta=fossil");
    support::wait_for_subscriptions(&server, 1);
    publish(&server, "book", book(1));
    let (first, _, delta) = read(&mut client, "");
    assert!(!delta);
    let ack = {
        let mut probe = Client::connect(&server, "/ws");
        probe.subscribe("book")
    };
    drop(client);
    for n in 2..=4 {
        publish(&server, "book", book(n));
    }
    // Back from seq 1: 2..4 are replayed whole, 5 comes as a delta on 4.
    let mut back = Client::connect(&server, "/ws");
    back.send_json(json!({"op":"sub","ch":"book","id":"r","since":1,
        "epoch":ack["epoch"],"delta":"fossil"}));
    let resumed = back.recv_json();
    assert_eq!(
        (resumed["op"].as_str(), resumed["recovered"].as_bool()),
        (Some("ack"), Some(true))
    );
    let mut base = first;
    for n in 2..=4 {
        let (data, seq, delta) = read(&mut back, &base);
        assert_eq!((seq, delta), (n, false), "replayed whole");
        base = data;
    }
    publish(&server, "book", book(5));
    let (data, seq, delta) = read(&mut back, &base);
    assert_eq!((seq, delta), (5, true));
    assert_eq!(data, book(5).to_string());
}

#[test]
fn only_fossil_is_a_delta_encoding() {
    let server = Server::start(&["--shards", "1"]);
    assert_eq!(refused_upgrade(&server, "/ws?sub=a&delta=xdelta"), 400);
    let mut client = Client::connect(&server, "/ws");
    client.send_json(json!({"op":"sub","ch":"a","id":1,"delta":"vcdiff"}));
    let err = client.recv_json();
    assert_eq!(
        (err["op"].as_str(), err["code"].as_str()),
        (Some("err"), Some("bad_json"))
    );
}
