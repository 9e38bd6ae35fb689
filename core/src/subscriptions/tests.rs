//! Fan-out and the index alone, with connections whose queues are lists
//! (`crate::testing::TestConn`): who gets a publication, in which form,
//! encoded how many times, and what the owner is told.

use std::rc::Rc;

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::{
    codec::Codec,
    deflate::{DeflateSettings, Deflater},
    protocol::PayloadKind,
    testing::TestConn,
};

const SHARD: u16 = 0;

fn deflater() -> Deflater {
    Deflater::new(DeflateSettings {
        min_bytes: 0,
        level: 1,
    })
}

fn json_payload(text: &'static str) -> Payload {
    Payload::new(PayloadKind::Json, Bytes::from_static(text.as_bytes()))
}

fn conn(key: u32) -> Rc<TestConn> {
    Rc::new(TestConn::new(key, Codec::JSON))
}

/// `index` with `conns` live on `name` (no options).
fn subscribed(index: &mut Subscriptions<TestConn>, name: &str, conns: &[&Rc<TestConn>]) {
    for conn in conns {
        index.insert(name, conn, None, false, SubOptions::default());
    }
}

fn publish(index: &mut Subscriptions<TestConn>, name: &str, seq: u64, payload: &Payload) -> FanOut {
    index.fan_out(SHARD, (name, seq, payload), None, None, &mut deflater())
}

#[test]
fn the_first_subscriber_and_the_last_change_the_shards_interest() {
    let mut index = Subscriptions::new(usize::MAX);
    let (a, b) = (conn(1), conn(2));
    let (_, slot_a, change) = index.insert("ch", &a, None, false, SubOptions::default());
    assert_eq!(
        change,
        Some(Interest {
            on: true,
            delta: false
        })
    );
    let (_, slot_b, change) = index.insert(
        "ch",
        &b,
        None,
        false,
        SubOptions {
            delta: true,
            join_leave: false,
        },
    );
    assert_eq!(
        change,
        Some(Interest {
            on: true,
            delta: true
        }),
        "deltas wanted"
    );
    assert!(index.wants_delta("ch"));
    assert_eq!(
        index.remove("ch", slot_b),
        Some(Interest {
            on: true,
            delta: false
        })
    );
    assert_eq!(
        index.remove("ch", slot_a),
        Some(Interest {
            on: false,
            delta: false
        })
    );
    assert_eq!(index.channel_count(), 0, "an empty channel is forgotten");
    assert_eq!(index.subscription_count(), 0);
    assert_eq!(
        index.remove("ch", slot_a),
        None,
        "a second removal is nothing"
    );
}

