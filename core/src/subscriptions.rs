//! The shard's subscriptions: for each channel with local subscribers,
//! who they are and how they want messages (JSON envelope or raw room). Fan-out
//! walks them for a publication, encoding each form at most once and pushing
//! the same bytes into every subscriber's queue; a later publication of the
//! same turn that every subscriber gets as it got the one before grows the
//! channel's *tail* that their queues share ([`Subscriber::Tail`]) once for
//! all of them, without a walk. Subscribers are whatever the
//! server's connections are ([`Subscriber`]: their codec and their queue),
//! held by `Rc`; the calls are static, so fan-out costs what it did when it
//! knew the connection's type. A subscriber still waiting
//! for its channel's position from the owner (an acknowledged or recovering
//! `sub`) is *pending* and skipped: every publication that reaches this shard
//! before the owner's answer is at or below the answer's `seq` (the owner
//! answers on the same FIFO lane as its deliveries), so it is either in the
//! replayed history or before the subscription took effect.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    rc::Rc,
};

use bytes::Bytes;
use slab::Slab;

use crate::{
    codec::{Codec, Protocol, PublicationFrames},
    deflate::Deflater,
    frame,
    protocol::{self, SubOptions},
    publication::{conflation_id, ConnRef, Payload, Skip},
};

/// What a push into a subscriber's queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued as a share of its channel's tail ([`Subscriber::push_following`]).
    Shared,
    /// Over the byte bound: the caller must close the connection as a slow
    /// consumer.
    Overflow,
    /// The connection is closing; the frame was dropped.
    Closed,
}

/// A connection as fan-out sees it: how it is named on its shard, the codec
/// it reads, and its bounded queue.
pub trait Subscriber {
    /// Its name on its shard.
    fn conn_ref(&self) -> ConnRef;
    /// The protocol and options its frames are written in.
    fn codec(&self) -> Codec;
    /// Queues a control frame (closing it as a slow consumer on overflow).
    fn send(&self, frame: Bytes);
    /// Bytes waiting in its queue.
    fn queued_bytes(&self) -> usize;
    /// Removes the queued publication with this conflation id, if one is
    /// still waiting whole; returns how many it had itself replaced.
    fn take_keyed(&self, conflation: u64) -> Option<u32>;
    /// Queues a publication's frame, published at `published_at`, under
    /// `conflation` (0: none) having replaced `conflated` older ones. The
    /// frame is shared by every subscriber: the queue keeps a reference or
    /// copies it, as it likes.
    fn push_keyed(
        &self,
        frame: &Bytes,
        published_at: u64,
        conflation: u64,
        conflated: u32,
    ) -> Pushed;
    /// Closes it: its queue went over its bound.
    fn close_slow_consumer(&self);

    /// What a channel holds of the publications its subscribers' queues
    /// share: a run of frames several queues end with, grown once for all
    /// of them (`()`: queues share nothing).
    type Tail: Default + Clone;
    /// Queues a publication's frame as [`Subscriber::push_keyed`] does
    /// (no conflation), and if it can, as the start of a share of the
    /// channel's `tail` (starting one there if need be): then it answers
    /// [`Pushed::Shared`].
    fn push_following(&self, tail: &mut Self::Tail, frame: &Bytes, published_at: u64) -> Pushed {
        let _ = tail;
        self.push_keyed(frame, published_at, 0, 0)
    }
    /// Whether its queue ends with a share of `tail` (so a publication that
    /// grew the tail reached it).
    fn follows(&self, tail: &Self::Tail) -> bool {
        let _ = tail;
        false
    }
    /// Appends a publication's frame to `tail` for every queue that ends
    /// with a share of it, if the frame can go there; returns how many
    /// queues that is (0: none, nothing done).
    fn extend_tail(tail: &Self::Tail, frame: &Bytes, published_at: u64) -> usize {
        let _ = (tail, frame, published_at);
        0
    }
}

/// The frame the subscriber before was sent, and its codec: most
/// subscribers of a channel share a codec, and comparing two bytes costs
/// less than looking the frame up (`PublicationFrames::frame`).
#[derive(Default)]
struct LastFrame {
    codec: Option<Codec>,
    frame: Bytes,
}

