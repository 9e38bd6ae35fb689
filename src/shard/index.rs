//! The shard's subscription index: for each channel with local subscribers,
//! who they are and how they want messages (JSON envelope or raw room). Fan-out
//! walks it once per publication, encoding each form at most once and pushing
//! the same bytes into every subscriber's outbox. Also tracks, for channels
//! owned by another shard, whether the owner has confirmed this shard's
//! interest (a `sub` is acknowledged only then, so an acknowledged subscriber
//! misses nothing published afterwards).

use std::{collections::HashMap, rc::Rc};

use bytes::Bytes;
use slab::Slab;

use crate::{
    conn::{outbox::Pushed, Conn},
    mesh::{Payload, Skip},
    protocol,
};

/// How a subscriber receives publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The `msg` envelope of the JSON protocol.
    Json,
    /// The payload verbatim (raw room member).
    Raw,
}

struct Subscriber {
    conn: Rc<Conn>,
    mode: Mode,
}

/// Local state of one channel on this shard.
pub struct LocalChannel {
    name: Rc<str>,
    subscribers: Slab<Subscriber>,
    /// `Interest { on }` messages sent to a remote owner and not yet confirmed.
    unconfirmed: u32,
    /// `sub` acks held back until the owner confirms this shard's interest.
    waiting_acks: Vec<(Rc<Conn>, Box<str>)>,
}

/// What a subscribe or unsubscribe changed for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterestChange {
    None,
    /// The first local subscriber arrived.
    Gained,
    /// The last local subscriber left.
    Lost,
}

/// Frames queued and overflows of one fan-out (for tests and benchmarks; the
/// queues count for the metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct FanOut {
    pub queued: u64,
    pub overflowed: u64,
}

/// Channel name → local subscribers.
#[derive(Default)]
pub struct Index {
    channels: HashMap<Rc<str>, LocalChannel>,
}

impl Index {
    /// Adds `conn` to `name`. Returns the channel's interned name, the slot to
    /// remember for unsubscribing, and whether this shard just gained interest.
    pub fn insert(
        &mut self,
        name: &str,
        conn: &Rc<Conn>,
        mode: Mode,
    ) -> (Rc<str>, u32, InterestChange) {
        let channel = match self.channels.get_mut(name) {
            Some(channel) => channel,
            None => {
                let name: Rc<str> = Rc::from(name);
                self.channels.entry(name.clone()).or_insert(LocalChannel {
                    name,
                    subscribers: Slab::new(),
                    unconfirmed: 0,
                    waiting_acks: Vec::new(),
                })
            }
        };
        let change = if channel.subscribers.is_empty() {
            InterestChange::Gained
        } else {
            InterestChange::None
        };
        let slot = channel.subscribers.insert(Subscriber {
            conn: conn.clone(),
            mode,
        });
        (channel.name.clone(), slot as u32, change)
    }

    /// Removes the subscriber in `slot` of `name`.
    pub fn remove(&mut self, name: &str, slot: u32) -> InterestChange {
        let Some(channel) = self.channels.get_mut(name) else {
            return InterestChange::None;
        };
        channel.subscribers.try_remove(slot as usize);
        if !channel.subscribers.is_empty() {
            return InterestChange::None;
        }
        if channel.unconfirmed == 0 {
            self.channels.remove(name);
        } else {
            // Keep the entry until the owner's confirmations drain, so a
            // stale confirmation is not taken for a newer subscription's.
            channel.subscribers.shrink_to_fit();
        }
        InterestChange::Lost
    }

    /// Marks that an `Interest { on }` went to the remote owner of `name`.
    pub fn expect_confirmation(&mut self, name: &str) {
        if let Some(channel) = self.channels.get_mut(name) {
            channel.unconfirmed += 1;
        }
    }

    /// Whether `sub` acks for `name` can go out now.
    pub fn is_confirmed(&self, name: &str) -> bool {
        self.channels.get(name).is_none_or(|c| c.unconfirmed == 0)
    }

    /// Holds a `sub` ack until the owner confirms.
    pub fn hold_ack(&mut self, name: &str, conn: &Rc<Conn>, id: &str) {
        if let Some(channel) = self.channels.get_mut(name) {
            channel.waiting_acks.push((conn.clone(), id.into()));
        }
    }

    /// The owner confirmed one `Interest { on }`; returns the acks released
    /// when no confirmation is outstanding any more.
    pub fn confirm(&mut self, name: &str) -> Vec<(Rc<Conn>, Box<str>)> {
        let Some(channel) = self.channels.get_mut(name) else {
            return Vec::new();
        };
        channel.unconfirmed = channel.unconfirmed.saturating_sub(1);
        if channel.unconfirmed > 0 {
            return Vec::new();
        }
        let released = std::mem::take(&mut channel.waiting_acks);
        if channel.subscribers.is_empty() {
            self.channels.remove(name);
        }
        released
    }

    /// Local subscribers of `name`.
    pub fn subscriber_count(&self, name: &str) -> usize {
        self.channels.get(name).map_or(0, |c| c.subscribers.len())
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Pushes publication `seq` of `name` to every local subscriber but
    /// `skip`. Each form (envelope, raw) is encoded at most once. A subscriber
    /// whose queue overflows is closed as a slow consumer; no one waits.
    pub fn fan_out(
        &self,
        shard: u16,
        name: &str,
        seq: u64,
        payload: &Payload,
        skip: Option<Skip>,
    ) -> FanOut {
        let mut result = FanOut::default();
        let Some(channel) = self.channels.get(name) else {
            return result;
        };
        let skip = skip.filter(|s| s.shard == shard).map(|s| s.conn);
        let mut envelope: Option<Bytes> = None;
        let mut raw: Option<Bytes> = None;
        for (_, subscriber) in channel.subscribers.iter() {
            if skip == Some(subscriber.conn.id) {
                continue;
            }
            let frame = match subscriber.mode {
                Mode::Json => envelope.get_or_insert_with(|| {
                    protocol::encode_msg(name, seq, payload.kind, &payload.bytes)
                }),
                Mode::Raw => {
                    raw.get_or_insert_with(|| protocol::encode_raw(payload.kind, &payload.bytes))
                }
            };
            match subscriber
                .conn
                .outbox
                .push_published(frame.clone(), payload.published_at)
            {
                Pushed::Queued => result.queued += 1,
                Pushed::Overflow => {
                    result.overflowed += 1;
                    subscriber.conn.close_slow_consumer();
                }
                Pushed::Closed => {}
            }
        }
        result
    }
}
