//! One shard: an executor pinned to a core and everything it owns — its
//! connections, its subscription index, the channels it orders, its peer
//! links. Nothing here is `Send` or behind a lock; other shards are reached
//! only through [`MeshMsg`]s. This file holds the shard's state and the
//! operations connections call (subscribe, unsubscribe, publish); `run` holds
//! its lifecycle (mesh join, accept loop, heartbeat sweep, shutdown).

pub(crate) mod api;
pub(crate) use shardcast_core::budget;
mod cluster;
mod heartbeats;
use shardcast_core::idempotency;
mod lifecycle;
mod lifetime;
pub(crate) use shardcast_core::members;
mod observe;
pub(crate) use shardcast_core::owner;
mod presence;
mod run;
mod scratch;
mod serve;
mod session;
mod shell;
#[cfg(test)]
mod simulation;

use std::{
    cell::RefCell,
    rc::Rc,
    sync::{atomic::AtomicUsize, Arc},
};

use bytes::Bytes;

pub(crate) use run::{run_shard, ShardContext, ShardEvent};
pub(crate) use serve::serve;

use self::{
    budget::MemoryUse,
    heartbeats::Heartbeats,
    lifetime::Lifetime,
    owner::{shards_in, Admission, HistoryLimits, Owner},
    scratch::Scratch,
    shell::Shell,
};
use shardcast_core::{
    registry::Registry,
    subscriptions::{Interest, Subscriptions},
};

use crate::{
    channel::{self, ChannelName},
    clock,
    close::CloseReason,
    config::Config,
    conn::{
        codec::{Codec, PublicationFrames},
        deflate::{DeflateSettings, Deflater},
        flush::Flusher,
        outbox::Pushed,
        Conn,
    },
    engine::{
        broker::{Broker, Forwarded, OrderedBy},
        EngineHealth, Refused,
    },
    mesh::{
        pending::Pending, Answer, Cast, MeshMsg, PeerLinks, Published, Question, Reply, ReplyId,
    },
    protocol::{ErrorCode, OpError, RequestId, RequestIdBuf, Since, SubOptions},
    publication::{ConnRef, Payload, Position, Skip},
    security::Security,
    stats::{bump, Stats},
    stream::SharedStream,
};

/// The state of one shard, shared by its tasks through `Rc`.
pub(crate) struct Shard {
    pub id: usize,
    pub shards: usize,
    pub config: Config,
    /// Live connections.
    registry: RefCell<Registry<Conn>>,
    /// This shard's subscribers per channel, and fan-out to them.
    index: RefCell<Subscriptions<Conn>>,
    /// The channels this shard orders: sequence, epoch, history, deltas,
    /// conflation, idempotency keys.
    owner: RefCell<Owner>,
    pub links: Rc<PeerLinks>,
    /// Questions this shard asked (of other shards, of itself, of the
    /// broker through an owner) that wait for their answers.
    pending: Pending<Answer, Note>,
    /// This shard's counters, shared with its connections' queues.
    pub stats: Rc<Stats>,
    /// What the glommio shell serves connections with: the CPU, security,
    /// the flush pass, admission and shutdown, the clock, `/health`.
    pub shell: Shell,
    /// The read buffer and (de)compressors every connection shares.
    pub scratch: Scratch,
    /// `--presence`: the presence channels, the members of those this
    /// shard owns, their events and pages (`presence.rs`).
    presence: RefCell<presence::Presence>,
    /// Lifecycle webhooks: what to emit, the owned channels' occupancy,
    /// and this shard's queue and sender (`--webhook-url`; `lifecycle.rs`).
    lifecycle: lifecycle::Hooks,
    /// The cluster engine, as the shard asks it (see
    /// [`Shard::broker_for`]). A trait object rather than an enum: which
    /// engine runs is a setting, read once, and no shard code names one;
    /// the trait is generic over the shard so that the links' callbacks
    /// into it stay static. A few calls per publication, none per delivery.
    broker: Box<dyn Broker<Shard>>,
    /// This node's id as records carry it.
    node: u64,
}

/// A question no task waits on: what to do with its answer when it comes.
enum Note {
    /// A subscription of `conn` to `ch`, pending under `token` in the
    /// index, waits for the channel's position; acknowledged to `id`.
    Position {
        ch: ChannelName,
        conn: ConnRef,
        token: u32,
        id: Option<RequestIdBuf>,
    },
    /// A connection's `presence` (or, `counting`, `occupancy`) op about
    /// `ch`, answered to `id`.
    Presence {
        ch: ChannelName,
        conn: ConnRef,
        id: Option<RequestIdBuf>,
        counting: bool,
    },
}

/// What a shard is started with besides its configuration.
pub(crate) struct ShardParts {
    pub links: Rc<PeerLinks>,
    pub open_connections: Arc<AtomicUsize>,
    pub epoch: u64,
    pub security: Arc<Security>,
    pub broker: Box<dyn Broker<Shard>>,
    pub engine_health: EngineHealth,
    pub webhooks: Option<Arc<crate::webhook::WebhookSettings>>,
}

#[cfg(test)]
impl ShardParts {
    /// A shard of `shards` with the memory engine, default security and
    /// its own connection count (for tests).
    pub(crate) fn alone(links: Rc<PeerLinks>, shards: usize) -> Self {
        ShardParts {
            links,
            open_connections: Arc::default(),
            epoch: 1,
            security: Arc::default(),
            broker: Box::new(crate::engine::broker::MemoryBroker),
            engine_health: crate::engine::new_health(shards),
            webhooks: None,
        }
    }
}

