//! Presence (`--presence`) as one component: which channels are presence
//! channels, the members of those a shard owns, and what every join and
//! leave means. A connection's shard reports its subscriber to the
//! channel's owner ([`Presence::changed`]); the owner keeps one member
//! table per channel ([`crate::members`]), so counts and lists are exact
//! across a node's shards, and sends each real change — a first
//! subscription of a connection, its last leave — as a `join`/`leave` event
//! to every shard with subscribers ([`Presence::announce`]), which hands it
//! to those that asked ([`Presence::event`]). A subscription that waits for
//! its position sends itself its own join when it goes live, so the
//! owner's event skips it. Questions (`presence` and `occupancy` ops, `GET
//! /api/presence/<ch>`) are answered from the owner's table in pages
//! bounded in bytes ([`Presence::page`]).
//!
//! No I/O: the shard passes in who a connection is (a [`Member`]) and
//! carries out what the component decides through a [`PresenceHost`] — a
//! message to the owner or to a shard, an event for its own subscribers,
//! the change for the broker that keeps every node's members.

use bytes::Bytes;

use crate::{
    channel::{self, ChannelName},
    members::{member_json, Change, Member, Members, Page},
    owner::shards_in,
    pattern::{self, ChannelPattern},
    protocol::{ErrorCode, OpError, PresenceAsk},
    publication::ConnRef,
};

/// The member's shard and connection, which sends itself its own join: an
/// owner's event for that join skips it.
pub type OwnJoin = (u16, ConnRef);

/// What presence does beyond its own state, carried out by the shard.
/// Called while the component is borrowed: an implementation must not
/// reach back into it.
pub trait PresenceHost {
    /// The shards other than this one with subscribers of `ch`, as a mask
    /// (bit `n`: shard `n`), as the channel's owner knows them.
    fn remote_shards(&self, ch: &str) -> u64;

    /// To shard `owner`, which owns `ch`: `member` subscribed (`join`) or
    /// no longer is.
    fn to_owner(
        &mut self,
        owner: usize,
        ch: ChannelName,
        join: bool,
        member: Member,
        skip: Option<OwnJoin>,
    );

    /// Owner side: a real change of `ch`'s members (`conn` joined, with
    /// `member` its JSON object, or left), for the broker that keeps every
    /// node's members (Redis); nothing without one.
    fn recorded(&mut self, ch: &str, join: bool, conn: &str, member: &[u8]);

    /// To shard `shard`: deliver the event (`member`: its JSON object) to
    /// its subscribers of `ch` that asked, but `skip`.
    fn to_shard(
        &mut self,
        shard: usize,
        ch: &ChannelName,
        join: bool,
        member: &Bytes,
        skip: Option<OwnJoin>,
    );

    /// Here: delivers the event to this shard's subscribers of `ch` that
    /// asked for joins and leaves, but connection `skip`.
    fn deliver(&mut self, ch: &str, join: bool, member: &[u8], skip: Option<ConnRef>);
}

/// One shard's presence: the patterns of the presence channels, the
/// members of those it owns, and the bound of a page of them.
#[derive(Debug)]
pub struct Presence {
    /// This shard.
    shard: usize,
    /// Shards of the node (a channel's owner is one of them).
    shards: usize,
    /// `--presence`: empty, no channel is one.
    patterns: Vec<ChannelPattern>,
    /// Members of the presence channels this shard owns.
    members: Members,
    /// The most member JSON one page holds.
    page_bytes: usize,
}

impl Presence {
    /// Presence on shard `shard` of `shards`, for the channels `patterns`
    /// match, answering pages of at most `page_bytes` of member JSON (at
    /// least one member).
    pub fn new(
        shard: usize,
        shards: usize,
        patterns: Vec<ChannelPattern>,
        page_bytes: usize,
    ) -> Self {
        Presence {
            shard,
            shards: shards.max(1),
            patterns,
            members: Members::default(),
            page_bytes,
        }
    }

    /// Whether some channels are presence channels (`--presence` is set).
    pub fn is_on(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Whether `ch` is a presence channel.
    pub fn is_presence(&self, ch: &str) -> bool {
        self.is_on() && pattern::any_matches(&self.patterns, ch)
    }

    /// Refuses (`no_presence`) a question about `ch` unless it is a
    /// presence channel.
    pub fn check(&self, ch: &str) -> Result<(), OpError<'static>> {
        match self.is_presence(ch) {
            true => Ok(()),
            false => Err(OpError::new(
                ErrorCode::NoPresence,
                "not a presence channel (see --presence)",
                None,
            )),
        }
    }