impl LastFrame {
    #[inline]
    fn frame(
        &mut self,
        codec: Codec,
        frames: &mut PublicationFrames<'_>,
        deflater: &mut Deflater,
    ) -> &Bytes {
        if self.codec != Some(codec) {
            self.frame = frames.frame(codec, deflater).clone();
            self.codec = Some(codec);
        }
        &self.frame
    }
}

/// A subscription: the subscriber receives publications in its codec.
struct Subscription<S> {
    conn: Rc<S>,
    /// While waiting for the owner's position: the token its answer names.
    pending: Option<NonZeroU32>,
    /// Its own `join` is to be sent when it goes live (a new member of a
    /// presence channel that asked for joins: the owner's event may come
    /// before its position, so the owner's leaves it out).
    own_join_due: bool,
}

/// Sends a control message (made once per protocol by `make`) to the live
/// JSON and MessagePack subscribers among `subscribers` (raw-room members
/// get no control messages); returns how many were sent one.
fn tell<'a, S: Subscriber + 'a>(
    subscribers: impl Iterator<Item = &'a Subscription<S>>,
    make: impl Fn(Codec) -> Bytes,
) -> usize {
    let mut frames: [Option<Bytes>; Protocol::COUNT] = Default::default();
    let mut told = 0;
    for subscriber in subscribers {
        let codec = subscriber.conn.codec();
        if subscriber.pending.is_some() || codec.protocol == Protocol::Raw {
            continue;
        }
        let frame = frames[codec.protocol as usize].get_or_insert_with(|| make(codec));
        subscriber.conn.send(frame.clone());
        told += 1;
    }
    told
}

/// A delta subscriber that holds no publication to apply a delta to.
const NO_BASE: u64 = u64::MAX;

/// Local state of one channel on this shard.
struct LocalChannel<S: Subscriber> {
    name: Rc<str>,
    subscribers: Slab<Subscription<S>>,
    /// The run of frames its subscribers' queues share
    /// ([`Subscriber::Tail`]), and the codec its frames are in.
    tail: S::Tail,
    tail_codec: Option<Codec>,
    /// After the last walk over `subscribers`: every one that was to get
    /// the publication shares `tail` (`everyone_shares`; never when a
    /// subscriber was pushed otherwise), they are `tail_shares` queues, and
    /// the publication skipped `tail_skip`. Until a subscriber comes, goes
    /// live or leaves, a publication with the same skip that grows the tail
    /// for that many queues has reached everyone: no walk.
    tail_shares: usize,
    tail_skip: Option<ConnRef>,
    everyone_shares: bool,
    /// The subscribers that asked for deltas (`"delta":"fossil"`), by slot:
    /// the `seq` that may go to each as a delta, the one after the last it
    /// was sent ([`NO_BASE`] before it has been sent any). Kept aside, so
    /// subscribers that did not ask (most) pay nothing for it.
    deltas: HashMap<u32, u64>,
    /// The subscribers that asked for `join` and `leave` events, by slot
    /// (aside, as `deltas`).
    join_leave: HashSet<u32>,
}

/// This shard's interest in a channel, as its owner must know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// Some local subscriber.
    pub on: bool,
    /// Some local subscriber that asked for deltas.
    pub delta: bool,
}

impl<S: Subscriber> LocalChannel<S> {
    /// The subscribers changed: the tail is let go (never grown again: a
    /// subscriber that left may still share it), and the next publication
    /// walks them and starts a new one.
    fn subscribers_changed(&mut self) {
        self.tail = S::Tail::default();
        self.tail_codec = None;
        self.everyone_shares = false;
    }

    fn interest(&self) -> Interest {
        Interest {
            on: !self.subscribers.is_empty(),
            delta: !self.deltas.is_empty(),
        }
    }
}

