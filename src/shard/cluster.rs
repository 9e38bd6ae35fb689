//! The shard's side of the cluster engines. The shard sees its engine as
//! a [`Broker`] (`engine/broker.rs`) and asks it through
//! [`Shard::broker_for`], which keeps system channels on this node; what
//! is engine-specific lives in the brokers. Here is what the owner does
//! with what they answer: with Redis, the owner shard hands each
//! publication to the broker ([`Shard::submit_to_broker`]) and follows
//! what Redis pushes back — delivering in offset order, dropping what it
//! already delivered, filling gaps from the stream, resyncing subscribers
//! when the epoch changes — and answers positions from Redis; with NATS,
//! it takes the other nodes' publications as its own. Everything here runs
//! on the shard's thread; the links only parse and write.

use super::{lifecycle, owner::Followed, presence, Shard};
use crate::{
    channel::{self, ChannelName},
    engine::{
        broker::{Asked, Broker, MemoryBroker, PositionAsk, PresenceRequest, PublishTicket},
        nats::NatsHost,
        record::Record,
        redis::{PresenceAnswer, RedisHost, Standing},
        Refused,
    },
    mesh::{Answer, Cast, Reply, ReplyId},
    publication::{Payload, Skip},
    stats::{bump, Stats},
};

impl Shard {
    /// This shard's flag in [`crate::engine::EngineHealth`], from its
    /// broker's links (`/health`).
    pub(super) fn set_engine_health(&self) {
        self.shell.set_engine_health(self.id, self.broker.is_up());
    }

    /// The broker to ask about `name`: the engine's, but for a system
    /// channel (`$stats`), which is this node's own: the memory broker's.
    pub(super) fn broker_for(&self, name: &str) -> &dyn Broker<Shard> {
        match channel::is_system(name.as_bytes()) {
            true => &MemoryBroker,
            false => &*self.broker,
        }
    }

    /// Hands a publication to a broker that orders it (Redis): what it
    /// pushes back is delivered ([`RedisHost::on_message`]) and its answer
    /// reported to the publisher ([`RedisHost::on_published`]).
    pub(super) fn submit_to_broker(
        &self,
        name: &str,
        payload: Payload,
        from: usize,
        skip: Option<Skip>,
        reply: Reply,
    ) {
        // A publisher here waits for the broker's answer as for another
        // shard's (its graceful close waits for the ack, see
        // `Outbox::push_reply`).
        let awaited = match (&reply, from == self.id) {
            (Reply::Ack { conn, .. }, true) => self.conn(*conn),
            _ => None,
        };
        let ticket = PublishTicket { from, reply };
        match self.broker_for(name).submit(name, &payload, skip, ticket) {
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

    /// Answers where `name` stands for a pending subscription, under `to`:
    /// from the broker if it holds that (Redis; from what this shard knows
    /// while it cannot be asked), else from the owner's own state.
    pub(super) fn answer_position(&self, name: &str, to: ReplyId, since: Option<(u64, Box<str>)>) {
        let after = since.as_ref().map(|(seq, _)| *seq);
        let ask = PositionAsk::Subscriber {
            ch: name.into(),
            to,
            since,
        };
        match self.broker_for(name).position(ask, after) {
            Asked::Sent => {}
            Asked::Unavailable(ask) => self.on_position(ask, Err(Refused::Unavailable)),
            Asked::Local(PositionAsk::Subscriber { since, .. }) => {
                let since = since.as_ref().map(|(seq, epoch)| (*seq, epoch.as_ref()));
                let position = self.owner.borrow_mut().position(name, since, self.now_ms());
                self.answer(to, Answer::Position(Box::new(position)));
            }
            // Never: a question comes back as it was asked.
            Asked::Local(_) => {}
        }
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

    /// Asks the broker for what `name` missed after `after`.
    fn fill(&self, name: &str, after: u64) {
        let ask = PositionAsk::Fill { ch: name.into() };
        match self.broker_for(name).position(ask, Some(after)) {
            Asked::Sent => {}
            Asked::Unavailable(_) | Asked::Local(_) => self.owner.borrow_mut().fill_failed(name),
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
            Followed::Deliver(ordered) => {
                self.distribute(&ChannelName::of_valid(name), ordered, &payload, skip);
            }
            Followed::Resync(ordered) => {
                self.resync(name, seq - 1);
                self.distribute(&ChannelName::of_valid(name), ordered, &payload, skip);
            }
            Followed::Gap { after } => self.fill(name, after),
            Followed::Drop => {}
        }
        self.sweep_if_well_over_budget();
    }

    fn on_published(&self, ticket: PublishTicket, result: Result<u64, Refused>) {
        let PublishTicket { from, reply, .. } = ticket;
        // Awaited like another shard's answer (see `submit_to_broker`).
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
                self.answer(to, Answer::Position(Box::new(position)));
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
                let name = ChannelName::of_valid(&ch);
                for (ordered, payload) in filled.deliver {
                    self.distribute(&name, ordered, &payload, None);
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
        super::api::on_control_message(self, message);
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl NatsHost for Shard {
    fn on_control(&self, message: &[u8]) {
        super::api::on_control_message(self, message);
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
