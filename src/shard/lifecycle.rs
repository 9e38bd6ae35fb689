//! The shard's side of lifecycle webhooks. Connection events are queued on
//! the connection's shard. Channel events are queued on the channel's
//! owner, so each channel's events are in one queue, in order: a
//! subscriber's shard tells the owner of a `sub` or `unsub`, and the owner
//! sees the channel fill (`channel_occupied`) or empty from its interest in
//! every shard. `channel_vacated` waits out `--vacated-grace` and is dropped
//! if the channel fills again meanwhile (a reconnect, a page reload). With
//! the Redis engine, a node's owner records in Redis that the channel has
//! subscribers on this node (a set of nodes with expiries, refreshed like
//! presence), and only the node whose entry makes the set non-empty
//! announces `channel_occupied` — or empty, `channel_vacated` — so each is
//! sent once across nodes. While Redis does not answer, a node announces
//! its own transitions (at least once rather than never). With NATS, each
//! node announces its own.

use std::{rc::Rc, time::Duration};

use futures_lite::FutureExt;

use shardcast_core::occupancy::Transition;

use super::Shard;
use crate::{
    channel::{self, ChannelName},
    conn::Conn,
    mesh::Cast,
    webhook::Event,
};

/// How often a shard looks for vacated graces that ran out.
const VACATE_TICK: Duration = Duration::from_millis(50);

impl Shard {
    /// Starts the webhook sender and the vacated-grace timer (with
    /// `--webhook-url`); both end when shutdown begins.
    pub(crate) fn spawn_lifecycle(self: &Rc<Self>) {
        let Some(webhooks) = self.webhooks.clone() else {
            return;
        };
        let shard = self.clone();
        glommio::spawn_local(async move {
            webhooks.run(&shard.stats).or(shard.stopped()).await;
        })
        .detach();
        let shard = self.clone();
        glommio::spawn_local(async move {
            while !shard.is_shutting_down() {
                glommio::timer::sleep(VACATE_TICK).await;
                let due = shard.occupancy.borrow_mut().due(shard.now_ms());
                for name in due {
                    shard.announce_occupancy(&name, false);
                }
            }
        })
        .detach();
    }

    /// With a broker that keeps the nodes of each channel (Redis): this
    /// node's entries in the node sets of the occupied channels this shard
    /// owns are still there (see `run::spawn_broker_refresh`).
    pub(super) fn refresh_occupancy(&self) {
        for name in self.occupancy.borrow().occupied() {
            self.broker_for(name).node_occupancy(name, true, false);
        }
    }

    /// The channel has subscribers on this node now (`on`), or its grace ran
    /// out: told to Redis, which says whether the whole service changed
    /// ([`Shard::occupancy_answered`]), or announced at once without it.
    fn announce_occupancy(&self, name: &str, on: bool) {
        if self.broker_for(name).node_occupancy(name, on, true) {
            return;
        }
        self.occupancy_answered(name, on, None);
    }

    /// Redis's answer to [`Shard::announce_occupancy`] (`None`: none came,
    /// or there is no Redis): the event is sent if this node's entry made
    /// the channel's set of nodes non-empty (or empty).
    pub(super) fn occupancy_answered(&self, name: &str, on: bool, answer: Option<(bool, u64)>) {
        let announce = match answer {
            None => true,
            Some((changed, nodes)) => changed && nodes == u64::from(on),
        };
        if announce {
            self.webhook(match on {
                true => Event::ChannelOccupied { ch: name },
                false => Event::ChannelVacated { ch: name },
            });
        }
    }

    /// Queues `event` for the webhook, if there is one.
    fn webhook(&self, event: Event<'_>) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.emit(event, &self.stats);
        }
    }

    /// A connection's id, unique on the node (as presence lists show it).
    pub(super) fn conn_id(&self, conn: &Conn) -> String {
        format!(
            "{}.{}.{}.{}",
            self.config.engine.node_id, self.id, conn.id.key, conn.id.gen
        )
    }

    /// `connected`.
    pub(super) fn lifecycle_connected(&self, conn: &Conn) {
        if self.webhooks.is_some() {
            let member = self.member_of(conn);
            self.webhook(Event::Connected {
                user: &member.user,
                conn: &member.conn,
            });
        }
    }

    /// `disconnected`, with why.
    pub(super) fn lifecycle_disconnected(&self, conn: &Conn, reason: &str) {
        if self.webhooks.is_some() {
            let member = self.member_of(conn);
            self.webhook(Event::Disconnected {
                user: &member.user,
                conn: &member.conn,
                reason,
            });
        }
    }

    /// `subscribed` (or `unsubscribed`): queued on the channel's owner.
    pub(super) fn lifecycle_subscription(&self, name: &str, conn: &Conn, on: bool) {
        if self.webhooks.is_none() || channel::is_system(name.as_bytes()) {
            return;
        }
        let member = self.member_of(conn);
        let owner = self.owner_of(name.as_bytes());
        if owner == self.id {
            self.subscription_event(name, on, &member.user, &member.conn);
        } else {
            self.cast(
                owner,
                Cast::Subscription {
                    ch: ChannelName::of_valid(name),
                    on,
                    user: member.user,
                    conn: member.conn,
                },
            );
        }
    }

    /// Owner side: queues `subscribed` or `unsubscribed`.
    pub(super) fn subscription_event(&self, name: &str, on: bool, user: &str, conn: &str) {
        let event = match on {
            true => Event::Subscribed {
                ch: name,
                user,
                conn,
            },
            false => Event::Unsubscribed {
                ch: name,
                user,
                conn,
            },
        };
        self.webhook(event);
    }

    /// Owner side: the channel's subscribers on every shard may have come
    /// or gone (`on`: some are there): `channel_occupied` now,
    /// `channel_vacated` after the grace.
    pub(super) fn lifecycle_interest(&self, name: &str, on: bool) {
        if self.webhooks.is_none() {
            return;
        }
        let grace_ms = self.config.webhooks.vacated_grace.as_millis() as u64;
        let now_ms = self.now_ms();
        if self.occupancy.borrow_mut().set(name, on, now_ms, grace_ms) == Transition::Occupied {
            self.announce_occupancy(name, true);
        }
    }
}
