//! The owner role: for each channel this shard owns (by hash of its name), the
//! next `seq`, which other shards have subscribers, and the bounded history
//! of its latest publications (`history-size` messages, `history-ttl` of
//! age, and `history-max-bytes` for all of this shard's channels together)
//! that reconnecting clients recover from; and, while some subscriber asked
//! for deltas, each publication's fossil delta against the one before,
//! computed once here for every shard. The owner is the single place
//! a channel's publications are ordered (with the Redis engine, Redis orders
//! them and the owner follows its order: [`Owner::follow`]).
//!
//! It is the shard's ordering component: besides sequence, epoch, history
//! and deltas it decides what a publication's conflation key and its
//! idempotency key mean before it is ordered — whether the channel
//! conflates (`--conflate`; a key on another channel is dropped) and
//! whether a key was already used ([`Owner::admit`], backed by
//! [`Remembered`]).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
};

use crate::{
    channel,
    idempotency::{self, Remembered},
    pattern::{self, ChannelPattern},
    protocol::PayloadKind,
    publication::{Payload, Position},
};

/// Upper bound on shards: which shards have subscribers of a channel is a
/// 64-bit mask.
pub const MAX_SHARDS: usize = 64;

/// A page of a channel's history, as its owner (or Redis) keeps it.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// The channel's last `seq`, and the epoch its `seq`s belong to.
    pub seq: u64,
    pub epoch: String,
    /// Publications after the `since` asked for, oldest first.
    pub entries: Vec<(u64, Payload)>,
}

impl HistoryPage {
    /// The page ends before the channel's last publication: ask again
    /// `since` its last one.
    pub fn more(&self) -> bool {
        self.entries.last().is_some_and(|(seq, _)| *seq < self.seq)
    }
}

/// Ordering, routing and history state of one owned channel.
#[derive(Debug)]
struct OwnedChannel {
    /// Which incarnation of the channel this is: state of an idle channel is
    /// reclaimed, and its `seq` then starts again under a new epoch.
    incarnation: u64,
    /// Last assigned sequence number (0: none yet).
    last_seq: u64,
    /// Bit `p` set: shard `p` (other than this one) has subscribers.
    remote_interest: u64,
    /// Bit `p` set: shard `p` (other than this one) has subscribers that
    /// asked for deltas.
    remote_delta: u64,
    /// While deltas are wanted and no history is kept: the last
    /// publication, the base of the next one's delta (with history, its
    /// newest entry is).
    previous: Option<(u64, Payload)>,
    /// The latest publications, oldest first, with when they were ordered
    /// (shard milliseconds).
    history: VecDeque<HistoryEntry>,
    /// With a broker that orders (Redis): the channel's epoch there, and
    /// whether `last_seq` is the last publication delivered from it in an
    /// unbroken run (`false`: not yet known, so the next one is taken as is).
    broker_epoch: Option<Box<str>>,
    following: bool,
    /// Missing publications are being fetched from the broker's history:
    /// what arrives meanwhile comes with the answer, and is dropped.
    filling: bool,
}

/// What the owner makes of a publication a broker ordered.
#[derive(Debug)]
pub enum Followed {
    /// The next one: deliver it.
    Deliver(Ordered),
    /// Already delivered, or arriving while a gap is filled: drop it.
    Drop,
    /// Publications after `after` were missed: fill them from the broker's
    /// history (this one comes with the answer).
    Gap { after: u64 },
    /// The channel's epoch changed: its subscribers resync at `seq - 1`
    /// under the new one, then get this publication.
    Resync(Ordered),
}

/// How a fill from the broker's history went.
#[derive(Debug, Default)]
pub struct Filled {
    /// Subscribers must resync at this `seq` first (the epoch changed, or
    /// the history no longer held what was missed).
    pub resync: Option<u64>,
    /// Then these, in order.
    pub deliver: Vec<(Ordered, Payload)>,
    /// The answer was one page: what comes after this `seq` is to be asked
    /// for next.
    pub more: Option<u64>,
}

/// One kept publication: its `seq`, its payload, and when it was ordered
/// (shard milliseconds).
type HistoryEntry = (u64, Payload, u64);

/// Bounds of the history.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Publications kept per channel (0: none).
    pub size: usize,
    /// Oldest publication kept, in milliseconds.
    pub ttl_ms: u64,
    /// Bytes of history kept by this shard over all its channels; the
    /// oldest publications go first when over (checked each sweep).
    pub max_bytes: usize,
}

/// The memory one kept publication holds, as `history-max-bytes` counts it:
/// its bytes (one allocation of exactly their length, see
/// [`Payload::copy_of`], rounded up to the allocator's 16-byte granularity
/// plus its chunk header), the shared handle made when the payload was
/// cloned into history, and the history entry itself.
fn weight(payload: &Payload) -> usize {
    const CHUNK_HEADER: usize = 16;
    const SHARED_HANDLE: usize = 32;
    payload.bytes.len().next_multiple_of(16)
        + CHUNK_HEADER
        + SHARED_HANDLE
        + std::mem::size_of::<HistoryEntry>()
}

/// What an owned channel's entry is counted as beside its history, while
/// it holds some (a channel without is kept only while subscribed, and its
/// subscriptions count it: `budget::SUBSCRIPTION_BYTES`; or until the next
/// sweep): the map's slot and its share of the map's spare room, the state
/// above, the history's first allocation, and the name (added). One
/// publication to each of 1.5M channels measured ~510 B of resident memory
/// per channel beyond what [`weight`] counts for the publication.
const CHANNEL_ENTRY_BYTES: usize = 512;

fn entry_weight(name: &str) -> usize {
    CHANNEL_ENTRY_BYTES + name.len()
}

/// What ordering a publication decided.
#[derive(Debug)]
pub struct Ordered {
    pub seq: u64,
    /// The shards (other than this one) that must receive it.
    pub remote: u64,
    /// Its fossil delta against publication `seq - 1`, when some subscriber
    /// asked for deltas and one is smaller than the publication.
    pub delta: Option<bytes::Bytes>,
}

/// The fossil delta turning `base` into `target`, when its frame is smaller
/// than the whole publication's and finding it stayed within its work
/// budget (`fossil.rs`); otherwise the publication goes whole.
fn fossil_delta(base: &[u8], target: &[u8]) -> Option<bytes::Bytes> {
    let delta = crate::fossil::delta(base, target)?;
    crate::protocol::delta_frame_is_smaller(&delta, target.len()).then(|| bytes::Bytes::from(delta))
}

