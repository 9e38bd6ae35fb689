//! The shard's side of presence (`--presence`). A connection's shard tells
//! the channel's owner when it subscribes to a presence channel and when it
//! leaves (unsubscribes, closes); the owner keeps the members
//! (`shardcast_core::members`) and sends every real change — a first subscription,
//! a last leave — as a `join`/`leave` event to the shards with subscribers,
//! which hand it to those that asked (`"join_leave":true`). `presence` and
//! `occupancy` ops, and `GET /api/presence/<ch>`, ask the owner and are
//! answered from its table: exact across the node's shards. Joins, leaves
//! and questions travel on the same ordered lanes as everything else.

use bytes::Bytes;

use super::{
    members::{member_json, members_json, Change, Member, Page},
    Note, Shard,
};
use crate::{
    channel::ChannelName,
    conn::Conn,
    engine::broker::{Asked, PresenceRequest},
    mesh::{Answer, Cast, Question, ReplyId},
    protocol::{self, ErrorCode, OpError, PresenceAsk, RequestId},
    publication::ConnRef,
    security::pattern,
};

impl Shard {
    /// Whether `name` is a presence channel.
    pub(super) fn is_presence(&self, name: &str) -> bool {
        !self.presence_patterns.is_empty() && pattern::any_matches(&self.presence_patterns, name)
    }

    /// `conn` as presence lists show it: its id (unique on the node), the
    /// token's user and `info`.
    pub(super) fn member_of(&self, conn: &Conn) -> Member {
        let (user, info) = match &*conn.permit() {
            crate::conn::permit::Permit::Token(grant) => (grant.user.clone(), grant.info.clone()),
            _ => ("".into(), None),
        };
        Member {
            conn: self.conn_id(conn).into(),
            user,
            info,
        }
    }

    /// `conn` subscribed to `name` (not a replaced subscription), or left it.
    /// `sends_own_join`: the subscription waits for its position and sends
    /// itself its own join when it goes live, so the owner's event skips it
    /// (that event may come before the position, with the Redis engine).
    pub(super) fn presence_changed(
        &self,
        name: &str,
        conn: &Conn,
        join: bool,
        sends_own_join: bool,
    ) {
        if !self.is_presence(name) {
            return;
        }
        let member = self.member_of(conn);
        let skip = sends_own_join.then_some((self.id as u16, conn.id));
        let owner = self.owner_of(name.as_bytes());
        if owner == self.id {
            self.change_presence(name, join, member, skip);
        } else {
            self.cast(
                owner,
                Cast::PresenceChange {
                    ch: ChannelName::of_valid(name),
                    join,
                    member: Box::new(member),
                    skip,
                },
            );
        }
    }

    /// Owner side: records the change and, if it is one, tells every shard
    /// with subscribers of `name` (this one included) but `skip`.
    pub(super) fn change_presence(
        &self,
        name: &str,
        join: bool,
        member: Member,
        skip: Option<(u16, ConnRef)>,
    ) {
        let changed = match join {
            true => (self.members.borrow_mut().join(name, member.clone()) == Change::Yes)
                .then_some(member),
            false => self.members.borrow_mut().leave(name, &member.conn),
        };
        let Some(member) = changed else { return };
        let json = member_json(&member);
        // With Redis, the node's members are kept there too, for every node.
        self.broker_for(name)
            .presence_change(name, join, &member.conn, &json);
        self.deliver_presence_event(name, join, Bytes::from(json), skip);
    }

    /// Sends a presence event to every shard with subscribers of `name`
    /// (this one included), leaving out the connection `skip` names.
    pub(super) fn deliver_presence_event(
        &self,
        name: &str,
        join: bool,
        json: Bytes,
        skip: Option<(u16, ConnRef)>,
    ) {
        let remote = self.owner.borrow().remote_mask(name);
        if remote != 0 {
            let ch = ChannelName::of_valid(name);
            for peer in super::shards_in(remote) {
                let (ch, member) = (ch.clone(), json.clone());
                self.cast(
                    peer,
                    Cast::PresenceEvent {
                        ch,
                        join,
                        member,
                        skip,
                    },
                );
            }
        }
        self.presence_event(name, join, &json, skip);
    }

    /// Delivers an owner's `join`/`leave` event here, to all who asked but
    /// `skip` (if it is on this shard).
    pub(super) fn presence_event(
        &self,
        name: &str,
        join: bool,
        member: &[u8],
        skip: Option<(u16, ConnRef)>,
    ) {
        let skip = skip
            .filter(|(shard, _)| usize::from(*shard) == self.id)
            .map(|(_, conn)| conn);
        self.index.borrow().presence_event(name, join, member, skip);
    }

    /// A live subscription that waited for its position: its own join.
    pub(super) fn send_own_join(&self, name: &str, conn: &Conn) {
        let json = member_json(&self.member_of(conn));
        conn.send(conn.codec.presence_event(true, name, &json));
    }

