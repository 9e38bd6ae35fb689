//! Lifecycle alone, with a host that writes down what it is asked to do:
//! which events are emitted and where, the vacated grace, and the broker's
//! say over occupied and vacated across nodes.

use serde_json::{json, Value};

use super::*;

/// A host that keeps the events emitted (their JSON without the node's
/// fields), what went to owners and what the broker was told.
#[derive(Default)]
struct Recorder {
    /// Whether a broker takes the transitions (and will answer).
    broker: bool,
    events: Vec<Value>,
    to_owner: Vec<(usize, String, bool, String)>,
    told: Vec<(String, bool)>,
}

impl Recorder {
    fn events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }
}

impl LifecycleHost for Recorder {
    fn emit(&mut self, event: Event<'_>) {
        let mut json: Value =
            serde_json::from_slice(&event.json("n", 1, 0)).expect("an event is JSON");
        if let Some(object) = json.as_object_mut() {
            for field in ["node", "seq", "time_ms"] {
                object.remove(field);
            }
        }
        self.events.push(json);
    }

    fn to_owner(&mut self, owner: usize, ch: ChannelName, on: bool, member: Member) {
        let entry = (owner, ch.as_str().to_string(), on, member.conn.to_string());
        self.to_owner.push(entry);
    }

    fn tell_broker(&mut self, ch: &str, on: bool) -> bool {
        self.told.push((ch.into(), on));
        self.broker
    }
}

const SHARDS: usize = 2;
const GRACE_MS: u64 = 100;

