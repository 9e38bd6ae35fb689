//! The shard's side of the cluster engines. For the channels it owns, the
//! owner shard publishes through its Redis link (the script's offset is the
//! `seq`), follows what Redis pushes back — delivering in offset order,
//! dropping what it already delivered, filling gaps from the stream,
//! resyncing subscribers when the epoch changes — and answers positions
//! from Redis; with NATS, it orders as the memory engine does and takes the
//! other nodes' publications as its own. It subscribes to the broker only
//! while the node has subscribers of the channel. Everything here runs on
//! the shard's thread; the links only parse and write.

use std::{rc::Rc, sync::atomic::Ordering};

use futures_lite::FutureExt;

use super::{
    lifecycle,
    owner::{Followed, Ordered},
    presence, Shard,
};
use crate::{
    channel::{self, ChannelName},
    engine::{
        nats::NatsHost,
        record::Record,
        redis::{
            PositionAsk, PresenceAnswer, PresenceRequest, PublishTicket, RedisHost, RedisLink,
            Standing,
        },
        redis_link_for, Engine, Refused,
    },
    mesh::{Answer, Cast, Reply, ReplyId},
    publication::{Payload, Position, Skip},
    stats::{bump, Stats},
};

impl Shard {
    /// Starts the engine's link tasks; each ends when shutdown begins.
    pub(crate) fn spawn_engine(self: &Rc<Self>) {
        let Some(engine) = &self.engine else {
            return;
        };
        self.set_engine_health();
        self.spawn_redis_refresh();
        let links: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> = match engine {
            Engine::Redis(links) => links
                .iter()
                .map(|link| {
                    let (link, shard) = (link.clone(), self.clone());
                    Box::pin(async move { link.run(&*shard).await })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
                })
                .collect(),
            Engine::Nats(link) => {
                let (link, shard) = (link.clone(), self.clone());
                vec![Box::pin(async move { link.run(&*shard).await })]
            }
        };
        for link in links {
            let shard = self.clone();
            glommio::spawn_local(async move {
                link.or(async {
                    shard.stopped().await;
                })
                .await;
            })
            .detach();
        }
    }

