//! Typed messages between shards and the per-peer links that carry them.
//!
//! Each shard keeps one ordered queue per peer shard ([`PeerLinks`]): pushing is
//! synchronous and never blocks, so the order in which a shard *decides* to
//! send (for example the owner assigning `seq` 5 then 6) is the order the peer
//! receives. A drain task per peer moves the queue into glommio's lock-free
//! `channel_mesh` lane, waiting for room there. Publishers (leaf tasks) are the
//! only ones that wait for the queue to shrink; mesh receivers never wait, so
//! two shards can never deadlock on each other's full lanes.

use std::{cell::Cell, rc::Rc};

use bytes::Bytes;
use glommio::channels::{
    channel_mesh::Senders,
    local_channel::{self, LocalReceiver, LocalSender},
};

use crate::{
    clock, protocol::PayloadKind, shard::owner::Position, snapshot::ShardSnapshot, stats::bump,
    sync::WaitQueue,
};

/// Upper bound on shards (interest is a 64-bit mask per channel).
pub const MAX_SHARDS: usize = 64;

/// Capacity of each glommio mesh lane, in messages.
pub const LANE_CAPACITY: usize = 1024;

/// A publisher waits before queueing more for a peer when this many messages
/// are already queued for it.
const PEER_QUEUE_HIGH_WATER: usize = 8192;

/// Identifies a connection on its shard: slab key plus a generation so a
/// reused slot is not mistaken for the old connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub key: u32,
    pub gen: u32,
}

/// A connection that must not receive a publication (a raw-room sender with
/// `?echo=0`), named by shard and connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    pub shard: u16,
    pub conn: ConnRef,
}

/// The bytes of one publication, what they are, and when it was published.
/// A payload owns exactly its bytes, never a slice of a read buffer: history
/// keeps payloads for `history-ttl`, and a slice would pin (and leave
/// unaccounted) the whole buffer it was read into.
#[derive(Debug, Clone)]
pub struct Payload {
    pub kind: PayloadKind,
    pub bytes: Bytes,
    /// When the server received it ([`clock::now_ns`]): deliveries are timed
    /// from here.
    pub published_at: u64,
}

impl Payload {
    /// A publication received now, copied out of the buffer it was read
    /// into (one allocation of exactly its length).
    pub fn copy_of(kind: PayloadKind, bytes: &[u8]) -> Self {
        Payload::new(kind, Bytes::copy_from_slice(bytes))
    }

    /// A publication received now, whose `bytes` the caller built for it
    /// (they must not be a slice of a longer-lived buffer).
    pub fn new(kind: PayloadKind, bytes: Bytes) -> Self {
        Payload {
            kind,
            bytes,
            published_at: clock::now_ns(),
        }
    }
}

/// Where the assigned `seq` of a publication must be reported.
#[derive(Debug)]
pub enum Reply {
    /// Nobody is waiting.
    None,
    /// A JSON `pub` with an `id`: send an `ack` to that connection.
    Ack { conn: ConnRef, id: Box<str> },
    /// An HTTP publish waiting in the publisher shard's reply slot; `nonce`
    /// tells it from a later publish given the same slot after this one
    /// gave up waiting.
    Http { slot: u32, nonce: u32 },
}

/// Everything shards say to each other.
#[derive(Debug)]
pub enum MeshMsg {
    /// To the owner: order this publication and distribute it.
    Publish {
        ch: Bytes,
        payload: Payload,
        from: u16,
        skip: Option<Skip>,
        reply: Reply,
    },
    /// From the owner: deliver publication `seq` to your local subscribers.
    Deliver {
        ch: Bytes,
        seq: u64,
        payload: Payload,
        skip: Option<Skip>,
    },
    /// To the owner: this shard gained its first (`on`) or lost its last
    /// subscriber of `ch`.
    Interest { ch: Bytes, on: bool, from: u16 },
    /// To the owner: subscription `token` of `conn` on shard `from` wants the
    /// channel's position and, with `since`, what it missed. Sent after the
    /// `Interest`, so the answer comes back ahead of every publication the
    /// subscriber has not been sent yet.
    Position {
        ch: Bytes,
        from: u16,
        conn: ConnRef,
        token: u32,
        since: Option<(u64, Box<str>)>,
        /// The `sub`'s `id`, for the ack.
        id: Option<Box<str>>,
    },
    /// From the owner: the answer to `Position`.
    PositionReply {
        ch: Bytes,
        conn: ConnRef,
        token: u32,
        id: Option<Box<str>>,
        position: Box<Position>,
    },
    /// From the owner: the publication you forwarded got `seq`.
    Published { reply: Reply, seq: u64 },
    /// A scrape on shard `from`: send your snapshot back for `slot`.
    /// `nonce` tells this scrape from an earlier one that used the slot.
    StatsRequest { from: u16, slot: u32, nonce: u32 },
    /// The snapshot asked for by `StatsRequest { slot, nonce }`.
    StatsReply {
        slot: u32,
        nonce: u32,
        snapshot: Box<ShardSnapshot>,
    },
}

/// One shard's outgoing side of the mesh: an ordered queue per peer.
pub struct PeerLinks {
    queues: Vec<Option<LocalSender<MeshMsg>>>,
    room: WaitQueue,
    /// Messages queued for peers since start.
    sent: Cell<u64>,
}

impl PeerLinks {
    /// Creates the queues and returns their receiving ends, one per peer
    /// (`None` for this shard itself), for [`PeerLinks::drain`].
    pub fn new(shard: usize, shards: usize) -> (Rc<Self>, Vec<Option<LocalReceiver<MeshMsg>>>) {
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
            queues,
            room: WaitQueue::default(),
            sent: Cell::new(0),
        };
        (Rc::new(links), receivers)
    }

    /// Queues `msg` for `peer`. Never blocks; a message for a peer that has
    /// shut down is dropped (then `false`).
    pub fn send(&self, peer: usize, msg: MeshMsg) -> bool {
        if let Some(Some(queue)) = self.queues.get(peer) {
            // Unbounded: fails only when the drain task is gone (shutdown).
            if queue.try_send(msg).is_ok() {
                bump(&self.sent, 1);
                return true;
            }
        }
        false
    }

    /// Messages queued for peers since start.
    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    /// Messages waiting for `peer`.
    pub fn depth(&self, peer: usize) -> usize {
        match self.queues.get(peer) {
            Some(Some(queue)) => queue.len(),
            _ => 0,
        }
    }

    /// Whether the queue to `peer` is under its high-water mark.
    pub fn has_room(&self, peer: usize) -> bool {
        self.depth(peer) < PEER_QUEUE_HIGH_WATER
    }

    /// For publishers: waits while the queue to `peer` is over its high-water
    /// mark, so a flooding publisher slows down instead of growing memory.
    pub async fn wait_for_room(&self, peer: usize) {
        self.room.until(|| self.has_room(peer)).await;
    }

    /// The drain task for one peer: moves queued messages into the mesh lane
    /// in order, waiting for room there. Ends when the peer is gone.
    pub async fn drain(
        self: Rc<Self>,
        peer: usize,
        receiver: LocalReceiver<MeshMsg>,
        senders: Rc<Senders<MeshMsg>>,
    ) {
        while let Some(msg) = receiver.recv().await {
            if senders.send_to(peer, msg).await.is_err() {
                break;
            }
            if self.room.has_waiters() && self.depth(peer) < PEER_QUEUE_HIGH_WATER / 2 {
                self.room.wake_all();
            }
        }
    }
}