/// The channels this shard owns.
pub struct Owner {
    channels: HashMap<Box<str>, OwnedChannel>,
    limits: HistoryLimits,
    /// The server run's epoch (random at start), prefix of every channel's.
    run_epoch: u64,
    /// Incarnations handed out so far.
    incarnations: u64,
    /// Publications kept in all histories, and what they are counted as
    /// ([`weight`]), with the entries of the channels that hold them
    /// ([`entry_weight`]).
    kept: usize,
    kept_bytes: usize,
    /// Publications made under an idempotency key on these channels (not
    /// with the Redis engine: its publish script remembers them).
    remembered: Remembered,
    /// `--conflate`: the channels whose keyed publications conflate.
    conflating: Vec<ChannelPattern>,
}

/// Whether a publication under an idempotency key is to be ordered
/// ([`Owner::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The key is new here: order it, then [`Owner::remember`] it.
    New,
    /// A retry within the window: it was ordered as this `seq`.
    Duplicate(u64),
    /// The key is new but the store is full: refused, not ordered.
    Refused(idempotency::Full),
}

impl Owner {
    /// No channel conflates and idempotency keys are forgotten at once
    /// until [`Owner::conflating`] and [`Owner::remembering_for`] say
    /// otherwise.
    pub fn new(limits: HistoryLimits, run_epoch: u64) -> Self {
        Owner {
            channels: HashMap::new(),
            limits,
            run_epoch,
            incarnations: 0,
            kept: 0,
            kept_bytes: 0,
            remembered: Remembered::new(0),
            conflating: Vec::new(),
        }
    }

    /// Keyed publications on channels matching `patterns` conflate.
    pub fn conflating(mut self, patterns: Vec<ChannelPattern>) -> Self {
        self.conflating = patterns;
        self
    }

    /// Idempotency keys are remembered for `window_ms`.
    pub fn remembering_for(mut self, window_ms: u64) -> Self {
        self.remembered = Remembered::new(window_ms);
        self
    }

    /// Whether `name` conflates: its subscribers may see `seq` skip where
    /// keyed publications conflated (sub acks say so).
    pub fn conflates(&self, name: &str) -> bool {
        !self.conflating.is_empty() && pattern::any_matches(&self.conflating, name)
    }

    /// A conflation key only means something on a channel that conflates:
    /// elsewhere it is dropped before the publication is ordered.
    pub fn drop_key_unless_conflating(&self, name: &str, payload: &mut Payload) {
        if payload.key.is_some() && !self.conflates(name) {
            payload.key = None;
        }
    }

    /// Whether a publication on `name` under idempotency key `key` from
    /// `source` is ordered: a key seen within the window answers with its
    /// `seq`; a new one is refused when the store is full (never is an
    /// older key forgotten early: that would let its retry publish twice).
    /// The caller checks the memory budget too before ordering a new one.
    pub fn admit(
        &mut self,
        name: &str,
        key: &str,
        source: idempotency::Source,
        now_ms: u64,
    ) -> Admission {
        if let Some(seq) = self.remembered.recall(name, key, now_ms) {
            return Admission::Duplicate(seq);
        }
        match self.remembered.has_room(now_ms, source) {
            Ok(()) => Admission::New,
            Err(full) => Admission::Refused(full),
        }
    }

    /// Remembers that the publication on `name` under `key` was ordered
    /// as `seq` (after [`Admission::New`]).
    pub fn remember(
        &mut self,
        name: &str,
        key: &str,
        seq: u64,
        now_ms: u64,
        source: idempotency::Source,
    ) {
        self.remembered.remember(name, key, seq, now_ms, source);
    }

    /// Bytes counted for the remembered idempotency keys.
    pub fn idempotency_bytes(&self) -> usize {
        self.remembered.bytes()
    }

    /// Assigns the next `seq` of `name` and keeps the publication in its
    /// history; returns the `seq`, the mask of shards that must receive it
    /// and, if subscribers here (`local_delta`) or elsewhere asked for
    /// deltas, its delta against the one before (JSON data only).
    pub fn order(
        &mut self,
        name: &str,
        payload: &Payload,
        now_ms: u64,
        local_delta: bool,
    ) -> Ordered {
        self.take(name, None, payload, now_ms, local_delta)
    }

    /// Records publication `seq` of `name` (`None`: the one after its last)
    /// as its last: delta against the one before (while wanted), history.
    /// Returns what `order` does.
    fn take(
        &mut self,
        name: &str,
        seq: Option<u64>,
        payload: &Payload,
        now_ms: u64,
        local_delta: bool,
    ) -> Ordered {
        let limits = self.limits;
        let channel = self.entry(name);
        let seq = seq.unwrap_or(channel.last_seq + 1);
        channel.last_seq = seq;
        let mut delta = None;
        if (local_delta || channel.remote_delta != 0) && payload.kind == PayloadKind::Json {
            // The base: the history's newest entry, or (history off) the
            // publication kept while deltas are wanted.
            let newest = channel.history.back().map(|(s, p, _)| (*s, p));
            let kept = channel.previous.as_ref().map(|(s, p)| (*s, p));
            let base = newest
                .or(kept)
                .filter(|(s, b)| *s + 1 == seq && b.kind == PayloadKind::Json);
            if let Some((_, base)) = base {
                delta = fossil_delta(&base.bytes, &payload.bytes);
            }
            if limits.size == 0 {
                channel.previous = Some((seq, payload.clone()));
            }
        } else {
            channel.previous = None;
        }
        // System channels (`$stats`) are live figures: nothing to recover.
        let remote = channel.remote_interest;
        if limits.size > 0 && !channel::is_system(name.as_bytes()) {
            let mut dropped = None;
            if channel.history.len() == limits.size {
                dropped = channel.history.pop_front();
            }
            let first = channel.history.is_empty();
            channel.history.push_back((seq, payload.clone(), now_ms));
            self.kept += 1;
            self.kept_bytes += weight(payload);
            if first {
                self.kept_bytes += entry_weight(name);
            }
            if let Some((_, old, _)) = dropped {
                self.kept -= 1;
                self.kept_bytes -= weight(&old);
            }
        }
        Ordered { seq, remote, delta }
    }

    /// A publication the broker ordered as `seq` of `name` in `epoch`:
    /// deliver it, drop it (a duplicate, or a gap is being filled), fill the
    /// gap before it, or resync first (the epoch changed).
    pub fn follow(
        &mut self,
        name: &str,
        (seq, epoch): (u64, &str),
        payload: &Payload,
        now_ms: u64,
        local_delta: bool,
    ) -> Followed {
        let channel = self.entry(name);
        if channel.filling {
            return Followed::Drop;
        }
        let same_epoch = channel.broker_epoch.as_deref() == Some(epoch);
        if channel.following && same_epoch {
            if seq <= channel.last_seq {
                return Followed::Drop;
            }
            if seq > channel.last_seq + 1 {
                channel.filling = true;
                return Followed::Gap {
                    after: channel.last_seq,
                };
            }
            return Followed::Deliver(self.take(name, Some(seq), payload, now_ms, local_delta));
        }
        let resync = channel.following && !same_epoch;
        channel.following = true;
        if !same_epoch {
            channel.broker_epoch = Some(epoch.into());
            channel.previous = None;
        }
        let ordered = self.take(name, Some(seq), payload, now_ms, local_delta);
        match resync {
            true => Followed::Resync(ordered),
            false => Followed::Deliver(ordered),
        }
    }

