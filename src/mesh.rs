//! Typed messages between shards and the per-peer links that carry them.
//!
//! Each shard keeps one ordered queue per peer shard ([`PeerLinks`]): pushing is
//! synchronous and never blocks, so the order in which a shard *decides* to
//! send (for example the owner assigning `seq` 5 then 6) is the order the peer
//! receives. A drain task per peer moves the queue into glommio's lock-free
//! `channel_mesh` lane, waiting for room there. Publishers (leaf tasks) are the
//! only ones that wait for the queue to shrink; mesh receivers never wait, so
//! two shards can never deadlock on each other's full lanes.
//!
//! Backpressure reaches every hop: a shard with any queue over its high-water
//! mark raises its flag in [`Congestion`] (shared by all shards, each writes
//! only its own); a publisher waits while the queue to the channel's owner is
//! full *or* the owner is congested, so a publisher on the owner itself, or
//! one whose publications the owner forwards to a slow shard, slows down too.
//! The owner lowers its flag once all its queues are under half the mark and
//! tells every peer ([`Cast::Room`]), which wakes their waiting
//! publishers.
//!
//! Messages are of three kinds ([`MeshMsg`]): a [`Cast`] needs no answer
//! (publications, deliveries, interest, presence changes); an `Ask` is a
//! [`Question`] named by a [`ReplyId`] — an entry of the asking shard's
//! pending table (`mesh/pending.rs`) — and comes back as the `Answer` of
//! the same kind under that id. A publication's [`Reply`] says where its
//! `seq` goes: to a connection (through the publisher's shard), or to an
//! HTTP publish's pending entry.

use std::{
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use glommio::channels::{
    channel_mesh::Senders,
    local_channel::{self, LocalReceiver, LocalSender},
};

use shardcast_core::members::{Member, Page};
pub(crate) use shardcast_core::publication::{Reply, ReplyId};

use crate::{
    api::{ApiAnswer, ApiRequest},
    channel::ChannelName,
    protocol::PresenceAsk,
    publication::{ConnRef, Payload, Position, Skip},
    snapshot::ShardSnapshot,
    stats::{bump, Stats},
    sync::WaitQueue,
};

pub(crate) mod pending;

/// Capacity of each glommio mesh lane, in messages.
pub(crate) const LANE_CAPACITY: usize = 1024;

/// A publisher waits before queueing more for a peer when this many messages
/// are already queued for it.
const PEER_QUEUE_HIGH_WATER: usize = 8192;

/// Everything shards say to each other: what needs no answer, questions,
/// and their answers.
#[derive(Debug)]
pub(crate) enum MeshMsg {
    /// Needs no answer.
    Cast(Cast),
    /// A question, to be answered under its [`ReplyId`] (to the shard that
    /// names).
    Ask(ReplyId, Question),
    /// The answer to an `Ask`, or to an HTTP publish (`Reply::Http`), for
    /// the asker's pending table.
    Answer(ReplyId, Answer),
}

/// What a shard tells another without waiting for an answer.
#[derive(Debug)]
pub(crate) enum Cast {
    /// To the owner: order this publication and distribute it.
    Publish {
        ch: ChannelName,
        payload: Payload,
        from: u16,
        skip: Option<Skip>,
        reply: Reply,
    },
    /// From the owner: how the `pub` forwarded by shard `from` went — its
    /// `seq`, or why it was refused (the cluster engine is unavailable or
    /// did not answer; its idempotency store is full).
    Published {
        reply: Reply,
        result: Result<u64, crate::engine::Refused>,
    },
    /// From the owner: deliver publication `seq` to your local subscribers.
    Deliver {
        ch: ChannelName,
        seq: u64,
        payload: Payload,
        skip: Option<Skip>,
        /// Its fossil delta against `seq - 1`, for subscribers that asked.
        delta: Option<Bytes>,
    },
    /// To the owner: this shard now has subscribers of `ch` (`on`), and
    /// some that asked for deltas (`delta`), or no longer.
    Interest {
        ch: ChannelName,
        on: bool,
        delta: bool,
        from: u16,
    },
    /// From the owner: the channel's subscribers missed publications that
    /// cannot be recovered; they resync at `seq` under `epoch`.
    Resync {
        ch: ChannelName,
        seq: u64,
        epoch: Box<str>,
    },
    /// The sender's queues are all under half their high-water mark again:
    /// publishers waiting for it may go on.
    Room,
    /// `POST /api/drain` on another shard: begin the shutdown.
    Drain,
    /// To the owner of `ch`: connection `conn` of `user` subscribed (`on`)
    /// or no longer is (for the `subscribed`/`unsubscribed` webhooks).
    Subscription {
        ch: ChannelName,
        on: bool,
        user: Box<str>,
        conn: Box<str>,
    },
    /// To the owner of presence channel `ch`: `member` subscribed (`join`),
    /// or connection `member.conn` no longer is.
    /// `skip`: the member's shard and connection, which sends the member
    /// its own join.
    PresenceChange {
        ch: ChannelName,
        join: bool,
        member: Box<Member>,
        skip: Option<(u16, ConnRef)>,
    },
    /// From the owner: deliver a `join` (or `leave`) of `member` (its JSON
    /// object) to your subscribers of `ch` that asked for them, but `skip`.
    PresenceEvent {
        ch: ChannelName,
        join: bool,
        member: Bytes,
        skip: Option<(u16, ConnRef)>,
    },
}

/// What a shard asks another (or itself); each is answered with the
/// [`Answer`] of the same name.
#[derive(Debug)]
pub(crate) enum Question {
    /// A scrape: your snapshot.
    Snapshot,
    /// A server API request (`shard/api.rs`).
    Api(Box<ApiRequest>),
    /// To the owner of presence channel `ch`: a page of its members, or
    /// their count.
    Presence { ch: ChannelName, ask: PresenceAsk },
    /// To the owner of `ch`, for a subscription waiting for its position:
    /// where the channel stands and, with `since`, what it missed. Sent
    /// after the subscription's `Interest`, so the answer comes back ahead
    /// of every publication the subscriber has not been sent yet.
    Position {
        ch: ChannelName,
        since: Option<(u64, Box<str>)>,
    },
}

/// An answer, to the pending table of the shard that asked.
#[derive(Debug)]
pub enum Answer {
    Snapshot(Box<ShardSnapshot>),
    Api(Box<ApiAnswer>),
    Presence(Box<Page>),
    Position(Box<Position>),
    /// How one publication of an HTTP publish went.
    Published(Published),
}

/// How publication `index` of an HTTP publish went: its `seq`, or why it
/// was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub index: u32,
    pub result: Result<u64, crate::engine::Refused>,
}