fn member() -> Member {
    Member {
        conn: "n.0.1.1".into(),
        user: "alice".into(),
        info: Some(r#"{"not":"sent"}"#.into()),
    }
}

/// The first channel `ch.N` that shard `owner` owns.
fn channel_of(owner: usize) -> String {
    (0..)
        .map(|i| format!("ch.{i}"))
        .find(|ch| channel::owner_of(ch.as_bytes(), SHARDS) == owner)
        .expect("every shard owns some channel")
}

#[test]
fn without_webhooks_nothing_is_emitted_or_kept() {
    let (mut lifecycle, mut host) = (Lifecycle::off(), Recorder::default());
    assert!(!lifecycle.is_on());
    let nobody = || -> Member { unreachable!("asked who") };
    lifecycle.connected(nobody, &mut host);
    lifecycle.disconnected(nobody, "normal", &mut host);
    lifecycle.subscription("ch", true, nobody, &mut host);
    lifecycle.subscription_event("ch", true, "u", "c", &mut host);
    lifecycle.interest("ch", true, 0, &mut host);
    lifecycle.tick(1_000_000, &mut host);
    lifecycle.answered("ch", true, None, &mut host);
    assert!(host.events().is_empty() && host.told.is_empty());
    assert_eq!(lifecycle.occupied().count(), 0);
}

#[test]
fn connection_events_are_emitted_where_the_connection_is() {
    let (lifecycle, mut host) = (Lifecycle::new(0, SHARDS, GRACE_MS), Recorder::default());
    lifecycle.connected(member, &mut host);
    lifecycle.disconnected(member, "slow_consumer", &mut host);
    let anonymous = || Member {
        user: "".into(),
        ..member()
    };
    lifecycle.connected(anonymous, &mut host);
    assert_eq!(
        host.events(),
        [
            json!({"event":"connected","user":"alice","conn":"n.0.1.1"}),
            json!({"event":"disconnected","user":"alice","conn":"n.0.1.1","reason":"slow_consumer"}),
            json!({"event":"connected","conn":"n.0.1.1"}),
        ]
    );
}

/// `subscribed` and `unsubscribed` are the owner's: emitted here for a
/// channel this shard owns, sent to the owner otherwise; system channels
/// have none.
#[test]
fn subscription_events_are_emitted_on_the_channels_owner() {
    let (lifecycle, mut host) = (Lifecycle::new(0, SHARDS, GRACE_MS), Recorder::default());
    let (here, there) = (channel_of(0), channel_of(1));
    lifecycle.subscription(&here, true, member, &mut host);
    lifecycle.subscription(&there, false, member, &mut host);
    lifecycle.subscription("$stats", true, member, &mut host);
    assert_eq!(
        host.events(),
        [json!({"event":"subscribed","ch":here,"user":"alice","conn":"n.0.1.1"})]
    );
    assert_eq!(host.to_owner, [(1, there.clone(), false, "n.0.1.1".into())]);
    // The owner's side of what was sent to it.
    let owner = Lifecycle::new(1, SHARDS, GRACE_MS);
    owner.subscription_event(&there, false, "alice", "n.0.1.1", &mut host);
    assert_eq!(
        host.events(),
        [json!({"event":"unsubscribed","ch":there,"user":"alice","conn":"n.0.1.1"})]
    );
}

/// Occupied as a channel fills; vacated once it has stayed empty for the
/// grace, not when it fills again within it.
#[test]
fn vacated_waits_out_its_grace_and_a_refill_cancels_it() {
    let mut lifecycle = Lifecycle::new(0, SHARDS, GRACE_MS);
    let mut host = Recorder::default();
    let occupied = json!({"event":"channel_occupied","ch":"c"});
    let vacated = json!({"event":"channel_vacated","ch":"c"});
    lifecycle.interest("c", true, 0, &mut host);
    lifecycle.interest("c", true, 5, &mut host);
    assert_eq!(host.events(), std::slice::from_ref(&occupied), "once");
    lifecycle.interest("c", false, 10, &mut host);
    lifecycle.tick(50, &mut host);
    lifecycle.interest("c", true, 60, &mut host);
    lifecycle.tick(1_000, &mut host);
    assert!(host.events().is_empty(), "a reload within the grace");
    assert_eq!(lifecycle.occupied().collect::<Vec<_>>(), ["c"]);
    lifecycle.interest("c", false, 2_000, &mut host);
    lifecycle.tick(2_099, &mut host);
    assert!(host.events().is_empty(), "within the grace");
    lifecycle.tick(2_100, &mut host);
    lifecycle.tick(3_000, &mut host);
    assert_eq!(host.events(), [vacated], "once, when the grace ran out");
    assert_eq!(lifecycle.occupied().count(), 0);
    lifecycle.interest("c", true, 3_100, &mut host);
    assert_eq!(host.events(), [occupied], "filled again");
    // Without a broker, each transition was announced by this node.
    assert_eq!(
        host.told,
        [("c".into(), true), ("c".into(), false), ("c".into(), true)]
    );
}

/// With a broker that keeps each channel's nodes, an event waits for its
/// answer and is emitted only by the node whose entry made the set
/// non-empty (occupied) or empty (vacated); no answer: emitted anyway.
#[test]
fn across_nodes_the_broker_says_which_node_emits() {
    let mut lifecycle = Lifecycle::new(0, SHARDS, GRACE_MS);
    let mut host = Recorder {
        broker: true,
        ..Recorder::default()
    };
    lifecycle.interest("c", true, 0, &mut host);
    assert!(host.events().is_empty(), "waits for the broker");
    assert_eq!(host.told, [("c".into(), true)]);
    lifecycle.answered("c", true, Some((true, 2)), &mut host);
    lifecycle.answered("c", true, Some((false, 1)), &mut host);
    assert!(host.events().is_empty(), "another node was there first");
    lifecycle.answered("c", true, Some((true, 1)), &mut host);
    assert_eq!(
        host.events(),
        [json!({"event":"channel_occupied","ch":"c"})]
    );
    lifecycle.interest("c", false, 10, &mut host);
    lifecycle.tick(10 + GRACE_MS, &mut host);
    assert_eq!(host.told.last(), Some(&("c".into(), false)));
    lifecycle.answered("c", false, Some((true, 1)), &mut host);
    assert!(host.events().is_empty(), "another node still has some");
    lifecycle.answered("c", false, Some((true, 0)), &mut host);
    lifecycle.answered("c", false, None, &mut host);
    assert_eq!(
        host.events(),
        [
            json!({"event":"channel_vacated","ch":"c"}),
            json!({"event":"channel_vacated","ch":"c"}),
        ],
        "the last node out, and a node the broker did not answer"
    );
}
