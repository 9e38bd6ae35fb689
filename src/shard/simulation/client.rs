//! Simulated clients of the JSON protocol. Each connects to a shard,
//! subscribes (with and without `id`, resuming with `since` where it left
//! off), unsubscribes, publishes (acknowledged or not, some under
//! idempotency keys, some with a conflation key), asks who is present,
//! reads its queue now and then (a slow reader falls behind and conflates,
//! or is closed), disconnects and comes back. It keeps what a real client
//! would (its subscriptions, the ops waiting for an answer, where it left
//! off) and reports what it reads to the [`Checker`]. It reaches the server
//! only through [`Server`], so it does not care what runs behind it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::{
    envelope::{self, Envelope},
    invariants::{Checker, SubAck},
    rng::Rng,
    schedule::is_presence,
};

/// A connection, as the world names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ConnId(pub(super) usize);

/// What a client sends: the JSON protocol's ops, as the session hands
/// them to the shard.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Sub {
        ch: &'static str,
        id: Option<u64>,
        since: Option<(u64, String)>,
        join_leave: bool,
    },
    Unsub {
        ch: &'static str,
        id: Option<u64>,
    },
    Pub {
        ch: &'static str,
        data: String,
        id: Option<u64>,
        /// Its conflation key (ignored where the channel does not conflate).
        key: Option<&'static str>,
        idempotency_key: Option<String>,
    },
    /// `presence`: the page after `cursor` (pages are cut to a sixteenth
    /// of the queue bound).
    Presence {
        ch: &'static str,
        id: u64,
        cursor: Option<String>,
    },
}

/// The server as a client sees it: connections, ops in, frames out.
pub(super) trait Server {
    fn shards(&self) -> usize;
    fn connect(&mut self, shard: usize) -> ConnId;
    fn send(&mut self, conn: ConnId, op: &Op);
    /// The text of every frame queued for `conn`, in order, taken.
    fn receive(&mut self, conn: ConnId) -> Vec<Bytes>;
    /// Whether the server closed `conn` (a slow consumer).
    fn is_closed(&self, conn: ConnId) -> bool;
    /// The client goes away (or its session ends after the server closed).
    fn disconnect(&mut self, conn: ConnId);
    /// `conn` as presence lists name it.
    fn member_id(&self, conn: ConnId) -> String;
}

/// Conflation keys of the publications (`"key"`).
const KEYS: [&str; 3] = ["a", "b", "c"];
/// Idempotency keys are `k0`.. up to this.
const IDEMPOTENCY_KEYS: usize = 3;

/// The conflation key a publication's data says it was made with (data is
/// `<who>.<n>` or `i<n>`, then ` k=<key>` when it has one).
pub(super) fn key_of(data: &str) -> Option<&str> {
    data.split_once(" k=").map(|(_, key)| key)
}

/// An op sent with an `id`, until its answer is read.
#[derive(Debug)]
enum Waiting {
    Sub {
        ch: &'static str,
        since: Option<(u64, String)>,
        /// The highest `seq` of the channel seen anywhere when it was sent.
        top_at_send: u64,
    },
    Unsub {
        ch: &'static str,
    },
    Pub {
        ch: &'static str,
        data: String,
        /// Without an idempotency key: the highest `seq` seen when it was
        /// sent (its own must be higher).
        floor: Option<u64>,
    },
    Presence {
        ch: &'static str,
    },
    /// An op that must be refused with this code.
    Refusal {
        code: &'static str,
    },
}

/// One simulated client.
pub(super) struct Client {
    pub(super) index: usize,
    conn: Option<ConnId>,
    next_id: u64,
    published: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Channels whose last op on this connection was a `sub`; kept over a
    /// disconnect, to subscribe again on the next connection.
    subscribed: BTreeSet<&'static str>,
    /// Channels with any op on this connection (a `sub` without `id` is
    /// sent only for the others: its stream has no ack to start at).
    touched: BTreeSet<&'static str>,
    /// Per channel, the epoch of the acknowledged stream being read (its
    /// messages move `resume`); absent or `None`: no such stream.
    streaming: BTreeMap<&'static str, Option<String>>,
    /// Per channel, where it left off: the last `seq` of an acknowledged
    /// stream and that stream's epoch.
    resume: BTreeMap<&'static str, (u64, String)>,
    /// How keen a reader it is (the weight of reading among its acts).
    read_weight: u32,
}