/// The answers a task waits for, each taken out of [`Answer`] (a task
/// asked one kind of question, so it gets that kind of answer).
macro_rules! awaited_answers {
    ($($variant:ident => $reply:ty, $unwrap:expr;)*) => {$(
        impl TryFrom<Answer> for $reply {
            type Error = Answer;

            fn try_from(answer: Answer) -> Result<Self, Answer> {
                match answer {
                    Answer::$variant(reply) => Ok($unwrap(reply)),
                    other => Err(other),
                }
            }
        }
    )*};
}

awaited_answers! {
    Snapshot => ShardSnapshot, |b: Box<ShardSnapshot>| *b;
    Api => ApiAnswer, |b: Box<ApiAnswer>| *b;
    Presence => Page, |b: Box<Page>| *b;
    Published => Published, |p| p;
}

/// One flag per shard: set while that shard has a queue to a peer over its
/// high-water mark. Shared by every shard; each writes only its own.
pub(crate) type Congestion = Arc<[AtomicBool]>;

/// Flags for `shards` shards, none congested.
pub(crate) fn new_congestion(shards: usize) -> Congestion {
    (0..shards).map(|_| AtomicBool::new(false)).collect()
}

/// One shard's outgoing side of the mesh: an ordered queue per peer.
pub(crate) struct PeerLinks {
    /// This shard.
    shard: usize,
    queues: Vec<Option<LocalSender<MeshMsg>>>,
    room: WaitQueue,
    /// The shard's counters (`mesh_sent` is kept here).
    stats: Rc<Stats>,
    /// Every shard's congestion flag (this shard raises and lowers its own).
    congestion: Congestion,
    /// The cluster engine has more requests in flight than publishers
    /// should add to: this shard is congested until it has fewer.
    engine_busy: std::cell::Cell<bool>,
}

impl PeerLinks {
    /// Creates the queues and returns their receiving ends, one per peer
    /// (`None` for this shard itself), for [`PeerLinks::drain`].
    pub(crate) fn new(
        shard: usize,
        shards: usize,
        congestion: Congestion,
        stats: Rc<Stats>,
    ) -> (Rc<Self>, Vec<Option<LocalReceiver<MeshMsg>>>) {
        let mut queues = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for peer in 0..shards {
            if peer == shard {
                queues.push(None);
                receivers.push(None);
            } else {
                let (tx, rx) = local_channel::new_unbounded();
                queues.push(Some(tx));
                receivers.push(Some(rx));
            }
        }
        let links = PeerLinks {
            shard,
            queues,
            room: WaitQueue::default(),
            stats,
            congestion,
            engine_busy: std::cell::Cell::new(false),
        };
        (Rc::new(links), receivers)
    }

    /// Queues `msg` for `peer`. Never blocks; a message for a peer that has
    /// shut down is dropped (then `false`).
    pub(crate) fn send(&self, peer: usize, msg: MeshMsg) -> bool {
        if let Some(Some(queue)) = self.queues.get(peer) {
            // Unbounded: fails only when the drain task is gone (shutdown).
            if queue.try_send(msg).is_ok() {
                bump(&self.stats.mesh_sent, 1);
                if queue.len() >= PEER_QUEUE_HIGH_WATER {
                    self.set_congested(true);
                }
                return true;
            }
        }
        false
    }

