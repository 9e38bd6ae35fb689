//! What a shard asks of its cluster engine, as one trait: [`Broker`]. The
//! owner shard of a channel has its publications ordered (by the broker, as
//! Redis does, or by itself and then forwarded, as with NATS, or by itself
//! only, as the memory engine does), tells the broker when the node's
//! interest in a channel changes, asks it where a channel stands, keeps
//! presence and occupancy there when the broker holds them, sends control
//! messages to the other nodes, and reports whether it is up. Three
//! implementations: [`MemoryBroker`] (one node on its own: nothing to
//! tell anyone), `redis_broker::RedisBroker` (the shard's Redis links)
//! and `nats_broker::NatsBroker` (its NATS link). The wire clients
//! (`redis.rs`, `nats.rs`) stay below them; what the links hand back comes
//! to the shard through their host traits (`RedisHost`, `NatsHost`), which
//! is why [`Broker`] is generic over the host: the links' callbacks stay
//! statically dispatched, and only the shard's calls into its broker (a
//! few per publication at most, none per delivery) go through the vtable.

use std::{rc::Rc, time::Duration};

use futures_lite::future::BoxedLocal;

use super::{
    addr::AddrError,
    nats::{NatsHost, NatsLink},
    nats_broker::NatsBroker,
    record,
    redis::{RedisHost, RedisLink, RedisSettings},
    redis_broker::RedisBroker,
    settings::{EngineKind, EngineSettings},
    Refused, Retention, META_TTL_FLOOR,
};
use crate::{
    protocol::PresenceAsk,
    publication::{Payload, Reply, ReplyId, Skip},
};

/// Who orders a channel's publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderedBy {
    /// The broker: the owner hands each publication over
    /// ([`Broker::submit`]) and delivers what the broker pushes back, in
    /// the broker's order. The broker also remembers idempotency keys.
    Broker,
    /// The owner shard itself (`Owner::order`), after
    /// [`Broker::forward`]ing it to the other nodes if there are any.
    Owner,
}

/// Where [`Broker::forward`] sent a publication the owner orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// Nowhere: there is no other node (memory).
    Nowhere,
    /// To the other nodes (NATS).
    Sent,
}

/// What became of a question the shard asked its broker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked<T> {
    /// Asked: the answer comes back through the host's callbacks.
    Sent,
    /// The broker holds none of that (memory, NATS): the shard answers
    /// from its own state. The question comes back.
    Local(T),
    /// The broker holds it but cannot be asked now (its link is down).
    /// The question comes back.
    Unavailable(T),
}

/// A publication handed to a broker that orders it, waiting for its
/// answer.
#[derive(Debug)]
pub(crate) struct PublishTicket {
    /// The shard the publisher is on.
    pub from: usize,
    pub reply: Reply,
}

/// Who asked where a channel stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PositionAsk {
    /// A subscription waiting for its position (the mesh's
    /// `Question::Position`) under `to`.
    Subscriber {
        ch: Box<str>,
        to: ReplyId,
        since: Option<(u64, Box<str>)>,
    },
    /// The shard lost pushes and fills them from the broker's history.
    Fill { ch: Box<str> },
    /// `GET /api/history/<ch>`, waiting under `to` for at most `limit`
    /// entries.
    History {
        ch: Box<str>,
        to: ReplyId,
        limit: usize,
    },
}

impl PositionAsk {
    /// The channel asked about.
    pub(crate) fn channel(&self) -> &str {
        match self {
            PositionAsk::Subscriber { ch, .. }
            | PositionAsk::Fill { ch }
            | PositionAsk::History { ch, .. } => ch,
        }
    }
}

/// A presence question on its way to the broker: about which channel,
/// what, and where the answer goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PresenceRequest {
    pub ch: Box<str>,
    pub to: ReplyId,
    pub ask: PresenceAsk,
}

/// A shard's cluster engine, as the owner shard of a channel uses it. `H`
/// is the shard, which the broker's links call back (see the module's
/// doc). The shard holds it as `Box<dyn Broker<Shard>>`: which engine runs
/// is a setting, and a trait object keeps the three out of the shard's
/// code; it never asks the broker about a system channel (`$stats`), which
/// is the node's own (it asks [`MemoryBroker`] instead).
///
/// The defaults are those of a broker that holds none of a channel's
/// state (history, presence, occupancy): questions are answered locally
/// and nothing is recorded.
pub(crate) trait Broker<H> {
    /// Who orders publications.
    fn ordered_by(&self) -> OrderedBy;