    /// Pushes of `name` stopped (or will be re-established): its next one
    /// is taken as is.
    pub fn unfollow(&mut self, name: &str) {
        if let Some(channel) = self.channels.get_mut(name) {
            channel.following = false;
            channel.filling = false;
        }
    }

    /// A reconnected broker link: what `name` missed after the returned
    /// `seq` is fetched, and pushes until the answer are dropped (they come
    /// with it). `None`: not followed, nothing to fill.
    pub fn begin_fill(&mut self, name: &str) -> Option<u64> {
        let channel = self.channels.get_mut(name)?;
        if !channel.following {
            return None;
        }
        channel.filling = true;
        Some(channel.last_seq)
    }

    /// A fill could not be asked for or answered: try again on the next one.
    pub fn fill_failed(&mut self, name: &str) {
        if let Some(channel) = self.channels.get_mut(name) {
            channel.filling = false;
        }
    }

    /// The broker's answer to a fill: the channel stands at `top` in
    /// `epoch`, and its history holds `entries` after what was asked.
    pub fn filled(
        &mut self,
        name: &str,
        (top, epoch): (u64, &str),
        entries: &[(u64, Payload)],
        now_ms: u64,
        local_delta: bool,
    ) -> Filled {
        let channel = self.entry(name);
        channel.filling = false;
        let mut filled = Filled::default();
        if channel.broker_epoch.as_deref() != Some(epoch) {
            channel.broker_epoch = Some(epoch.into());
            channel.previous = None;
            channel.following = true;
            channel.last_seq = top;
            filled.resync = Some(top);
            return filled;
        }
        channel.following = true;
        let last = channel.last_seq;
        let newer = entries.iter().filter(|(seq, _)| *seq > last && *seq <= top);
        let mut expected = last + 1;
        for (seq, payload) in newer {
            if *seq != expected && filled.resync.is_none() {
                filled.resync = Some(seq - 1);
                self.entry(name).previous = None;
            }
            expected = seq + 1;
            let ordered = self.take(name, Some(*seq), payload, now_ms, local_delta);
            filled.deliver.push((ordered, payload.clone()));
        }
        let channel = self.entry(name);
        if channel.last_seq < top && !filled.deliver.is_empty() {
            // An answer is one page of the stream (it holds every offset up
            // to the top): ask for the next, dropping pushes meanwhile.
            channel.filling = true;
            filled.more = Some(channel.last_seq);
        } else if channel.last_seq < top {
            // The history did not reach the top (none kept): start over there.
            filled.resync.get_or_insert(top);
            channel.last_seq = top;
            channel.previous = None;
        }
        filled
    }

    /// The broker's answer to a subscription's question: where `name` stands
    /// (`top`, `epoch`) and, with `since`, what it missed after it, taken
    /// from `entries` (the broker's history after `since`). Also returns
    /// the `seq` the channel's live subscribers must resync at, if the
    /// answer shows they missed something (the epoch changed).
    pub fn broker_position(
        &mut self,
        name: &str,
        (top, epoch): (u64, &str),
        entries: &[(u64, Payload)],
        since: Option<(u64, &str)>,
    ) -> (Position, Option<u64>) {
        let channel = self.entry(name);
        let mut resync = None;
        if channel.broker_epoch.as_deref() != Some(epoch) {
            if channel.following {
                resync = Some(top);
            }
            channel.broker_epoch = Some(epoch.into());
            channel.previous = None;
            channel.following = true;
            channel.last_seq = top;
        } else if !channel.following || channel.last_seq < top {
            // Pushes from here on follow `top`; what came before it is
            // history (for this subscriber, in `missed`).
            channel.following = true;
            channel.last_seq = top;
        }
        let mut position = Position {
            seq: top,
            recovered: None,
            missed: Vec::new(),
            epoch: epoch.to_string(),
        };
        if let Some((since, their_epoch)) = since {
            // Every publication after `since` up to `top`, none missing
            // (the stream trimmed, the answer cut short). `since` is the
            // client's: any u64, so `since + 1` may not exist.
            let (first, last) = (entries.first().map(|e| e.0), entries.last().map(|e| e.0));
            let complete =
                since.checked_add(1).is_some_and(|next| first == Some(next)) && last == Some(top);
            let recovered = their_epoch == epoch && since <= top && (since == top || complete);
            if recovered {
                position.missed = entries
                    .iter()
                    .filter(|(seq, _)| *seq > since && *seq <= top)
                    .cloned()
                    .collect();
            }
            position.recovered = Some(recovered);
        }
        (position, resync)
    }

    /// Where `name` stands as far as this shard knows, when the broker
    /// cannot be asked: its last delivered `seq` and epoch, nothing
    /// recovered.
    pub fn known_position(&mut self, name: &str, since: bool) -> Position {
        let channel = self.entry(name);
        // A subscriber now stands at `last_seq`: once the broker is back,
        // what it missed after it is filled (or a resync says it is lost),
        // not skipped by taking the next push as is.
        if channel.broker_epoch.is_some() {
            channel.following = true;
        }
        Position {
            seq: channel.last_seq,
            recovered: since.then_some(false),
            missed: Vec::new(),
            epoch: channel
                .broker_epoch
                .as_deref()
                .unwrap_or("unavailable")
                .to_string(),
        }
    }

    /// The shards (other than this one) with subscribers of `name`.
    pub fn remote_mask(&self, name: &str) -> u64 {
        self.channels.get(name).map_or(0, |c| c.remote_interest)
    }

    /// Whether another shard has subscribers of `name`.
    pub fn has_remote_interest(&self, name: &str) -> bool {
        self.channels
            .get(name)
            .is_some_and(|c| c.remote_interest != 0)
    }

    /// Records whether `peer` has subscribers of `name` (`on`), and some
    /// that asked for deltas.
    pub fn set_interest(&mut self, name: &str, peer: usize, on: bool, delta: bool) {
        let channel = self.entry(name);
        let bit = 1 << peer;
        channel.remote_interest = if on {
            channel.remote_interest | bit
        } else {
            channel.remote_interest & !bit
        };
        channel.remote_delta = if delta {
            channel.remote_delta | bit
        } else {
            channel.remote_delta & !bit
        };
    }