    /// A connection's `presence` or `occupancy` op (`ask`) about `name`:
    /// asks the channel's owner and answers `id` when the owner does;
    /// refused (`no_presence`) if it is not a presence channel.
    pub(crate) fn presence_op<'a>(
        &self,
        conn: &Conn,
        name: &str,
        id: Option<RequestId<'a>>,
        ask: PresenceAsk,
    ) -> Result<(), OpError<'a>> {
        self.presence_channel(name)
            .map_err(|error| OpError::new(error.code, error.msg, id))?;
        let ch = ChannelName::of_valid(name);
        let to = self.pending.note(Note::Presence {
            ch: ch.clone(),
            conn: conn.id,
            id: id.map(RequestId::to_buf),
            counting: ask == PresenceAsk::Count,
        });
        self.ask(
            self.owner_of(name.as_bytes()),
            to,
            Question::Presence { ch, ask },
        );
        Ok(())
    }

    /// Refuses (`no_presence`) a question about `name` unless it is a
    /// presence channel.
    fn presence_channel(&self, name: &str) -> Result<(), OpError<'static>> {
        match self.is_presence(name) {
            true => Ok(()),
            false => Err(OpError::new(
                ErrorCode::NoPresence,
                "not a presence channel (see --presence)",
                None,
            )),
        }
    }

    /// The most member JSON one presence page holds: a sixteenth of a
    /// connection's queue (64 KiB by default), so that the asker is never
    /// closed as a slow consumer for asking.
    pub(super) fn presence_page_bytes(&self) -> usize {
        self.config.limits.max_queue_bytes / 16
    }

    /// Owner side: the answer to `ask`.
    pub(super) fn presence_page(&self, name: &str, ask: &PresenceAsk) -> Page {
        let members = self.members.borrow();
        match ask {
            PresenceAsk::Page { cursor, limit } => {
                members.page(name, cursor.as_deref(), *limit, self.presence_page_bytes())
            }
            PresenceAsk::Count => Page {
                members: Vec::new(),
                cursor: None,
                count: members.count(name),
            },
        }
    }

    /// Owner side: answers a question, under `to` — from Redis, which
    /// holds every node's members, with that engine (from this node's own
    /// while Redis cannot be asked).
    pub(super) fn answer_presence_query(&self, name: &str, to: ReplyId, ask: PresenceAsk) {
        let request = PresenceRequest {
            ch: name.into(),
            to,
            ask,
        };
        let request = match self.broker_for(name).presence_query(request) {
            Asked::Sent => return,
            Asked::Local(request) | Asked::Unavailable(request) => request,
        };
        self.send_presence_page(name, request, None);
    }

    /// With a broker that keeps this node's members for the other nodes
    /// (Redis): those of the presence channels this shard owns are still
    /// there (see `run::spawn_broker_refresh`).
    pub(super) fn refresh_presence(&self) {
        const CHUNK: usize = 500;
        let members = self.members.borrow();
        for (name, those) in members.channels() {
            let those: Vec<(&Member, Vec<u8>)> = those.map(|m| (m, member_json(m))).collect();
            for chunk in those.chunks(CHUNK) {
                let pairs: Vec<(&str, &[u8])> = chunk
                    .iter()
                    .map(|(m, json)| (&*m.conn, json.as_slice()))
                    .collect();
                self.broker_for(name).presence_refresh(name, &pairs);
            }
        }
    }

    /// Owner side: answers `request` with `page`, or with this node's own
    /// members when there is none.
    pub(super) fn send_presence_page(
        &self,
        name: &str,
        request: PresenceRequest,
        page: Option<Page>,
    ) {
        let PresenceRequest { to, ask, .. } = request;
        let page = page.unwrap_or_else(|| self.presence_page(name, &ask));
        self.answer(to, Answer::Presence(Box::new(page)));
    }

    /// The owner's answer to a connection's `presence` (or, `counting`,
    /// `occupancy`) op reached its shard.
    pub(super) fn answer_presence_op(
        &self,
        name: &str,
        conn: ConnRef,
        id: Option<RequestId<'_>>,
        page: &Page,
        counting: bool,
    ) {
        let Some(conn) = self.conn(conn) else { return };
        let frame = match counting {
            true => conn.codec.occupancy(id, name, page.count),
            false => {
                let members = members_json(page);
                conn.codec
                    .presence(id, name, (&members, page.count, page.cursor.as_deref()))
            }
        };
        conn.send(frame);
    }

    /// `GET /api/presence/<ch>`: asks and waits for the answer (the JSON
    /// body). Waits for as long as it takes: bound it with a timeout.
    pub(crate) async fn presence_and_wait(
        &self,
        name: &str,
        ask: PresenceAsk,
    ) -> Result<Option<Vec<u8>>, OpError<'static>> {
        self.presence_channel(name)?;
        let waiting = self.pending.wait::<Page>(1);
        let question = Question::Presence {
            ch: ChannelName::of_valid(name),
            ask,
        };
        self.ask(self.owner_of(name.as_bytes()), waiting.id(), question);
        Ok(waiting.next().await.map(|page| presence_body(name, &page)))
    }
}

/// The body of `GET /api/presence/<ch>`.
fn presence_body(name: &str, page: &Page) -> Vec<u8> {
    protocol::presence_json(
        None,
        name,
        &members_json(page),
        page.count,
        page.cursor.as_deref(),
    )
}
