//! Who is subscribed to the presence channels this shard owns
//! (`--presence`): every shard of the node reports its subscribers' joins
//! and leaves to the channel's owner, which keeps one member table per
//! channel, so the count is exact across shards and a list is one lookup.
//! Members are ordered by connection id: a page of the list ends at a
//! cursor (the last id it holds) and the next page starts after it, so
//! paging is stable while members come and go. Pure data, no I/O.

use std::collections::{BTreeMap, HashMap};

/// One subscriber of a presence channel, as lists show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The connection's id (unique on the node, stable while it lives).
    pub conn: Box<str>,
    /// The token's `sub` (empty: an anonymous connection).
    pub user: Box<str>,
    /// The token's `info` claim, as JSON text, if it had one.
    pub info: Option<Box<str>>,
}

/// What a join or a leave changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The member is new (a join event), or left (a leave event).
    Yes,
    /// Already a member (a second `sub` of the same connection), or not one.
    No,
}

/// One page of a channel's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub members: Vec<Member>,
    /// Where the next page starts, when there is one.
    pub cursor: Option<Box<str>>,
    /// Members of the channel in all.
    pub count: usize,
}

impl Page {
    /// A page of `members` (in connection-id order; `more`: others follow
    /// them) cut to the first that fit in `max_bytes` of JSON, at least
    /// one, so that a page at the largest `limit` with large `info` claims
    /// still fits in the asker's queue. Its cursor follows the last kept.
    pub fn new(mut members: Vec<Member>, mut more: bool, count: usize, max_bytes: usize) -> Page {
        let mut json = Vec::new();
        let fitting = members
            .iter()
            .position(|m| {
                crate::protocol::write_member(&mut json, &m.user, &m.conn, m.info.as_deref());
                json.push(b',');
                json.len() > max_bytes
            })
            .map_or(members.len(), |over| over.max(1));
        more |= fitting < members.len();
        members.truncate(fitting);
        let cursor = more
            .then(|| members.last().map(|m| m.conn.clone()))
            .flatten();
        Page {
            members,
            cursor,
            count,
        }
    }
}

/// The members of the presence channels this shard owns.
#[derive(Debug, Default)]
pub struct Members {
    channels: HashMap<Box<str>, BTreeMap<Box<str>, Member>>,
}

impl Members {
    /// `member` subscribed to `channel`.
    pub fn join(&mut self, channel: &str, member: Member) -> Change {
        let members = self.channels.entry(channel.into()).or_default();
        match members.insert(member.conn.clone(), member) {
            None => Change::Yes,
            Some(_) => Change::No,
        }
    }

    /// Connection `conn` left `channel`; returns who it was.
    pub fn leave(&mut self, channel: &str, conn: &str) -> Option<Member> {
        let members = self.channels.get_mut(channel)?;
        let left = members.remove(conn);
        if members.is_empty() {
            self.channels.remove(channel);
        }
        left
    }

    /// Members of `channel`.
    pub fn count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, BTreeMap::len)
    }

    /// Up to `limit` members of `channel` after `cursor` (from the first
    /// without one), in connection-id order, as many as fit in `max_bytes`
    /// of JSON (at least one).
    pub fn page(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Page {
        let Some(members) = self.channels.get(channel) else {
            return Page {
                members: Vec::new(),
                cursor: None,
                count: 0,
            };
        };
        let after = match cursor {
            Some(cursor) => members.range::<str, _>((
                std::ops::Bound::Excluded(cursor),
                std::ops::Bound::Unbounded,
            )),
            None => members.range::<str, _>(..),
        };
        let mut page: Vec<Member> = after
            .take(limit.saturating_add(1))
            .map(|(_, m)| m.clone())
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        Page::new(page, more, members.len(), max_bytes)
    }

    /// Every channel with members, and its members.
    pub fn channels(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &Member>)> {
        self.channels
            .iter()
            .map(|(name, members)| (&**name, members.values()))
    }

    /// Channels with at least one member.
    #[cfg(test)]
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

/// One member as its JSON object.
pub fn member_json(member: &Member) -> Vec<u8> {
    let mut json = Vec::with_capacity(64);
    crate::protocol::write_member(
        &mut json,
        &member.user,
        &member.conn,
        member.info.as_deref(),
    );
    json
}

/// A member read back from its JSON (as Redis keeps it).
pub fn member_from_json(json: &[u8]) -> Option<Member> {
    #[derive(serde::Deserialize)]
    struct Stored<'a> {
        #[serde(default)]
        user: String,
        conn: String,
        #[serde(borrow, default)]
        info: Option<&'a serde_json::value::RawValue>,
    }
    let stored: Stored<'_> = serde_json::from_slice(json).ok()?;
    Some(Member {
        conn: stored.conn.into(),
        user: stored.user.into(),
        info: stored.info.map(|i| i.get().into()),
    })
}