    /// Where `name` stands for a new subscription; with `since` (a `seq` and
    /// the epoch it belongs to), also what the subscriber missed after it,
    /// if the history still holds all of it.
    pub fn position(&mut self, name: &str, since: Option<(u64, &str)>, now_ms: u64) -> Position {
        let ttl_ms = self.limits.ttl_ms;
        let run_epoch = self.run_epoch;
        let channel = self.entry(name);
        let (n, bytes) = expire(name, channel, now_ms, ttl_ms);
        let epoch = epoch_string(run_epoch, channel.incarnation);
        let mut position = Position {
            seq: channel.last_seq,
            recovered: None,
            missed: Vec::new(),
            epoch,
        };
        if let Some((since, their_epoch)) = since {
            let first_kept = channel
                .history
                .front()
                .map_or(channel.last_seq + 1, |e| e.0);
            let recovered = their_epoch == position.epoch
                && since <= channel.last_seq
                && since + 1 >= first_kept;
            if recovered {
                position.missed = channel
                    .history
                    .iter()
                    .filter(|(seq, _, _)| *seq > since)
                    .map(|(seq, payload, _)| (*seq, payload.clone()))
                    .collect();
            }
            position.recovered = Some(recovered);
        }
        self.kept -= n;
        self.kept_bytes -= bytes;
        position
    }

    /// A page of `name`'s history: the publications kept after `since`,
    /// at most `limit`, with where the channel stands.
    pub fn history(&mut self, name: &str, since: u64, limit: usize, now_ms: u64) -> HistoryPage {
        let ttl_ms = self.limits.ttl_ms;
        let run_epoch = self.run_epoch;
        let channel = self.entry(name);
        let (n, bytes) = expire(name, channel, now_ms, ttl_ms);
        let page = HistoryPage {
            seq: channel.last_seq,
            epoch: epoch_string(run_epoch, channel.incarnation),
            entries: channel
                .history
                .iter()
                .filter(|(seq, _, _)| *seq > since)
                .take(limit)
                .map(|(seq, payload, _)| (*seq, payload.clone()))
                .collect(),
        };
        self.kept -= n;
        self.kept_bytes -= bytes;
        page
    }

    /// The owned channels another shard has subscribers of.
    pub fn remotely_subscribed(&self) -> impl Iterator<Item = &str> {
        self.channels
            .iter()
            .filter(|(_, c)| c.remote_interest != 0)
            .map(|(name, _)| &**name)
    }

    /// The last `seq` of `name`, if this shard owns state of it.
    pub fn seq_of(&self, name: &str) -> Option<u64> {
        self.channels.get(name).map(|c| c.last_seq)
    }

    /// Drops publications older than the history TTL, the state of
    /// channels that have nothing left (no history, no remote subscriber, no
    /// local one: `has_local_subscribers`), and idempotency keys whose
    /// window ended. Returns how many channels were reclaimed.
    pub fn sweep(&mut self, now_ms: u64, has_local_subscribers: impl Fn(&str) -> bool) -> usize {
        self.remembered.expire(now_ms);
        let ttl_ms = self.limits.ttl_ms;
        let before = self.channels.len();
        if self.kept_bytes > self.limits.max_bytes {
            self.evict_oldest();
        }
        let (mut kept, mut kept_bytes) = (self.kept, self.kept_bytes);
        self.channels.retain(|name, channel| {
            let (n, bytes) = expire(name, channel, now_ms, ttl_ms);
            kept -= n;
            kept_bytes -= bytes;
            !channel.history.is_empty()
                || channel.remote_interest != 0
                || has_local_subscribers(name)
        });
        (self.kept, self.kept_bytes) = (kept, kept_bytes);
        before - self.channels.len()
    }

    /// Over the byte budget: drops the oldest publications of all channels,
    /// oldest first, until what is left (history, and the entries of the
    /// channels that still hold some) is under it.
    fn evict_oldest(&mut self) {
        let mut over = self.history_bytes() - self.limits.max_bytes;
        let mut channels: Vec<(&str, &mut OwnedChannel)> = self
            .channels
            .iter_mut()
            .filter(|(_, c)| !c.history.is_empty())
            .map(|(name, c)| (&**name, c))
            .collect();
        // Each channel's oldest entry, oldest on top.
        let mut fronts: BinaryHeap<Reverse<(u64, usize)>> = channels
            .iter()
            .enumerate()
            .filter_map(|(i, (_, c))| c.history.front().map(|e| Reverse((e.2, i))))
            .collect();
        let (mut n, mut bytes) = (0, 0);
        while over > 0 {
            let Some(Reverse((_, i))) = fronts.pop() else {
                break;
            };
            let (name, channel) = &mut channels[i];
            if let Some((_, payload, _)) = channel.history.pop_front() {
                let w = weight(&payload);
                n += 1;
                bytes += w;
                over = over.saturating_sub(w);
            }
            match channel.history.front() {
                Some(next) => fronts.push(Reverse((next.2, i))),
                // Nothing left: its entry is no longer counted here (the
                // sweep reclaims it unless subscribed).
                None => {
                    bytes += entry_weight(name);
                    over = over.saturating_sub(entry_weight(name));
                }
            }
        }
        self.kept -= n;
        self.kept_bytes -= bytes;
    }