    /// A connection of this shard subscribed to `ch` (`join`; not a
    /// replaced subscription) or left it: its owner hears of it, if `ch` is
    /// a presence channel. `member` says who the connection is (asked only
    /// then). `own_join`: the connection, which sends itself its own join
    /// when its subscription goes live (the owner's event may come before
    /// its position), so the owner's event skips it.
    pub fn changed(
        &mut self,
        ch: &str,
        join: bool,
        member: impl FnOnce() -> Member,
        own_join: Option<ConnRef>,
        host: &mut impl PresenceHost,
    ) {
        if !self.is_presence(ch) {
            return;
        }
        let skip = own_join.map(|conn| (self.shard as u16, conn));
        let owner = channel::owner_of(ch.as_bytes(), self.shards);
        match owner == self.shard {
            true => self.change(ch, join, member(), skip, host),
            false => host.to_owner(owner, ChannelName::of_valid(ch), join, member(), skip),
        }
    }

    /// Owner side: records that `member` joined `ch` (or left it) and, if
    /// that changed the members — not a second join of one connection, not
    /// the leave of one that was not there — tells the broker and
    /// announces it to every shard with subscribers but `skip`.
    pub fn change(
        &mut self,
        ch: &str,
        join: bool,
        member: Member,
        skip: Option<OwnJoin>,
        host: &mut impl PresenceHost,
    ) {
        let (json, conn) = if join {
            let (json, conn) = (member_json(&member), member.conn.clone());
            if self.members.join(ch, member) == Change::No {
                return;
            }
            (json, conn)
        } else {
            let Some(left) = self.members.leave(ch, &member.conn) else {
                return;
            };
            (member_json(&left), left.conn)
        };
        host.recorded(ch, join, &conn, &json);
        self.announce(ch, join, Bytes::from(json), skip, host);
    }

    /// Sends a `join` (or `leave`) event of `member` (its JSON object) to
    /// every shard with subscribers of `ch`, this one included, leaving out
    /// the connection `skip` names: the owner's own changes, and another
    /// node's that the broker relays.
    pub fn announce(
        &self,
        ch: &str,
        join: bool,
        member: Bytes,
        skip: Option<OwnJoin>,
        host: &mut impl PresenceHost,
    ) {
        let remote = host.remote_shards(ch);
        if remote != 0 {
            let name = ChannelName::of_valid(ch);
            for shard in shards_in(remote) {
                host.to_shard(shard, &name, join, &member, skip);
            }
        }
        self.event(ch, join, &member, skip, host);
    }

    /// An owner's event reached this shard: delivered to the subscribers
    /// that asked, but `skip` if it is one of this shard's.
    pub fn event(
        &self,
        ch: &str,
        join: bool,
        member: &[u8],
        skip: Option<OwnJoin>,
        host: &mut impl PresenceHost,
    ) {
        let skip = skip
            .filter(|(shard, _)| usize::from(*shard) == self.shard)
            .map(|(_, conn)| conn);
        host.deliver(ch, join, member, skip);
    }

    /// Owner side: the answer to `ask` about `ch` from this shard's table.
    pub fn page(&self, ch: &str, ask: &PresenceAsk) -> Page {
        match ask {
            PresenceAsk::Page { cursor, limit } => {
                self.members
                    .page(ch, cursor.as_deref(), *limit, self.page_bytes)
            }
            PresenceAsk::Count => Page {
                members: Vec::new(),
                cursor: None,
                count: self.members.count(ch),
            },
        }
    }

    /// A page of `members` another store answered with (Redis: in
    /// connection-id order, `more` following them, `count` in all), cut to
    /// the same byte bound as this shard's own pages.
    pub fn page_of(&self, members: Vec<Member>, more: bool, count: usize) -> Page {
        Page::new(members, more, count, self.page_bytes)
    }

    /// Members of `ch`, as this shard's table holds them.
    pub fn count(&self, ch: &str) -> usize {
        self.members.count(ch)
    }

    /// Every presence channel this shard owns that has members, and its
    /// members (for the broker, which forgets a node's members unless
    /// they are refreshed).
    pub fn channels(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &Member>)> {
        self.members.channels()
    }
}

#[cfg(test)]
mod tests;