    /// Publishes through Redis: the script orders it; what Redis pushes
    /// back is delivered ([`RedisHost::on_message`]) and its answer reported
    /// to the publisher ([`RedisHost::on_published`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish_to_redis(
        &self,
        name: &str,
        payload: Payload,
        from: usize,
        skip: Option<Skip>,
        reply: Reply,
    ) {
        let Some(link) = self.redis_link(name) else {
            return self.report(from, reply, Err(Refused::Unavailable), false);
        };
        // A publisher here waits for Redis's answer as for another shard's
        // (its graceful close waits for the ack, see `Outbox::push_reply`).
        let awaited = match (&reply, from == self.id) {
            (Reply::Ack { conn, .. }, true) => self.conn(*conn),
            _ => None,
        };
        let ticket = PublishTicket { from, reply };
        match link.publish(name, &payload, skip, ticket) {
            Ok(became_busy) => {
                if let Some(conn) = awaited {
                    conn.outbox.expect_reply();
                }
                bump(&self.stats.engine_publications, 1);
                if became_busy {
                    self.links.set_engine_busy(true);
                }
            }
            Err(ticket) => self.report(ticket.from, ticket.reply, Err(Refused::Unavailable), false),
        }
    }

    /// The node's interest in `name` changed maybe (`wanted`: it has
    /// subscribers): the broker is told to push its publications here, or
    /// to stop.
    pub(super) fn engine_interest(&self, name: &str, wanted: bool) {
        let Some(engine) = &self.engine else { return };
        match engine {
            Engine::Redis(links) => {
                if let Some(link) = redis_link_for(links, name) {
                    link.want(name, wanted);
                }
                if !wanted {
                    self.owner.borrow_mut().unfollow(name);
                }
            }
            Engine::Nats(link) => link.want(name, wanted),
        }
    }

    /// Answers where `name` stands for a pending subscription, under `to`:
    /// from Redis with that engine (from what this shard knows while Redis
    /// is down), else from the owner's own state.
    pub(super) fn answer_position(&self, name: &str, to: ReplyId, since: Option<(u64, Box<str>)>) {
        if let Some(link) = self.redis_link(name) {
            let after = since.as_ref().map(|(seq, _)| *seq);
            let ask = PositionAsk::Subscriber {
                ch: name.into(),
                to,
                since,
            };
            if let Err(ask) = link.position(ask, after) {
                self.on_position(ask, Err(Refused::Unavailable));
            }
            return;
        }
        let since_ref = since.as_ref().map(|(seq, epoch)| (*seq, epoch.as_ref()));
        let position = self
            .owner
            .borrow_mut()
            .position(name, since_ref, self.now_ms());
        self.send_position(to, position);
    }

    /// Hands a position to the subscription that asked, here or on its shard.
    fn send_position(&self, to: ReplyId, position: Position) {
        self.answer(to, Answer::Position(Box::new(position)));
    }

    /// Tells `name`'s subscribers on every shard to resync at `seq`.
    fn resync(&self, name: &str, seq: u64) {
        bump(&self.stats.engine_resyncs, 1);
        let epoch = self.owner.borrow_mut().known_position(name, false).epoch;
        tracing::warn!(shard = self.id, channel = name, seq, %epoch, "subscribers resync: publications were lost");
        let ch = ChannelName::of_valid(name);
        for peer in super::shards_in(self.owner.borrow().remote_mask(name)) {
            let epoch = epoch.as_str().into();
            self.cast(
                peer,
                Cast::Resync {
                    ch: ch.clone(),
                    seq,
                    epoch,
                },
            );
        }
        self.resync_local(name, seq, &epoch);
    }

    /// Tells this shard's subscribers of `name` to resync.
    pub(super) fn resync_local(&self, name: &str, seq: u64, epoch: &str) {
        self.index.borrow().resync(name, seq, epoch);
    }

    /// Delivers what the owner decided to deliver, counting deltas.
    fn deliver_ordered(&self, name: &str, ordered: Ordered, payload: &Payload, skip: Option<Skip>) {
        self.distribute(&ChannelName::of_valid(name), ordered, payload, skip);
    }

    /// Asks Redis for what `name` missed after `after`.
    fn fill(&self, name: &str, after: u64) {
        let Some(link) = self.redis_link(name) else {
            return;
        };
        let ask = PositionAsk::Fill { ch: name.into() };
        if link.position(ask, Some(after)).is_err() {
            self.owner.borrow_mut().fill_failed(name);
        }
    }

    /// The Redis link of `name`, with that engine (not for system channels).
    pub(super) fn redis_link(&self, name: &str) -> Option<&Rc<RedisLink>> {
        match &self.engine {
            Some(Engine::Redis(links)) if !channel::is_system(name.as_bytes()) => {
                redis_link_for(links, name)
            }
            _ => None,
        }
    }

    /// Every third of the presence TTL: this node's members of the presence
    /// channels this shard owns are still there, and so are its entries in
    /// the node sets of the occupied channels it owns (with webhooks):
    /// Redis drops those of a node that stops saying so.
    fn spawn_redis_refresh(self: &Rc<Self>) {
        let refreshed = self.presence.borrow().is_on() || self.lifecycle.is_on();
        if !matches!(self.engine, Some(Engine::Redis(_))) || !refreshed {
            return;
        }
        let shard = self.clone();
        let every = self.config.presence.ttl / 3;
        glommio::spawn_local(async move {
            while !shard.is_shutting_down() {
                glommio::timer::sleep(every).await;
                presence::refresh(&shard);
                lifecycle::refresh(&shard);
            }
        })
        .detach();
    }

    /// This shard's flag in [`crate::engine::EngineHealth`], from its links.
    fn set_engine_health(&self) {
        let up = self.engine.as_ref().is_none_or(Engine::is_up);
        if let Some(flag) = self.engine_health.get(self.id) {
            flag.store(up, Ordering::Release);
        }
    }
}

impl RedisHost for Shard {
    fn on_message(&self, name: &str, seq: u64, epoch: &str, record: Record) {
        // A skip names a connection of the node that published.
        let skip = record.skip.filter(|_| record.origin == self.node);
        let mut payload = record.payload;
        self.check_conflation(name, &mut payload);
        let local_delta = self.index.borrow().wants_delta(name);
        let followed = self.owner.borrow_mut().follow(
            name,
            (seq, epoch),
            &payload,
            self.now_ms(),
            local_delta,
        );
        match followed {
            Followed::Deliver(ordered) => self.deliver_ordered(name, ordered, &payload, skip),
            Followed::Resync(ordered) => {
                self.resync(name, seq - 1);
                self.deliver_ordered(name, ordered, &payload, skip);
            }
            Followed::Gap { after } => self.fill(name, after),
            Followed::Drop => {}
        }
        self.sweep_if_well_over_budget();
    }