    /// Whether the broker keeps the channels' history, so that the owner
    /// keeps none of its own (Redis: its streams are the history).
    fn holds_history(&self) -> bool {
        false
    }

    /// Hands a publication to a broker that orders it
    /// ([`OrderedBy::Broker`]); the answer comes through the host.
    /// `Ok(true)`: the broker just became busy (publishers should be held
    /// back). The ticket comes back if it cannot be taken now (the broker
    /// is unreachable, or does not order publications): nothing was sent.
    fn submit(
        &self,
        name: &str,
        payload: &Payload,
        skip: Option<Skip>,
        ticket: PublishTicket,
    ) -> Result<bool, PublishTicket> {
        let _ = (name, payload, skip);
        Err(ticket)
    }

    /// Sends a publication the owner orders ([`OrderedBy::Owner`]) to the
    /// other nodes, before the owner orders it; refused (and then not
    /// published at all) while they cannot be reached.
    fn forward(
        &self,
        name: &str,
        payload: &Payload,
        skip: Option<Skip>,
    ) -> Result<Forwarded, Refused> {
        let _ = (name, payload, skip);
        Ok(Forwarded::Nowhere)
    }

    /// The node gained its first subscriber of `name` (`wanted`) or lost
    /// its last: the broker is told to send its publications here, or to
    /// stop. Kept while the broker is down, for the reconnect.
    fn interest(&self, name: &str, wanted: bool);

    /// Asks where `ask`'s channel stands, with the history after `after`
    /// (`None`: none wanted).
    fn position(&self, ask: PositionAsk, after: Option<u64>) -> Asked<PositionAsk> {
        let _ = after;
        Asked::Local(ask)
    }

    /// `member` (conn and JSON) joined presence channel `name` on this
    /// node, or left it: recorded by a broker that holds every node's
    /// members (and announced to the other nodes).
    fn presence_change(&self, name: &str, join: bool, conn: &str, member: &[u8]) {
        let _ = (name, join, conn, member);
    }

    /// This node's members of `name` are still there (see
    /// [`Broker::refresh_every`]).
    fn presence_refresh(&self, name: &str, members: &[(&str, &[u8])]) {
        let _ = (name, members);
    }

    /// Asks who is on presence channel `request.ch` across every node, or
    /// how many.
    fn presence_query(&self, request: PresenceRequest) -> Asked<PresenceRequest> {
        Asked::Local(request)
    }

    /// Channel `name` got subscribers on this node (`on`; said again to
    /// refresh the entry, with `answer` false) or lost them. `true` if the
    /// broker took it (and, with `answer`, the host hears whether the
    /// channel became occupied or vacated across nodes); `false` when no
    /// answer will come (no such record, or the broker is down).
    fn node_occupancy(&self, name: &str, on: bool, answer: bool) -> bool {
        let _ = (name, on, answer);
        false
    }

    /// How often what this node keeps in the broker (presence members,
    /// occupancy entries) must be refreshed, if it keeps anything there.
    fn refresh_every(&self) -> Option<Duration> {
        None
    }

    /// Sends a control message (`super::tagged`) to every other node;
    /// `false` if they could not be told (the broker is down).
    fn control(&self, message: &[u8]) -> bool;

    /// Whether every link to the broker is up.
    fn is_up(&self) -> bool;

    /// The tasks that keep the links connected, calling `host` back; the
    /// shard runs each until shutdown begins.
    fn tasks(&self, host: &Rc<H>) -> Vec<BoxedLocal<()>>;
}

/// The memory engine: one node on its own. The owner orders and keeps
/// everything; there is no other node to tell and nothing to connect to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemoryBroker;

impl<H> Broker<H> for MemoryBroker {
    fn ordered_by(&self) -> OrderedBy {
        OrderedBy::Owner
    }

    fn interest(&self, _: &str, _: bool) {}

    /// No other node: all of them (none) were told.
    fn control(&self, _: &[u8]) -> bool {
        true
    }

    fn is_up(&self) -> bool {
        true
    }

    fn tasks(&self, _: &Rc<H>) -> Vec<BoxedLocal<()>> {
        Vec::new()
    }
}