/// Queues a publication's `frame` for `subscriber` (as a share of its
/// channel's tail if `tail` is given), counting it into `result`; closes a
/// subscriber whose queue overflows as a slow consumer.
fn push<S: Subscriber>(
    subscriber: &S,
    tail: Option<&mut S::Tail>,
    frame: &Bytes,
    result: &mut FanOut,
    (published_at, conflation, conflated): (u64, u64, u32),
) -> Pushed {
    let pushed = match tail {
        Some(tail) => subscriber.push_following(tail, frame, published_at),
        None => subscriber.push_keyed(frame, published_at, conflation, conflated),
    };
    match pushed {
        Pushed::Queued | Pushed::Shared => result.count_queued(frame, 1),
        Pushed::Overflow => {
            result.overflowed += 1;
            subscriber.close_slow_consumer();
        }
        Pushed::Closed => {}
    }
    pushed
}

/// Frames queued and overflows of one fan-out (for tests and benchmarks; the
/// queues count for the metrics), and what was compressed.
#[derive(Debug, Default, Clone, Copy)]
pub struct FanOut {
    pub queued: u64,
    pub overflowed: u64,
    /// Frames queued compressed.
    pub compressed: u64,
    /// Compressions made, and tried without paying.
    pub compressions: (u64, u64),
    /// Frames queued as deltas.
    pub deltas: u64,
    /// Publications that replaced an older one with their key in a slow
    /// subscriber's queue.
    pub conflated: u64,
}

impl FanOut {
    /// `frame` was queued for `queues` subscribers.
    fn count_queued(&mut self, frame: &Bytes, queues: u64) {
        self.queued += queues;
        if frame::is_compressed(frame) {
            self.compressed += queues;
        }
    }
}

/// Channel name → local subscribers.
pub struct Subscriptions<S: Subscriber> {
    channels: HashMap<Rc<str>, LocalChannel<S>>,
    /// Subscribers over every channel (the memory budget counts them).
    subscriptions: usize,
    /// `conflate-after-bytes`: queued bytes over which a keyed publication
    /// of a conflated channel replaces the older one with its key.
    conflate_after: usize,
    /// The token handed to the last subscription that waits for its
    /// position ([`Subscriptions::new_token`]).
    last_token: u32,
}

impl<S: Subscriber> Subscriptions<S> {
    pub fn new(conflate_after: usize) -> Self {
        Subscriptions {
            channels: HashMap::new(),
            subscriptions: 0,
            conflate_after,
            last_token: 0,
        }
    }

    /// A token for a subscription that will wait for its position: no
    /// other pending subscription of this shard holds it (tokens wrap after
    /// 2³² − 1 subscriptions; never 0, which names none).
    pub fn new_token(&mut self) -> u32 {
        self.last_token = self.last_token.wrapping_add(1).max(1);
        self.last_token
    }

    /// Adds `conn` to `name`, pending under `token` if given (never 0),
    /// taking deltas if `delta`; `own_join_due`: see [`Subscription`]. Returns
    /// the channel's interned name, the slot to remember for unsubscribing,
    /// and this shard's interest if it changed.
    pub fn insert(
        &mut self,
        name: &str,
        conn: &Rc<S>,
        pending: Option<u32>,
        own_join_due: bool,
        options: SubOptions,
    ) -> (Rc<str>, u32, Option<Interest>) {
        debug_assert!(pending != Some(0), "0 is no token");
        let channel = match self.channels.get_mut(name) {
            Some(channel) => channel,
            None => {
                let name: Rc<str> = Rc::from(name);
                self.channels.entry(name.clone()).or_insert(LocalChannel {
                    name,
                    subscribers: Slab::new(),
                    tail: S::Tail::default(),
                    tail_codec: None,
                    tail_shares: 0,
                    tail_skip: None,
                    everyone_shares: false,
                    deltas: HashMap::new(),
                    join_leave: HashSet::new(),
                })
            }
        };
        channel.subscribers_changed();
        let before = channel.interest();
        let slot = channel.subscribers.insert(Subscription {
            conn: conn.clone(),
            pending: pending.and_then(NonZeroU32::new),
            own_join_due,
        }) as u32;
        self.subscriptions += 1;
        if options.delta {
            channel.deltas.insert(slot, NO_BASE);
        }
        if options.join_leave {
            channel.join_leave.insert(slot);
        }
        let after = channel.interest();
        (
            channel.name.clone(),
            slot,
            (after != before).then_some(after),
        )
    }

