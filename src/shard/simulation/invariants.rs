//! The invariants every run must keep, checked as the clients read and once
//! the run is quiet. It knows only what clients saw (messages, acks,
//! answers) and the run's [`Setup`]:
//! - one order per channel: a `seq` carries the same data wherever it is
//!   seen, and no data is published under two `seq`s (an idempotency key's
//!   publications are one);
//! - every stream a subscriber reads is in `seq` order with no gap and no
//!   duplicate from where it starts — after its ack's `seq`, or after
//!   `since` when the ack says `recovered` —, on conflating channels with
//!   skips that its `conflated` counts account for exactly;
//! - an ack never goes back on what was seen before its op was sent;
//!   `recovered` is true exactly when the history still holds what was
//!   missed (or false because the replay did not fit, which the shards
//!   count);
//! - once quiet, every live stream holds the channel's last `seq` (nothing
//!   acknowledged is lost) and, conflating, the newest value of each key;
//!   and every shard lists the live members of each presence channel.
//!
//! The first broken one is kept with the run's step.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    client::key_of,
    schedule::{conflates, Setup},
};

/// A broken invariant.
#[derive(Debug, Clone)]
pub(super) struct Violation {
    pub(super) invariant: &'static str,
    pub(super) channel: Option<String>,
    pub(super) detail: String,
    /// The schedule step it was found at (the run's length: once quiet).
    pub(super) step: usize,
}

/// How much a run exercised (to show the runs reach what they check).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) msgs: u64,
    /// Messages that stood for older ones.
    pub(super) conflated: u64,
    pub(super) pub_acks: u64,
    pub(super) sub_acks: u64,
    /// Resumes answered `recovered:true` and `false`.
    pub(super) recovered: u64,
    pub(super) unrecovered: u64,
    /// Live streams found complete once quiet, and conflating ones found
    /// holding each key's newest value.
    pub(super) live_streams_checked: u64,
    pub(super) newest_checked: u64,
    pub(super) presence_checked: u64,
    /// Channels seen under a new epoch (forgotten by a sweep, then used).
    pub(super) new_epochs: u64,
    /// Connections the server closed (slow consumers).
    pub(super) server_closes: u64,
}

impl Counts {
    pub(super) fn add(&mut self, other: &Counts) {
        self.msgs += other.msgs;
        self.conflated += other.conflated;
        self.pub_acks += other.pub_acks;
        self.sub_acks += other.sub_acks;
        self.recovered += other.recovered;
        self.unrecovered += other.unrecovered;
        self.live_streams_checked += other.live_streams_checked;
        self.newest_checked += other.newest_checked;
        self.presence_checked += other.presence_checked;
        self.new_epochs += other.new_epochs;
        self.server_closes += other.server_closes;
    }
}

/// One line of a traced run.
#[derive(Debug, Clone)]
pub(super) struct Note {
    pub(super) step: usize,
    pub(super) text: String,
}

/// What a `sub` ack said, and what its op asked.
#[derive(Debug)]
pub(super) struct SubAck {
    pub(super) seq: u64,
    pub(super) epoch: String,
    pub(super) recovered: Option<bool>,
    pub(super) conflate: bool,
    pub(super) since: Option<(u64, String)>,
    /// The highest `seq` of the channel seen when the `sub` was sent.
    pub(super) top_at_send: u64,
}

/// What is known of one channel from everything seen.
#[derive(Debug, Default)]
struct Channel {
    data_by_seq: BTreeMap<u64, String>,
    seq_by_data: BTreeMap<String, u64>,
    /// The highest `seq` seen (in a message or an ack).
    top: u64,
    /// The epochs acks named, with the highest `seq` each was acked at.
    epochs: BTreeMap<String, u64>,
}

/// One subscriber's stream of one channel on one connection, from the ack
/// that started it (or its first message, without an ack).
#[derive(Debug)]
struct Stream {
    /// It was acknowledged, so it holds every publication from `start` on.
    /// Without an ack it holds publications in order, no more: it is live
    /// at once and may first get what the shard still had on its way for
    /// an earlier subscriber, publications older than the `sub` (then a
    /// gap to the first one the owner sent after hearing of it).
    exact: bool,
    /// Its `conflated` counts can be checked: an exact stream. (A keyed
    /// publication used to replace one queued for an earlier subscription
    /// of the channel on the connection, seed 33; `Shard::end_subscription`
    /// makes those final.)
    accounts: bool,
    /// The first `seq` it must hold (`None`: not acknowledged, and nothing
    /// read yet).
    start: Option<u64>,
    last: Option<u64>,
    /// Publications its messages stand for (each one, and `conflated`).
    accounted: u64,
    /// Per conflation key, the `seq` of the last message read with it.
    newest: BTreeMap<String, u64>,
}