/// Members of a page as JSON objects joined by commas.
pub fn members_json(page: &Page) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * page.members.len());
    for (i, member) in page.members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::protocol::write_member(&mut out, &member.user, &member.conn, member.info.as_deref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: &str, user: &str) -> Member {
        Member {
            conn: conn.into(),
            user: user.into(),
            info: None,
        }
    }

    #[test]
    fn joins_and_leaves_count_once_per_connection() {
        let mut presence = Members::default();
        assert_eq!(presence.join("room", member("a.1", "alice")), Change::Yes);
        assert_eq!(
            presence.join("room", member("a.1", "alice")),
            Change::No,
            "a second sub"
        );
        assert_eq!(
            presence.join("room", member("b.2", "alice")),
            Change::Yes,
            "another tab"
        );
        assert_eq!(presence.join("other", member("a.1", "alice")), Change::Yes);
        assert_eq!(presence.count("room"), 2);
        assert_eq!(
            presence.leave("room", "a.1").map(|m| m.user),
            Some("alice".into())
        );
        assert_eq!(presence.leave("room", "a.1"), None, "left already");
        assert_eq!(presence.leave("nowhere", "a.1"), None);
        assert_eq!(
            presence.leave("room", "b.2").map(|m| m.conn),
            Some("b.2".into())
        );
        assert_eq!(
            (presence.count("room"), presence.channel_count()),
            (0, 1),
            "an empty channel is dropped"
        );
    }

    #[test]
    fn pages_follow_connection_order_and_survive_changes() {
        let mut presence = Members::default();
        for i in 0..5 {
            presence.join("room", member(&format!("c{i}"), "u"));
        }
        let first = presence.page("room", None, 2, usize::MAX);
        let conns = |p: &Page| {
            p.members
                .iter()
                .map(|m| m.conn.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            (conns(&first), first.cursor.as_deref(), first.count),
            (vec!["c0".into(), "c1".into()], Some("c1"), 5)
        );
        // A member before the cursor leaving does not shift the next page.
        presence.leave("room", "c0");
        let second = presence.page("room", first.cursor.as_deref(), 2, usize::MAX);
        assert_eq!(
            (conns(&second), second.cursor.as_deref()),
            (vec!["c2".into(), "c3".into()], Some("c3"))
        );
        let last = presence.page("room", second.cursor.as_deref(), 2, usize::MAX);
        assert_eq!((conns(&last), last.cursor), (vec!["c4".into()], None));
        let exact = presence.page("room", None, 4, usize::MAX);
        assert_eq!(exact.cursor, None, "no page after the last member");
        assert_eq!(presence.page("empty", None, 10, usize::MAX).count, 0);
    }

    /// The documented largest page (1,000 members) of members with 1 KiB
    /// `info` each was a 1.06 MB frame, over the asker's queue bound: pages
    /// now stop at their byte bound, and following the cursors still lists
    /// every member once, in order.
    #[test]
    fn pages_are_bounded_in_bytes_and_their_cursors_list_everyone_once() {
        let mut presence = Members::default();
        let info = format!("{{\"bio\":\"{}\"}}", "b".repeat(1024));
        for i in 0..1000 {
            let mut m = member(&format!("c{i:04}"), "u");
            m.info = Some(info.as_str().into());
            presence.join("room", m);
        }
        let max_bytes = 64 << 10;
        let (mut cursor, mut seen, mut pages) = (None::<Box<str>>, Vec::new(), 0);
        loop {
            let page = presence.page("room", cursor.as_deref(), 1000, max_bytes);
            let json: usize = page
                .members
                .iter()
                .map(|m| m.info.as_ref().unwrap().len() + 40)
                .sum();
            assert!(json <= max_bytes, "{json} bytes in a page");
            seen.extend(page.members.iter().map(|m| m.conn.to_string()));
            pages += 1;
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..1000).map(|i| format!("c{i:04}")).collect();
        assert_eq!(seen, expected);
        assert!((16..=20).contains(&pages), "{pages} pages");
        // A member larger than the bound still makes a page of one.
        let huge = presence.page("room", None, 10, 10);
        assert_eq!(
            (huge.members.len(), huge.cursor.as_deref()),
            (1, Some("c0000"))
        );
    }

    #[test]
    fn a_member_goes_to_json_and_back_as_redis_keeps_it() {
        let anonymous = member("c1", "");
        let json = member_json(&anonymous);
        assert_eq!(json, br#"{"conn":"c1"}"#);
        assert_eq!(member_from_json(&json), Some(anonymous));
        let known = Member {
            info: Some(r#"{"name":"Ann \"A\""}"#.into()),
            ..member("c2", "u\u{e9}")
        };
        let json = member_json(&known);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["info"]["name"], "Ann \"A\"");
        assert_eq!(member_from_json(&json), Some(known));
        assert_eq!(member_from_json(b"{not json"), None);
        assert_eq!(
            member_from_json(br#"{"user":"u"}"#),
            None,
            "a member has a conn"
        );
    }

    #[test]
    fn a_page_of_members_is_their_objects_joined_by_commas() {
        let page = Page {
            members: vec![member("a", "u1"), member("b", "")],
            cursor: None,
            count: 2,
        };
        let list = format!("[{}]", String::from_utf8(members_json(&page)).unwrap());
        let value: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{"user":"u1","conn":"a"},{"conn":"b"}])
        );
    }

    #[test]
    fn the_cursors_own_member_leaving_does_not_shift_the_next_page() {
        let mut presence = Members::default();
        for conn in ["a", "b", "c", "d"] {
            presence.join("room", member(conn, "u"));
        }
        let first = presence.page("room", None, 2, usize::MAX);
        assert_eq!(first.cursor.as_deref(), Some("b"));
        presence.leave("room", "b");
        let next = presence.page("room", first.cursor.as_deref(), 2, usize::MAX);
        let conns: Vec<&str> = next.members.iter().map(|m| &*m.conn).collect();
        assert_eq!((conns, next.count), (vec!["c", "d"], 3));
    }

    #[test]
    fn a_cursor_past_the_last_member_gives_an_empty_last_page() {
        let mut presence = Members::default();
        presence.join("room", member("a", "u"));
        let page = presence.page("room", Some("z"), 10, usize::MAX);
        assert_eq!((page.members.len(), page.cursor, page.count), (0, None, 1));
    }

    #[test]
    fn channels_lists_each_channel_with_its_members() {
        let mut presence = Members::default();
        presence.join("a", member("1", "u"));
        presence.join("a", member("2", "v"));
        presence.join("b", member("3", "w"));
        let mut listed: Vec<(String, Vec<String>)> = presence
            .channels()
            .map(|(name, members)| {
                (
                    name.to_owned(),
                    members.map(|m| m.conn.to_string()).collect(),
                )
            })
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                ("a".to_owned(), vec!["1".to_owned(), "2".to_owned()]),
                ("b".to_owned(), vec!["3".to_owned()])
            ]
        );
    }

    #[test]
    fn names_with_quotes_and_control_characters_make_valid_json() {
        let odd = member("c\"1\u{1}", "u\\\n\u{7f}");
        let json = member_json(&odd);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"user":"u\\\n\u{7f}","conn":"c\"1\u{1}"})
        );
        assert_eq!(member_from_json(&json), Some(odd));
    }
}
