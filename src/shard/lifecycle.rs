//! The shard's side of lifecycle webhooks (`--webhook-url`). What to emit
//! and where — connection events on the connection's shard, channel events
//! on the channel's owner, `channel_occupied` at once and `channel_vacated`
//! after `--vacated-grace` unless the channel fills again, and which node
//! announces them — is the core's [`Lifecycle`]. The shard's `lifecycle`
//! field, [`Hooks`], holds it beside this shard's webhook queue and sender
//! (`crate::webhook`), which receive the events. Here is their glue to the
//! rest of the shard, as free functions: the [`LifecycleHost`] that queues
//! events, sends a subscription event to the channel's owner and tells
//! Redis of transitions (with the Redis engine, a node's owner records in
//! Redis that the channel has subscribers on this node — a set of nodes
//! with expiries, refreshed like presence — and only the node whose entry
//! makes the set non-empty, or empty, announces; with NATS, each node
//! announces its own), and the timer that vacates channels whose grace
//! ran out.

use std::{cell::RefCell, rc::Rc, sync::Arc, time::Duration};

use futures_lite::FutureExt;

use shardcast_core::lifecycle::{Lifecycle, LifecycleHost, NodeSet};

use super::{members::Member, presence::member_of, Shard};
use crate::{
    channel::ChannelName,
    config::Config,
    conn::Conn,
    mesh::Cast,
    webhook::{Event, WebhookSettings, Webhooks},
};

/// How often a shard looks for vacated graces that ran out.
const VACATE_TICK: Duration = Duration::from_millis(50);

/// Lifecycle on one shard: the core's decisions and, with
/// `--webhook-url`, this shard's queue of events and its sender.
pub(super) struct Hooks {
    decisions: RefCell<Lifecycle>,
    webhooks: Option<Rc<Webhooks>>,
}

impl Hooks {
    /// Shard `id`'s lifecycle, sending to `webhooks` (`None`: no webhook,
    /// nothing emitted).
    pub(super) fn new(id: usize, config: &Config, webhooks: Option<Arc<WebhookSettings>>) -> Self {
        let grace_ms = config.webhooks.vacated_grace.as_millis() as u64;
        let decisions = match webhooks {
            Some(_) => Lifecycle::new(id, config.shards, grace_ms),
            None => Lifecycle::off(),
        };
        Hooks {
            decisions: RefCell::new(decisions),
            webhooks: webhooks.map(|settings| Rc::new(Webhooks::new(settings))),
        }
    }

    /// Whether webhooks are configured.
    pub(super) fn is_on(&self) -> bool {
        self.webhooks.is_some()
    }

    /// What the queued events hold, for the shard's memory budget.
    pub(super) fn queued_bytes(&self) -> usize {
        self.webhooks.as_ref().map_or(0, |w| w.queued_bytes())
    }
}

/// What lifecycle reaches beyond itself on a shard (see [`LifecycleHost`]).
struct Reach<'a>(&'a Shard);

impl LifecycleHost for Reach<'_> {
    fn emit(&mut self, event: Event<'_>) {
        if let Some(webhooks) = &self.0.lifecycle.webhooks {
            webhooks.emit(event, &self.0.stats);
        }
    }

    fn to_owner(&mut self, owner: usize, ch: ChannelName, on: bool, member: Member) {
        let Member { user, conn, .. } = member;
        self.0
            .cast(owner, Cast::Subscription { ch, on, user, conn });
    }

    fn tell_broker(&mut self, ch: &str, on: bool) -> bool {
        // Redis answers through `RedisHost::on_occupancy` ([`answered`]).
        self.0.broker_for(ch).node_occupancy(ch, on, true)
    }
}

/// Starts the webhook sender and the vacated-grace timer (with
/// `--webhook-url`); both end when shutdown begins.
pub(super) fn spawn(shard: &Rc<Shard>) {
    let Some(webhooks) = shard.lifecycle.webhooks.clone() else {
        return;
    };
    let sender = shard.clone();
    glommio::spawn_local(async move {
        webhooks.run(&sender.stats).or(sender.stopped()).await;
    })
    .detach();
    let shard = shard.clone();
    glommio::spawn_local(async move {
        while !shard.is_shutting_down() {
            glommio::timer::sleep(VACATE_TICK).await;
            let now_ms = shard.now_ms();
            (shard.lifecycle.decisions.borrow_mut()).tick(now_ms, &mut Reach(&shard));
        }
    })
    .detach();
}

/// With Redis: this node's entries in the node sets of the occupied
/// channels this shard owns are still there (see
/// `run::spawn_broker_refresh`).
pub(super) fn refresh(shard: &Shard) {
    for name in shard.lifecycle.decisions.borrow().occupied() {
        shard.broker_for(name).node_occupancy(name, true, false);
    }
}

/// Redis's answer about `name`'s set of nodes after this node's
/// transition (`on`: occupied; `None`: no answer came).
pub(super) fn answered(shard: &Shard, name: &str, on: bool, answer: Option<NodeSet>) {
    (shard.lifecycle.decisions.borrow()).answered(name, on, answer, &mut Reach(shard));
}

/// `conn` opened: `connected`.
pub(super) fn connected(shard: &Shard, conn: &Conn) {
    let member = || member_of(shard, conn);
    (shard.lifecycle.decisions.borrow()).connected(member, &mut Reach(shard));
}

/// `conn` closed: `disconnected`, with why.
pub(super) fn disconnected(shard: &Shard, conn: &Conn, reason: &str) {
    let member = || member_of(shard, conn);
    (shard.lifecycle.decisions.borrow()).disconnected(member, reason, &mut Reach(shard));
}

/// `conn` subscribed to `name` (`on`; not a replaced subscription) or left
/// it: `subscribed` (or `unsubscribed`), queued on the channel's owner.
pub(super) fn subscription(shard: &Shard, name: &str, conn: &Conn, on: bool) {
    let member = || member_of(shard, conn);
    (shard.lifecycle.decisions.borrow()).subscription(name, on, member, &mut Reach(shard));
}

/// Owner side: another shard's subscription event ([`Cast::Subscription`]).
pub(super) fn subscription_event(shard: &Shard, name: &str, on: bool, user: &str, conn: &str) {
    let decisions = shard.lifecycle.decisions.borrow();
    decisions.subscription_event(name, on, user, conn, &mut Reach(shard));
}

/// Owner side: the channel's subscribers on every shard may have come or
/// gone (`on`: some are there): `channel_occupied` now, `channel_vacated`
/// after the grace.
pub(super) fn interest(shard: &Shard, name: &str, on: bool) {
    if !shard.lifecycle.is_on() {
        return;
    }
    let now_ms = shard.now_ms();
    (shard.lifecycle.decisions.borrow_mut()).interest(name, on, now_ms, &mut Reach(shard));
}
