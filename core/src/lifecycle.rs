//! Lifecycle webhooks' decisions (`--webhook-url`) as one component: which
//! events a shard emits, and where. Connection events (`connected`,
//! `disconnected`) are emitted on the connection's shard. Channel events
//! are emitted on the channel's owner, so each channel's events are in one
//! queue, in order: a subscriber's shard tells the owner of a `sub` or an
//! `unsub` ([`Lifecycle::subscription`]), and the owner sees the channel
//! fill or empty from its subscribers on every shard
//! ([`Lifecycle::interest`]): `channel_occupied` at once, `channel_vacated`
//! once it has stayed empty for the vacated grace ([`crate::occupancy`];
//! a reconnect or a page reload within it says nothing).
//!
//! Across nodes, a broker that keeps a set of nodes per channel (Redis)
//! is told of each transition and answers whether this node's entry made
//! the set non-empty (or empty): only then is the event emitted, so it is
//! emitted once across nodes ([`Lifecycle::answered`]). Without such a
//! broker, or while it cannot be told, a node announces its own
//! transitions (at least once rather than never).
//!
//! No I/O and no clock: the shard passes in who a connection is (a
//! [`Member`]) and the time, and the webhook queue and sender, the mesh
//! and the broker, behind a [`LifecycleHost`], carry out what is decided.

use bytes::Bytes;

use crate::{
    channel::{self, ChannelName},
    members::Member,
    occupancy::{Occupancy, Transition},
};

/// One webhook event, as [`Event::json`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    ChannelOccupied {
        ch: &'a str,
    },
    ChannelVacated {
        ch: &'a str,
    },
    Connected {
        user: &'a str,
        conn: &'a str,
    },
    Disconnected {
        user: &'a str,
        conn: &'a str,
        reason: &'a str,
    },
    Subscribed {
        ch: &'a str,
        user: &'a str,
        conn: &'a str,
    },
    Unsubscribed {
        ch: &'a str,
        user: &'a str,
        conn: &'a str,
    },
}

impl Event<'_> {
    /// The connection the event is about, if any.
    pub fn conn(&self) -> Option<&str> {
        match self {
            Event::ChannelOccupied { .. } | Event::ChannelVacated { .. } => None,
            Event::Connected { conn, .. }
            | Event::Disconnected { conn, .. }
            | Event::Subscribed { conn, .. }
            | Event::Unsubscribed { conn, .. } => Some(conn),
        }
    }

    /// `{"event":…,"node":…,"seq":N,"time_ms":T,…}`: `seq` counts the
    /// node's events (one counter for all its shards); an anonymous
    /// connection's event has no `user`.
    pub fn json(&self, node: &str, seq: u64, time_ms: u64) -> Bytes {
        use serde_json::json;
        let (name, mut fields) = match self {
            Event::ChannelOccupied { ch } => ("channel_occupied", json!({ "ch": ch })),
            Event::ChannelVacated { ch } => ("channel_vacated", json!({ "ch": ch })),
            Event::Connected { user, conn } => ("connected", json!({ "user": user, "conn": conn })),
            Event::Disconnected { user, conn, reason } => (
                "disconnected",
                json!({ "user": user, "conn": conn, "reason": reason }),
            ),
            Event::Subscribed { ch, user, conn } => (
                "subscribed",
                json!({ "ch": ch, "user": user, "conn": conn }),
            ),
            Event::Unsubscribed { ch, user, conn } => (
                "unsubscribed",
                json!({ "ch": ch, "user": user, "conn": conn }),
            ),
        };
        if let Some(object) = fields.as_object_mut() {
            if object.get("user").is_some_and(|u| u == "") {
                object.remove("user");
            }
            object.insert("event".into(), name.into());
            object.insert("node".into(), node.into());
            object.insert("seq".into(), seq.into());
            object.insert("time_ms".into(), time_ms.into());
        }
        Bytes::from(fields.to_string())
    }
}

/// What the broker answered about a channel's set of nodes: whether this
/// node's entry changed it, and how many nodes it holds now.
pub type NodeSet = (bool, u64);

/// What lifecycle does beyond its own state, carried out by the shard.
/// Called while the component is borrowed: an implementation must not
/// reach back into it.
pub trait LifecycleHost {
    /// Queues `event` for the webhook.
    fn emit(&mut self, event: Event<'_>);

    /// To shard `owner`, which owns `ch`: connection `member` subscribed
    /// (`on`) or no longer is.
    fn to_owner(&mut self, owner: usize, ch: ChannelName, on: bool, member: Member);

    /// Tells the broker that keeps each channel's set of nodes that `ch`
    /// has subscribers on this node (`on`) or no longer has; `true` when
    /// its answer will come ([`Lifecycle::answered`]), `false` when there
    /// is no such broker or it cannot be told (the node then announces
    /// the transition itself).
    fn tell_broker(&mut self, ch: &str, on: bool) -> bool;
}

/// One shard's lifecycle decisions: where events go, and which of the
/// channels it owns are occupied.
#[derive(Debug)]
pub struct Lifecycle {
    /// Webhooks are configured: without them nothing is emitted or kept.
    on: bool,
    /// This shard.
    shard: usize,
    /// Shards of the node (a channel's owner is one of them).
    shards: usize,
    /// How long an emptied channel waits before it is vacated.
    vacated_grace_ms: u64,
    /// The owned channels with subscribers, and those in their grace.
    occupancy: Occupancy,
}

impl Lifecycle {
    /// Lifecycle on shard `shard` of `shards` with webhooks: emptied
    /// channels are vacated after `vacated_grace_ms`.
    pub fn new(shard: usize, shards: usize, vacated_grace_ms: u64) -> Self {
        Lifecycle {
            on: true,
            shard,
            shards: shards.max(1),
            vacated_grace_ms,
            occupancy: Occupancy::default(),
        }
    }