impl Client {
    pub(super) fn new(index: usize, rng: &mut Rng) -> Self {
        Client {
            index,
            conn: None,
            next_id: 0,
            published: 0,
            waiting: BTreeMap::new(),
            subscribed: BTreeSet::new(),
            touched: BTreeSet::new(),
            streaming: BTreeMap::new(),
            resume: BTreeMap::new(),
            read_weight: rng.pick(&[2, 20, 60]),
        }
    }

    /// Its connection and the channels it is subscribed to there (for the
    /// checks once the run is quiet).
    pub(super) fn live(&self) -> Option<(ConnId, &BTreeSet<&'static str>)> {
        self.conn.map(|conn| (conn, &self.subscribed))
    }

    /// Ops still waiting for their answer.
    pub(super) fn unanswered(&self) -> usize {
        self.waiting.len()
    }

    /// One act, chosen at random: connect if it is not connected; else
    /// read, subscribe, unsubscribe, publish, ask, or go away.
    pub(super) fn act(
        &mut self,
        server: &mut impl Server,
        channels: &[&'static str],
        rng: &mut Rng,
        checker: &mut Checker,
    ) {
        let Some(conn) = self.conn else {
            return self.connect(server, channels, rng, checker);
        };
        if server.is_closed(conn) {
            checker.closed_by_server(self.index);
            self.read(server, checker);
            return self.disconnect(server, checker);
        }
        let unsubscribed: Vec<&'static str> = channels
            .iter()
            .copied()
            .filter(|ch| !self.subscribed.contains(ch))
            .collect();
        let subscribed: Vec<&'static str> = self.subscribed.iter().copied().collect();
        let presence: Vec<&'static str> = channels
            .iter()
            .copied()
            .filter(|ch| is_presence(ch))
            .collect();
        let weights = [
            self.read_weight,
            if unsubscribed.is_empty() { 0 } else { 14 }, // subscribe
            if subscribed.is_empty() { 0 } else { 3 },    // subscribe again
            if subscribed.is_empty() { 0 } else { 5 },    // unsubscribe
            25,                                           // publish
            if presence.is_empty() { 0 } else { 3 },      // ask who is present
            1,                                            // an op to refuse
            2,                                            // go away
        ];
        match rng.weighted(&weights) {
            0 => {
                self.read(server, checker);
            }
            1 => self.subscribe(server, rng.pick(&unsubscribed), false, rng, checker),
            2 => self.subscribe(server, rng.pick(&subscribed), false, rng, checker),
            3 => self.unsubscribe(server, rng.pick(&subscribed), rng, checker),
            4 => self.publish(server, rng.pick(channels), rng, checker),
            5 => {
                let ch = rng.pick(&presence);
                let id = self.await_answer(Waiting::Presence { ch });
                let cursor = None;
                self.send(server, checker, Op::Presence { ch, id, cursor });
            }
            6 => self.send_refused(server, channels, rng, checker),
            _ => self.disconnect(server, checker),
        }
    }

    /// Once the schedule is over: reads everything queued, and ends a
    /// connection the server closed. Whether anything happened.
    pub(super) fn settle(&mut self, server: &mut impl Server, checker: &mut Checker) -> bool {
        let Some(conn) = self.conn else { return false };
        if server.is_closed(conn) {
            checker.closed_by_server(self.index);
            self.read(server, checker);
            self.disconnect(server, checker);
            return true;
        }
        self.read(server, checker) > 0
    }

    /// Connects to a shard and subscribes again to what it was subscribed
    /// to, resuming where it left off.
    fn connect(
        &mut self,
        server: &mut impl Server,
        channels: &[&'static str],
        rng: &mut Rng,
        checker: &mut Checker,
    ) {
        let shard = rng.below(server.shards());
        let conn = server.connect(shard);
        checker.note(|| {
            format!(
                "client {} connects on shard {shard} as {conn:?}",
                self.index
            )
        });
        self.conn = Some(conn);
        let wanted = std::mem::take(&mut self.subscribed);
        for ch in channels.iter().filter(|ch| wanted.contains(*ch)) {
            self.subscribe(server, ch, true, rng, checker);
        }
    }

    /// Subscribes to `ch` (again, if subscribed: the subscription is
    /// replaced); `resuming`: after a reconnect, so mostly with `since`.
    fn subscribe(
        &mut self,
        server: &mut impl Server,
        ch: &'static str,
        resuming: bool,
        rng: &mut Rng,
        checker: &mut Checker,
    ) {
        let fresh = !self.touched.contains(ch);
        let with_id = !fresh || rng.chance(if resuming { 90 } else { 75 });
        let resumes = with_id && rng.chance(if resuming { 80 } else { 40 });
        let since = resumes.then(|| self.resume.get(ch).cloned()).flatten();
        let join_leave = is_presence(ch) && rng.chance(50);
        let id = match with_id {
            true => Some(self.await_answer(Waiting::Sub {
                ch,
                since: since.clone(),
                top_at_send: checker.top(ch),
            })),
            false => {
                checker.subscribed_unacked(self.index, ch);
                self.streaming.insert(ch, None);
                None
            }
        };
        self.touched.insert(ch);
        self.subscribed.insert(ch);
        let op = Op::Sub {
            ch,
            id,
            since,
            join_leave,
        };
        self.send(server, checker, op);
    }

    fn unsubscribe(
        &mut self,
        server: &mut impl Server,
        ch: &'static str,
        rng: &mut Rng,
        checker: &mut Checker,
    ) {
        let id = rng
            .chance(50)
            .then(|| self.await_answer(Waiting::Unsub { ch }));
        self.subscribed.remove(ch);
        self.touched.insert(ch);
        self.send(server, checker, Op::Unsub { ch, id });
    }

    /// Publishes on `ch`: data unique to this publication, or, under an
    /// idempotency key, the one data every publication under that key has.
    fn publish(
        &mut self,
        server: &mut impl Server,
        ch: &'static str,
        rng: &mut Rng,
        checker: &mut Checker,
    ) {
        let once = rng.chance(20).then(|| rng.below(IDEMPOTENCY_KEYS));
        let (data, key) = match once {
            Some(n) => (format!("i{n} k={}", KEYS[n]), Some(KEYS[n])),
            None => {
                self.published += 1;
                let who = format!("c{}.{}", self.index, self.published);
                match rng.chance(60) {
                    true => {
                        let key = rng.pick(&KEYS);
                        (format!("{who} k={key}"), Some(key))
                    }
                    false => (who, None),
                }
            }
        };
        let id = rng.chance(70).then(|| {
            self.await_answer(Waiting::Pub {
                ch,
                data: data.clone(),
                floor: once.is_none().then(|| checker.top(ch)),
            })
        });
        let op = Op::Pub {
            ch,
            data,
            id,
            key,
            idempotency_key: once.map(|n| format!("k{n}")),
        };
        self.send(server, checker, op);
    }

    /// An op the server must refuse: an `unsub` of a channel it is not
    /// subscribed to, or `presence` of a channel that is not a presence one.
    fn send_refused(
        &mut self,
        server: &mut impl Server,
        channels: &[&'static str],
        rng: &mut Rng,
        checker: &mut Checker,
    ) {
        let ch = rng.pick(channels);
        let op = if !self.subscribed.contains(ch) && rng.chance(50) {
            self.touched.insert(ch);
            let id = self.await_answer(Waiting::Refusal {
                code: "not_subscribed",
            });
            Op::Unsub { ch, id: Some(id) }
        } else if !is_presence(ch) {
            let id = self.await_answer(Waiting::Refusal {
                code: "no_presence",
            });
            Op::Presence {
                ch,
                id,
                cursor: None,
            }
        } else {
            return;
        };
        self.send(server, checker, op);
    }

    /// Goes away: what is queued for it is lost, and so are the answers
    /// still to come.
    fn disconnect(&mut self, server: &mut impl Server, checker: &mut Checker) {
        let Some(conn) = self.conn.take() else { return };
        checker.note(|| format!("client {} disconnects {conn:?}", self.index));
        server.disconnect(conn);
        checker.disconnected(self.index);
        self.waiting.clear();
        self.touched.clear();
        self.streaming.clear();
    }

    /// A new `id`, for an op whose answer will be `waiting`.
    fn await_answer(&mut self, waiting: Waiting) -> u64 {
        self.next_id += 1;
        self.waiting.insert(self.next_id, waiting);
        self.next_id
    }

    fn send(&mut self, server: &mut impl Server, checker: &mut Checker, op: Op) {
        let Some(conn) = self.conn else { return };
        checker.note(|| format!("client {} sends {op:?}", self.index));
        server.send(conn, &op);
    }

    /// Reads every frame queued for it; returns how many.
    fn read(&mut self, server: &mut impl Server, checker: &mut Checker) -> usize {
        let Some(conn) = self.conn else { return 0 };
        let frames = server.receive(conn);
        for text in &frames {
            let envelope = envelope::parse(text);
            checker.note(|| {
                // An answer is noted with the op it answers (and its channel).
                let answers = match &envelope {
                    Ok(Envelope::Ack { id, .. }) | Ok(Envelope::Err { id: Some(id), .. }) => {
                        self.waiting.get(id).map(|w| format!(" to {w:?}"))
                    }
                    _ => None,
                };
                let text = String::from_utf8_lossy(text);
                format!(
                    "client {} reads {text}{}",
                    self.index,
                    answers.unwrap_or_default()
                )
            });
            match envelope {
                Ok(envelope) => self.take(envelope, checker),
                Err(error) => checker.fail("frames are the protocol's", None, error),
            }
        }
        frames.len()
    }

    /// Makes what one message says known to the checker.
    fn take(&mut self, envelope: Envelope, checker: &mut Checker) {
        match envelope {
            Envelope::Msg {
                ch,
                seq,
                data,
                conflated,
            } => {
                checker.msg(self.index, &ch, seq, &data, conflated);
                if let Some((ch, Some(epoch))) = self.streaming.get_key_value(ch.as_str()) {
                    self.resume.insert(ch, (seq, epoch.clone()));
                }
            }
            Envelope::Ack {
                id,
                seq,
                epoch,
                recovered,
                conflate,
            } => self.acknowledged(id, (seq, epoch), recovered, conflate, checker),
            Envelope::Err { id, code } => match id.and_then(|id| self.waiting.remove(&id)) {
                Some(Waiting::Refusal { code: expected }) if expected == code => {}
                other => checker.fail(
                    "only the ops that must be refused are",
                    None,
                    format!("client {}: err {code} for {other:?}", self.index),
                ),
            },
            Envelope::Presence {
                id,
                ch,
                members,
                count,
                cursor,
            } => {
                let asked = id.and_then(|id| self.waiting.remove(&id));
                let answers =
                    matches!(&asked, Some(Waiting::Presence { ch: asked }) if *asked == ch);
                let whole = members.len() as u64 == count;
                if !answers || whole == cursor.is_some() || members.len() as u64 > count {
                    checker.fail(
                        "presence answers what was asked",
                        Some(&ch),
                        format!("{asked:?} answered with {members:?}, count {count}"),
                    );
                }
            }
            Envelope::Event { .. } => {}
        }
    }

    /// An `ack`: tells the checker what it acknowledges.
    fn acknowledged(
        &mut self,
        id: u64,
        (seq, epoch): (Option<u64>, Option<String>),
        recovered: Option<bool>,
        conflate: bool,
        checker: &mut Checker,
    ) {
        match (self.waiting.remove(&id), seq, epoch) {
            (
                Some(Waiting::Sub {
                    ch,
                    since,
                    top_at_send,
                }),
                Some(seq),
                Some(epoch),
            ) => {
                let recovered_since = since
                    .as_ref()
                    .filter(|_| recovered == Some(true))
                    .map(|(seq, _)| *seq);
                self.resume
                    .insert(ch, (recovered_since.unwrap_or(seq), epoch.clone()));
                self.streaming.insert(ch, Some(epoch.clone()));
                let ack = SubAck {
                    seq,
                    epoch,
                    recovered,
                    conflate,
                    since,
                    top_at_send,
                };
                checker.sub_acked(self.index, ch, ack);
            }
            (Some(Waiting::Unsub { ch }), None, None) => {
                self.streaming.remove(ch);
                checker.unsub_acked(self.index, ch);
            }
            (Some(Waiting::Pub { ch, data, floor }), Some(seq), None) => {
                checker.pub_acked(ch, seq, &data, floor);
            }
            (waiting, seq, _) => checker.fail(
                "every answer matches its op",
                None,
                format!(
                    "client {}: ack {id} (seq {seq:?}) for {waiting:?}",
                    self.index
                ),
            ),
        }
    }
}