impl Shard {
    pub(crate) fn new(id: usize, cpu: Option<usize>, config: Config, parts: ShardParts) -> Self {
        let ShardParts {
            links,
            open_connections,
            epoch,
            security,
            broker,
            engine_health,
            webhooks,
        } = parts;
        let config_write_delay = config.timeouts.write_delay;
        let conflate_after = config.conflation.after_bytes;
        let presence = RefCell::new(presence::new(id, &config));
        let lifecycle = lifecycle::Hooks::new(id, &config, webhooks);
        let deflate = DeflateSettings {
            min_bytes: config.compression.min_bytes,
            level: config.compression.level,
        };
        // Counted into by the links too (messages sent to peers).
        let stats = links.stats().clone();
        // With Redis, history is Redis's: none is kept here.
        let in_broker = broker.holds_history();
        let history = HistoryLimits {
            size: if in_broker { 0 } else { config.history.size },
            ttl_ms: config.history.ttl.as_millis() as u64,
            max_bytes: config.history.max_bytes,
        };
        let node = crate::engine::record::node_hash(&config.engine.node_id);
        let idempotency_window_ms = config.history.idempotency_window.as_millis() as u64;
        let owner = Owner::new(history, epoch)
            .conflating(config.conflation.patterns.clone())
            .remembering_for(idempotency_window_ms);
        Shard {
            id,
            shards: config.shards,
            broker,
            node,
            shell: Shell::new(
                cpu,
                security,
                Rc::new(Flusher::new(stats.clone(), config_write_delay)),
                Lifetime::new(open_connections, config.limits.max_connections),
                Heartbeats::new(&config),
                engine_health,
            ),
            scratch: Scratch::new(config.limits.read_buffer_bytes, deflate),
            config,
            registry: RefCell::default(),
            index: RefCell::new(Subscriptions::new(conflate_after)),
            presence,
            lifecycle,
            owner: RefCell::new(owner),
            links,
            pending: Pending::new(id),
            stats,
        }
    }