#[test]
fn a_publication_is_encoded_once_and_shared_by_every_subscriber() {
    let mut index = Subscriptions::new(usize::MAX);
    let conns: Vec<_> = (1..=5).map(conn).collect();
    subscribed(&mut index, "ch", &conns.iter().collect::<Vec<_>>());
    let fan_out = publish(&mut index, "ch", 7, &json_payload(r#"{"x":1}"#));
    assert_eq!(fan_out.queued, 5);
    let frames: Vec<Bytes> = conns.iter().flat_map(|c| c.take()).collect();
    assert_eq!(frames.len(), 5);
    for frame in &frames {
        assert_eq!(
            frame.as_ptr(),
            frames[0].as_ptr(),
            "the same bytes, not copies"
        );
    }
    let body: serde_json::Value =
        serde_json::from_slice(crate::frame::payload_of(&frames[0])).unwrap();
    assert_eq!(
        body,
        json!({"op": "msg", "ch": "ch", "seq": 7, "data": {"x": 1}})
    );
}

#[test]
fn each_protocol_gets_its_own_form_and_raw_members_get_the_data_alone() {
    let mut index = Subscriptions::new(usize::MAX);
    let json = conn(1);
    let raw = Rc::new(TestConn::new(2, Codec::RAW));
    let msgpack = Rc::new(TestConn::new(
        3,
        Codec {
            protocol: crate::codec::Protocol::MsgPack,
            deflate_window: 0,
        },
    ));
    subscribed(&mut index, "room", &[&json, &raw, &msgpack]);
    publish(&mut index, "room", 1, &json_payload("[1,2]"));
    assert_eq!(
        json.take_json(),
        vec![json!({"op":"msg","ch":"room","seq":1,"data":[1,2]})]
    );
    let raw_frames = raw.take();
    assert_eq!(crate::frame::payload_of(&raw_frames[0]), b"[1,2]");
    let packed = msgpack.take();
    assert_eq!(packed.len(), 1);
    assert_eq!(packed[0][0] & 0x0f, crate::frame::OpCode::Binary as u8);
}

#[test]
fn pending_subscribers_get_nothing_until_they_go_live_with_their_own_token() {
    let mut index = Subscriptions::new(usize::MAX);
    let (live, waiting) = (conn(1), conn(2));
    subscribed(&mut index, "ch", &[&live]);
    let (_, slot, _) = index.insert("ch", &waiting, Some(9), true, SubOptions::default());
    publish(&mut index, "ch", 1, &json_payload("1"));
    assert_eq!(live.take().len(), 1);
    assert!(waiting.take().is_empty(), "pending: skipped");
    assert_eq!(
        index.go_live("ch", slot, 8),
        None,
        "another token: not this one"
    );
    assert_eq!(index.go_live("ch", slot, 9), Some((Codec::JSON, true)));
    assert_eq!(index.go_live("ch", slot, 9), None, "live already");
    publish(&mut index, "ch", 2, &json_payload("2"));
    assert_eq!(waiting.take_json()[0]["seq"], 2);
}

#[test]
fn the_skipped_connection_is_skipped_only_on_its_own_shard() {
    let mut index = Subscriptions::new(usize::MAX);
    let (sender, other) = (conn(1), conn(2));
    subscribed(&mut index, "room", &[&sender, &other]);
    let payload = json_payload("1");
    let skip = |shard| {
        Some(Skip {
            shard,
            conn: sender.id,
        })
    };
    index.fan_out(
        SHARD,
        ("room", 1, &payload),
        None,
        skip(SHARD),
        &mut deflater(),
    );
    assert!(sender.take().is_empty());
    assert_eq!(other.take().len(), 1);
    index.fan_out(
        SHARD,
        ("room", 2, &payload),
        None,
        skip(SHARD + 1),
        &mut deflater(),
    );
    assert_eq!(
        sender.take().len(),
        1,
        "the same ConnRef on another shard is another connection"
    );
}

#[test]
fn an_overflowing_queue_closes_its_subscriber_and_no_one_else() {
    let mut index = Subscriptions::new(usize::MAX);
    let slow = Rc::new(TestConn {
        limit: 60,
        ..TestConn::new(1, Codec::JSON)
    });
    let fast = conn(2);
    subscribed(&mut index, "ch", &[&slow, &fast]);
    let payload = json_payload(r#""0123456789""#);
    let first = publish(&mut index, "ch", 1, &payload);
    assert_eq!((first.queued, first.overflowed), (2, 0));
    let second = publish(&mut index, "ch", 2, &payload);
    assert_eq!((second.queued, second.overflowed), (1, 1));
    assert!(slow.closed_slow.get());
    assert!(!fast.closed_slow.get());
    assert_eq!(fast.take().len(), 2);
}

#[test]
fn deltas_go_only_to_subscribers_that_hold_the_publication_before() {
    let mut index = Subscriptions::new(usize::MAX);
    let plain = conn(1);
    let delta_asker = conn(2);
    subscribed(&mut index, "book", &[&plain]);
    let options = SubOptions {
        delta: true,
        join_leave: false,
    };
    let (_, slot, _) = index.insert("book", &delta_asker, Some(1), false, options);
    index.go_live("book", slot, 1);
    index.set_delta_base("book", slot, 0);
    let delta = Bytes::from_static(b"2\nabc");
    let payload = json_payload(r#""abcdef""#);
    // Seq 5 has a delta against 4, which the subscriber never got: whole.
    let five = index.fan_out(
        SHARD,
        ("book", 5, &payload),
        Some(&delta),
        None,
        &mut deflater(),
    );
    assert_eq!(five.deltas, 0);
    assert_eq!(delta_asker.take_json()[0]["data"], "abcdef");
    // Seq 6 follows the 5 it was sent: as a delta, to it alone.
    let six = index.fan_out(
        SHARD,
        ("book", 6, &payload),
        Some(&delta),
        None,
        &mut deflater(),
    );
    assert_eq!(six.deltas, 1);
    let got = delta_asker.take_json();
    assert_eq!(got[0]["delta"], true);
    assert_eq!(
        plain
            .take_json()
            .iter()
            .filter(|m| m.get("delta").is_some())
            .count(),
        0
    );
    // A gap (seq 8 after 6): whole again.
    let eight = index.fan_out(
        SHARD,
        ("book", 8, &payload),
        Some(&delta),
        None,
        &mut deflater(),
    );
    assert_eq!(eight.deltas, 0);
}

#[test]
fn a_resumed_delta_subscriber_may_take_a_delta_against_what_was_replayed() {
    let mut index = Subscriptions::new(usize::MAX);
    let asker = conn(1);
    let options = SubOptions {
        delta: true,
        join_leave: false,
    };
    let (_, slot, _) = index.insert("book", &asker, Some(3), false, options);
    index.go_live("book", slot, 3);
    index.set_delta_base("book", slot, 41);
    let delta = Bytes::from_static(b"1\nx");
    let fan_out = index.fan_out(
        SHARD,
        ("book", 42, &json_payload("1")),
        Some(&delta),
        None,
        &mut deflater(),
    );
    assert_eq!(fan_out.deltas, 1);
}

#[test]
fn a_keyed_publication_replaces_its_older_one_in_a_queue_that_fell_behind() {
    // Conflate once more than 0 bytes wait.
    let mut index = Subscriptions::new(0);
    let behind = conn(1);
    let msgpack = Rc::new(TestConn::new(
        2,
        Codec {
            protocol: crate::codec::Protocol::MsgPack,
            deflate_window: 0,
        },
    ));
    subscribed(&mut index, "prices", &[&behind, &msgpack]);
    let price = |text: &'static str| json_payload(text).with_key("AAPL");
    publish(&mut index, "prices", 1, &price("1"));
    publish(&mut index, "prices", 2, &json_payload("\"other\""));
    let third = publish(&mut index, "prices", 3, &price("3"));
    assert_eq!(third.conflated, 1, "the JSON subscriber only");
    let got = behind.take_json();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["seq"], 2);
    assert_eq!(
        (got[1]["seq"].clone(), got[1]["conflated"].clone()),
        (json!(3), json!(1))
    );
    assert_eq!(
        msgpack.take().len(),
        3,
        "MessagePack subscribers get every one"
    );
    // Another key is another value.
    publish(&mut index, "prices", 4, &price("4"));
    publish(&mut index, "prices", 5, &json_payload("5").with_key("MSFT"));
    assert_eq!(behind.take_json().len(), 2);
}

#[test]
fn a_queue_under_the_threshold_keeps_every_keyed_publication() {
    let mut index = Subscriptions::new(1 << 20);
    let subscriber = conn(1);
    subscribed(&mut index, "prices", &[&subscriber]);
    for seq in 1..=3 {
        publish(&mut index, "prices", seq, &json_payload("1").with_key("k"));
    }
    assert_eq!(subscriber.take().len(), 3);
}

#[test]
fn join_and_leave_events_reach_those_that_asked_but_the_member() {
    let mut index = Subscriptions::new(usize::MAX);
    let (asked, member, quiet) = (conn(1), conn(2), conn(3));
    let join_leave = SubOptions {
        delta: false,
        join_leave: true,
    };
    for c in [&asked, &member] {
        index.insert("presence.room", c, None, false, join_leave);
    }
    subscribed(&mut index, "presence.room", &[&quiet]);
    let member_json = br#"{"conn":"c2"}"#;
    let told = index.presence_event("presence.room", true, member_json, Some(member.id));
    assert_eq!(told, 1);
    assert_eq!(
        asked.take_json(),
        vec![json!({"op":"join","ch":"presence.room","conn":"c2"})]
    );
    assert!(member.take().is_empty(), "the member sends its own");
    assert!(quiet.take().is_empty(), "did not ask");
    assert_eq!(index.presence_event("nobody", true, member_json, None), 0);
}

#[test]
fn a_resync_reaches_live_enveloped_subscribers_only() {
    let mut index = Subscriptions::new(usize::MAX);
    let (live, pending) = (conn(1), conn(2));
    let raw = Rc::new(TestConn::new(3, Codec::RAW));
    subscribed(&mut index, "ch", &[&live, &raw]);
    index.insert("ch", &pending, Some(4), false, SubOptions::default());
    assert_eq!(index.resync("ch", 12, "e2"), 1);
    assert_eq!(
        live.take_json(),
        vec![json!({"op":"resync","ch":"ch","seq":12,"epoch":"e2"})]
    );
    assert!(raw.take().is_empty() && pending.take().is_empty());
}

#[test]
fn compressing_subscribers_share_one_compression() {
    let mut index = Subscriptions::new(usize::MAX);
    let deflating = Codec {
        protocol: crate::codec::Protocol::Json,
        deflate_window: 15,
    };
    let conns: Vec<_> = (1..=3)
        .map(|k| Rc::new(TestConn::new(k, deflating)))
        .collect();
    subscribed(&mut index, "ch", &conns.iter().collect::<Vec<_>>());
    let long = json_payload(
        r#""aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#,
    );
    let fan_out = publish(&mut index, "ch", 1, &long);
    assert_eq!(fan_out.compressed, 3);
    assert_eq!(fan_out.compressions, (1, 0), "compressed once for all");
}

#[test]
fn counts_follow_subscriptions_over_channels() {
    let mut index = Subscriptions::new(usize::MAX);
    let (a, b) = (conn(1), conn(2));
    subscribed(&mut index, "x", &[&a, &b]);
    subscribed(&mut index, "y", &[&a]);
    assert_eq!(index.subscriber_count("x"), 2);
    assert_eq!(index.subscription_count(), 3);
    assert_eq!(index.channel_count(), 2);
    let mut channels: Vec<_> = index.channels().collect();
    channels.sort();
    assert_eq!(channels, vec![("x", 2), ("y", 1)]);
}

#[test]
fn tokens_are_never_zero_and_differ_from_the_last() {
    let mut index: Subscriptions<TestConn> = Subscriptions::new(0);
    let (a, b) = (index.new_token(), index.new_token());
    assert!(a != 0 && b != 0 && a != b);
    index.last_token = u32::MAX;
    assert_eq!(index.new_token(), 1, "wraps past 0");
}