/// The broker of shard `shard` for the engine `settings` name, keeping
/// channels as `retention` says. Resolves broker host names (blocking:
/// called once, before the shard accepts).
pub(crate) fn for_shard<H: RedisHost + NatsHost + 'static>(
    settings: &EngineSettings,
    retention: Retention,
    shard: usize,
) -> Result<Box<dyn Broker<H>>, AddrError> {
    let node = record::node_hash(&settings.node_id);
    match settings.kind {
        EngineKind::Memory => Ok(Box::new(MemoryBroker)),
        EngineKind::Redis => {
            let redis = Rc::new(RedisSettings {
                prefix: settings.prefix.clone(),
                history_size: retention.history_size,
                history_ttl: retention.history_ttl,
                meta_ttl: retention.history_ttl.max(META_TTL_FLOOR),
                node,
                timeout: settings.timeout,
                replay_bytes: retention.replay_bytes,
                presence_ttl: retention.presence_ttl,
                idempotency_window: retention.idempotency_window,
            });
            let mut links = Vec::with_capacity(settings.redis_url.len());
            for (index, addr) in settings.redis_url.iter().enumerate() {
                let socket = addr.resolve()?;
                links.push(Rc::new(RedisLink::new(
                    index,
                    addr.clone(),
                    socket,
                    redis.clone(),
                )));
            }
            Ok(Box::new(RedisBroker::new(links, retention.presence_ttl)))
        }
        EngineKind::Nats => {
            // `EngineSettings::check` refuses engine nats without a URL.
            let Some(addr) = settings.nats_url.clone() else {
                return Err(AddrError::Scheme {
                    url: String::new(),
                    scheme: "nats",
                });
            };
            let socket = addr.resolve()?;
            let link = NatsLink::new(addr, socket, &settings.prefix, node, shard)
                .with_timeout(settings.timeout);
            Ok(Box::new(NatsBroker::new(Rc::new(link))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PayloadKind;

    /// The memory broker seen as the shard sees it.
    fn memory() -> Box<dyn Broker<()>> {
        Box::new(MemoryBroker)
    }

    fn payload() -> Payload {
        Payload::copy_of(PayloadKind::Json, b"1")
    }

    #[test]
    fn the_memory_broker_leaves_ordering_and_history_to_the_owner() {
        let broker = memory();
        assert_eq!(broker.ordered_by(), OrderedBy::Owner);
        assert!(!broker.holds_history());
        assert_eq!(
            broker.forward("orders", &payload(), None),
            Ok(Forwarded::Nowhere)
        );
        // Never asked to order; if it were, nothing would be taken.
        let ticket = PublishTicket {
            from: 1,
            reply: Reply::None,
        };
        let back = broker.submit("orders", &payload(), None, ticket);
        assert!(matches!(back, Err(PublishTicket { from: 1, .. })));
    }

    #[test]
    fn the_memory_broker_hands_every_question_back_to_be_answered_locally() {
        let broker = memory();
        let to = ReplyId::new(0, 1, 2);
        let ask = PositionAsk::Subscriber {
            ch: "orders".into(),
            to,
            since: Some((3, "e".into())),
        };
        assert_eq!(
            broker.position(ask, Some(3)),
            Asked::Local(PositionAsk::Subscriber {
                ch: "orders".into(),
                to,
                since: Some((3, "e".into())),
            })
        );
        let request = PresenceRequest {
            ch: "room".into(),
            to,
            ask: PresenceAsk::Count,
        };
        assert!(matches!(
            broker.presence_query(request),
            Asked::Local(PresenceRequest {
                ask: PresenceAsk::Count,
                ..
            })
        ));
        // No record of occupancy, so no answer will come: announce it now.
        assert!(!broker.node_occupancy("room", true, true));
        assert_eq!(broker.refresh_every(), None);
    }

    #[test]
    fn the_memory_broker_is_always_up_and_has_nothing_to_run() {
        let broker = memory();
        broker.interest("orders", true);
        broker.presence_change("room", true, "n.0.1.0", b"{}");
        broker.presence_refresh("room", &[("n.0.1.0", b"{}")]);
        assert!(broker.is_up());
        assert!(broker.control(b"0000000000000001:{}"));
        assert!(broker.tasks(&Rc::new(())).is_empty());
    }

    #[test]
    fn a_position_ask_names_its_channel() {
        let to = ReplyId::new(0, 0, 0);
        let asks = [
            PositionAsk::Fill { ch: "a".into() },
            PositionAsk::History {
                ch: "a".into(),
                to,
                limit: 1,
            },
            PositionAsk::Subscriber {
                ch: "a".into(),
                to,
                since: None,
            },
        ];
        assert!(asks.iter().all(|ask| ask.channel() == "a"));
    }
}