    /// Milliseconds since the shard started: the heartbeat clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.shell.heartbeats.now_ms()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shell.lifetime.is_shutting_down()
    }

    /// Resolves once shutdown has begun.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.shell.lifetime.stopped()
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.registry.borrow().len()
    }

    /// Resolves once no WebSocket connection is registered (for shutdown).
    pub(crate) fn all_closed(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.shell
            .lifetime
            .all_closed(|| self.registry.borrow().is_empty())
    }

    /// What this shard holds for its clients, as its memory budget counts it.
    pub(crate) fn memory_use(&self) -> MemoryUse {
        MemoryUse {
            connections: self.registry.borrow().len() as u64,
            subscriptions: self.index.borrow().subscription_count() as u64,
            queued_bytes: self.stats.queued_bytes.get(),
            unfinished_bytes: self.stats.unfinished_bytes.get(),
            history_bytes: self.history_bytes() as u64,
            webhook_bytes: self.lifecycle.queued_bytes() as u64,
            idempotency_bytes: self.owner.borrow().idempotency_bytes() as u64,
            http_answer_bytes: self.stats.http_answer_bytes.get(),
        }
    }

    /// This shard's share of `max-memory`.
    pub(crate) fn memory_budget(&self) -> u64 {
        (self.config.limits.max_memory / self.shards.max(1)) as u64
    }

    /// Whether the shard is at or over its memory budget; then it takes no
    /// new connection or subscription (each refusal is counted here).
    pub(crate) fn refuses_for_memory(&self) -> bool {
        let over = self.memory_use().is_over(self.memory_budget());
        if over {
            bump(&self.stats.memory_refusals, 1);
        }
        over
    }

    /// Registers a new WebSocket connection (its slot was reserved) on the
    /// stream its flush pass writes to.
    /// `batch`: its envelopes go batched into frames (`?batch=1`).
    pub(crate) fn register(&self, stream: SharedStream, codec: Codec, batch: bool) -> Rc<Conn> {
        self.register_on(Some(stream), codec, batch)
    }

    /// Registers a connection without a socket, whose queue the test reads
    /// by hand (`Outbox::take_queued`): the simulation's clients.
    #[cfg(test)]
    pub(crate) fn register_detached(&self, codec: Codec) -> Rc<Conn> {
        self.register_on(None, codec, false)
    }

    /// [`Shard::register`], on `stream` if there is one.
    fn register_on(&self, stream: Option<SharedStream>, codec: Codec, batch: bool) -> Rc<Conn> {
        let now = self.now_ms();
        let conn = self.registry.borrow_mut().register(|id| {
            Conn::new(
                id,
                codec,
                self.config.limits.max_queue_bytes,
                now,
                self.shell.flusher.clone(),
                stream,
                batch,
            )
        });
        bump(&self.stats.connections_opened, 1);
        lifecycle::connected(self, &conn);
        let ConnRef { key, gen } = conn.id;
        tracing::debug!(shard = self.id, conn = key, gen, "connection opened");
        conn
    }

    /// Unsubscribes a closing connection from everything, so nothing more is
    /// queued for it.
    pub(crate) fn unregister_subscriptions(&self, conn: &Conn) {
        for (name, slot) in conn.take_subscriptions() {
            self.remove_subscriber(&name, slot);
            self.member_changed(&name, conn, false);
        }
    }

    /// Removes a connection: unsubscribes it everywhere and frees its slot.
    /// Called exactly once per registered connection (by its guard).
    pub(crate) fn unregister(&self, conn: &Conn) {
        self.unregister_subscriptions(conn);
        let mut registry = self.registry.borrow_mut();
        registry.remove(conn.id);
        let none_left = registry.is_empty();
        drop(registry);
        if none_left {
            self.shell.lifetime.last_closed();
        }
        self.shell.lifetime.release_connection();
        let reason = conn.outbox.closing().unwrap_or(CloseReason::Normal);
        self.stats.closed(reason);
        lifecycle::disconnected(self, conn, reason.as_str());
        tracing::debug!(
            shard = self.id,
            conn = conn.id.key,
            gen = conn.id.gen,
            reason = reason.as_str(),
            "connection closed"
        );
    }

    /// Subscribes `conn` to `name` (a subscription already there is
    /// replaced). With an `id` or `since`, the subscription first asks the
    /// channel's owner where the channel stands; it is acknowledged with that
    /// position, gets what it missed after `since` if history holds it, and
    /// then every later publication, with no gap and no duplicate.
    pub(crate) fn subscribe<'a>(
        &self,
        conn: &Rc<Conn>,
        name: &str,
        id: Option<RequestId<'a>>,
        since: Option<Since<'_>>,
        options: SubOptions,
    ) -> Result<(), OpError<'a>> {
        if self.is_shutting_down() {
            return Err(OpError::new(
                ErrorCode::ShuttingDown,
                "server is shutting down",
                id,
            ));
        }
        // A replaced subscription takes no more memory: only new ones wait.
        if conn.subscription_slot(name).is_none() && self.refuses_for_memory() {
            return Err(OpError::new(
                ErrorCode::OverCapacity,
                "the server is over its memory budget (max-memory); try again later",
                id,
            ));
        }
        // A replaced subscription stays a member: no leave, no join.
        let replaced = conn.remove_subscription(name);
        if let Some(slot) = replaced {
            self.end_subscription(conn, name, slot);
        }
        if conn.subscription_count() >= self.config.limits.max_subscriptions {
            return Err(OpError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "at most {} subscriptions per connection",
                    self.config.limits.max_subscriptions
                ),
                id,
            ));
        }
        let token = (id.is_some() || since.is_some()).then(|| self.index.borrow_mut().new_token());
        let joined = replaced.is_none();
        // A new member that waits for its position gets its own join when it
        // goes live, from here: the owner's may come before the position.
        let own_join_due = token.is_some()
            && joined
            && options.join_leave
            && self.presence.borrow().is_presence(name);
        let (interned, slot, change) =
            self.index
                .borrow_mut()
                .insert(name, conn, token, own_join_due, options);
        conn.add_subscription(interned, slot);
        if let Some(interest) = change {
            self.interest_changed(name, interest);
        }
        let Some(token) = token else {
            if joined {
                self.member_changed(name, conn, true);
            }
            return Ok(());
        };
        let ch = ChannelName::of_valid(name);
        let to = self.pending.note(Note::Position {
            ch: ch.clone(),
            conn: conn.id,
            token,
            id: id.map(RequestId::to_buf),
        });
        let since = since.map(|s| (s.seq, Box::<str>::from(s.epoch.as_ref())));
        self.ask(
            self.owner_of(name.as_bytes()),
            to,
            Question::Position { ch, since },
        );
        if joined {
            self.member_changed_sending_own_join(name, conn, true, own_join_due);
        }
        Ok(())
    }

    /// The owner's answer reached a pending subscription: acknowledge it,
    /// send what it missed, and let fan-out reach it from now on. A `sub`
    /// unsubscribed or replaced meanwhile is still acknowledged (ops are
    /// answered, whatever followed them) but does not go live.
    fn go_live(
        &self,
        name: &str,
        conn: ConnRef,
        token: u32,
        id: Option<RequestId<'_>>,
        position: &Position,
    ) {
        let Some(conn) = self.conn(conn) else { return };
        let slot = conn.subscription_slot(name);
        let live = slot.and_then(|slot| self.index.borrow_mut().go_live(name, slot, token));
        let (live, own_join) = match live {
            Some((codec, own_join)) => (Some(codec), own_join),
            None => (None, false),
        };
        let mut recovered = position.recovered;
        // Nothing to replay for a subscription that did not go live.
        let replay = match live {
            Some(codec) => replay_frames(
                name,
                codec,
                position,
                &conn,
                &mut self.scratch.deflater.borrow_mut(),
            ),
            None => Some(Vec::new()),
        };
        if replay.is_none() {
            // More than the queue can take: the client resyncs instead of
            // being closed as a slow consumer before its ack, again and again.
            bump(&self.stats.replays_refused, 1);
            recovered = Some(false);
        }
        if let (Some(slot), Some(_)) = (slot, live) {
            let replayed_to = match &replay {
                Some(frames) if !frames.is_empty() => position.missed.last().map_or(0, |m| m.0),
                _ => 0,
            };
            self.index
                .borrow_mut()
                .set_delta_base(name, slot, replayed_to);
        }
        if let Some(id) = id {
            conn.send(conn.codec.sub_ack(
                id,
                position.seq,
                &position.epoch,
                recovered,
                self.owner.borrow().conflates(name),
            ));
        }
        // Replays are not timed: their age is not delivery latency.
        for frame in replay.unwrap_or_default() {
            conn.send(frame);
        }
        if own_join {
            presence::send_own_join(self, name, &conn);
        }
    }

    /// The live connection `id` names, if it is still there.
    fn conn(&self, id: ConnRef) -> Option<Rc<Conn>> {
        self.registry.borrow().get(id).cloned()
    }

    /// Unsubscribes `conn` from `name`.
    pub(crate) fn unsubscribe<'a>(
        &self,
        conn: &Conn,
        name: &str,
        id: Option<RequestId<'a>>,
    ) -> Result<(), OpError<'a>> {
        let Some(slot) = conn.remove_subscription(name) else {
            return Err(OpError::new(
                ErrorCode::NotSubscribed,
                "not subscribed to this channel",
                id,
            ));
        };
        self.end_subscription(conn, name, slot);
        self.member_changed(name, conn, false);
        if let Some(id) = id {
            conn.send(conn.codec.ack(id, None));
        }
        Ok(())
    }

    /// `conn`'s subscription in `slot` of `name` ends (an `unsub`, or a
    /// `sub` replacing it): what was queued for it stays as it is, never
    /// replaced by a later subscription's keyed publications.
    fn end_subscription(&self, conn: &Conn, name: &str, slot: u32) {
        self.remove_subscriber(name, slot);
        if self.owner.borrow().conflates(name) {
            conn.outbox.keep_queued_publications();
        }
    }

    fn remove_subscriber(&self, name: &str, slot: u32) {
        let change = self.index.borrow_mut().remove(name, slot);
        if let Some(interest) = change {
            self.interest_changed(name, interest);
        }
    }

    /// `conn` became a subscriber of `name` (`on`; not a replaced
    /// subscription) or stopped being one: presence and webhooks hear of it.
    fn member_changed(&self, name: &str, conn: &Conn, on: bool) {
        self.member_changed_sending_own_join(name, conn, on, false);
    }

    /// [`Shard::member_changed`]; `sends_own_join`: see
    /// [`presence::changed`].
    fn member_changed_sending_own_join(
        &self,
        name: &str,
        conn: &Conn,
        on: bool,
        sends_own_join: bool,
    ) {
        presence::changed(self, name, conn, on, sends_own_join);
        lifecycle::subscription(self, name, conn, on);
    }

    /// Owner side: a shard (this one or another) gained or lost subscribers
    /// of `name`; whether the node still has any decides what the engine is
    /// told and what the webhooks say.
    fn node_interest_changed(&self, name: &str) {
        if channel::is_system(name.as_bytes()) {
            return;
        }
        let wanted = self.index.borrow().subscriber_count(name) > 0
            || self.owner.borrow().has_remote_interest(name);
        self.broker_for(name).interest(name, wanted);
        if !wanted {
            // Its pushes stop: nothing of it is followed (only ever with a
            // broker that orders).
            self.owner.borrow_mut().unfollow(name);
        }
        lifecycle::interest(self, name, wanted);
    }

    /// Tells the channel's owner that this shard gained or lost interest.
    fn interest_changed(&self, name: &str, interest: Interest) {
        let owner = channel::owner_of(name.as_bytes(), self.shards);
        if owner == self.id {
            // The owner fans out to its own index directly; the node's
            // interest is the engine's business.
            self.node_interest_changed(name);
            return;
        }
        self.cast(
            owner,
            Cast::Interest {
                ch: ChannelName::of_valid(name),
                on: interest.on,
                delta: interest.delta,
                from: self.id as u16,
            },
        );
    }

    /// The shard that orders `name`.
    pub(crate) fn owner_of(&self, name: &[u8]) -> usize {
        channel::owner_of(name, self.shards)
    }

    /// Publishes on `ch`: orders it here if this shard owns the channel,
    /// otherwise forwards it to the owner. Never blocks. Returns
    /// the owner's shard when the queue to it is over its high-water mark or
    /// the owner (this shard included) is congested towards a peer: a
    /// publisher should then `links.wait_for_room` before publishing more.
    /// During shutdown, publications are dropped.
    pub(crate) fn publish(
        &self,
        ch: ChannelName,
        mut payload: Payload,
        skip: Option<Skip>,
        reply: Reply,
    ) -> Option<usize> {
        if self.is_shutting_down() {
            return None;
        }
        // Deliveries are timed from the moment the shard took it.
        if payload.published_at == 0 {
            payload.published_at = clock::now_ns();
        }
        if !channel::is_system(ch.as_bytes()) {
            bump(&self.stats.messages_published, 1);
        }
        let owner = self.owner_of(ch.as_bytes());
        if owner == self.id {
            self.order_and_distribute(ch, payload, self.id, skip, reply);
            // Its deliveries went into this shard's queues to the others.
            (!self.links.has_room(owner)).then_some(owner)
        } else {
            // The publisher's close waits for this ack (see Outbox::push_reply).
            let acked = match &reply {
                Reply::Ack { conn, .. } => self.conn(*conn),
                _ => None,
            };
            let cast = Cast::Publish {
                ch,
                payload,
                from: self.id as u16,
                skip,
                reply,
            };
            if self.cast(owner, cast) {
                if let Some(conn) = acked {
                    conn.outbox.expect_reply();
                }
            }
            (!self.links.has_room(owner)).then_some(owner)
        }
    }

    /// Owner side: have the publication ordered — by the engine (Redis), or
    /// here (memory, NATS: also sent to the other nodes) — and distributed.
    fn order_and_distribute(
        &self,
        ch: ChannelName,
        mut payload: Payload,
        from: usize,
        skip: Option<Skip>,
        reply: Reply,
    ) {
        let name = ch.as_str();
        self.check_conflation(name, &mut payload);
        // System channels (`$stats`) are this node's own (`broker_for`).
        let broker = self.broker_for(name);
        // Redis remembers idempotency keys itself (the publish script).
        if broker.ordered_by() == OrderedBy::Broker {
            return self.submit_to_broker(name, payload, from, skip, reply);
        }
        let once: Option<Box<str>> = reply.idempotency_key().map(Into::into);
        let source = match reply {
            Reply::Http { .. } => idempotency::Source::Api,
            _ => idempotency::Source::Client,
        };
        let now_ms = self.now_ms();
        if let Some(key) = &once {
            let admission = self.owner.borrow_mut().admit(name, key, source, now_ms);
            let refused = match admission {
                Admission::Duplicate(seq) => {
                    bump(&self.stats.publications_deduplicated, 1);
                    return self.report(from, reply, Ok(seq), false);
                }
                Admission::Refused(full) => Some(full),
                Admission::New => self.memory_for_a_new_key().err(),
            };
            // A new key: refused rather than another's forgotten early.
            if let Some(full) = refused {
                bump(&self.stats.idempotency_refused, 1);
                tracing::debug!(
                    shard = self.id,
                    "{full}: a publish under a new idempotency key refused"
                );
                return self.report(from, reply, Err(Refused::IdempotencyFull), false);
            }
        }
        match broker.forward(name, &payload, skip) {
            Ok(Forwarded::Sent) => bump(&self.stats.engine_publications, 1),
            Ok(Forwarded::Nowhere) => {}
            Err(refused) => return self.report(from, reply, Err(refused), false),
        }
        let seq = self.order_locally(&ch, payload, from, skip, reply);
        if let Some(key) = once {
            (self.owner.borrow_mut()).remember(name, &key, seq, now_ms, source);
        }
    }

    /// Whether a new idempotency key may be remembered as far as memory
    /// goes: the shard is within its budget (which counts the keys).
    fn memory_for_a_new_key(&self) -> Result<(), idempotency::Full> {
        let (counted, budget) = (self.memory_use().counted(), self.memory_budget());
        match counted >= budget {
            false => Ok(()),
            true => Err(idempotency::Full::Memory { counted, budget }),
        }
    }

    /// A key only means something on a channel that conflates.
    fn check_conflation(&self, name: &str, payload: &mut Payload) {
        (self.owner.borrow()).drop_key_unless_conflating(name, payload);
    }

    /// Assigns the next `seq` here, distributes, reports the `seq` (and
    /// returns it).
    fn order_locally(
        &self,
        ch: &ChannelName,
        payload: Payload,
        from: usize,
        skip: Option<Skip>,
        reply: Reply,
    ) -> u64 {
        let local_delta = self.index.borrow().wants_delta(ch);
        let ordered = self
            .owner
            .borrow_mut()
            .order(ch, &payload, self.now_ms(), local_delta);
        let seq = ordered.seq;
        self.distribute(ch, ordered, &payload, skip);
        self.report(from, reply, Ok(seq), false);
        self.sweep_if_well_over_budget();
        seq
    }

    /// Sends an ordered publication to every shard with subscribers and
    /// fans it out here.
    fn distribute(
        &self,
        ch: &ChannelName,
        ordered: owner::Ordered,
        payload: &Payload,
        skip: Option<Skip>,
    ) {
        let (seq, delta) = (ordered.seq, ordered.delta);
        if !channel::is_system(ch.as_bytes()) {
            bump(&self.stats.messages_ordered, 1);
        }
        bump(&self.stats.deltas_computed, u64::from(delta.is_some()));
        for peer in shards_in(ordered.remote) {
            self.cast(
                peer,
                Cast::Deliver {
                    ch: ch.clone(),
                    seq,
                    payload: payload.clone(),
                    skip,
                    delta: delta.clone(),
                },
            );
        }
        self.deliver(ch, seq, payload, delta.as_ref(), skip);
    }

    /// Fans a publication out to this shard's subscribers (their queues
    /// count what they write).
    fn deliver(
        &self,
        name: &str,
        seq: u64,
        payload: &Payload,
        delta: Option<&Bytes>,
        skip: Option<Skip>,
    ) {
        // The publisher's own queue stops sharing its channels' tails:
        // growing one must not reach it (`conn/follow.rs`).
        if let Some(publisher) = skip.filter(|s| usize::from(s.shard) == self.id) {
            if let Some(conn) = self.conn(publisher.conn) {
                conn.outbox.settle();
            }
        }
        let fan_out = self.index.borrow_mut().fan_out(
            self.id as u16,
            (name, seq, payload),
            delta,
            skip,
            &mut self.scratch.deflater.borrow_mut(),
        );
        let stats = &self.stats;
        bump(&stats.deliveries_delta, fan_out.deltas);
        bump(&stats.publications_conflated, fan_out.conflated);
        bump(&stats.deliveries_compressed, fan_out.compressed);
        bump(&stats.publications_compressed, fan_out.compressions.0);
        bump(&stats.compression_declined, fan_out.compressions.1);
    }

    /// Owner side: tells the publisher how its publication went — its
    /// `seq`, or why it was refused (a refusal by the engine is counted).
    /// An HTTP publish is answered in its pending entry (`Reply::Http`); a
    /// connection's `pub`, on its shard `from` (an `ack` wants the `seq`,
    /// an `err` is sent for a refusal, with the `pub`'s `id` if it has
    /// one). `awaited`: a publisher on this shard awaits the answer
    /// (announced with `Outbox::expect_reply`).
    fn report(&self, from: usize, reply: Reply, result: Result<u64, Refused>, awaited: bool) {
        if let Err(Refused::Unavailable | Refused::OutcomeUnknown) = result {
            bump(&self.stats.engine_refused, 1);
        }
        match reply {
            Reply::None => {}
            Reply::Http { to, index, .. } => {
                self.answer(to, Answer::Published(Published { index, result }));
            }
            reply if from == self.id => self.tell_publisher(reply, result, awaited),
            reply => {
                if result.is_err() || reply.wants_seq() {
                    self.cast(from, Cast::Published { reply, result });
                }
            }
        }
    }

    /// How its publication went reaches a connection's `pub` here: an
    /// `ack` with the `seq` for one with an `id`, an `err` for one
    /// refused. `from_owner`: the answer came back from another shard or
    /// the broker (the publisher's close awaits an acknowledged `pub`'s,
    /// see `Outbox::push_reply`).
    fn tell_publisher(&self, reply: Reply, result: Result<u64, Refused>, from_owner: bool) {
        let (target, id) = match reply {
            Reply::None | Reply::Http { .. } => return,
            Reply::Ack { conn, id, .. } => (conn, Some(id)),
            Reply::Quiet { conn, .. } => (conn, None),
        };
        let Some(target) = self.conn(target) else {
            return;
        };
        let id = id.as_ref().map(RequestIdBuf::as_id);
        let frame = match (result, id) {
            (Ok(_), None) => return,
            (Ok(seq), Some(id)) => target.codec.ack(id, Some(seq)),
            (Err(why), id) => target
                .codec
                .err(&OpError::new(why.code(), why.to_string(), id)),
        };
        let pushed = match from_owner && id.is_some() {
            true => target.outbox.push_reply(frame),
            false => target.outbox.push(frame),
        };
        if pushed == Pushed::Overflow {
            target.close_slow_consumer();
        }
    }

    #[cfg(test)]
    /// Questions waiting for their answers (HTTP publishes waiting for
    /// their `seq`s among them).
    pub(crate) fn pending_questions(&self) -> usize {
        self.pending.len()
    }

    /// Queues `cast` for `peer`; `false` if the peer is gone.
    fn cast(&self, peer: usize, cast: Cast) -> bool {
        self.links.send(peer, MeshMsg::Cast(cast))
    }

    /// Asks `question` of shard `peer` — this one included, which answers
    /// at once — to be answered under `to`.
    fn ask(&self, peer: usize, to: ReplyId, question: Question) {
        match peer == self.id {
            true => self.answer_question(to, question),
            false => {
                self.links.send(peer, MeshMsg::Ask(to, question));
            }
        }
    }

    /// Hands `answer` to the question it answers: in this shard's pending
    /// table, or over the mesh to the shard that asked.
    fn answer(&self, to: ReplyId, answer: Answer) {
        match to.shard() == self.id {
            true => self.settle(to, answer),
            false => {
                self.links.send(to.shard(), MeshMsg::Answer(to, answer));
            }
        }
    }

    /// Handles a message from another shard. Never waits.
    pub(crate) fn handle_mesh(&self, msg: MeshMsg) {
        match msg {
            MeshMsg::Cast(cast) => self.take_cast(cast),
            MeshMsg::Ask(to, question) => self.answer_question(to, question),
            MeshMsg::Answer(id, answer) => self.settle(id, answer),
        }
    }

    /// Acts on what another shard told this one.
    fn take_cast(&self, cast: Cast) {
        match cast {
            Cast::Publish {
                ch,
                payload,
                from,
                skip,
                reply,
            } => self.order_and_distribute(ch, payload, from as usize, skip, reply),
            Cast::Published { reply, result } => self.tell_publisher(reply, result, true),
            Cast::Deliver {
                ch,
                seq,
                payload,
                skip,
                delta,
            } => self.deliver(&ch, seq, &payload, delta.as_ref(), skip),
            Cast::Interest {
                ch,
                on,
                delta,
                from,
            } => {
                (self.owner.borrow_mut()).set_interest(&ch, from as usize, on, delta);
                self.node_interest_changed(&ch);
            }
            Cast::Resync { ch, seq, epoch } => self.resync_local(&ch, seq, &epoch),
            Cast::Room => self.links.wake_publishers(),
            Cast::Drain => self.begin_shutdown(),
            Cast::Subscription { ch, on, user, conn } => {
                lifecycle::subscription_event(self, &ch, on, &user, &conn)
            }
            Cast::PresenceChange {
                ch,
                join,
                member,
                skip,
            } => presence::change(self, &ch, join, *member, skip),
            Cast::PresenceEvent {
                ch,
                join,
                member,
                skip,
            } => presence::event(self, &ch, join, &member, skip),
        }
    }

    /// Answers a question of another shard (or of this one), under `to`:
    /// at once, or once the broker answered.
    fn answer_question(&self, to: ReplyId, question: Question) {
        match question {
            Question::Snapshot => {
                let snapshot = Box::new(observe::snapshot(self, true));
                self.answer(to, Answer::Snapshot(snapshot));
            }
            Question::Api(request) => api::serve_api(self, to, *request),
            Question::Presence { ch, ask } => presence::answer_question(self, &ch, to, ask),
            Question::Position { ch, since } => self.answer_position(&ch, to, since),
        }
    }

    /// An answer came for a question of this shard: a task waiting for it
    /// takes it, or it is acted on as its note says.
    fn settle(&self, id: ReplyId, answer: Answer) {
        let Some((note, answer)) = self.pending.settle(id, answer) else {
            return;
        };
        match (note, answer) {
            (
                Note::Position {
                    ch,
                    conn,
                    token,
                    id,
                },
                Answer::Position(position),
            ) => {
                let id = id.as_ref().map(RequestIdBuf::as_id);
                self.go_live(&ch, conn, token, id, &position);
            }
            (
                Note::Presence {
                    ch,
                    conn,
                    id,
                    counting,
                },
                Answer::Presence(page),
            ) => {
                let id = id.as_ref().map(RequestIdBuf::as_id);
                presence::answer_op(self, &ch, conn, id, &page, counting);
            }
            // Another kind of answer than the question's: nobody's.
            _ => {}
        }
    }

    /// One heartbeat sweep over all connections: ping the silent ones, close
    /// the ones that did not answer, whose token expired, whose unfinished
    /// message is over `message-timeout`, or whose queue the socket has not
    /// taken from for `send-timeout`.
    pub(crate) fn sweep_heartbeats(&self) {
        self.shell.heartbeats.sweep(self.registry.borrow().iter());
    }

    /// Starts the graceful shutdown: refuse new work, ask every connection to
    /// flush and close with 1012 (service restart).
    /// JSON and MessagePack clients are first told when to come back
    /// (`{"op":"reconnect","after_ms":N}`), each at its own point of
    /// `--drain-spread`, so they do not all reconnect elsewhere at once.
    pub(crate) fn begin_shutdown(&self) {
        if !self.shell.lifetime.begin_shutdown() {
            return;
        }
        let conns: Vec<Rc<Conn>> = self.registry.borrow().iter().cloned().collect();
        let spread_ms = self.config.timeouts.drain_spread.as_millis() as u64;
        // Each shard's clients are spaced evenly, from a random start.
        let offset = crate::random::u64() % spread_ms.max(1);
        let count = conns.len().max(1) as u64;
        for (i, conn) in conns.iter().enumerate() {
            if conn.codec.protocol != crate::conn::codec::Protocol::Raw {
                let after_ms = (offset + spread_ms * i as u64 / count) % spread_ms.max(1);
                conn.send(conn.codec.reconnect(after_ms));
            }
            conn.outbox.close(CloseReason::Shutdown);
        }
    }

    /// `POST /api/drain`: every shard of the node begins its shutdown.
    pub(crate) fn drain_node(&self) {
        for peer in (0..self.shards).filter(|p| *p != self.id) {
            self.cast(peer, Cast::Drain);
        }
        self.begin_shutdown();
    }

    pub(crate) fn channel_count(&self) -> usize {
        self.index.borrow().channel_count()
    }

    pub(crate) fn owned_channel_count(&self) -> usize {
        self.owner.borrow().channel_count()
    }

    /// Publications held in the history of the channels this shard owns.
    pub(crate) fn history_len(&self) -> usize {
        self.owner.borrow().history_len()
    }

    /// Bytes counted for that history.
    pub(crate) fn history_bytes(&self) -> usize {
        self.owner.borrow().history_bytes()
    }

    /// Expires old history and forgets owned channels left with nothing,
    /// and idempotency keys whose window ended.
    pub(crate) fn sweep_history(&self) {
        let index = self.index.borrow();
        self.owner
            .borrow_mut()
            .sweep(self.now_ms(), |name| index.subscriber_count(name) > 0);
    }

    /// After history grew: sweeps now, not at the next tick, when it is
    /// well over `--history-max-bytes` (`Owner::well_over_budget`).
    fn sweep_if_well_over_budget(&self) {
        if self.owner.borrow().well_over_budget() {
            self.sweep_history();
        }
    }
}