    /// The shard's counters, which the links count into.
    pub(crate) fn stats(&self) -> &Rc<Stats> {
        &self.stats
    }

    /// Messages waiting for `peer`.
    pub(crate) fn depth(&self, peer: usize) -> usize {
        match self.queues.get(peer) {
            Some(Some(queue)) => queue.len(),
            _ => 0,
        }
    }

    /// Whether a publication for a channel `owner` orders may go out now:
    /// the queue to it is under its high-water mark and it is not congested
    /// itself (the owner may be this shard).
    pub(crate) fn has_room(&self, owner: usize) -> bool {
        self.depth(owner) < PEER_QUEUE_HIGH_WATER && !self.is_congested(owner)
    }

    /// Whether `shard` has a queue over its high-water mark.
    pub(crate) fn is_congested(&self, shard: usize) -> bool {
        self.congestion
            .get(shard)
            .is_some_and(|flag| flag.load(Ordering::Acquire))
    }

    fn set_congested(&self, on: bool) {
        if let Some(flag) = self.congestion.get(self.shard) {
            flag.store(on, Ordering::Release);
        }
    }

    /// For publishers: waits while [`PeerLinks::has_room`] says no, so a
    /// flooding publisher slows down instead of growing memory at any hop.
    pub(crate) async fn wait_for_room(&self, owner: usize) {
        self.room.until(|| self.has_room(owner)).await;
    }

    /// A peer's [`Cast::Room`], or a queue here drained: waiting
    /// publishers check again.
    pub(crate) fn wake_publishers(&self) {
        if self.room.has_waiters() {
            self.room.wake_all();
        }
    }

    /// The cluster engine's backlog went over its mark (`busy`) or back
    /// under half of it: congested like a full queue, relieved the same way.
    pub(crate) fn set_engine_busy(&self, busy: bool) {
        self.engine_busy.set(busy);
        if busy {
            self.set_congested(true);
        } else {
            self.relieve();
        }
    }

    /// After a queue drained: once every queue is under half the mark, lowers
    /// this shard's flag and tells every peer. Returns whether it did.
    fn relieve(&self) -> bool {
        if !self.is_congested(self.shard) || self.engine_busy.get() {
            return false;
        }
        let low = (0..self.queues.len()).all(|peer| self.depth(peer) < PEER_QUEUE_HIGH_WATER / 2);
        if !low {
            return false;
        }
        // Lowered before the peers hear of it: a publisher that wakes finds
        // it down (no lost wake-up).
        self.set_congested(false);
        for peer in 0..self.queues.len() {
            if peer != self.shard {
                self.send(peer, MeshMsg::Cast(Cast::Room));
            }
        }
        self.wake_publishers();
        true
    }

    /// The drain task for one peer: moves queued messages into the mesh lane
    /// in order, waiting for room there. Ends when the peer is gone.
    pub(crate) async fn drain(
        self: Rc<Self>,
        peer: usize,
        receiver: LocalReceiver<MeshMsg>,
        senders: Rc<Senders<MeshMsg>>,
    ) {
        while let Some(msg) = receiver.recv().await {
            if senders.send_to(peer, msg).await.is_err() {
                break;
            }
            if !self.relieve() && self.depth(peer) < PEER_QUEUE_HIGH_WATER / 2 {
                self.wake_publishers();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_message() -> MeshMsg {
        MeshMsg::Cast(Cast::Interest {
            ch: ChannelName::of_valid("c"),
            on: true,
            delta: false,
            from: 0,
        })
    }

    #[test]
    fn a_congested_owner_stops_publishers_on_every_shard_until_it_drains() {
        crate::sync::on_test_executor(async {
            let congestion = new_congestion(3);
            let (owner, mut receivers) = PeerLinks::new(0, 3, congestion.clone(), Rc::default());
            let (elsewhere, _) = PeerLinks::new(1, 3, congestion.clone(), Rc::default());
            assert!(owner.has_room(0) && elsewhere.has_room(0));
            // The owner's queue to shard 2 (a slow one) fills.
            for _ in 0..PEER_QUEUE_HIGH_WATER {
                owner.send(2, any_message());
            }
            assert!(owner.is_congested(0));
            assert!(!owner.has_room(0), "a publisher on the owner waits");
            assert!(!elsewhere.has_room(0), "a publisher on another shard waits");
            assert!(elsewhere.has_room(2), "other owners are not held up");
            // Draining to half the mark lowers the flag and tells the peers.
            let to_slow = receivers[2].take().unwrap();
            for _ in 0..=PEER_QUEUE_HIGH_WATER / 2 {
                assert!(!owner.relieve(), "not yet under half");
                to_slow.recv().await.unwrap();
            }
            assert!(owner.relieve());
            assert!(owner.has_room(0) && elsewhere.has_room(0));
            let to_one = receivers[1].take().unwrap();
            assert!(matches!(
                to_one.recv().await,
                Some(MeshMsg::Cast(Cast::Room))
            ));
        });
    }
}
