//! The one part of the simulation that knows the shard: it builds N shards
//! with the memory engine on the test executor, holds every link's queue
//! (shard `from` to shard `to`, FIFO) instead of the drain tasks, delivers
//! a link's next message when the schedule says (`Shard::handle_mesh`,
//! without looking inside it), and serves the clients' [`Server`]: their
//! connections are registered without a socket, their ops go to the shard
//! as the session hands them, and their queues are read by hand.
//! Where the shard's logic moves (a core without I/O), only this file
//! follows it.

use std::{borrow::Cow, future::Future, pin::pin, rc::Rc, task::Context};

use bytes::Bytes;
use glommio::channels::local_channel::LocalReceiver;

use super::{
    client::{ConnId, Op, Server},
    schedule::{Setup, CONFLATE_PATTERN, PRESENCE_PATTERN},
};
use crate::{
    api::{remembered_key, Form},
    channel::ChannelName,
    close::CloseReason,
    config::Config,
    conn::{codec::Codec, Conn},
    frame,
    mesh::{self, MeshMsg, PeerLinks, Reply},
    protocol::{PresenceAsk, RequestId, Since, SubOptions},
    publication::Payload,
    security::pattern::ChannelPattern,
    shard::{presence, Shard, ShardParts},
};

/// The node id connections are named by (`<node>.<shard>.<key>.<gen>`).
const NODE_ID: &str = "sim";

/// N shards, the messages between them, and the clients' connections.
pub(super) struct World {
    shards: Vec<Shard>,
    /// `links[from][to]`: what shard `from` queued for shard `to`.
    links: Vec<Vec<Option<LocalReceiver<MeshMsg>>>>,
    /// Every connection made, by [`ConnId`] (`None` once gone).
    conns: Vec<Option<(usize, Rc<Conn>)>>,
    /// FNV-1a of every frame the clients read, in order.
    digest: u64,
}

impl World {
    /// The shards `setup` describes, configured from `base` (the slow part
    /// of `Config::default`, made once).
    pub(super) fn new(setup: &Setup, base: &Config) -> Self {
        let mut config = base.clone();
        config.shards = setup.shards;
        config.engine.node_id = NODE_ID.into();
        config.history.size = setup.history_size;
        config.limits.max_queue_bytes = setup.max_queue_bytes;
        config.limits.read_buffer_bytes = 1024;
        config.conflation.patterns = vec![pattern(CONFLATE_PATTERN)];
        config.conflation.after_bytes = setup.conflate_after_bytes;
        config.presence.patterns = vec![pattern(PRESENCE_PATTERN)];
        let congestion = mesh::new_congestion(setup.shards);
        let (mut shards, mut links) = (Vec::new(), Vec::new());
        for id in 0..setup.shards {
            let (peer_links, queues) =
                PeerLinks::new(id, setup.shards, congestion.clone(), Rc::default());
            let parts = ShardParts::alone(peer_links, setup.shards);
            shards.push(Shard::new(id, None, config.clone(), parts));
            links.push(queues);
        }
        World {
            shards,
            links,
            conns: Vec::new(),
            digest: crate::channel::fnv1a(b""),
        }
    }

    /// The links that hold messages, as `(from, to)`, in a fixed order.
    pub(super) fn waiting_links(&self, out: &mut Vec<(usize, usize)>) {
        out.clear();
        for (from, shard) in self.shards.iter().enumerate() {
            out.extend(
                (0..self.shards.len())
                    .filter(|to| shard.links.depth(*to) > 0)
                    .map(|to| (from, to)),
            );
        }
    }

    /// Delivers the next message of the link `from` → `to`; returns it as
    /// text when `describe`.
    pub(super) fn deliver(&mut self, (from, to): (usize, usize), describe: bool) -> Option<String> {
        let receiver = self.links[from][to].as_ref()?;
        // The link holds a message (`waiting_links`): `recv` is ready.
        let mut next = pin!(receiver.recv());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(Some(msg)) = next.as_mut().poll(&mut cx) else {
            return None;
        };
        let text = describe.then(|| format!("shard {from} → {to}: {msg:?}"));
        self.shards[to].handle_mesh(msg);
        text
    }

    /// Shard `shard` sweeps its history.
    pub(super) fn sweep(&mut self, shard: usize) {
        self.shards[shard].sweep_history();
    }

    /// A digest of every frame the clients read, in order.
    pub(super) fn digest(&self) -> u64 {
        self.digest
    }

    /// Replays the shards refused (too big for the subscriber's queue).
    pub(super) fn replays_refused(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.stats.replays_refused.get())
            .sum()
    }

    fn conn(&self, conn: ConnId) -> (&Shard, &Rc<Conn>) {
        let (shard, conn) = self.conns[conn.0].as_ref().expect("a live connection");
        (&self.shards[*shard], conn)
    }
}