impl Stream {
    fn new(exact: bool, accounts: bool, start: Option<u64>) -> Self {
        Stream {
            exact,
            accounts,
            start,
            last: None,
            accounted: 0,
            newest: BTreeMap::new(),
        }
    }
}

/// Checks the invariants of one run.
pub(super) struct Checker {
    history_size: u64,
    channels: BTreeMap<String, Channel>,
    /// By client and channel.
    streams: BTreeMap<usize, BTreeMap<String, Stream>>,
    /// Resumes answered `recovered:false` though history held what they
    /// missed: each must be a replay the shard refused (it counts them).
    unexplained_unrecovered: u64,
    violation: Option<Violation>,
    counts: Counts,
    step: usize,
    /// Everything that happened, when the run is traced.
    notes: Option<Vec<Note>>,
}

impl Checker {
    pub(super) fn new(setup: &Setup, traced: bool) -> Self {
        Checker {
            history_size: setup.history_size as u64,
            channels: BTreeMap::new(),
            streams: BTreeMap::new(),
            unexplained_unrecovered: 0,
            violation: None,
            counts: Counts::default(),
            step: 0,
            notes: traced.then(Vec::new),
        }
    }

    pub(super) fn set_step(&mut self, step: usize) {
        self.step = step;
    }

    /// Records what happened, when the run is traced.
    pub(super) fn note(&mut self, text: impl FnOnce() -> String) {
        if let Some(notes) = &mut self.notes {
            notes.push(Note {
                step: self.step,
                text: text(),
            });
        }
    }

    pub(super) fn traced(&self) -> bool {
        self.notes.is_some()
    }

    pub(super) fn counts(&self) -> &Counts {
        &self.counts
    }

    pub(super) fn notes(&self) -> &[Note] {
        self.notes.as_deref().unwrap_or_default()
    }

    pub(super) fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// Reports a broken invariant (the first one is kept).
    pub(super) fn fail(&mut self, invariant: &'static str, channel: Option<&str>, detail: String) {
        self.note(|| format!("VIOLATION of {invariant:?}: {detail}"));
        self.violation.get_or_insert(Violation {
            invariant,
            channel: channel.map(str::to_owned),
            detail,
            step: self.step,
        });
    }

    /// The highest `seq` of `ch` seen so far.
    pub(super) fn top(&self, ch: &str) -> u64 {
        self.channels.get(ch).map_or(0, |c| c.top)
    }

    fn channel(&mut self, ch: &str) -> &mut Channel {
        if !self.channels.contains_key(ch) {
            self.channels.insert(ch.to_owned(), Channel::default());
        }
        // Inserted if it was not there.
        self.channels.get_mut(ch).expect("a channel entry")
    }

    /// `seq` of `ch` carries `data`: the same everywhere, and `data` under
    /// no other `seq`.
    fn record(&mut self, ch: &str, seq: u64, data: &str) {
        let channel = self.channel(ch);
        channel.top = channel.top.max(seq);
        let had = channel
            .data_by_seq
            .entry(seq)
            .or_insert_with(|| data.into());
        let had = (had != data).then(|| had.clone());
        let was = match channel.seq_by_data.get(data) {
            Some(was) => *was,
            None => *channel.seq_by_data.entry(data.into()).or_insert(seq),
        };
        if let Some(had) = had {
            let detail = format!("seq {seq} carries {had:?} and {data:?}");
            self.fail("one order per channel", Some(ch), detail);
        } else if was != seq {
            let detail = format!("{data:?} was published as seq {was} and as seq {seq}");
            self.fail("published once", Some(ch), detail);
        }
    }

    /// `client` subscribed to `ch` without an `id` (nothing acknowledges
    /// it: its stream starts at its first message).
    pub(super) fn subscribed_unacked(&mut self, client: usize, ch: &str) {
        self.start_stream(client, ch, Stream::new(false, false, None));
    }

    /// A new stream of `ch` for `client`, in place of the one before.
    fn start_stream(&mut self, client: usize, ch: &str, stream: Stream) {
        self.streams
            .entry(client)
            .or_default()
            .insert(ch.to_owned(), stream);
    }