    fn on_published(&self, ticket: PublishTicket, result: Result<u64, Refused>) {
        let PublishTicket { from, reply, .. } = ticket;
        // Awaited like another shard's answer (see `publish_to_redis`).
        self.report(from, reply, result, true);
    }

    fn on_position(&self, ask: PositionAsk, result: Result<Standing, Refused>) {
        let now_ms = self.now_ms();
        match ask {
            PositionAsk::Subscriber { ch, to, since } => {
                let since_ref = since.as_ref().map(|(seq, epoch)| (*seq, epoch.as_ref()));
                let position = match result {
                    Ok(standing) => {
                        let entries = payloads(standing.entries);
                        let (position, resync) = self.owner.borrow_mut().broker_position(
                            &ch,
                            (standing.seq, &standing.epoch),
                            &entries,
                            since_ref,
                        );
                        if let Some(seq) = resync {
                            self.resync(&ch, seq);
                        }
                        position
                    }
                    Err(_) => self.owner.borrow_mut().known_position(&ch, since.is_some()),
                };
                self.send_position(to, position);
            }
            PositionAsk::History { to, .. } => {
                let answer = result.map(|standing| crate::api::HistoryPage {
                    seq: standing.seq,
                    epoch: standing.epoch.into(),
                    entries: payloads(standing.entries),
                });
                let answer = crate::api::ApiAnswer::History(answer);
                self.answer(to, Answer::Api(Box::new(answer)));
            }
            PositionAsk::Fill { ch, .. } => {
                let Ok(standing) = result else {
                    self.owner.borrow_mut().fill_failed(&ch);
                    return;
                };
                let entries = payloads(standing.entries);
                let local_delta = self.index.borrow().wants_delta(&ch);
                let filled = self.owner.borrow_mut().filled(
                    &ch,
                    (standing.seq, &standing.epoch),
                    &entries,
                    now_ms,
                    local_delta,
                );
                if let Some(seq) = filled.resync {
                    self.resync(&ch, seq);
                }
                bump(&self.stats.engine_gaps_filled, filled.deliver.len() as u64);
                for (ordered, payload) in filled.deliver {
                    self.deliver_ordered(&ch, ordered, &payload, None);
                }
                if let Some(after) = filled.more {
                    self.fill(&ch, after);
                }
            }
        }
    }

    fn on_link(&self, link: usize, up: bool) {
        tracing::debug!(shard = self.id, link, up, "engine link");
        self.set_engine_health();
    }

    fn on_backlog(&self, busy: bool) {
        self.links.set_engine_busy(busy);
    }

    fn resume_from(&self, name: &str) -> Option<u64> {
        self.owner.borrow_mut().begin_fill(name)
    }

    fn on_presence(&self, request: PresenceRequest, result: Result<PresenceAnswer, Refused>) {
        presence::answered(self, request, result);
    }

    fn on_presence_event(&self, name: &str, join: bool, member: &[u8]) {
        presence::announce(self, name, join, member);
    }

    fn on_occupancy(&self, name: &str, on: bool, answer: Option<(bool, u64)>) {
        lifecycle::answered(self, name, on, answer);
    }

    fn on_control(&self, message: &[u8]) {
        self.on_control_message(message);
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl NatsHost for Shard {
    fn on_control(&self, message: &[u8]) {
        self.on_control_message(message);
    }

    fn on_remote(&self, name: &str, record: Record) {
        let ch = ChannelName::of_valid(name);
        let mut payload = record.payload;
        self.check_conflation(name, &mut payload);
        self.order_locally(&ch, payload, self.id, None, Reply::None);
    }

    fn on_link(&self, link: usize, up: bool) {
        tracing::debug!(shard = self.id, link, up, "engine link");
        self.set_engine_health();
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// History entries as the owner takes them.
fn payloads(entries: Vec<(u64, Record)>) -> Vec<(u64, Payload)> {
    entries
        .into_iter()
        .map(|(seq, record)| (seq, record.payload))
        .collect()
}
