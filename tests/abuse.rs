//! Surviving abuse: browser origins, the per-connection publish rate limit
//! (JSON and raw rooms), and the per-IP connection cap. Each rule refuses
//! what it must and lets the rest through.

mod support;

use std::net::IpAddr;

use serde_json::json;
use support::{
    secure::{connect_from, connect_with},
    Client, Server,
};

#[test]
fn only_allowed_origins_may_upgrade() {
    let server = Server::start(&[
        "--allowed-origins",
        "https://app.example.com,https://*.example.org",
    ]);
    let origin = |value: &str| connect_with(&server, "/ws", &[("Origin", value)]);
    let (status, body) = origin("https://evil.example.net").err().unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        origin("http://app.example.com").err().unwrap().0,
        403,
        "scheme"
    );
    assert_eq!(origin("https://example.org").err().unwrap().0, 403, "apex");
    assert!(origin("https://app.example.com").is_ok());
    assert!(origin("https://chat.example.org").is_ok());
    // Non-browser clients send no Origin.
    let mut client = Client::connect(&server, "/ws");
    client.subscribe("news");
}

#[test]
fn publishers_over_the_rate_get_refused_then_closed() {
    let server = Server::start(&["--publish-rate", "5", "--publish-burst", "5"]);
    let mut subscriber = Client::connect(&server, "/ws?sub=news");
    let mut publisher = Client::connect(&server, "/ws");
    support::wait_for_subscriptions(&server, 1);
    let mut refused = 0;
    // The burst is taken at once; the rest of a fast loop is refused, and
    // more than MIN_STRIKES (10) refusals within 10 s close the connection.
    for i in 0..40 {
        publisher.send_json(json!({"op":"pub","ch":"news","data":i,"id":i}));
    }
    let close = loop {
        match publisher.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let reply: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                if reply["op"] == "err" {
                    assert_eq!(reply["code"], "rate_limited", "{reply}");
                    refused += 1;
                }
            }
            Ok(tungstenite::Message::Close(frame)) => break frame.expect("close frame"),
            Ok(_) => {}
            Err(e) => panic!("closed without a close frame: {e}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "rate limit exceeded");
    // Ten `err`s; the eleventh refusal closes instead.
    assert_eq!(refused, 10);
    // The subscriber got the burst (at 5/s the loop may earn a token more),
    // in order, and nothing that was refused: the marker published after
    // the close is ordered after all of them.
    support::publish(&server, "news", json!("end"));
    let mut delivered = 0;
    loop {
        let msg = subscriber.recv_json();
        if msg["data"] == "end" {
            break;
        }
        assert_eq!(msg["data"], delivered, "{msg}");
        delivered += 1;
    }
    assert!((5..=6).contains(&delivered), "delivered {delivered}");

    // A publisher within the limit is never refused.
    let mut polite = Client::connect(&server, "/ws");
    for i in 0..5 {
        polite.send_json(json!({"op":"pub","ch":"news","data":i,"id":i}));
        assert_eq!(polite.recv_json()["op"], "ack");
    }
    support::wait_until("the abusive connection counted as closed", || {
        support::get_json(&server, "/api/stats")["total"]["closed"]["rate_limited"] == 1
    });
    let stats = support::get_json(&server, "/api/stats");
    assert_eq!(stats["total"]["rate_limited"], refused + 1, "{stats}");
    assert_eq!(
        stats["total"]["messages_published"],
        delivered + 1 + 5,
        "{stats}"
    );
}

#[test]
fn raw_room_floods_are_dropped_then_closed() {
    let server = Server::start(&["--publish-rate", "2", "--publish-burst", "3"]);
    let mut listener = Client::connect(&server, "/ws/lobby");
    let mut flooder = Client::connect(&server, "/ws/lobby?echo=0");
    support::wait_for_subscriptions(&server, 2);
    for i in 0..30 {
        flooder.send_text(&format!("m{i}"));
    }
    let (code, reason, _) = flooder.expect_close();
    assert_eq!((code, reason.as_str()), (1008, "rate limit exceeded"));
    // The room heard the burst, in order, and then nothing of the flood.
    for i in 0..3 {
        assert_eq!(listener.recv(), tungstenite::Message::text(format!("m{i}")));
    }
    support::publish(&server, "lobby", json!("after"));
    assert_eq!(listener.recv(), tungstenite::Message::text("\"after\""));
}

#[test]
fn each_address_gets_at_most_its_cap_of_connections() {
    let server = Server::start(&["--max-connections-per-ip", "3"]);
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let b: IpAddr = "127.0.0.3".parse().unwrap();
    let mut held: Vec<Client> = (0..3)
        .map(|_| connect_from(a, &server, "/ws").expect("under the cap"))
        .collect();
    assert_eq!(connect_from(a, &server, "/ws").err(), Some(429));
    // Another address is not affected, and plain HTTP counts too.
    let others: Vec<Client> = (0..3)
        .map(|_| connect_from(b, &server, "/ws").expect("other address"))
        .collect();
    assert_eq!(connect_from(b, &server, "/ws").err(), Some(429));
    // When one leaves, the address may connect again.
    held.pop().unwrap().close_and_wait();
    support::wait_until("the cap freed a place", || {
        connect_from(a, &server, "/ws")
            .map(|c| held.push(c))
            .is_ok()
    });
    assert_eq!(connect_from(a, &server, "/ws").err(), Some(429));
    let stats = support::get_json(&server, "/api/stats");
    assert!(
        stats["total"]["ip_cap_refusals"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    drop(others);
}

/// Acks of publications that took effect come back from the channel's owner
/// shard; a publisher closed for its rate right after must still get each
/// of them before its close frame, whichever shard owns the channel.
#[test]
fn every_accepted_publication_is_acknowledged_before_a_rate_limit_close() {
    let server = Server::start(&["--shards", "2", "--publish-rate", "10"]);
    let owned_by = |shard| {
        (0..)
            .map(|i| format!("rl{i}"))
            .filter(move |ch| shardcast::channel::owner_of(ch.as_bytes(), 2) == shard)
    };
    let channels = owned_by(0).take(2).chain(owned_by(1).take(2));
    for channel in channels {
        let mut publisher = Client::connect(&server, "/ws");
        for i in 0..100 {
            publisher.send_json(json!({"op":"pub","ch":channel,"data":i,"id":i}));
        }
        let mut acks = Vec::new();
        let close = loop {
            match publisher.ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let reply: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                    if reply["op"] == "ack" {
                        acks.push(reply["seq"].as_u64().expect("a pub ack has its seq"));
                    }
                }
                Ok(tungstenite::Message::Close(frame)) => break frame.expect("close frame"),
                Ok(_) => {}
                Err(e) => panic!("closed without a close frame: {e}"),
            }
        };
        assert_eq!(u16::from(close.code), 1008);
        let mut reader = Client::connect(&server, "/ws");
        let published = reader.subscribe(&channel)["seq"].as_u64().unwrap();
        acks.sort_unstable();
        assert_eq!(
            acks,
            (1..=published).collect::<Vec<_>>(),
            "{channel}: every publication that took effect was acknowledged"
        );
    }
}

/// A client toggling a subscription as fast as it can (each toggle sends a
/// join and a leave to every `join_leave` subscriber, and two webhook
/// events) is held to the default `--subscribe-rate` after its burst, then
/// closed; the presence channel's other members hear a bounded number of
/// its joins and leaves.
#[test]
fn subscription_churn_is_rate_limited_by_default() {
    let server = Server::start(&["--presence", "room.*"]);
    let mut member = Client::connect(&server, "/ws");
    member.send_json(json!({"op": "sub", "ch": "room.1", "join_leave": true, "id": "m"}));
    while member.recv_json()["op"] != "ack" {}
    let mut churner = Client::connect(&server, "/ws");
    let (mut acks, mut limited) = (0, 0);
    let close = loop {
        for i in 0..50 {
            let op = if i % 2 == 0 { "sub" } else { "unsub" };
            churner.send_json(json!({"op": op, "ch": "room.1", "id": i}));
        }
        match churner.ws.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.expect("a close frame"),
            Ok(message) => {
                let answer: serde_json::Value =
                    serde_json::from_str(message.to_text().unwrap()).unwrap();
                acks += u32::from(answer["op"] == "ack");
                limited += u32::from(answer["code"] == "rate_limited");
            }
            Err(e) => panic!("no close frame: {e}"),
        }
        assert!(acks + limited < 100_000, "never closed");
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "rate limit exceeded")
    );
    assert!(limited > 0, "refused before the close");
    // What the member heard of it: the burst and a second or so of the rate.
    member.send_json(json!({"op": "ping", "id": "sync"}));
    let mut events = 0;
    while member.recv_json()["id"] != "sync" {
        events += 1;
    }
    assert!(events <= 1000, "{events} joins and leaves");
}