    /// Removes the subscriber in `slot` of `name`; returns this shard's
    /// interest if it changed.
    pub fn remove(&mut self, name: &str, slot: u32) -> Option<Interest> {
        let channel = self.channels.get_mut(name)?;
        let before = channel.interest();
        channel.subscribers.try_remove(slot as usize)?;
        channel.subscribers_changed();
        self.subscriptions -= 1;
        channel.deltas.remove(&slot);
        channel.join_leave.remove(&slot);
        let after = channel.interest();
        if !after.on {
            self.channels.remove(name);
        }
        (after != before).then_some(after)
    }

    /// Whether some local subscriber of `name` asked for deltas.
    pub fn wants_delta(&self, name: &str) -> bool {
        self.channels
            .get(name)
            .is_some_and(|c| !c.deltas.is_empty())
    }

    /// Makes the pending subscriber in `slot` of `name` live, if it is still
    /// the one `token` names; returns the codec it receives publications in,
    /// and whether its own join is to be sent now.
    pub fn go_live(&mut self, name: &str, slot: u32, token: u32) -> Option<(Codec, bool)> {
        let channel = self.channels.get_mut(name)?;
        let subscriber = channel.subscribers.get_mut(slot as usize)?;
        if subscriber.pending.is_none() || subscriber.pending != NonZeroU32::new(token) {
            return None;
        }
        subscriber.pending = None;
        let codec = subscriber.conn.codec();
        let own_join = std::mem::take(&mut subscriber.own_join_due);
        channel.subscribers_changed();
        Some((codec, own_join))
    }

    /// A delta subscriber just went live and was replayed up to
    /// `replayed_to` (0: nothing): its first delta may apply to that one.
    pub fn set_delta_base(&mut self, name: &str, slot: u32, replayed_to: u64) {
        let next = self
            .channels
            .get_mut(name)
            .and_then(|c| c.deltas.get_mut(&slot));
        if let Some(next) = next {
            *next = if replayed_to > 0 {
                replayed_to + 1
            } else {
                NO_BASE
            };
        }
    }

    /// Sends a presence channel's `join` (or `leave`) of `member` (its JSON
    /// object) to the live subscribers of `name` that asked for them, but
    /// `skip` (the member itself, which sends its own join), one frame per
    /// protocol; returns how many got it.
    pub fn presence_event(
        &self,
        name: &str,
        join: bool,
        member: &[u8],
        skip: Option<ConnRef>,
    ) -> usize {
        let Some(channel) = self.channels.get(name) else {
            return 0;
        };
        let asked = channel
            .join_leave
            .iter()
            .filter_map(|slot| channel.subscribers.get(*slot as usize))
            .filter(|s| Some(s.conn.conn_ref()) != skip);
        tell(asked, |codec| codec.presence_event(join, name, member))
    }

    /// Tells every live JSON and MessagePack subscriber of `name` to resync
    /// at `seq` under `epoch` (raw-room members have no `seq` to resync);
    /// returns how many were told.
    pub fn resync(&self, name: &str, seq: u64, epoch: &str) -> usize {
        let Some(channel) = self.channels.get(name) else {
            return 0;
        };
        tell(channel.subscribers.iter().map(|(_, s)| s), |codec| {
            codec.resync(name, seq, epoch)
        })
    }

    /// Local subscribers of `name`.
    pub fn subscriber_count(&self, name: &str) -> usize {
        self.channels.get(name).map_or(0, |c| c.subscribers.len())
    }

    /// Subscriptions of this shard's connections, over every channel.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Every channel with subscribers here, and how many.
    pub fn channels(&self) -> impl Iterator<Item = (&str, usize)> {
        self.channels
            .iter()
            .map(|(name, c)| (&**name, c.subscribers.len()))
    }

