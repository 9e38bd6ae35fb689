//! Presence alone, with a host that writes down what it is asked to do:
//! which joins and leaves are events, who is told of them (the owner, the
//! shards with subscribers, this shard's subscribers, the broker), the
//! skip of a member's own join, and the pages questions are answered with.

use super::*;

/// What the component asked its host to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    ToOwner {
        owner: usize,
        ch: String,
        join: bool,
        conn: String,
        skip: Option<OwnJoin>,
    },
    Recorded {
        ch: String,
        join: bool,
        conn: String,
        member: String,
    },
    ToShard {
        shard: usize,
        ch: String,
        join: bool,
        member: String,
        skip: Option<OwnJoin>,
    },
    Delivered {
        ch: String,
        join: bool,
        member: String,
        skip: Option<ConnRef>,
    },
}

/// A host whose owner's table says `remote` shards have subscribers.
#[derive(Default)]
struct Recorder {
    remote: u64,
    effects: Vec<Effect>,
}

impl Recorder {
    fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 JSON")
}

impl PresenceHost for Recorder {
    fn remote_shards(&self, _: &str) -> u64 {
        self.remote
    }

    fn to_owner(
        &mut self,
        owner: usize,
        ch: ChannelName,
        join: bool,
        member: Member,
        skip: Option<OwnJoin>,
    ) {
        self.effects.push(Effect::ToOwner {
            owner,
            ch: ch.as_str().into(),
            join,
            conn: member.conn.into(),
            skip,
        });
    }

    fn recorded(&mut self, ch: &str, join: bool, conn: &str, member: &[u8]) {
        self.effects.push(Effect::Recorded {
            ch: ch.into(),
            join,
            conn: conn.into(),
            member: text(member),
        });
    }

    fn to_shard(
        &mut self,
        shard: usize,
        ch: &ChannelName,
        join: bool,
        member: &Bytes,
        skip: Option<OwnJoin>,
    ) {
        self.effects.push(Effect::ToShard {
            shard,
            ch: ch.as_str().into(),
            join,
            member: text(member),
            skip,
        });
    }

    fn deliver(&mut self, ch: &str, join: bool, member: &[u8], skip: Option<ConnRef>) {
        self.effects.push(Effect::Delivered {
            ch: ch.into(),
            join,
            member: text(member),
            skip,
        });
    }
}

const SHARDS: usize = 3;

/// Shard `shard` of three, with presence on `room.*`, pages of at most
/// `page_bytes` of JSON.
fn presence(shard: usize, page_bytes: usize) -> Presence {
    let patterns = vec![ChannelPattern::parse("room.*").expect("a pattern")];
    Presence::new(shard, SHARDS, patterns, page_bytes)
}

/// The first presence channel `room.N` that shard `owner` owns.
fn room_of(owner: usize) -> String {
    (0..)
        .map(|i| format!("room.{i}"))
        .find(|ch| channel::owner_of(ch.as_bytes(), SHARDS) == owner)
        .expect("every shard owns some room")
}

fn member(conn: &str, user: &str) -> Member {
    Member {
        conn: conn.into(),
        user: user.into(),
        info: None,
    }
}

fn conn(key: u32) -> ConnRef {
    ConnRef { key, gen: 1 }
}

fn delivered(ch: &str, join: bool, member: &str, skip: Option<ConnRef>) -> Effect {
    Effect::Delivered {
        ch: ch.into(),
        join,
        member: member.into(),
        skip,
    }
}

fn recorded(ch: &str, join: bool, conn: &str, member: &str) -> Effect {
    Effect::Recorded {
        ch: ch.into(),
        join,
        conn: conn.into(),
        member: member.into(),
    }
}

#[test]
fn only_channels_its_patterns_match_are_presence_channels() {
    let on = presence(0, usize::MAX);
    assert!(on.is_on());
    assert!(on.is_presence("room.a") && !on.is_presence("news"));
    let refused = on.check("news").expect_err("not a presence channel");
    assert_eq!(refused.code, ErrorCode::NoPresence);
    assert!(on.check("room.a").is_ok());
    let off = Presence::new(0, SHARDS, Vec::new(), usize::MAX);
    assert!(!off.is_on() && !off.is_presence("room.a"));

    // A subscriber of another channel is nobody's business, and who the
    // connection is is not even asked.
    let (mut on, mut host) = (on, Recorder::default());
    on.changed("news", true, || unreachable!("asked who"), None, &mut host);
    assert!(host.take().is_empty());
}

/// On the owner, the first subscription of each connection is a join —
/// one user's two connections are two members — a second one of the same
/// connection is nothing, and each leave of a member is a leave.
#[test]
fn joins_and_leaves_on_the_owner_are_events_once_per_connection() {
    let ch = room_of(0);
    let (mut presence, mut host) = (presence(0, usize::MAX), Recorder::default());
    let alice = r#"{"user":"alice","conn":"n.0.1.1"}"#;
    presence.changed(&ch, true, || member("n.0.1.1", "alice"), None, &mut host);
    assert_eq!(
        host.take(),
        [
            recorded(&ch, true, "n.0.1.1", alice),
            delivered(&ch, true, alice, None)
        ]
    );
    // The same connection again (another shard's late report, say).
    presence.change(&ch, true, member("n.0.1.1", "alice"), None, &mut host);
    assert!(host.take().is_empty(), "already a member");
    // Alice's second tab is another member.
    let tab = r#"{"user":"alice","conn":"n.0.2.1"}"#;
    presence.changed(&ch, true, || member("n.0.2.1", "alice"), None, &mut host);
    assert_eq!(
        host.take(),
        [
            recorded(&ch, true, "n.0.2.1", tab),
            delivered(&ch, true, tab, None)
        ]
    );
    assert_eq!(presence.count(&ch), 2);

    // A leave announces the member as it joined (its info included).
    presence.changed(&ch, false, || member("n.0.1.1", ""), None, &mut host);
    assert_eq!(
        host.take(),
        [
            recorded(&ch, false, "n.0.1.1", alice),
            delivered(&ch, false, alice, None)
        ]
    );
    presence.change(&ch, false, member("n.0.1.1", "alice"), None, &mut host);
    presence.change("room.none", false, member("n.0.1.1", ""), None, &mut host);
    assert!(host.take().is_empty(), "not a member");
    assert_eq!(presence.count(&ch), 1);
}

