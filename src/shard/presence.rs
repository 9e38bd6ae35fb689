//! The shard's side of presence (`--presence`). What presence decides —
//! which channels are presence channels, the members of those this shard
//! owns, which join or leave is an event and who hears of it, the pages
//! questions are answered with — is the core's [`Presence`], the shard's
//! `presence` field. Here is its glue to the rest of the shard: who a
//! connection is ([`member_of`]), the [`PresenceHost`] that carries out
//! its effects (the mesh, the owner's table of subscribing shards, this
//! shard's subscribers, Redis), and the questions — `presence` and
//! `occupancy` ops, `GET /api/presence/<ch>` — which travel to the
//! channel's owner as pending questions and are answered from its table,
//! or with the Redis engine from Redis, which holds every node's members.
//! Joins, leaves and questions travel on the same ordered lanes as
//! everything else. Free functions of the shard's parts: no `impl Shard`.

use bytes::Bytes;

use shardcast_core::presence::{OwnJoin, PresenceHost};

use super::{
    members::{self, member_json, members_json, Member, Page},
    Note, Shard,
};
use crate::{
    channel::ChannelName,
    conn::Conn,
    engine::broker::{Asked, PresenceRequest},
    engine::redis::PresenceAnswer,
    engine::Refused,
    mesh::{Answer, Cast, Question, ReplyId},
    protocol::{self, OpError, PresenceAsk, RequestId},
    publication::ConnRef,
};

pub(super) use shardcast_core::presence::Presence;

/// The shard's `presence` field for `config`: shard `id`'s presence.
pub(super) fn new(id: usize, config: &crate::config::Config) -> Presence {
    // A sixteenth of a connection's queue (64 KiB by default), so that
    // the asker is never closed as a slow consumer for asking.
    let page_bytes = config.limits.max_queue_bytes / 16;
    let patterns = config.presence.patterns.clone();
    Presence::new(id, config.shards, patterns, page_bytes)
}

/// A connection's id, unique on the node (as presence lists and webhook
/// events show it): node, shard, slot and generation.
pub(super) fn conn_id(shard: &Shard, conn: &Conn) -> String {
    format!(
        "{}.{}.{}.{}",
        shard.config.engine.node_id, shard.id, conn.id.key, conn.id.gen
    )
}

/// `conn` as presence lists show it: its id (unique on the node), the
/// token's user and `info`.
pub(super) fn member_of(shard: &Shard, conn: &Conn) -> Member {
    let (user, info) = match &*conn.permit() {
        crate::conn::permit::Permit::Token(grant) => (grant.user.clone(), grant.info.clone()),
        _ => ("".into(), None),
    };
    Member {
        conn: conn_id(shard, conn).into(),
        user,
        info,
    }
}

/// What presence reaches beyond itself on a shard (see [`PresenceHost`]).
struct Reach<'a>(&'a Shard);

impl PresenceHost for Reach<'_> {
    fn remote_shards(&self, ch: &str) -> u64 {
        self.0.owner.borrow().remote_mask(ch)
    }

    fn to_owner(
        &mut self,
        owner: usize,
        ch: ChannelName,
        join: bool,
        member: Member,
        skip: Option<OwnJoin>,
    ) {
        let member = Box::new(member);
        let change = Cast::PresenceChange {
            ch,
            join,
            member,
            skip,
        };
        self.0.cast(owner, change);
    }

    fn recorded(&mut self, ch: &str, join: bool, conn: &str, member: &[u8]) {
        // With Redis, the node's members are kept there too, for every node.
        self.0
            .broker_for(ch)
            .presence_change(ch, join, conn, member);
    }

    fn to_shard(
        &mut self,
        shard: usize,
        ch: &ChannelName,
        join: bool,
        member: &Bytes,
        skip: Option<OwnJoin>,
    ) {
        let event = Cast::PresenceEvent {
            ch: ch.clone(),
            join,
            member: member.clone(),
            skip,
        };
        self.0.cast(shard, event);
    }

    fn deliver(&mut self, ch: &str, join: bool, member: &[u8], skip: Option<ConnRef>) {
        self.0.index.borrow().presence_event(ch, join, member, skip);
    }
}

/// `conn` subscribed to `name` (not a replaced subscription), or left it:
/// the owner hears of it if `name` is a presence channel.
/// `sends_own_join`: the subscription waits for its position and sends
/// itself its own join when it goes live, so the owner's event skips it
/// (that event may come before the position, with the Redis engine).
pub(super) fn changed(shard: &Shard, name: &str, conn: &Conn, join: bool, sends_own_join: bool) {
    let own_join = sends_own_join.then_some(conn.id);
    let member = || member_of(shard, conn);
    (shard.presence.borrow_mut()).changed(name, join, member, own_join, &mut Reach(shard));
}

/// Owner side: another shard's subscriber joined or left
/// ([`Cast::PresenceChange`]).
pub(super) fn change(shard: &Shard, name: &str, join: bool, member: Member, skip: Option<OwnJoin>) {
    (shard.presence.borrow_mut()).change(name, join, member, skip, &mut Reach(shard));
}