impl Server for World {
    fn shards(&self) -> usize {
        self.shards.len()
    }

    fn connect(&mut self, shard: usize) -> ConnId {
        let on = &self.shards[shard];
        assert!(
            on.shell.lifetime.try_reserve_connection(),
            "room for every client"
        );
        let conn = on.register_detached(Codec::JSON);
        self.conns.push(Some((shard, conn)));
        ConnId(self.conns.len() - 1)
    }

    /// As the session hands an op to the shard (`shard/session.rs`); a
    /// refusal is queued as the session would queue it.
    fn send(&mut self, conn: ConnId, op: &Op) {
        let (shard, conn) = self.conn(conn);
        let id_text = |id: &Option<u64>| id.map(|id| id.to_string());
        let refused = match op {
            Op::Sub {
                ch,
                id,
                since,
                join_leave,
            } => {
                let id = id_text(id);
                let id = request_id(&id);
                let since = since.as_ref().map(|(seq, epoch)| Since {
                    seq: *seq,
                    epoch: Cow::Borrowed(epoch.as_str()),
                });
                let options = SubOptions {
                    delta: false,
                    join_leave: *join_leave,
                };
                let subscribed = shard.subscribe(conn, ch, id, since, options);
                subscribed.err().map(|error| conn.codec.err(&error))
            }
            Op::Unsub { ch, id } => {
                let id = id_text(id);
                let unsubscribed = shard.unsubscribe(conn, ch, request_id(&id));
                unsubscribed.err().map(|error| conn.codec.err(&error))
            }
            Op::Pub {
                ch,
                data,
                id,
                key,
                idempotency_key,
            } => {
                // A JSON string cannot fail to serialise.
                let quoted = serde_json::to_string(data).unwrap_or_default();
                let mut payload = Payload::json(quoted.as_bytes());
                if let Some(key) = key {
                    payload = payload.with_key(key);
                }
                let idempotency_key = idempotency_key
                    .as_ref()
                    .map(|k| remembered_key(Form::One, k, 0).into());
                let id = id_text(id);
                let reply = match request_id(&id) {
                    Some(id) => Reply::Ack {
                        conn: conn.id,
                        id: id.to_buf(),
                        idempotency_key,
                    },
                    None => Reply::Quiet {
                        conn: conn.id,
                        idempotency_key,
                    },
                };
                // Backpressure (a full link) never comes: links are short.
                shard.publish(ChannelName::of_valid(ch), payload, None, reply);
                None
            }
            Op::Presence { ch, id, cursor } => {
                let id = id_text(&Some(*id));
                let ask = PresenceAsk::Page {
                    cursor: cursor.as_deref().map(Into::into),
                    limit: 1000,
                };
                let asked = presence::op(shard, conn, ch, request_id(&id), ask);
                asked.err().map(|error| conn.codec.err(&error))
            }
        };
        if let Some(frame) = refused {
            conn.send(frame);
        }
    }

    fn receive(&mut self, conn: ConnId) -> Vec<Bytes> {
        let (shard, conn) = self.conn(conn);
        let frames = conn.outbox.take_queued();
        // The flush pass lets go of the queues it has nothing to write to.
        shard.shell.flusher.flush_dirty(&mut Vec::new());
        for frame in &frames {
            self.digest =
                crate::channel::fnv1a(self.digest.to_le_bytes().iter().chain(frame.iter()));
        }
        frames
            .iter()
            .map(|f| f.slice_ref(frame::payload_of(f)))
            .collect()
    }

    fn is_closed(&self, conn: ConnId) -> bool {
        self.conn(conn).1.outbox.closing().is_some()
    }

    /// As a session's teardown: the connection closes (the client's side,
    /// unless the server closed it) and is unregistered.
    fn disconnect(&mut self, conn: ConnId) {
        let Some((shard, conn)) = self.conns[conn.0].take() else {
            return;
        };
        if conn.outbox.closing().is_none() {
            conn.outbox.close(CloseReason::Normal);
        }
        self.shards[shard].unregister(&conn);
    }

    fn member_id(&self, conn: ConnId) -> String {
        let (shard, conn) = self.conn(conn);
        presence::conn_id(shard, conn)
    }
}

/// The id an op was sent with, as the session reads it (the text of an
/// integer is one).
fn request_id(text: &Option<String>) -> Option<RequestId<'_>> {
    text.as_deref().and_then(|t| RequestId::parse(t).ok())
}

/// One of the schedule's channel patterns (valid: the schedule's tests
/// parse them).
fn pattern(text: &str) -> ChannelPattern {
    ChannelPattern::parse(text).expect("a valid pattern")
}