    /// Lifecycle without webhooks: nothing to emit, nothing kept.
    pub fn off() -> Self {
        Lifecycle {
            on: false,
            ..Lifecycle::new(0, 1, 0)
        }
    }

    /// Whether webhooks are configured.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// A connection opened on this shard: `connected`. `member` says who it
    /// is (asked only with webhooks).
    pub fn connected(&self, member: impl FnOnce() -> Member, host: &mut impl LifecycleHost) {
        if self.on {
            let member = member();
            host.emit(Event::Connected {
                user: &member.user,
                conn: &member.conn,
            });
        }
    }

    /// A connection of this shard closed, for `reason`: `disconnected`.
    pub fn disconnected(
        &self,
        member: impl FnOnce() -> Member,
        reason: &str,
        host: &mut impl LifecycleHost,
    ) {
        if self.on {
            let member = member();
            host.emit(Event::Disconnected {
                user: &member.user,
                conn: &member.conn,
                reason,
            });
        }
    }

    /// A connection of this shard subscribed to `ch` (`on`; not a replaced
    /// subscription) or left it: `subscribed` (or `unsubscribed`), emitted
    /// on the channel's owner. None for system channels.
    pub fn subscription(
        &self,
        ch: &str,
        on: bool,
        member: impl FnOnce() -> Member,
        host: &mut impl LifecycleHost,
    ) {
        if !self.on || channel::is_system(ch.as_bytes()) {
            return;
        }
        let owner = channel::owner_of(ch.as_bytes(), self.shards);
        let member = member();
        match owner == self.shard {
            true => self.subscription_event(ch, on, &member.user, &member.conn, host),
            false => host.to_owner(owner, ChannelName::of_valid(ch), on, member),
        }
    }

    /// Owner side: connection `conn` of `user` subscribed to `ch` (`on`)
    /// or left it.
    pub fn subscription_event(
        &self,
        ch: &str,
        on: bool,
        user: &str,
        conn: &str,
        host: &mut impl LifecycleHost,
    ) {
        if !self.on {
            return;
        }
        host.emit(match on {
            true => Event::Subscribed { ch, user, conn },
            false => Event::Unsubscribed { ch, user, conn },
        });
    }

    /// Owner side, at `now_ms`: the node's subscribers of `ch` on every
    /// shard may have come or gone (`on`: some are there). A channel that
    /// fills is occupied now; one that empties is vacated once its grace
    /// has run out ([`Lifecycle::tick`]) unless it fills again first.
    pub fn interest(&mut self, ch: &str, on: bool, now_ms: u64, host: &mut impl LifecycleHost) {
        if !self.on {
            return;
        }
        let grace_ms = self.vacated_grace_ms;
        if self.occupancy.set(ch, on, now_ms, grace_ms) == Transition::Occupied {
            self.announce(ch, true, host);
        }
    }

    /// At `now_ms`: the channels whose vacated grace has run out are
    /// vacated.
    pub fn tick(&mut self, now_ms: u64, host: &mut impl LifecycleHost) {
        if !self.on {
            return;
        }
        for ch in self.occupancy.due(now_ms) {
            self.announce(&ch, false, host);
        }
    }

    /// The channel became occupied (`on`) or vacated on this node: the
    /// broker is told and answers later, or the event is emitted now.
    fn announce(&self, ch: &str, on: bool, host: &mut impl LifecycleHost) {
        if !host.tell_broker(ch, on) {
            self.answered(ch, on, None, host);
        }
    }

    /// The broker's answer about `ch`'s set of nodes after this node's
    /// transition (`on`: occupied), or `None` when none came: the event is
    /// emitted unless another node's entry already said it (the set was
    /// not empty before an occupied, or is not empty after a vacated).
    pub fn answered(
        &self,
        ch: &str,
        on: bool,
        answer: Option<NodeSet>,
        host: &mut impl LifecycleHost,
    ) {
        let emit = match answer {
            None => true,
            Some((changed, nodes)) => changed && nodes == u64::from(on),
        };
        if self.on && emit {
            host.emit(match on {
                true => Event::ChannelOccupied { ch },
                false => Event::ChannelVacated { ch },
            });
        }
    }

    /// The channels this shard owns that are occupied (those in their
    /// grace included), whose entries the broker forgets unless they are
    /// refreshed.
    pub fn occupied(&self) -> impl Iterator<Item = &str> {
        self.occupancy.occupied()
    }
}

#[cfg(test)]
mod tests;
