//! The shard's subscription index: for each channel with local subscribers,
//! who they are and how they want messages (JSON envelope or raw room). Fan-out
//! walks it once per publication, encoding each form at most once and pushing
//! the same bytes into every subscriber's outbox. A subscriber still waiting
//! for its channel's position from the owner (an acknowledged or recovering
//! `sub`) is *pending* and skipped: every publication that reaches this shard
//! before the owner's answer is at or below the answer's `seq` (the owner
//! answers on the same FIFO lane as its deliveries), so it is either in the
//! replayed history or before the subscription took effect.

use std::{collections::HashMap, rc::Rc};

use slab::Slab;

use crate::{
    conn::{
        codec::{Codec, PublicationFrames},
        deflate::Deflater,
        outbox::Pushed,
        Conn,
    },
    frame,
    publication::{Payload, Skip},
};

/// A subscriber receives publications in its connection's codec.
struct Subscriber {
    conn: Rc<Conn>,
    /// While waiting for the owner's position: the token its answer names.
    pending: Option<u32>,
}

/// Local state of one channel on this shard.
pub struct LocalChannel {
    name: Rc<str>,
    subscribers: Slab<Subscriber>,
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
    /// Frames queued compressed.
    pub compressed: u64,
    /// Compressions made, and tried without paying.
    pub compressions: (u64, u64),
}

/// Channel name → local subscribers.
#[derive(Default)]
pub struct Index {
    channels: HashMap<Rc<str>, LocalChannel>,
}

impl Index {
    /// Adds `conn` to `name`, pending under `token` if given. Returns the
    /// channel's interned name, the slot to remember for unsubscribing, and
    /// whether this shard just gained interest.
    pub fn insert(
        &mut self,
        name: &str,
        conn: &Rc<Conn>,
        pending: Option<u32>,
    ) -> (Rc<str>, u32, InterestChange) {
        let channel = match self.channels.get_mut(name) {
            Some(channel) => channel,
            None => {
                let name: Rc<str> = Rc::from(name);
                self.channels.entry(name.clone()).or_insert(LocalChannel {
                    name,
                    subscribers: Slab::new(),
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
            pending,
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
        self.channels.remove(name);
        InterestChange::Lost
    }

    /// Makes the pending subscriber in `slot` of `name` live, if it is still
    /// the one `token` names; returns the codec it receives publications in.
    pub fn go_live(&mut self, name: &str, slot: u32, token: u32) -> Option<Codec> {
        let subscriber = self
            .channels
            .get_mut(name)?
            .subscribers
            .get_mut(slot as usize)?;
        if subscriber.pending != Some(token) {
            return None;
        }
        subscriber.pending = None;
        Some(subscriber.conn.codec)
    }

    /// Local subscribers of `name`.
    pub fn subscriber_count(&self, name: &str) -> usize {
        self.channels.get(name).map_or(0, |c| c.subscribers.len())
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Pushes publication `seq` of `name` to every local subscriber but
    /// `skip` and pending ones. The publication is encoded at most once per
    /// protocol, and compressed at most once more (with the shard's
    /// `deflater`). A subscriber whose queue overflows is closed as a
    /// slow consumer; no one waits.
    pub fn fan_out(
        &mut self,
        shard: u16,
        name: &str,
        seq: u64,
        payload: &Payload,
        skip: Option<Skip>,
        deflater: &mut Deflater,
    ) -> FanOut {
        let mut result = FanOut::default();
        let Some(channel) = self.channels.get_mut(name) else {
            return result;
        };
        let skip = skip.filter(|s| s.shard == shard).map(|s| s.conn);
        let mut frames = PublicationFrames::new(name, seq, payload);
        for (_, subscriber) in channel.subscribers.iter_mut() {
            if skip == Some(subscriber.conn.id) || subscriber.pending.is_some() {
                continue;
            }
            let frame = frames.frame(subscriber.conn.codec, deflater);
            let compressed = frame::is_compressed(frame);
            match subscriber
                .conn
                .outbox
                .push_published(frame.clone(), payload.published_at)
            {
                Pushed::Queued => {
                    result.queued += 1;
                    result.compressed += u64::from(compressed);
                }
                Pushed::Overflow => {
                    result.overflowed += 1;
                    subscriber.conn.close_slow_consumer();
                }
                Pushed::Closed => {}
            }
        }
        result.compressions = frames.compressions();
        result
    }
}
