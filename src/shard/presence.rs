//! The shard's side of presence (`--presence`). A connection's shard tells
//! the channel's owner when it subscribes to a presence channel and when it
//! leaves (unsubscribes, closes); the owner keeps the members
//! (`shard/members.rs`) and sends every real change — a first subscription,
//! a last leave — as a `join`/`leave` event to the shards with subscribers,
//! which hand it to those that asked (`"join_leave":true`). `presence` and
//! `occupancy` ops, and `GET /api/presence/<ch>`, ask the owner and are
//! answered from its table: exact across the node's shards. Joins, leaves
//! and questions travel on the same ordered lanes as everything else.

use std::rc::Rc;

use bytes::Bytes;

use super::{
    members::{Change, Member, Page},
    Shard,
};
use crate::{
    conn::Conn,
    engine::redis::PresenceRequest,
    mesh::{MeshMsg, PresenceAsker},
    protocol::{self, ErrorCode, OpError, PresenceAsk},
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
            self.links.send(
                owner,
                MeshMsg::PresenceChange {
                    ch: Bytes::copy_from_slice(name.as_bytes()),
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
        if let Some(link) = self.redis_link(name) {
            link.presence_change(name, join, &member.conn, &json);
        }
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
        for peer in super::shards_in(self.owner.borrow().remote_mask(name)) {
            self.links.send(
                peer,
                MeshMsg::PresenceEvent {
                    ch: Bytes::copy_from_slice(name.as_bytes()),
                    join,
                    member: json.clone(),
                    skip,
                },
            );
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

    /// Asks the owner of presence channel `name` about it for `asker`;
    /// refused (`no_presence`) if it is not one.
    pub fn ask_presence(
        &self,
        name: &str,
        asker: PresenceAsker,
        ask: PresenceAsk,
    ) -> Result<(), OpError<'static>> {
        if !self.is_presence(name) {
            return Err(OpError::new(
                ErrorCode::NoPresence,
                "not a presence channel (see --presence)",
                None,
            ));
        }
        let owner = self.owner_of(name.as_bytes());
        if owner == self.id {
            self.answer_presence_query(name, self.id, asker, ask);
        } else {
            self.links.send(
                owner,
                MeshMsg::PresenceQuery {
                    ch: Bytes::copy_from_slice(name.as_bytes()),
                    from: self.id as u16,
                    asker,
                    ask,
                },
            );
        }
        Ok(())
    }

    /// The most member JSON one presence page holds: a sixteenth of a
    /// connection's queue (64 KiB by default), so that the asker is never
    /// closed as a slow consumer for asking.
    pub(super) fn presence_page_bytes(&self) -> usize {
        self.config.max_queue_bytes / 16
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

    /// Owner side: answers a question from shard `from` — from Redis, which
    /// holds every node's members, with that engine (from this node's own
    /// while Redis cannot be asked).
    pub(super) fn answer_presence_query(
        &self,
        name: &str,
        from: usize,
        asker: PresenceAsker,
        ask: PresenceAsk,
    ) {
        let request = PresenceRequest {
            ch: name.into(),
            from,
            asker,
            ask,
        };
        let request = match self.redis_link(name) {
            Some(link) => match link.presence_query(request) {
                Ok(()) => return,
                Err(request) => request,
            },
            None => request,
        };
        self.send_presence_page(name, request, None);
    }

    /// Owner side: answers `request` with `page`, or with this node's own
    /// members when there is none.
    pub(super) fn send_presence_page(
        &self,
        name: &str,
        request: PresenceRequest,
        page: Option<Page>,
    ) {
        let PresenceRequest {
            from, asker, ask, ..
        } = request;
        let page = page.unwrap_or_else(|| self.presence_page(name, &ask));
        let counting = ask == PresenceAsk::Count;
        if from == self.id {
            return self.answer_presence(name, asker, &page, counting);
        }
        self.links.send(
            from,
            MeshMsg::PresenceReply {
                ch: Bytes::copy_from_slice(name.as_bytes()),
                asker,
                page: Box::new(page),
                counting,
            },
        );
    }

    /// Hands an answer to whoever asked, here (`counting`: an `occupancy`).
    pub(super) fn answer_presence(
        &self,
        name: &str,
        asker: PresenceAsker,
        page: &Page,
        counting: bool,
    ) {
        match asker {
            PresenceAsker::Conn { conn, id } => {
                let Some(conn) = self.conn(conn) else { return };
                let frame = match counting {
                    true => conn.codec.occupancy(id.as_deref(), name, page.count),
                    false => {
                        let members = members_json(page);
                        conn.codec.presence(
                            id.as_deref(),
                            name,
                            (&members, page.count, page.cursor.as_deref()),
                        )
                    }
                };
                conn.send(frame);
            }
            PresenceAsker::Http { slot, nonce } => {
                let mut waiters = self.presence_waiters.borrow_mut();
                if waiters.get(slot as usize).is_some_and(|w| w.0 == nonce) {
                    let json = presence_body(name, page);
                    let _ = waiters.remove(slot as usize).1.try_send(json);
                }
            }
        }
    }

    /// `GET /api/presence/<ch>`: asks and waits for the answer (the JSON
    /// body). `None` if the owner did not answer (shutdown).
    pub async fn presence_and_wait(
        self: &Rc<Self>,
        name: &str,
        ask: PresenceAsk,
    ) -> Result<Option<Vec<u8>>, OpError<'static>> {
        let (waiting, rx) = super::SlotGuard::take(&self.presence_waiters, self.new_token(), 1);
        let (slot, nonce) = (waiting.slot, waiting.nonce);
        self.ask_presence(name, PresenceAsker::Http { slot, nonce }, ask)?;
        Ok(rx.recv().await)
    }
}

/// One member as its JSON object.
pub(super) fn member_json(member: &Member) -> Vec<u8> {
    let mut json = Vec::with_capacity(64);
    protocol::write_member(
        &mut json,
        &member.user,
        &member.conn,
        member.info.as_deref(),
    );
    json
}

/// A member read back from its JSON (as Redis keeps it).
pub(super) fn member_from_json(json: &[u8]) -> Option<Member> {
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
fn members_json(page: &Page) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * page.members.len());
    for (i, member) in page.members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        protocol::write_member(&mut out, &member.user, &member.conn, member.info.as_deref());
    }
    out
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