    /// Last assigned `seq` of `name` (0 if none).
    pub fn last_seq(&self, name: &str) -> u64 {
        self.channels.get(name).map_or(0, |c| c.last_seq)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Publications kept in every channel's history.
    pub fn history_len(&self) -> usize {
        self.kept
    }

    /// Whether what is kept is over `history-max-bytes` by a sixteenth: then
    /// the shard sweeps at once instead of at its next tick, so a flood of
    /// new channels is held near the bound, not a second's worth past it
    /// (each sweep frees at least that sixteenth: its cost is spread over
    /// what came in since).
    pub fn well_over_budget(&self) -> bool {
        self.kept_bytes > self.limits.max_bytes + self.limits.max_bytes / 16
    }

    /// Bytes counted for what every channel's history keeps, and for the
    /// channels' entries themselves.
    pub fn history_bytes(&self) -> usize {
        self.kept_bytes
    }

    fn entry(&mut self, name: &str) -> &mut OwnedChannel {
        if !self.channels.contains_key(name) {
            self.incarnations += 1;
            let channel = OwnedChannel {
                incarnation: self.incarnations,
                last_seq: 0,
                remote_interest: 0,
                remote_delta: 0,
                previous: None,
                history: VecDeque::new(),
                broker_epoch: None,
                following: false,
                filling: false,
            };
            self.channels.insert(name.into(), channel);
        }
        // Just inserted when absent.
        self.channels.get_mut(name).expect("entry exists")
    }
}

/// Drops the publications of channel `name` older than `ttl_ms`; returns
/// how many, and their weight with the channel's entry's if none is left.
fn expire(name: &str, channel: &mut OwnedChannel, now_ms: u64, ttl_ms: u64) -> (usize, usize) {
    let (mut n, mut bytes) = (0, 0);
    let held = !channel.history.is_empty();
    while channel
        .history
        .front()
        .is_some_and(|(_, _, at)| now_ms.saturating_sub(*at) > ttl_ms)
    {
        if let Some((_, payload, _)) = channel.history.pop_front() {
            n += 1;
            bytes += weight(&payload);
        }
    }
    if channel.history.is_empty() && channel.history.capacity() > 0 {
        channel.history = VecDeque::new();
    }
    if held && channel.history.is_empty() {
        bytes += entry_weight(name);
    }
    (n, bytes)
}

/// A channel's epoch as clients see it: the run's, then the incarnation.
fn epoch_string(run_epoch: u64, incarnation: u64) -> String {
    format!("{run_epoch:016x}-{incarnation}")
}

/// The shards whose bit is set in `mask`.
pub fn shards_in(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |p| mask & (1u64 << p) != 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_byte_budget_evicts_the_oldest_first() {
        let mut owner = Owner::new(
            HistoryLimits {
                size: 100,
                ttl_ms: 1_000_000,
                // Both channels keep some history: both entries count.
                max_bytes: 15 * weight(&payload("x")) + entry_weight("old") + entry_weight("new"),
            },
            1,
        );
        let one = payload("x");
        let w = weight(&one);
        let entries = entry_weight("old") + entry_weight("new");
        for i in 0..20 {
            owner.order("old", &one, i, false);
        }
        for i in 0..10 {
            owner.order("new", &one, 100 + i, false);
        }
        assert_eq!(owner.history_len(), 30);
        owner.sweep(200, |_| true);
        assert!(
            owner.history_bytes() <= 15 * w + entries,
            "{}",
            owner.history_bytes()
        );
        assert_eq!(owner.history_len(), (owner.history_bytes() - entries) / w);
        let epoch = owner.position("new", None, 200).epoch;
        let new = owner.position("new", Some((0, &epoch)), 200);
        assert_eq!(new.recovered, Some(true), "the newest channel is untouched");
        let epoch = owner.position("old", None, 200).epoch;
        let old = owner.position("old", Some((0, &epoch)), 200);
        assert_eq!(old.recovered, Some(false), "the oldest were evicted");
    }

    /// One publication to each of many channels: their entries are counted
    /// with their history, so the byte budget bounds how many are kept
    /// (each costs ~4x its one small publication).
    #[test]
    fn channels_count_against_the_byte_budget_and_go_with_their_history() {
        let limit = 100 * 1024;
        let mut owner = Owner::new(
            HistoryLimits {
                size: 100,
                ttl_ms: 1_000_000,
                max_bytes: limit,
            },
            1,
        );
        let one = payload("1");
        for i in 0..10_000u64 {
            owner.order(&format!("u{i}"), &one, i, false);
        }
        assert_eq!(owner.channel_count(), 10_000);
        assert!(owner.history_bytes() > 10_000 * CHANNEL_ENTRY_BYTES);
        assert!(owner.well_over_budget(), "the shard sweeps at once");
        // A subscribed channel keeps its entry, with nothing left in history.
        owner.sweep(20_000, |name| name == "u0");
        assert!(owner.history_bytes() <= limit, "{}", owner.history_bytes());
        assert!(!owner.well_over_budget());
        let kept = owner.channel_count();
        assert!((100..200).contains(&kept), "{kept} channels kept");
        assert_eq!(owner.seq_of("u0"), Some(1), "subscribed: kept");
        assert_eq!(owner.seq_of("u9999"), Some(1), "the newest: kept");
        assert_eq!(owner.seq_of("u1"), None, "the oldest: reclaimed");
        // Everything reclaimed, nothing counted.
        let mut owner_all_gone = owner;
        owner_all_gone.limits.ttl_ms = 0;
        owner_all_gone.sweep(1_000_000, |_| false);
        assert_eq!(
            (
                owner_all_gone.channel_count(),
                owner_all_gone.history_bytes()
            ),
            (0, 0)
        );
    }

    /// Channels kept only because they are subscribed hold no history and
    /// are not counted here (their subscriptions are): however many, they
    /// neither wipe other channels' history nor make every publication
    /// sweep the shard.
    #[test]
    fn subscribed_channels_without_history_leave_the_budget_to_history() {
        let mut owner = Owner::new(
            HistoryLimits {
                size: 100,
                ttl_ms: 1_000_000,
                max_bytes: 100 * 1024,
            },
            1,
        );
        for i in 0..10_000 {
            owner.set_interest(&format!("sub{i}"), 1, true, false);
        }
        owner.order("news", &payload("1"), 0, false);
        assert!(!owner.well_over_budget());
        owner.sweep(10, |_| false);
        assert_eq!(owner.channel_count(), 10_001);
        assert_eq!(owner.history_len(), 1, "the publication is kept");
    }

    use bytes::Bytes;

    use super::*;
    use crate::protocol::PayloadKind;

    fn owner(size: usize, ttl_ms: u64) -> Owner {
        Owner::new(
            HistoryLimits {
                size,
                ttl_ms,
                max_bytes: 1 << 30,
            },
            0xabc,
        )
    }

    fn payload(text: &'static str) -> Payload {
        Payload::new(PayloadKind::Json, Bytes::from_static(text.as_bytes()))
    }

    fn conflating(patterns: &[&str]) -> Owner {
        let patterns = patterns.iter().map(|p| ChannelPattern::parse(p).unwrap());
        owner(0, 1000).conflating(patterns.collect())
    }

    #[test]
    fn only_channels_matching_conflate_keep_a_publications_key() {
        let owner = conflating(&["prices.*"]);
        assert!(owner.conflates("prices.eur"));
        assert!(!owner.conflates("news"));
        let mut keyed = payload("1").with_key("k");
        owner.drop_key_unless_conflating("prices.eur", &mut keyed);
        assert_eq!(keyed.key.as_deref(), Some("k"));
        owner.drop_key_unless_conflating("news", &mut keyed);
        assert_eq!(keyed.key, None);
    }

    #[test]
    fn no_channel_conflates_without_patterns() {
        assert!(!owner(1, 1).conflates("prices.eur"));
    }

    #[test]
    fn a_key_retried_within_its_window_is_a_duplicate_of_its_seq() {
        use idempotency::Source::Api;
        let mut owner = owner(10, 1000).remembering_for(100);
        assert_eq!(owner.admit("ch", "k", Api, 0), Admission::New);
        let seq = owner.order("ch", &payload("1"), 0, false).seq;
        owner.remember("ch", "k", seq, 0, Api);
        assert!(owner.idempotency_bytes() > 0);
        assert_eq!(owner.admit("ch", "k", Api, 50), Admission::Duplicate(seq));
        // The same key on another channel is another publication.
        assert_eq!(owner.admit("other", "k", Api, 50), Admission::New);
        // After the window, the key is new again; a sweep forgets it.
        assert_eq!(owner.admit("ch", "k", Api, 101), Admission::New);
        owner.sweep(200, |_| false);
        assert_eq!(owner.idempotency_bytes(), 0);
    }

    #[test]
    fn a_full_key_store_refuses_a_new_key_but_recalls_a_known_one() {
        use idempotency::Source::Client;
        let mut owner = owner(10, 1000).remembering_for(1000);
        // Clients may fill half the store.
        let half = idempotency::MAX_REMEMBERED / 2;
        for i in 0..half {
            owner.remember("ch", &i.to_string(), i as u64 + 1, 0, Client);
        }
        assert_eq!(owner.admit("ch", "0", Client, 1), Admission::Duplicate(1));
        assert!(matches!(
            owner.admit("ch", "new", Client, 1),
            Admission::Refused(idempotency::Full::ClientKeys { .. })
        ));
        assert_eq!(
            owner.admit("ch", "new", idempotency::Source::Api, 1),
            Admission::New
        );
    }

    #[test]
    fn deltas_are_made_while_wanted_against_the_publication_before() {
        let text: &'static str =
            Box::leak(format!("[{}]", "1234567,".repeat(40) + "0").into_boxed_str());
        let edited: &'static str =
            Box::leak(text.replacen("1234567", "7654321", 1).into_boxed_str());
        for history in [0, 10] {
            let mut owner = owner(history, 60_000);
            // Nobody wants deltas: none made.
            assert!(owner.order("b", &payload(text), 0, false).delta.is_none());
            // Wanted here: the first has no base (history off), then one.
            let first = owner.order("b", &payload(text), 0, true);
            assert_eq!(first.delta.is_some(), history > 0, "history holds the base");
            let second = owner.order("b", &payload(edited), 0, true).delta.unwrap();
            assert!(second.len() < 40, "{} B", second.len());
            let rebuilt = fossil_delta::apply(text, &second).unwrap();
            assert_eq!(rebuilt, edited.as_bytes());
            // Wanted elsewhere (another shard's interest) counts too.
            owner.set_interest("b", 2, true, true);
            assert!(owner.order("b", &payload(text), 0, false).delta.is_some());
            // Text payloads (raw rooms) have no delta, and are no base.
            let raw = Payload::new(PayloadKind::Text, Bytes::from_static(text.as_bytes()));
            assert!(owner.order("b", &raw, 0, false).delta.is_none());
            assert!(owner.order("b", &payload(text), 0, false).delta.is_none());
        }
    }

    #[test]
    fn seq_counts_per_channel_from_one() {
        let mut owner = owner(10, 1000);
        assert_eq!(owner.order("a", &payload("1"), 0, false).seq, 1);
        assert_eq!(owner.order("a", &payload("2"), 0, false).seq, 2);
        assert_eq!(owner.order("b", &payload("1"), 0, false).seq, 1);
        assert_eq!(owner.last_seq("a"), 2);
        assert_eq!(owner.last_seq("zzz"), 0);
    }

    #[test]
    fn interest_routes_only_to_interested_shards() {
        let mut owner = owner(10, 1000);
        owner.set_interest("a", 3, true, false);
        owner.set_interest("a", 1, true, false);
        owner.set_interest("a", 3, false, false);
        let mask = owner.order("a", &payload("1"), 0, false).remote;
        assert_eq!(shards_in(mask).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn recovers_what_history_holds_and_says_when_it_cannot() {
        let mut owner = owner(3, 1000);
        for i in 0..5 {
            owner.order("a", &payload("x"), i, false);
        }
        let epoch = owner.position("a", None, 5).epoch;
        assert_eq!(epoch, "0000000000000abc-1");
        let got = owner.position("a", Some((3, &epoch)), 5);
        assert_eq!((got.seq, got.recovered), (5, Some(true)));
        assert_eq!(got.missed.iter().map(|m| m.0).collect::<Vec<_>>(), [4, 5]);
        let edge = owner.position("a", Some((2, &epoch)), 5);
        assert_eq!(edge.recovered, Some(true), "3..=5 are kept");
        assert_eq!(edge.missed.len(), 3);
        let too_old = owner.position("a", Some((1, &epoch)), 5);
        assert_eq!(too_old.recovered, Some(false), "2 was evicted");
        assert!(too_old.missed.is_empty());
        let other_run = owner.position("a", Some((4, "0000000000000abd-1")), 5);
        assert_eq!(other_run.recovered, Some(false));
        let future = owner.position("a", Some((9, &epoch)), 5);
        assert_eq!(future.recovered, Some(false));
        let current = owner.position("a", Some((5, &epoch)), 5);
        assert_eq!(current.recovered, Some(true));
        assert!(current.missed.is_empty());
    }

    #[test]
    fn history_expires_and_idle_channels_are_reclaimed_under_a_new_epoch() {
        let mut owner = owner(10, 100);
        owner.order("a", &payload("x"), 0, false);
        owner.order("a", &payload("y"), 50, false);
        owner.order("kept", &payload("z"), 0, false);
        owner.set_interest("kept", 1, true, false);
        let epoch = owner.position("a", None, 60).epoch;
        assert_eq!(owner.sweep(120, |_| false), 0, "a still holds seq 2");
        assert_eq!(owner.history_len(), 1);
        assert_eq!(
            owner.sweep(200, |_| false),
            1,
            "a is reclaimed, kept is not"
        );
        assert_eq!(owner.last_seq("kept"), 1);
        let again = owner.position("a", Some((2, &epoch)), 200);
        assert_eq!(again.seq, 0);
        assert_ne!(again.epoch, epoch);
        assert_eq!(again.recovered, Some(false));
        owner.order("local", &payload("x"), 0, false);
        assert_eq!(owner.sweep(500, |name| name == "local"), 1, "only a again");
        assert_eq!(owner.history_len(), 0);
        assert_eq!(
            owner.history_bytes(),
            0,
            "kept, and counted by their subscriptions"
        );
        assert_eq!(owner.last_seq("local"), 1, "local subscribers keep it");
    }

    fn seqs(filled: &Filled) -> Vec<u64> {
        filled.deliver.iter().map(|(o, _)| o.seq).collect()
    }

    #[test]
    fn a_broker_order_is_followed_dropping_duplicates_and_stopping_at_gaps() {
        let mut owner = owner(0, 1000);
        let p = payload("x");
        let step = |owner: &mut Owner, seq, epoch| owner.follow("c", (seq, epoch), &p, 0, false);
        // Not followed yet: the first one is taken as it comes.
        assert!(matches!(step(&mut owner, 7, "e1"), Followed::Deliver(o) if o.seq == 7));
        assert!(matches!(step(&mut owner, 8, "e1"), Followed::Deliver(o) if o.seq == 8));
        assert!(
            matches!(step(&mut owner, 8, "e1"), Followed::Drop),
            "a duplicate"
        );
        assert!(
            matches!(step(&mut owner, 5, "e1"), Followed::Drop),
            "an old one"
        );
        // 9 and 10 went missing: fill from after 8; meanwhile, drop.
        assert!(matches!(
            step(&mut owner, 11, "e1"),
            Followed::Gap { after: 8 }
        ));
        assert!(matches!(step(&mut owner, 12, "e1"), Followed::Drop));
        let history: Vec<(u64, Payload)> = (9..=12).map(|s| (s, payload("x"))).collect();
        let filled = owner.filled("c", (12, "e1"), &history, 0, false);
        assert_eq!((filled.resync, seqs(&filled)), (None, vec![9, 10, 11, 12]));
        assert!(matches!(step(&mut owner, 13, "e1"), Followed::Deliver(o) if o.seq == 13));
        // A new epoch (Redis lost the channel): resync, then go on.
        assert!(matches!(step(&mut owner, 1, "e2"), Followed::Resync(o) if o.seq == 1));
        assert!(matches!(step(&mut owner, 2, "e2"), Followed::Deliver(o) if o.seq == 2));
        // Unfollowed (pushes stopped): the next is taken as is again.
        owner.unfollow("c");
        assert!(matches!(step(&mut owner, 40, "e2"), Followed::Deliver(o) if o.seq == 40));
    }

    #[test]
    fn a_fill_that_history_cannot_cover_resyncs_first() {
        let mut owner = owner(0, 1000);
        let p = payload("x");
        owner.follow("c", (3, "e"), &p, 0, false);
        assert_eq!(owner.begin_fill("c"), Some(3), "a reconnect fills after 3");
        assert!(matches!(
            owner.follow("c", (9, "e"), &p, 0, false),
            Followed::Drop
        ));
        // The stream kept only 7..=9.
        let kept: Vec<(u64, Payload)> = (7..=9).map(|s| (s, payload("x"))).collect();
        let filled = owner.filled("c", (9, "e"), &kept, 0, false);
        assert_eq!((filled.resync, seqs(&filled)), (Some(6), vec![7, 8, 9]));
        // An answer that is one page asks for the next; pushes meanwhile
        // are dropped (they come with a later page).
        owner.begin_fill("c");
        let page: Vec<(u64, Payload)> = (10..=11).map(|s| (s, payload("x"))).collect();
        let first = owner.filled("c", (13, "e"), &page, 0, false);
        assert_eq!(
            (first.resync, first.more, seqs(&first)),
            (None, Some(11), vec![10, 11])
        );
        assert!(matches!(
            owner.follow("c", (14, "e"), &p, 0, false),
            Followed::Drop
        ));
        let rest: Vec<(u64, Payload)> = (12..=14).map(|s| (s, payload("x"))).collect();
        let last = owner.filled("c", (14, "e"), &rest, 0, false);
        assert_eq!(
            (last.resync, last.more, seqs(&last)),
            (None, None, vec![12, 13, 14])
        );
        // No history at all: resync at the top.
        owner.begin_fill("c");
        let filled = owner.filled("c", (16, "e"), &[], 0, false);
        assert_eq!((filled.resync, seqs(&filled)), (Some(16), vec![]));
        // The epoch changed meanwhile: resync at the top, nothing delivered.
        owner.begin_fill("c");
        let filled = owner.filled("c", (2, "other"), &kept, 0, false);
        assert_eq!((filled.resync, seqs(&filled)), (Some(2), vec![]));
        assert!(matches!(
            owner.follow("c", (3, "other"), &p, 0, false),
            Followed::Deliver(_)
        ));
        // A fill that failed leaves the channel followed as before.
        owner.begin_fill("c");
        owner.fill_failed("c");
        assert!(matches!(
            owner.follow("c", (4, "other"), &p, 0, false),
            Followed::Deliver(_)
        ));
        assert_eq!(owner.begin_fill("never-seen"), None);
    }

    /// Found by the simulation (`simulation/follow.rs`, seed 2): the last
    /// subscriber left (unfollowed), Redis dropped the link with two pushes
    /// in it, and a subscriber answered from what the shard knew (seq 4)
    /// got seq 7 next, 5 and 6 skipped without a resync.
    #[test]
    fn a_subscriber_answered_while_the_broker_is_away_is_filled_when_it_returns() {
        let mut owner = owner(0, 1000);
        let p = payload("x");
        owner.follow("c", (4, "e"), &p, 0, false);
        owner.unfollow("c");
        let known = owner.known_position("c", true);
        assert_eq!((known.seq, known.recovered), (4, Some(false)));
        assert_eq!(
            owner.begin_fill("c"),
            Some(4),
            "the reconnect fills after 4"
        );
        let missed: Vec<(u64, Payload)> = (5..=7).map(|s| (s, payload("x"))).collect();
        let filled = owner.filled("c", (7, "e"), &missed, 0, false);
        assert_eq!((filled.resync, seqs(&filled)), (None, vec![5, 6, 7]));
        // A channel never followed has no position to fill from.
        owner.known_position("never", false);
        assert_eq!(owner.begin_fill("never"), None);
    }

    #[test]
    fn broker_positions_recover_what_the_stream_holds_after_since() {
        let mut owner = owner(0, 1000);
        let kept: Vec<(u64, Payload)> = (4..=6).map(|s| (s, payload("x"))).collect();
        let (got, resync) = owner.broker_position("c", (6, "e"), &kept, Some((3, "e")));
        assert_eq!((got.seq, got.recovered, resync), (6, Some(true), None));
        assert_eq!(
            got.missed.iter().map(|m| m.0).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        let (trimmed, _) = owner.broker_position("c", (6, "e"), &kept[1..], Some((3, "e")));
        assert_eq!(trimmed.recovered, Some(false), "4 is gone");
        assert!(trimmed.missed.is_empty());
        let (current, _) = owner.broker_position("c", (6, "e"), &[], Some((6, "e")));
        assert_eq!(current.recovered, Some(true));
        let (other, _) = owner.broker_position("c", (6, "e"), &kept, Some((3, "old")));
        assert_eq!(other.recovered, Some(false));
        let (ahead, _) = owner.broker_position("c", (6, "e"), &[], Some((9, "e")));
        assert_eq!(ahead.recovered, Some(false));
        // Pushes continue after the answer's top.
        assert!(matches!(
            owner.follow("c", (7, "e"), &payload("x"), 0, false),
            Followed::Deliver(_)
        ));
        // An answer in a new epoch resyncs the live subscribers.
        let (renewed, resync) = owner.broker_position("c", (1, "e2"), &[], None);
        assert_eq!((renewed.epoch.as_str(), resync), ("e2", Some(1)));
        // Without the broker: what is known, nothing recovered.
        let known = owner.known_position("c", true);
        assert_eq!(
            (known.seq, known.epoch.as_str(), known.recovered),
            (1, "e2", Some(false))
        );
    }

    fn history_seqs(owner: &mut Owner, name: &str, now_ms: u64) -> Vec<u64> {
        owner
            .history(name, 0, usize::MAX, now_ms)
            .entries
            .iter()
            .map(|(seq, _)| *seq)
            .collect()
    }

    #[test]
    fn the_history_keeps_the_newest_size_publications() {
        let mut owner = owner(3, 1000);
        for i in 0..10 {
            owner.order("a", &payload("x"), i, false);
        }
        assert_eq!(history_seqs(&mut owner, "a", 10), [8, 9, 10]);
        assert_eq!(owner.history_len(), 3);
    }

    #[test]
    fn without_history_nothing_is_kept_and_a_resubscriber_behind_is_not_recovered() {
        let mut owner = owner(0, 1000);
        for i in 0..3 {
            owner.order("a", &payload("x"), i, false);
        }
        assert_eq!((owner.history_len(), owner.history_bytes()), (0, 0));
        let epoch = owner.position("a", None, 3).epoch;
        let behind = owner.position("a", Some((2, &epoch)), 3);
        assert_eq!((behind.seq, behind.recovered), (3, Some(false)));
        let current = owner.position("a", Some((3, &epoch)), 3);
        assert_eq!(current.recovered, Some(true), "nothing missed");
    }

    #[test]
    fn system_channels_are_ordered_but_keep_no_history() {
        let mut owner = owner(10, 1000);
        assert_eq!(owner.order("$stats", &payload("{}"), 0, false).seq, 1);
        assert_eq!(owner.order("$stats", &payload("{}"), 1, false).seq, 2);
        assert_eq!((owner.history_len(), owner.history_bytes()), (0, 0));
    }

    #[test]
    fn a_publication_as_old_as_the_ttl_is_kept_and_older_expires() {
        let mut owner = owner(10, 100);
        owner.order("a", &payload("x"), 0, false);
        assert_eq!(history_seqs(&mut owner, "a", 100), [1]);
        assert!(history_seqs(&mut owner, "a", 101).is_empty());
        assert_eq!((owner.history_len(), owner.history_bytes()), (0, 0));
    }

    #[test]
    fn a_history_page_stops_at_its_limit_and_says_there_is_more() {
        let mut owner = owner(10, 1000);
        for i in 0..5 {
            owner.order("a", &payload("x"), i, false);
        }
        let first = owner.history("a", 0, 2, 5);
        assert_eq!(
            first.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(first.seq, 5);
        assert!(first.more());
        let last = owner.history("a", 3, 2, 5);
        assert_eq!(last.entries.iter().map(|e| e.0).collect::<Vec<_>>(), [4, 5]);
        assert!(!last.more());
        assert!(!owner.history("a", 5, 2, 5).more(), "an empty page");
    }

    #[test]
    fn each_new_channel_gets_an_epoch_of_its_own_under_the_runs() {
        let mut owner = owner(10, 1000);
        let a = owner.position("a", None, 0);
        let b = owner.position("b", None, 0);
        assert_eq!((a.seq, b.seq), (0, 0));
        assert_ne!(a.epoch, b.epoch);
        for epoch in [&a.epoch, &b.epoch] {
            assert!(epoch.starts_with("0000000000000abc-"), "{epoch}");
        }
        assert_eq!(owner.position("a", None, 0).epoch, a.epoch, "stable");
    }

    #[test]
    fn remote_interest_is_reported_per_channel_and_listed() {
        let mut owner = owner(10, 1000);
        owner.set_interest("a", 5, true, false);
        owner.set_interest("a", 63, true, false);
        owner.set_interest("b", 2, true, false);
        owner.set_interest("b", 2, false, false);
        assert_eq!(owner.remote_mask("a"), 1 << 5 | 1 << 63);
        assert!(owner.has_remote_interest("a"));
        assert!(!owner.has_remote_interest("b"));
        assert!(!owner.has_remote_interest("never"));
        assert_eq!(owner.remotely_subscribed().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn shards_in_lists_the_set_bits_in_order() {
        assert_eq!(
            shards_in(1 | 1 << 5 | 1 << 7 | 1 << 63).collect::<Vec<_>>(),
            [0, 5, 7, 63]
        );
        assert_eq!(shards_in(0).count(), 0);
    }

    #[test]
    fn no_delta_is_made_against_a_publication_of_another_epoch() {
        let text: &'static str =
            Box::leak(format!("[{}]", "1234567,".repeat(40) + "0").into_boxed_str());
        let mut owner = owner(10, 1000);
        owner.follow("c", (5, "e1"), &payload(text), 0, true);
        let same = owner.follow("c", (6, "e1"), &payload(text), 0, true);
        assert!(matches!(
            same,
            Followed::Deliver(Ordered { delta: Some(_), .. })
        ));
        // Redis lost the channel: seq 1 of the new epoch is no successor
        // of seq 6, whatever the history holds.
        let renewed = owner.follow("c", (1, "e2"), &payload(text), 0, true);
        assert!(matches!(
            renewed,
            Followed::Resync(Ordered { delta: None, .. })
        ));
    }

    #[test]
    fn a_since_at_the_largest_seq_is_not_recovered_from_the_broker() {
        // A client's `since` is any u64: `since + 1` must not overflow.
        let mut owner = owner(0, 1000);
        let kept: Vec<(u64, Payload)> = (1..=2).map(|s| (s, payload("x"))).collect();
        let (position, _) = owner.broker_position("c", (2, "e"), &kept, Some((u64::MAX, "e")));
        assert_eq!(
            (position.recovered, position.missed.len()),
            (Some(false), 0)
        );
    }

    #[test]
    fn a_since_at_the_largest_seq_is_not_recovered_from_history() {
        let mut owner = owner(10, 1000);
        owner.order("a", &payload("x"), 0, false);
        let epoch = owner.position("a", None, 0).epoch;
        let position = owner.position("a", Some((u64::MAX, &epoch)), 0);
        assert_eq!(position.recovered, Some(false));
    }
}