    /// Pushes publication `seq` of `name` to every local subscriber but
    /// `skip` and pending ones. The publication is encoded at most once per
    /// protocol, and compressed at most once more (with the shard's
    /// `deflater`); `delta`, its fossil delta against `seq - 1` when the
    /// owner made one, goes (encoded once) to the delta subscribers that
    /// were sent `seq - 1`. A subscriber whose queue overflows is closed as
    /// a slow consumer; no one waits.
    pub fn fan_out(
        &mut self,
        shard: u16,
        publication: (&str, u64, &Payload),
        delta: Option<&Bytes>,
        skip: Option<Skip>,
        deflater: &mut Deflater,
    ) -> FanOut {
        let (name, seq, payload) = publication;
        let mut result = FanOut::default();
        let Some(channel) = self.channels.get_mut(name) else {
            return result;
        };
        let skip = skip.filter(|s| s.shard == shard).map(|s| s.conn);
        let mut frames = PublicationFrames::new(name, seq, payload, delta);
        let mut last = LastFrame::default();
        let conflation = (payload.key.as_deref()).map_or(0, |key| conflation_id(name, key));
        let LocalChannel {
            subscribers,
            deltas,
            tail,
            tail_codec,
            tail_shares,
            tail_skip,
            everyone_shares,
            ..
        } = channel;
        let published_at = payload.published_at;
        // A publication every subscriber gets whole, in its codec's one
        // frame, may grow the channel's tail for every queue that shares
        // it at once.
        let plain = conflation == 0 && deltas.is_empty();
        let mut shares = 0;
        if let Some(codec) = tail_codec.filter(|_| plain) {
            let frame = last.frame(codec, &mut frames, deflater);
            shares = S::extend_tail(tail, frame, published_at);
            if shares > 0 {
                result.count_queued(frame, shares as u64);
                if *everyone_shares && shares == *tail_shares && skip == *tail_skip {
                    result.compressions = frames.compressions();
                    return result;
                }
            }
        }
        // Walk: who the grown tail did not reach gets it pushed (the walk
        // may start a new tail: ask the grown one who it reached).
        let grown = (shares > 0).then(|| tail.clone());
        let mut everyone = plain;
        let mut sharing = 0;
        for (slot, subscriber) in subscribers.iter_mut() {
            if skip == Some(subscriber.conn.conn_ref()) || subscriber.pending.is_some() {
                continue;
            }
            let outbox = &*subscriber.conn;
            if grown.as_ref().is_some_and(|grown| outbox.follows(grown)) {
                sharing += 1;
                continue;
            }
            let codec = outbox.codec();
            // Its delta state, if it asked for deltas (most did not).
            let delta_next = match deltas.is_empty() {
                true => None,
                false => deltas.get_mut(&(slot as u32)),
            };
            // Conflation: for a JSON subscriber that fell behind (and does
            // not take deltas, which need every publication's base), a keyed
            // publication takes the place of the older one with its key.
            let replaced = (conflation != 0
                && delta_next.is_none()
                && codec.protocol == Protocol::Json
                && outbox.queued_bytes() > self.conflate_after)
                .then(|| outbox.take_keyed(conflation))
                .flatten();
            let conflated_frame;
            let (frame, conflated) = match replaced {
                Some(replaced) => {
                    result.conflated += 1;
                    let (kind, bytes) = (payload.kind, &payload.bytes);
                    conflated_frame =
                        protocol::encode_msg_conflated(name, seq, kind, bytes, replaced + 1);
                    (&conflated_frame, replaced + 1)
                }
                None => {
                    let mut as_delta = false;
                    if let Some(next) = delta_next {
                        as_delta = *next == seq;
                        *next = seq + 1;
                    }
                    match as_delta.then(|| frames.delta(codec)).flatten() {
                        Some(frame) => {
                            result.deltas += 1;
                            (frame, 0)
                        }
                        None => (last.frame(codec, &mut frames, deflater), 0),
                    }
                }
            };
            let share = plain && *tail_codec.get_or_insert(codec) == codec;
            let keyed = (published_at, conflation, conflated);
            let pushed = push(
                outbox,
                share.then_some(&mut *tail),
                frame,
                &mut result,
                keyed,
            );
            match pushed {
                Pushed::Shared => sharing += 1,
                _ => everyone = false,
            }
        }
        *everyone_shares = everyone;
        *tail_shares = sharing;
        *tail_skip = skip;
        result.compressions = frames.compressions();
        result
    }
}

#[cfg(test)]
mod tests;