    /// `client` read the ack of its `sub` to `ch`: a new stream starts.
    pub(super) fn sub_acked(&mut self, client: usize, ch: &str, ack: SubAck) {
        let history_size = self.history_size;
        let channel = self.channel(ch);
        channel.top = channel.top.max(ack.seq);
        let known = channel.epochs.len();
        let seq = channel.epochs.entry(ack.epoch.clone()).or_default();
        *seq = (*seq).max(ack.seq);
        // A channel is forgotten only with no history: with history kept,
        // only an epoch without publications gives way to another.
        let numbered: Vec<&String> = (channel.epochs.iter())
            .filter_map(|(epoch, seq)| (*seq > 0).then_some(epoch))
            .collect();
        let numbered = (numbered.len() > 1).then(|| format!("publications under {numbered:?}"));
        self.counts.new_epochs += u64::from(known > 0 && channel.epochs.len() > known);
        if let Some(detail) = numbered {
            self.fail(
                "an epoch holds while its channel has history",
                Some(ch),
                detail,
            );
        }
        if ack.conflate != conflates(ch) {
            let detail = format!("the ack says conflate: {}", ack.conflate);
            self.fail("acks say whether the channel conflates", Some(ch), detail);
        }
        if ack.seq < ack.top_at_send {
            let detail = format!(
                "ack at seq {}, seq {} seen before",
                ack.seq, ack.top_at_send
            );
            self.fail(
                "a subscription starts after what was seen",
                Some(ch),
                detail,
            );
        }
        self.counts.sub_acks += 1;
        let mut start = ack.seq + 1;
        match (&ack.since, ack.recovered) {
            (None, None) => {}
            (Some((since, epoch)), Some(recovered)) => {
                let same_epoch = *epoch == ack.epoch;
                let held = same_epoch && *since <= ack.seq && ack.seq - since <= history_size;
                if same_epoch && *since > ack.seq {
                    let detail = format!("since {since}, ack at seq {}", ack.seq);
                    self.fail(
                        "a subscription starts after what was seen",
                        Some(ch),
                        detail,
                    );
                } else if recovered && !held {
                    let detail = format!(
                        "since {since} of {epoch}: recovered at seq {} of {}, history {history_size}",
                        ack.seq, ack.epoch
                    );
                    self.fail("recovered only within history", Some(ch), detail);
                } else if held && !recovered {
                    self.unexplained_unrecovered += 1;
                }
                if recovered {
                    start = since + 1;
                    self.counts.recovered += 1;
                } else {
                    self.counts.unrecovered += 1;
                }
            }
            (since, recovered) => {
                let detail = format!("since {since:?}, recovered {recovered:?}");
                self.fail(
                    "an ack says recovered exactly after since",
                    Some(ch),
                    detail,
                );
            }
        }
        self.start_stream(client, ch, Stream::new(true, true, Some(start)));
    }

    /// `client` read the ack of its `unsub` of `ch`: its stream ends.
    pub(super) fn unsub_acked(&mut self, client: usize, ch: &str) {
        self.streams.entry(client).or_default().remove(ch);
    }

    /// The server closed `client`'s connection (its streams end when the
    /// client sees it).
    pub(super) fn closed_by_server(&mut self, client: usize) {
        self.note(|| format!("client {client} was closed by the server"));
        self.counts.server_closes += 1;
    }

    /// Every stream of `client` ended with its connection.
    pub(super) fn disconnected(&mut self, client: usize) {
        self.streams.remove(&client);
    }

    /// A publication's ack: it got `seq`; `floor`: the highest `seq` seen
    /// when it was sent (without an idempotency key, its own is higher).
    pub(super) fn pub_acked(&mut self, ch: &str, seq: u64, data: &str, floor: Option<u64>) {
        self.counts.pub_acks += 1;
        self.record(ch, seq, data);
        if let Some(floor) = floor.filter(|floor| seq <= *floor) {
            let detail = format!("{data:?} got seq {seq}, seq {floor} seen before it was sent");
            self.fail(
                "a publication is ordered after what was seen",
                Some(ch),
                detail,
            );
        }
    }