/// The owner's `join`/`leave` event reached this shard
/// ([`Cast::PresenceEvent`]): to all who asked but `skip`.
pub(super) fn event(shard: &Shard, name: &str, join: bool, member: &[u8], skip: Option<OwnJoin>) {
    (shard.presence.borrow()).event(name, join, member, skip, &mut Reach(shard));
}

/// Owner side: another node's change, as Redis relays it, for every shard
/// with subscribers.
pub(super) fn announce(shard: &Shard, name: &str, join: bool, member: &[u8]) {
    let member = Bytes::copy_from_slice(member);
    (shard.presence.borrow()).announce(name, join, member, None, &mut Reach(shard));
}

/// A live subscription that waited for its position: its own join.
pub(super) fn send_own_join(shard: &Shard, name: &str, conn: &Conn) {
    let json = member_json(&member_of(shard, conn));
    conn.send(conn.codec.presence_event(true, name, &json));
}

/// A connection's `presence` or `occupancy` op (`ask`) about `name`: asks
/// the channel's owner and answers `id` when the owner does ([`answer_op`]);
/// refused (`no_presence`) if it is not a presence channel.
pub(crate) fn op<'a>(
    shard: &Shard,
    conn: &Conn,
    name: &str,
    id: Option<RequestId<'a>>,
    ask: PresenceAsk,
) -> Result<(), OpError<'a>> {
    (shard.presence.borrow().check(name))
        .map_err(|error| OpError::new(error.code, error.msg, id))?;
    let ch = ChannelName::of_valid(name);
    let to = shard.pending.note(Note::Presence {
        ch: ch.clone(),
        conn: conn.id,
        id: id.map(RequestId::to_buf),
        counting: ask == PresenceAsk::Count,
    });
    shard.ask(
        shard.owner_of(name.as_bytes()),
        to,
        Question::Presence { ch, ask },
    );
    Ok(())
}

/// The owner's answer to a connection's `presence` (or, `counting`,
/// `occupancy`) op reached its shard.
pub(super) fn answer_op(
    shard: &Shard,
    name: &str,
    conn: ConnRef,
    id: Option<RequestId<'_>>,
    page: &Page,
    counting: bool,
) {
    let Some(conn) = shard.conn(conn) else { return };
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
pub(crate) async fn ask_and_wait(
    shard: &Shard,
    name: &str,
    ask: PresenceAsk,
) -> Result<Option<Vec<u8>>, OpError<'static>> {
    shard.presence.borrow().check(name)?;
    let waiting = shard.pending.wait::<Page>(1);
    let question = Question::Presence {
        ch: ChannelName::of_valid(name),
        ask,
    };
    shard.ask(shard.owner_of(name.as_bytes()), waiting.id(), question);
    Ok(waiting.next().await.map(|page| presence_body(name, &page)))
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

/// Owner side: answers a question ([`Question::Presence`]), under `to` —
/// from Redis, which holds every node's members, with that engine (from
/// this node's own while Redis cannot be asked).
pub(super) fn answer_question(shard: &Shard, name: &str, to: ReplyId, ask: PresenceAsk) {
    let request = PresenceRequest {
        ch: name.into(),
        to,
        ask,
    };
    let request = match shard.broker_for(name).presence_query(request) {
        Asked::Sent => return,
        Asked::Local(request) | Asked::Unavailable(request) => request,
    };
    send_page(shard, request, None);
}

/// Owner side: Redis answered `request` (with `result`; on a refusal, the
/// node's own members answer).
pub(super) fn answered(
    shard: &Shard,
    request: PresenceRequest,
    result: Result<PresenceAnswer, Refused>,
) {
    let page = match (result, &request.ask) {
        (Ok(PresenceAnswer::Count(count)), _) => Some(Page {
            members: Vec::new(),
            cursor: None,
            count,
        }),
        (
            Ok(PresenceAnswer::Page {
                count,
                more,
                members,
            }),
            PresenceAsk::Page { .. },
        ) => {
            let members = members
                .iter()
                .filter_map(|(_, json)| members::member_from_json(json))
                .collect();
            Some(shard.presence.borrow().page_of(members, more, count))
        }
        _ => None,
    };
    send_page(shard, request, page);
}

/// Owner side: answers `request` with `page`, or with this node's own
/// members when there is none.
fn send_page(shard: &Shard, request: PresenceRequest, page: Option<Page>) {
    let PresenceRequest { ch, to, ask } = request;
    let page = page.unwrap_or_else(|| shard.presence.borrow().page(&ch, &ask));
    shard.answer(to, Answer::Presence(Box::new(page)));
}

/// With Redis: this node's members of the presence channels this shard
/// owns are still there (see `Shard::spawn_redis_refresh`); Redis drops
/// those of a node that stops saying so.
pub(super) fn refresh(shard: &Shard) {
    const CHUNK: usize = 500;
    let presence = shard.presence.borrow();
    for (name, those) in presence.channels() {
        let broker = shard.broker_for(name);
        let those: Vec<(&Member, Vec<u8>)> = those.map(|m| (m, member_json(m))).collect();
        for chunk in those.chunks(CHUNK) {
            let pairs: Vec<(&str, &[u8])> = chunk
                .iter()
                .map(|(m, json)| (&*m.conn, json.as_slice()))
                .collect();
            broker.presence_refresh(name, &pairs);
        }
    }
}