/// A subscriber on a shard that does not own the channel is reported to
/// the owner, with its own join's skip when it sends that itself.
#[test]
fn a_subscriber_elsewhere_is_reported_to_the_owner() {
    let ch = room_of(2);
    let (mut presence, mut host) = (presence(1, usize::MAX), Recorder::default());
    presence.changed(
        &ch,
        true,
        || member("n.1.4.1", "bob"),
        Some(conn(4)),
        &mut host,
    );
    presence.changed(&ch, false, || member("n.1.4.1", "bob"), None, &mut host);
    let to_owner = |join, skip| Effect::ToOwner {
        owner: 2,
        ch: ch.clone(),
        join,
        conn: "n.1.4.1".into(),
        skip,
    };
    assert_eq!(
        host.take(),
        [to_owner(true, Some((1, conn(4)))), to_owner(false, None)]
    );
    assert_eq!(presence.count(&ch), 0, "the owner keeps the members");
}

/// The owner's event goes to every other shard with subscribers and to
/// its own; a member that sends itself its own join is skipped on its
/// shard only.
#[test]
fn an_owners_event_reaches_every_subscribing_shard_but_skips_the_own_join() {
    let ch = room_of(0);
    let (mut owner, mut host) = (presence(0, usize::MAX), Recorder::default());
    host.remote = 0b110;
    let carol = r#"{"conn":"n.1.7.1"}"#;
    let skip = Some((1, conn(7)));
    owner.change(&ch, true, member("n.1.7.1", ""), skip, &mut host);
    let to_shard = |shard| Effect::ToShard {
        shard,
        ch: ch.clone(),
        join: true,
        member: carol.into(),
        skip,
    };
    assert_eq!(
        host.take(),
        [
            recorded(&ch, true, "n.1.7.1", carol),
            to_shard(1),
            to_shard(2),
            delivered(&ch, true, carol, None),
        ]
    );
    // On the member's shard its connection is left out; elsewhere nobody.
    let (member_shard, other) = (presence(1, usize::MAX), presence(2, usize::MAX));
    member_shard.event(&ch, true, carol.as_bytes(), skip, &mut host);
    other.event(&ch, true, carol.as_bytes(), skip, &mut host);
    assert_eq!(
        host.take(),
        [
            delivered(&ch, true, carol, Some(conn(7))),
            delivered(&ch, true, carol, None)
        ]
    );
    // A change another node made, relayed by the broker: no skip, and the
    // broker is not told what it told.
    owner.announce(&ch, false, Bytes::from_static(b"{}"), None, &mut host);
    let effects = host.take();
    assert_eq!(effects.len(), 3);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Recorded { .. })));
}

/// Questions are answered from the owner's table: a count, or pages in
/// connection-id order whose cursors list everyone once, bounded in bytes.
#[test]
fn pages_and_counts_come_from_the_owners_table() {
    let ch = room_of(0);
    let (mut presence, mut host) = (presence(0, 70), Recorder::default());
    for i in 0..5 {
        let id = format!("n.0.{i}.1");
        presence.changed(&ch, true, || member(&id, "u"), None, &mut host);
    }
    let count = presence.page(&ch, &PresenceAsk::Count);
    assert_eq!((count.members.len(), count.count), (0, 5));
    let ask = |cursor: Option<&str>| PresenceAsk::Page {
        cursor: cursor.map(Into::into),
        limit: 2,
    };
    let (mut cursor, mut seen) = (None::<Box<str>>, Vec::new());
    loop {
        let page = presence.page(&ch, &ask(cursor.as_deref()));
        assert_eq!(page.count, 5);
        assert!(page.members.len() <= 2);
        seen.extend(page.members.iter().map(|m| m.conn.to_string()));
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let all: Vec<String> = (0..5).map(|i| format!("n.0.{i}.1")).collect();
    assert_eq!(seen, all);
    // Members of 30 bytes of JSON each (with their commas): 70 hold two.
    let big = presence.page(
        &ch,
        &PresenceAsk::Page {
            cursor: None,
            limit: 4,
        },
    );
    assert_eq!(
        (big.members.len(), big.cursor.as_deref()),
        (2, Some("n.0.1.1"))
    );
    // A broker's page is held to the same bound.
    let theirs = (0..4).map(|i| member(&format!("m.{i}"), "u")).collect();
    let page = presence.page_of(theirs, false, 9);
    assert_eq!(
        (page.members.len(), page.cursor.as_deref(), page.count),
        (2, Some("m.1"), 9)
    );
    let listed: Vec<(&str, usize)> = presence
        .channels()
        .map(|(name, members)| (name, members.count()))
        .collect();
    assert_eq!(listed, [(ch.as_str(), 5)]);
    assert_eq!(presence.page("room.empty", &ask(None)).count, 0);
}