/// The frames of what a resuming subscriber missed, if they fit in its
/// queue beside what is already there and the ack; `None` if they do not.
fn replay_frames(
    name: &str,
    codec: Codec,
    position: &Position,
    conn: &Conn,
    deflater: &mut Deflater,
) -> Option<Vec<Bytes>> {
    /// Room kept for the `sub` ack (its `id` and `epoch` are at most 64
    /// bytes each).
    const ACK_ROOM: usize = 256;
    let room = (conn.outbox.limit())
        .saturating_sub(conn.outbox.queued_bytes())
        .saturating_sub(ACK_ROOM);
    let payload_bytes: usize = position.missed.iter().map(|(_, p)| p.bytes.len()).sum();
    if payload_bytes > room {
        return None;
    }
    let frames: Vec<Bytes> = position
        .missed
        .iter()
        .map(|(seq, payload)| {
            PublicationFrames::new(name, *seq, payload, None)
                .frame(codec, deflater)
                .clone()
        })
        .collect();
    (frames.iter().map(Bytes::len).sum::<usize>() <= room).then_some(frames)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::PayloadKind;

    /// A shard 0 of two whose peer never answers (its link is gone).
    fn lonely_shard() -> Shard {
        lonely_shard_with(Config {
            shards: 2,
            ..Config::default()
        })
    }

    /// Shard 0 of two, configured by `config`, whose peer is gone.
    fn lonely_shard_with(config: Config) -> Shard {
        let (links, receivers) =
            PeerLinks::new(0, 2, crate::mesh::new_congestion(2), Rc::default());
        drop(receivers);
        Shard::new(0, None, config, ShardParts::alone(links, 2))
    }

    /// The first channel `<prefix>N` that shard `owner` owns.
    fn owned_by(shard: &Shard, prefix: &str, owner: usize) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|name| shard.owner_of(name.as_bytes()) == owner)
            .expect("some name of every owner")
    }

    /// Backpressure past the first hop: a publisher on the channel's owner
    /// is told to wait once the owner's queue to a subscribing shard is
    /// full, instead of growing it without bound.
    #[test]
    fn a_publisher_on_the_owner_waits_for_a_slow_subscribing_shard() {
        crate::sync::on_test_executor(async {
            let config = Config {
                shards: 2,
                ..Config::default()
            };
            // Shard 1 never drains what shard 0 queues for it.
            let (links, _undrained) =
                PeerLinks::new(0, 2, crate::mesh::new_congestion(2), Rc::default());
            let shard = Shard::new(0, None, config, ShardParts::alone(links, 2));
            let local = owned_by(&shard, "ch", 0);
            shard.handle_mesh(MeshMsg::Cast(Cast::Interest {
                ch: ChannelName::of_valid(&local),
                on: true,
                delta: false,
                from: 1,
            }));
            let publish = || {
                let payload = Payload::copy_of(PayloadKind::Json, b"1");
                shard.publish(ChannelName::of_valid(&local), payload, None, Reply::None)
            };
            let mut accepted = 0;
            while publish().is_none() {
                accepted += 1;
                assert!(accepted < 100_000, "never told to wait");
            }
            assert!(accepted < 10_000, "told to wait after {accepted}");
            assert_eq!(shard.links.depth(1), accepted + 1);
        });
    }

    #[test]
    fn an_http_publish_that_gives_up_frees_its_reply_slot() {
        crate::sync::on_test_executor(async {
            let shard = lonely_shard();
            let remote = owned_by(&shard, "ch", 1);
            for _ in 0..3 {
                let publication = api::HttpPublication {
                    ch: ChannelName::of_valid(&remote),
                    payload: Payload::copy_of(PayloadKind::Json, b"1"),
                    idempotency_key: None,
                };
                let publish = api::publish_all_and_wait(&shard, vec![publication]);
                let waited =
                    glommio::timer::timeout(Duration::from_millis(5), async { Ok(publish.await) })
                        .await;
                assert!(waited.is_err(), "nobody answers");
                assert_eq!(shard.pending_questions(), 0);
            }
            // A late answer for a slot given up on reaches nobody.
            let late = Reply::Http {
                to: ReplyId::new(0, 0, 1),
                index: 0,
                idempotency_key: None,
            };
            shard.report(0, late, Ok(7), true);
            assert_eq!(shard.pending_questions(), 0);
        });
    }

    /// A question asked of a peer comes back through `handle_mesh` to the
    /// task that asked it, typed; a second answer under the same id (a
    /// peer answering twice) is not taken, and the entry is freed.
    #[test]
    fn a_scrape_takes_the_snapshot_its_peer_answers() {
        crate::sync::on_test_executor(async {
            let (links, mut receivers) =
                PeerLinks::new(0, 2, crate::mesh::new_congestion(2), Rc::default());
            let to_peer = receivers[1].take().unwrap();
            let config = Config {
                shards: 2,
                ..Config::default()
            };
            let shard = Rc::new(Shard::new(0, None, config, ShardParts::alone(links, 2)));
            let scrape = glommio::spawn_local({
                let shard = shard.clone();
                async move { observe::gather(&shard).await }
            });
            let Some(MeshMsg::Ask(to, Question::Snapshot)) = to_peer.recv().await else {
                panic!("the peer is asked for its snapshot");
            };
            assert_eq!(to.shard(), 0, "answered to the shard that asked");
            let answer = |shard_id| {
                let mut snapshot = observe::snapshot(&shard, false);
                snapshot.identity.shard = shard_id;
                MeshMsg::Answer(to, Answer::Snapshot(Box::new(snapshot)))
            };
            shard.handle_mesh(answer(1));
            let stats = scrape.await;
            assert_eq!(stats.shards_reporting, 2);
            assert_eq!(shard.pending_questions(), 0, "the entry is freed");
            shard.handle_mesh(answer(1));
            assert_eq!(shard.pending_questions(), 0, "a late answer goes nowhere");
        });
    }

    /// A WebSocket `pub` under an idempotency key is made once per key and
    /// channel on the owner (memory and NATS engines), and meets an HTTP
    /// single publish under the same key (one form, `api::Form::One`).
    #[test]
    fn a_pub_retried_under_its_idempotency_key_is_made_once() {
        // Issue 24, finding 16: a `pub` had no key, so its retry duplicated.
        crate::sync::on_test_executor(async {
            let shard = lonely_shard();
            let local = owned_by(&shard, "ch", 0);
            let other = owned_by(&shard, "other", 0);
            let conn = crate::publication::ConnRef { key: 1, gen: 1 };
            let key =
                |k: &str| Some(crate::api::remembered_key(crate::api::Form::One, k, 0).into());
            let publish = |ch: &str, reply: Reply| {
                let payload = Payload::copy_of(PayloadKind::Json, b"1");
                shard.publish(ChannelName::of_valid(ch), payload, None, reply);
            };
            let ack = |k: &str| Reply::Ack {
                conn,
                id: RequestId::parse("1").unwrap().to_buf(),
                idempotency_key: key(k),
            };
            publish(&local, ack("k"));
            publish(&local, ack("k"));
            let quiet = Reply::Quiet {
                conn,
                idempotency_key: key("k"),
            };
            publish(&local, quiet);
            assert_eq!(
                shard.owner.borrow().last_seq(&local),
                1,
                "a retry is not made"
            );
            publish(&local, ack("k2"));
            publish(&other, ack("k"));
            assert_eq!(shard.owner.borrow().last_seq(&local), 2, "another key");
            assert_eq!(shard.owner.borrow().last_seq(&other), 1, "per channel");
            let http = Reply::Http {
                to: ReplyId::new(0, 0, 0),
                index: 0,
                idempotency_key: key("k"),
            };
            publish(&local, http);
            assert_eq!(
                shard.owner.borrow().last_seq(&local),
                2,
                "an HTTP single publish"
            );
            assert_eq!(shard.stats.publications_deduplicated.get(), 3);
        });
    }

    /// Over its memory budget the owner refuses a `pub` under a new key (it
    /// could not remember it) and serves retries and unkeyed ones.
    #[test]
    fn a_full_store_refuses_a_pub_under_a_new_key() {
        crate::sync::on_test_executor(async {
            let shard = lonely_shard_with(Config {
                shards: 2,
                limits: crate::config::Limits {
                    max_memory: 2, // a budget of one byte: full after one publication
                    ..Default::default()
                },
                ..Config::default()
            });
            let local = owned_by(&shard, "ch", 0);
            let conn = crate::publication::ConnRef { key: 1, gen: 1 };
            let publish = |k: Option<&str>| {
                let reply = Reply::Quiet {
                    conn,
                    idempotency_key: k
                        .map(|k| crate::api::remembered_key(crate::api::Form::One, k, 0).into()),
                };
                let payload = Payload::copy_of(PayloadKind::Json, b"1");
                shard.publish(ChannelName::of_valid(&local), payload, None, reply);
                shard.owner.borrow().last_seq(&local)
            };
            assert_eq!(publish(Some("first")), 1);
            assert_eq!(publish(Some("second")), 1, "refused");
            assert_eq!(shard.stats.idempotency_refused.get(), 1);
            assert_eq!(publish(Some("first")), 1, "a retry is answered");
            assert_eq!(publish(None), 2, "without a key, published");
        });
    }

    /// A shard (0 of two) that owns `name`: the tests below check that the
    /// tail its subscribers' queues share (`conn/follow.rs`) reaches exactly
    /// the subscribers a walk would.
    fn shard_owning(name: &str) -> Shard {
        let shard = lonely_shard();
        assert_eq!(shard.owner_of(name.as_bytes()), 0, "{name} is owned here");
        shard
    }

    /// Subscribes `conn` to `name`, live at once (no `id`, no `since`).
    fn subscribe(shard: &Shard, conn: &Rc<Conn>, name: &str) {
        let subscribed = shard.subscribe(conn, name, None, None, SubOptions::default());
        assert!(subscribed.is_ok());
    }

    /// Publishes `data` (a JSON string) on `name`, skipping `skip`.
    fn post(shard: &Shard, name: &str, data: &str, skip: Option<&Conn>) {
        let payload = Payload::copy_of(PayloadKind::Json, format!("\"{data}\"").as_bytes());
        let skip = skip.map(|conn| Skip {
            shard: 0,
            conn: conn.id,
        });
        shard.publish(ChannelName::of_valid(name), payload, skip, Reply::None);
    }

    /// The data of every publication `conn` was queued, in order.
    fn received(conn: &Conn) -> Vec<String> {
        conn.outbox
            .take_queued()
            .iter()
            .map(|frame| {
                let text = String::from_utf8_lossy(frame).into_owned();
                let at = text.find("\"data\":\"").expect("a publication") + 8;
                text[at..].split('"').next().unwrap_or_default().to_owned()
            })
            .collect()
    }

    /// A publisher that skips itself (a raw room's `?echo=0`) and shares
    /// its channel's tail: growing the tail must not reach it.
    #[test]
    fn a_publication_never_reaches_the_publisher_it_skips_through_a_shared_tail() {
        crate::sync::on_test_executor(async {
            let name = "room0";
            let shard = shard_owning(name);
            let conns: Vec<_> = (0..3)
                .map(|_| shard.register_detached(Codec::JSON))
                .collect();
            for conn in &conns {
                subscribe(&shard, conn, name);
            }
            post(&shard, name, "one", None);
            post(&shard, name, "two", Some(&conns[0]));
            post(&shard, name, "three", None);
            post(&shard, name, "four", Some(&conns[0]));
            post(&shard, name, "five", Some(&conns[0]));
            assert_eq!(received(&conns[0]), ["one", "three"]);
            for conn in &conns[1..] {
                assert_eq!(received(conn), ["one", "two", "three", "four", "five"]);
            }
            assert_eq!(shard.stats.queued_bytes.get(), 0, "every byte counted once");
        });
    }

    /// A subscriber that comes (or leaves) between two publications of a
    /// channel whose subscribers share its tail is walked to: it gets the
    /// second publication (or nothing more).
    #[test]
    fn subscribers_that_come_and_go_between_publications_get_exactly_theirs() {
        crate::sync::on_test_executor(async {
            let name = "room0";
            let shard = shard_owning(name);
            let first = shard.register_detached(Codec::JSON);
            let second = shard.register_detached(Codec::JSON);
            let late = shard.register_detached(Codec::JSON);
            subscribe(&shard, &first, name);
            subscribe(&shard, &second, name);
            post(&shard, name, "a", None);
            post(&shard, name, "b", None);
            subscribe(&shard, &late, name);
            post(&shard, name, "c", None);
            post(&shard, name, "d", None);
            assert!(shard.unsubscribe(&second, name, None).is_ok());
            post(&shard, name, "e", None);
            // Written in between: the next publication starts a new tail.
            assert_eq!(received(&first), ["a", "b", "c", "d", "e"]);
            post(&shard, name, "f", None);
            assert_eq!(received(&first), ["f"]);
            assert_eq!(received(&second), ["a", "b", "c", "d"]);
            assert_eq!(received(&late), ["c", "d", "e", "f"]);
            assert_eq!(shard.stats.queued_bytes.get(), 0, "every byte counted once");
        });
    }

    /// Subscribers of one channel in two codecs, alternating: each codec's
    /// frame is laid anew for each of them, so the walk starts new tails
    /// while the grown one still holds its followers; none of them may be
    /// queued a publication twice (found by review).
    #[test]
    fn subscribers_in_alternating_codecs_get_each_publication_once() {
        crate::sync::on_test_executor(async {
            let name = "room0";
            let shard = shard_owning(name);
            let msgpack = Codec {
                protocol: crate::conn::codec::Protocol::MsgPack,
                deflate_window: 0,
            };
            // The last in the tail's codec: its tail ends the chunk, so the
            // next publication grows it.
            let conns: Vec<_> = (0..5)
                .map(|i| shard.register_detached(if i % 2 == 0 { Codec::JSON } else { msgpack }))
                .collect();
            for conn in &conns {
                subscribe(&shard, conn, name);
            }
            let sent = ["a", "b", "c", "d"];
            for data in sent {
                post(&shard, name, data, None);
            }
            for conn in conns.iter().step_by(2) {
                assert_eq!(received(conn), sent);
            }
            for conn in conns.iter().skip(1).step_by(2) {
                assert_eq!(conn.outbox.take_queued().len(), sent.len());
            }
            assert_eq!(shard.stats.queued_bytes.get(), 0, "every byte counted once");
        });
    }
}