    /// `client` read publication `seq` of `ch`.
    pub(super) fn msg(&mut self, client: usize, ch: &str, seq: u64, data: &str, conflated: u64) {
        self.counts.msgs += 1;
        self.counts.conflated += u64::from(conflated > 0);
        self.record(ch, seq, data);
        let conflating = conflates(ch);
        if conflated > 0 && !conflating {
            let detail = format!("seq {seq} stands for {conflated} others");
            self.fail("only conflating channels conflate", Some(ch), detail);
        }
        let Some(stream) = self.streams.get_mut(&client).and_then(|s| s.get_mut(ch)) else {
            let detail = format!("client {client} got seq {seq} unsubscribed");
            return self.fail("messages only for subscriptions", Some(ch), detail);
        };
        let start = *stream.start.get_or_insert(seq);
        let expected = stream.last.map_or(start, |last| last + 1);
        stream.last = Some(seq);
        stream.accounted += 1 + conflated;
        if let Some(key) = key_of(data) {
            stream.newest.insert(key.to_owned(), seq);
        }
        let accounted = stream.accounted;
        let detail = format!("client {client} expected seq {expected}, got {seq}");
        if seq < expected {
            self.fail("no duplicate, in order", Some(ch), detail);
        } else if seq > expected && !conflating && stream.exact {
            self.fail("no gap", Some(ch), detail);
        } else if stream.accounts && accounted > seq + 1 - start {
            // Never more than the seqs skipped so far (docs/protocol.md).
            let detail =
                format!("client {client}: seq {seq} makes {accounted} publications since {start}");
            self.fail(
                "conflation accounts for every publication once",
                Some(ch),
                detail,
            );
        }
    }

    /// Once quiet: every live subscription (`client`'s of `ch`) read up to
    /// the channel's last `seq` — nothing acknowledged was lost — and,
    /// conflating, every publication once and each key's newest value.
    pub(super) fn live_stream_complete(&mut self, client: usize, ch: &str) {
        let top = self.top(ch);
        let Some(stream) = self.streams.get(&client).and_then(|s| s.get(ch)) else {
            let detail = format!("client {client} has no stream of a live subscription");
            return self.fail("every subscription is answered", Some(ch), detail);
        };
        let Some(start) = stream.start.filter(|_| stream.exact) else {
            return;
        };
        let last = stream.last.unwrap_or(start - 1);
        if last != top {
            let detail = format!("client {client} read up to seq {last}, the channel is at {top}");
            return self.fail("a live subscriber gets every publication", Some(ch), detail);
        }
        self.counts.live_streams_checked += 1;
        if !conflates(ch) || !stream.accounts {
            return;
        }
        if stream.accounted != top + 1 - start {
            let detail = format!(
                "client {client}: {} accounted from seq {start} to {top}",
                stream.accounted
            );
            return self.fail(
                "conflation accounts for every publication once",
                Some(ch),
                detail,
            );
        }
        // Each key's newest publication since the stream began, when every
        // publication of the channel was seen by someone.
        let channel = &self.channels[ch];
        if start > top {
            return;
        }
        let seen = channel.data_by_seq.range(start..=top).count() as u64;
        if seen != top + 1 - start {
            return;
        }
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for (seq, data) in channel.data_by_seq.range(start..=top) {
            if let Some(key) = key_of(data) {
                newest.insert(key, *seq);
            }
        }
        let read: BTreeMap<&str, u64> = stream.newest.iter().map(|(k, s)| (&**k, *s)).collect();
        if newest != read {
            let detail = format!("client {client} holds {read:?}, the newest are {newest:?}");
            return self.fail(
                "conflation keeps the newest value of each key",
                Some(ch),
                detail,
            );
        }
        self.counts.newest_checked += 1;
    }

    /// Once quiet: `shard` lists `members` (`count` in all) as `ch`'s, and
    /// the live members are `expected`.
    pub(super) fn presence(
        &mut self,
        ch: &str,
        shard: usize,
        (members, count): (&[String], u64),
        expected: &BTreeSet<String>,
    ) {
        let listed: BTreeSet<String> = members.iter().cloned().collect();
        if listed != *expected || count != expected.len() as u64 || members.len() != listed.len() {
            let detail =
                format!("shard {shard} lists {members:?} (count {count}), live: {expected:?}");
            self.fail("presence lists converge", Some(ch), detail);
        }
        self.counts.presence_checked += 1;
    }

    /// Once quiet: resumes answered `recovered:false` within history are
    /// all replays the shards refused (`refused` by their count).
    pub(super) fn unrecovered_explained(&mut self, refused: u64) {
        if self.unexplained_unrecovered > refused {
            let detail = format!(
                "{} resumes within history not recovered, {refused} replays refused",
                self.unexplained_unrecovered
            );
            self.fail(
                "recovered whenever history holds what was missed",
                None,
                detail,
            );
        }
    }
}
