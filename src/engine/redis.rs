//! One shard's connection to one Redis: a pipelined RESP3 client over
//! glommio's `TcpStream`. Commands are appended to one buffer that a writer
//! task sends as it can (so a burst of publications costs one write), and
//! their replies are matched to a FIFO of what was asked. The same
//! connection is `SUBSCRIBE`d to the pub/sub channels of the channels this
//! shard orders and has subscribers for: RESP3 carries pushes and replies
//! on one connection in the order Redis produced them, so a script's reply
//! arrives after every publication ordered before it and before every one
//! ordered after — the fact the recovery logic stands on
//! (`docs/cluster.md`).
//!
//! Lost connections are retried with backoff and jitter; on reconnect the
//! link says `HELLO 3`, loads its scripts, re-`SUBSCRIBE`s and asks where
//! each channel it follows stands, so the shard can fill what it missed.
//! While it is down every publication is refused, never queued.

use std::{
    cell::{Cell, RefCell},
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    rc::Rc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_lite::FutureExt;
use redis_protocol::resp3::types::BytesFrame;

use super::{
    addr::BrokerAddr,
    broker::{PositionAsk, PresenceRequest, PublishTicket},
    pipe::{self, Pipe},
    record::{self, Record},
    resp, scripts, Refused,
};
use crate::{
    publication::{Payload, Skip},
    stats::{bump, Stats},
    stream::SharedStream,
};

/// Publications awaiting their reply over which publishers are held back
/// (the shard's congestion flag), and under half of which they go on.
const IN_FLIGHT_HIGH_WATER: usize = 16_384;
/// Most publications, and record bytes, one script call carries.
const BATCH_MAX: usize = 1024;
const BATCH_MAX_BYTES: usize = 1 << 20;
/// Record bytes one answer of a fill carries: what a reconnected node
/// missed comes in pages, each well under Redis's pub/sub output limit.
const FILL_PAGE_BYTES: usize = 256 << 10;

/// What every link of one shard is configured with.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    /// Key and pub/sub channel prefix (`--engine-prefix`).
    pub prefix: String,
    /// Entries kept in each channel's stream (`--history-size`).
    pub history_size: usize,
    /// A stream expires this long after its last publication.
    pub history_ttl: Duration,
    /// A channel's offset and epoch live this long after their last use.
    pub meta_ttl: Duration,
    /// This node (records carry its hash).
    pub node: u64,
    /// `--engine-timeout`.
    pub timeout: Duration,
    /// The most record bytes a subscriber's recovery asks for
    /// (`--max-queue-bytes`: more would not fit its queue anyway).
    pub replay_bytes: usize,
    /// A node's presence members stay in Redis this long after it last
    /// refreshed them (`--presence-ttl`).
    pub presence_ttl: Duration,
    /// An HTTP publish's idempotency key is kept this long
    /// (`--idempotency-window`).
    pub idempotency_window: Duration,
}

/// Where a channel stands in Redis, and what its stream holds after the
/// offset asked about.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub seq: u64,
    pub epoch: Box<str>,
    pub entries: Vec<(u64, Record)>,
}

/// What a link hands to the shard it serves.
pub(crate) trait RedisHost {
    /// A publication Redis ordered as `seq` of `channel` in `epoch`.
    fn on_message(&self, channel: &str, seq: u64, epoch: &str, record: Record);
    /// The script answered a publication (or the link was lost first).
    fn on_published(&self, ticket: PublishTicket, result: Result<u64, Refused>);
    /// The answer to a position request.
    fn on_position(&self, ask: PositionAsk, result: Result<Standing, Refused>);
    /// The link came up or went down.
    fn on_link(&self, link: usize, up: bool);
    /// More requests in flight than publishers should add to (or no longer).
    fn on_backlog(&self, busy: bool);
    /// The last `seq` delivered of `channel`, when this shard follows it.
    fn resume_from(&self, channel: &str) -> Option<u64>;
    /// Redis answered a presence question (or the link was lost first).
    fn on_presence(&self, request: PresenceRequest, result: Result<PresenceAnswer, Refused>);
    /// Another node's `join` (or `leave`) of `member` (its JSON) on `channel`.
    fn on_presence_event(&self, channel: &str, join: bool, member: &[u8]);
    /// Redis answered [`RedisLink::node_occupancy`]: whether this node's
    /// entry changed and how many nodes the channel has now (`None`: no
    /// answer, the link was lost or Redis refused).
    fn on_occupancy(&self, channel: &str, on: bool, answer: Option<(bool, u64)>);
    /// A control message of another node (`super::control`).
    fn on_control(&self, message: &[u8]);
    fn stats(&self) -> &Stats;
}

/// A request sent, in the order its reply will come.
enum Pending {
    /// `HELLO`, `SELECT`, `SCRIPT LOAD`: an error ends the connection.
    Setup(&'static str),
    /// One script call publishing these, in order.
    Publish {
        tickets: Vec<PublishTicket>,
        sent_ns: u64,
    },
    Position {
        ask: PositionAsk,
        sent_ns: u64,
    },
    /// A request whose answer only matters if it is an error (logged).
    Ignored(&'static str),
    /// This node's entry in a channel's node set came (`on`) or went:
    /// whether that makes the channel occupied or vacated across nodes.
    Occupancy {
        ch: Box<str>,
        on: bool,
    },
    /// A presence question (`counting`: `occupancy`).
    Presence {
        request: PresenceRequest,
        counting: bool,
        sent_ns: u64,
    },
}

/// What Redis answered about a presence channel.
#[derive(Debug)]
pub(crate) enum PresenceAnswer {
    Count(usize),
    /// A page of members, as (conn, member JSON), in conn order; `more`
    /// when others follow; `count`: the channel's members in all.
    Page {
        count: usize,
        more: bool,
        members: Vec<(Bytes, Bytes)>,
    },
}

/// The names (SHA-1) of the scripts a link calls.
struct ScriptShas {
    publish: String,
    position: String,
    /// The presence scripts': change, refresh, query.
    presence: [String; 3],
    node_occupancy: String,
}

impl ScriptShas {
    fn new() -> Self {
        ScriptShas {
            publish: scripts::sha1_hex(scripts::PUBLISH),
            position: scripts::sha1_hex(scripts::POSITION),
            presence: [
                scripts::PRESENCE_CHANGE,
                scripts::PRESENCE_REFRESH,
                scripts::PRESENCE_QUERY,
            ]
            .map(scripts::sha1_hex),
            node_occupancy: scripts::sha1_hex(scripts::NODE_OCCUPANCY),
        }
    }
}

/// Epochs a link makes for channels Redis holds none of: a random start,
/// then counted (never reused).
struct Epochs {
    seed: u64,
    made: Cell<u64>,
}

/// One shard's link to one Redis.
pub(crate) struct RedisLink {
    /// Its place among `--redis-url`s.
    pub index: usize,
    addr: BrokerAddr,
    socket: SocketAddr,
    settings: Rc<RedisSettings>,
    /// The scripts' names (SHA-1), as `EVALSHA` calls them.
    shas: ScriptShas,
    up: Cell<bool>,
    busy: Cell<bool>,
    /// Publications sent or batched, not yet answered.
    in_flight: Cell<usize>,
    /// Publications of this executor turn, written as one script call
    /// when the writer runs (or before any other command).
    batch: RefCell<Batch>,
    /// Commands not yet written.
    pipe: Pipe,
    pending: RefCell<VecDeque<Pending>>,
    /// Channels this shard wants pushes for (`SUBSCRIBE`d while up).
    wanted: RefCell<HashSet<Box<str>>>,
    /// Scratch for an epoch and a record, reused by every request.
    scratch: RefCell<(String, BytesMut)>,
    /// Epochs made here.
    epochs: Epochs,
    /// Since when the oldest unanswered request has waited (sent, or the
    /// last reply before it came).
    awaiting_since: Cell<u64>,
}

impl RedisLink {
    pub(crate) fn new(
        index: usize,
        addr: BrokerAddr,
        socket: SocketAddr,
        settings: Rc<RedisSettings>,
    ) -> Self {
        RedisLink {
            index,
            addr,
            socket,
            settings,
            shas: ScriptShas::new(),
            up: Cell::new(false),
            busy: Cell::new(false),
            in_flight: Cell::new(0),
            batch: RefCell::new(Batch::default()),
            pipe: Pipe::default(),
            pending: RefCell::new(VecDeque::new()),
            wanted: RefCell::new(HashSet::new()),
            scratch: RefCell::new((String::new(), BytesMut::new())),
            epochs: Epochs {
                seed: crate::random::u64(),
                made: Cell::new(0),
            },
            awaiting_since: Cell::new(0),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.get()
    }

    /// Adds a publication to this turn's script call; `Ok(true)` when the
    /// link just became busy. Refused at once while the link is down (the
    /// ticket comes back).
    pub(crate) fn publish(
        &self,
        name: &str,
        payload: &Payload,
        skip: Option<Skip>,
        ticket: PublishTicket,
    ) -> Result<bool, PublishTicket> {
        if !self.up.get() {
            return Err(ticket);
        }
        let settings = &self.settings;
        let (prefix, channel) = (settings.prefix.as_bytes(), name.as_bytes());
        let full = {
            let mut batch = self.batch.borrow_mut();
            let Batch {
                keys,
                argv,
                tickets,
            } = &mut *batch;
            resp::bulk(keys, &[prefix, b":{", channel, b"}:m"]);
            resp::bulk(keys, &[prefix, b":{", channel, b"}:s"]);
            let mut scratch = self.scratch.borrow_mut();
            let record_buf = &mut scratch.1;
            record_buf.clear();
            record::encode(record_buf, payload, settings.node, skip);
            resp::bulk(argv, &[record_buf]);
            resp::bulk(argv, &[prefix, b":p:", channel]);
            match ticket.reply.idempotency_key() {
                Some(key) => resp::bulk(argv, &[prefix, b":{", channel, b"}:i:", key.as_bytes()]),
                None => resp::bulk(argv, &[b""]),
            }
            tickets.push(ticket);
            tickets.len() >= BATCH_MAX || argv.len() >= BATCH_MAX_BYTES
        };
        match full {
            true => self.seal(),
            false => self.pipe.hold(),
        }
        let in_flight = self.in_flight.get() + 1;
        self.in_flight.set(in_flight);
        let became_busy = in_flight >= IN_FLIGHT_HIGH_WATER && !self.busy.get();
        if became_busy {
            self.busy.set(true);
        }
        Ok(became_busy)
    }

    /// Writes the batched publications as one script call.
    fn seal(&self) {
        let Batch {
            keys,
            argv,
            tickets,
        } = std::mem::take(&mut *self.batch.borrow_mut());
        if tickets.is_empty() {
            return;
        }
        let settings = &self.settings;
        let mut epoch = std::mem::take(&mut self.scratch.borrow_mut().0);
        self.new_epoch(&mut epoch);
        let mut digits = [
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        ];
        let [count, meta_ttl, size, ttl, window] = &mut digits;
        self.pipe.write(|out| {
            resp::array_head(out, 8 + 5 * tickets.len());
            resp::bulk(out, &[b"EVALSHA"]);
            resp::bulk(out, &[self.shas.publish.as_bytes()]);
            resp::bulk(out, &[count.format(2 * tickets.len()).as_bytes()]);
            out.extend_from_slice(&keys);
            resp::bulk(out, &[epoch.as_bytes()]);
            resp::bulk(
                out,
                &[meta_ttl.format(millis(settings.meta_ttl)).as_bytes()],
            );
            resp::bulk(out, &[size.format(settings.history_size).as_bytes()]);
            resp::bulk(out, &[ttl.format(millis(settings.history_ttl)).as_bytes()]);
            resp::bulk(
                out,
                &[window
                    .format(millis(settings.idempotency_window))
                    .as_bytes()],
            );
            out.extend_from_slice(&argv);
        });
        self.scratch.borrow_mut().0 = epoch;
        self.expect(Pending::Publish {
            tickets,
            sent_ns: crate::clock::now_ns(),
        });
    }

    /// Writes a command that is not a publication: the batch goes first, so
    /// replies keep the order requests were made in.
    fn command(&self, append: impl FnOnce(&mut BytesMut)) {
        self.seal();
        self.pipe.write(append);
    }

    /// Asks where `ask`'s channel stands and for the stream's entries after
    /// `after` (`None`: none wanted). Refused at once while down.
    pub(crate) fn position(&self, ask: PositionAsk, after: Option<u64>) -> Result<(), PositionAsk> {
        if !self.up.get() {
            return Err(ask);
        }
        let name = match &ask {
            PositionAsk::Subscriber { ch, .. }
            | PositionAsk::Fill { ch, .. }
            | PositionAsk::History { ch, .. } => ch.clone(),
        };
        let mut epoch = String::new();
        self.new_epoch(&mut epoch);
        let after = after.map_or_else(|| "-1".to_string(), |a| a.to_string());
        // A subscriber takes at most its queue's worth; a fill is paged.
        let budget = match &ask {
            PositionAsk::Subscriber { .. } => self.settings.replay_bytes,
            PositionAsk::Fill { .. } | PositionAsk::History { .. } => FILL_PAGE_BYTES,
        };
        // The stream may hold more than the history size (trimmed
        // approximately): room for what it holds.
        let most = match &ask {
            PositionAsk::History { limit, .. } => *limit,
            _ => (2 * self.settings.history_size).max(1) + 100,
        };
        let settings = &self.settings;
        let mut digits = [
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        ];
        let [meta_ttl, count, bytes] = &mut digits;
        let (prefix, channel) = (settings.prefix.as_bytes(), name.as_bytes());
        self.command(|out| {
            script_call(out, &self.shas.position, prefix, channel, &[b"m", b"s"], 5);
            resp::bulk(out, &[epoch.as_bytes()]);
            resp::bulk(
                out,
                &[meta_ttl.format(millis(settings.meta_ttl)).as_bytes()],
            );
            resp::bulk(out, &[after.as_bytes()]);
            resp::bulk(out, &[count.format(most).as_bytes()]);
            resp::bulk(out, &[bytes.format(budget).as_bytes()]);
        });
        self.expect(Pending::Position {
            ask,
            sent_ns: crate::clock::now_ns(),
        });
        Ok(())
    }

    /// `member` (conn and JSON) joined presence channel `name` here, or
    /// left it: recorded in Redis and announced to the other nodes.
    pub(crate) fn presence_change(&self, name: &str, join: bool, conn: &str, member: &[u8]) {
        if !self.up.get() {
            return;
        }
        let settings = &self.settings;
        let (prefix, channel) = (settings.prefix.as_bytes(), name.as_bytes());
        let mut ttl = itoa::Buffer::new();
        let node = format!("{:016x}:", settings.node);
        let kind: &[u8] = if join { b"J" } else { b"L" };
        self.command(|out| {
            self.presence_call(out, 0, channel, 6);
            resp::bulk(out, &[if join { b"j" } else { b"l" }]);
            resp::bulk(out, &[conn.as_bytes()]);
            resp::bulk(out, &[member]);
            resp::bulk(out, &[ttl.format(millis(settings.presence_ttl)).as_bytes()]);
            resp::bulk(out, &[prefix, b":p:", channel]);
            resp::bulk(out, &[kind, node.as_bytes(), member]);
        });
        self.expect(Pending::Ignored("presence change"));
    }

    /// This node's members of `name` are still there (`members`: conn and
    /// JSON of each): their expiry moves on by the presence TTL.
    pub(crate) fn presence_refresh(&self, name: &str, members: &[(&str, &[u8])]) {
        if !self.up.get() || members.is_empty() {
            return;
        }
        let settings = &self.settings;
        let channel = name.as_bytes();
        let mut ttl = itoa::Buffer::new();
        self.command(|out| {
            self.presence_call(out, 1, channel, 1 + 2 * members.len());
            resp::bulk(out, &[ttl.format(millis(settings.presence_ttl)).as_bytes()]);
            for (conn, member) in members {
                resp::bulk(out, &[conn.as_bytes()]);
                resp::bulk(out, &[member]);
            }
        });
        self.expect(Pending::Ignored("presence refresh"));
    }

    /// Channel `name` got subscribers on this node (`on`; said again to
    /// refresh the entry, with `answer` false) or lost them. With
    /// `answer`, the host hears in [`RedisHost::on_occupancy`] whether that
    /// made the channel occupied or vacated across nodes. `false` while
    /// down.
    pub(crate) fn node_occupancy(&self, name: &str, on: bool, answer: bool) -> bool {
        if !self.up.get() {
            return false;
        }
        let settings = &self.settings;
        let (prefix, channel) = (settings.prefix.as_bytes(), name.as_bytes());
        let mut ttl = itoa::Buffer::new();
        let node = format!("{:016x}", settings.node);
        self.command(|out| {
            script_call(
                out,
                &self.shas.node_occupancy,
                prefix,
                channel,
                &[b"nodes"],
                3,
            );
            resp::bulk(out, &[if on { b"j" } else { b"l" }]);
            resp::bulk(out, &[node.as_bytes()]);
            resp::bulk(out, &[ttl.format(millis(settings.presence_ttl)).as_bytes()]);
        });
        self.expect(match answer {
            true => Pending::Occupancy {
                ch: name.into(),
                on,
            },
            false => Pending::Ignored("node occupancy refresh"),
        });
        true
    }

    /// Asks Redis who is on presence channel `request.ch` (every node's
    /// members), or how many. Refused at once while down.
    pub(crate) fn presence_query(&self, request: PresenceRequest) -> Result<(), PresenceRequest> {
        if !self.up.get() {
            return Err(request);
        }
        let counting = request.ask == crate::protocol::PresenceAsk::Count;
        let channel = request.ch.as_bytes();
        self.command(|out| match &request.ask {
            crate::protocol::PresenceAsk::Count => {
                self.presence_call(out, 2, channel, 1);
                resp::bulk(out, &[b"count"]);
            }
            crate::protocol::PresenceAsk::Page { cursor, limit } => {
                let mut most = itoa::Buffer::new();
                self.presence_call(out, 2, channel, 3);
                resp::bulk(out, &[b"page"]);
                resp::bulk(out, &[cursor.as_deref().unwrap_or("").as_bytes()]);
                resp::bulk(out, &[most.format(*limit).as_bytes()]);
            }
        });
        self.expect(Pending::Presence {
            request,
            counting,
            sent_ns: crate::clock::now_ns(),
        });
        Ok(())
    }

    /// `EVALSHA` of presence script `script` (0 change, 1 refresh, 2 query)
    /// on `channel`'s member hash, expiry set and name set, to be followed
    /// by `argv` more arguments.
    fn presence_call(&self, out: &mut BytesMut, script: usize, channel: &[u8], argv: usize) {
        let sha = &self.shas.presence[script];
        let keys: [&[u8]; 3] = [b"members", b"expiry", b"names"];
        script_call(
            out,
            sha,
            self.settings.prefix.as_bytes(),
            channel,
            &keys,
            argv,
        );
    }

    /// This shard wants pushes for `name` (or no longer): `SUBSCRIBE`s or
    /// `UNSUBSCRIBE`s when that changes. Kept while down, for the reconnect.
    pub(crate) fn want(&self, name: &str, on: bool) {
        let changed = match on {
            true => self.wanted.borrow_mut().insert(name.into()),
            false => self.wanted.borrow_mut().remove(name),
        };
        if changed && self.up.get() {
            let verb: &[u8] = if on { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
            let channel = pubsub_channel(&self.settings.prefix, name);
            self.command(|out| resp::command(out, &[verb, &channel]));
        }
    }

    /// Sends a control message to every node (`super::control`); `false`
    /// while down.
    pub(crate) fn control(&self, message: &[u8]) -> bool {
        if !self.up.get() {
            return false;
        }
        let channel = control_channel(&self.settings.prefix);
        self.command(|out| resp::command(out, &[b"PUBLISH", &channel, message]));
        self.expect(Pending::Ignored("PUBLISH"));
        true
    }

    /// Writes a fresh, never-used epoch into `into`.
    fn new_epoch(&self, into: &mut String) {
        use std::fmt::Write;
        let n = self.epochs.made.get() + 1;
        self.epochs.made.set(n);
        into.clear();
        let _ = write!(into, "{:x}{n:x}", self.epochs.seed >> 16);
    }

    /// Queues what the next reply answers.
    fn expect(&self, pending: Pending) {
        let mut queue = self.pending.borrow_mut();
        if queue.is_empty() {
            self.awaiting_since.set(crate::clock::now_ns());
        }
        queue.push_back(pending);
    }
}

/// Publications gathered for one script call: their keys and their
/// arguments, each already a RESP bulk string, and who waits for each.
#[derive(Default)]
struct Batch {
    keys: BytesMut,
    argv: BytesMut,
    tickets: Vec<PublishTicket>,
}

/// A duration as the scripts take it: whole milliseconds, at least 1.
fn millis(duration: Duration) -> u64 {
    duration.as_millis().max(1) as u64
}

/// `SCRIPT LOAD` of every script (one reply each).
fn load_scripts(out: &mut BytesMut) {
    for script in scripts::ALL {
        resp::command(out, &[b"SCRIPT", b"LOAD", script.as_bytes()]);
    }
}

/// The pub/sub channel of `name`: `<prefix>:p:<name>`.
fn pubsub_channel(prefix: &str, name: &str) -> Vec<u8> {
    let mut channel = Vec::with_capacity(prefix.len() + name.len() + 3);
    channel.extend_from_slice(prefix.as_bytes());
    channel.extend_from_slice(b":p:");
    channel.extend_from_slice(name.as_bytes());
    channel
}

/// The pub/sub channel every node's first link listens on for control
/// messages (disconnects, unsubscribes): no channel's (those are `:p:`).
fn control_channel(prefix: &str) -> Vec<u8> {
    let mut channel = Vec::with_capacity(prefix.len() + 4);
    channel.extend_from_slice(prefix.as_bytes());
    channel.extend_from_slice(b":ctl");
    channel
}

/// The channel name a pushed pub/sub channel stands for.
fn channel_name<'a>(prefix: &str, pubsub: &'a [u8]) -> Option<&'a str> {
    let rest = pubsub
        .strip_prefix(prefix.as_bytes())?
        .strip_prefix(b":p:")?;
    std::str::from_utf8(rest).ok()
}

impl RedisLink {
    /// Keeps this link connected until the shard drops the future: connect,
    /// set up, serve until the connection fails, answer what was in flight
    /// as refused, wait (backoff with jitter), again.
    pub(crate) async fn run<H: RedisHost>(self: Rc<Self>, host: &H) {
        pipe::keep_connected(self.socket, &self.addr.host_port, &self.addr.shown, host.stats(), async |stream| {
            tracing::info!(redis = %self.addr.shown, link = self.index, "connected to Redis");
            self.start(host);
            let ended = self.serve(&stream, host).await;
            tracing::warn!(redis = %self.addr.shown, link = self.index, reason = %ended, "lost Redis; refusing publications until it is back");
            self.stop(host);
        })
        .await;
    }

    /// A fresh connection: `HELLO 3`, the database, the scripts, every
    /// wanted channel `SUBSCRIBE`d and, for each one followed, where it
    /// stands now (the shard fills what it missed). Then the link is up.
    fn start<H: RedisHost>(&self, host: &H) {
        self.pipe.clear();
        self.pipe.write(|out| {
            let user = self.addr.user.as_deref().unwrap_or("default");
            match &self.addr.password {
                Some(password) => resp::command(
                    out,
                    &[
                        b"HELLO",
                        b"3",
                        b"AUTH",
                        user.as_bytes(),
                        password.as_bytes(),
                    ],
                ),
                None => resp::command(out, &[b"HELLO", b"3"]),
            }
            if self.addr.database != 0 {
                let db = self.addr.database.to_string();
                resp::command(out, &[b"SELECT", db.as_bytes()]);
            }
            load_scripts(out);
        });
        self.awaiting_since.set(crate::clock::now_ns());
        let mut pending = self.pending.borrow_mut();
        pending.push_back(Pending::Setup("HELLO 3"));
        if self.addr.database != 0 {
            pending.push_back(Pending::Setup("SELECT"));
        }
        for _ in scripts::ALL {
            pending.push_back(Pending::Setup("SCRIPT LOAD"));
        }
        drop(pending);
        self.up.set(true);
        if self.index == 0 {
            let channel = control_channel(&self.settings.prefix);
            self.command(|out| resp::command(out, &[b"SUBSCRIBE", &channel]));
        }
        let wanted: Vec<Box<str>> = self.wanted.borrow().iter().cloned().collect();
        for name in wanted {
            let channel = pubsub_channel(&self.settings.prefix, &name);
            self.command(|out| resp::command(out, &[b"SUBSCRIBE", &channel]));
            if let Some(after) = host.resume_from(&name) {
                let _ = self.position(PositionAsk::Fill { ch: name }, Some(after));
            }
        }
        host.on_link(self.index, true);
    }

    /// The connection ended: down, and everything in flight refused. A
    /// publication whose script call was sent (or written to be sent) got
    /// no answer: it may have been applied — Redis runs what it read even
    /// after the connection is gone (a stalled Redis, resumed, does) — so
    /// its publisher is told `outcome_unknown` (retry with the same
    /// idempotency key). One still in this turn's batch was never sent:
    /// `unavailable`, not applied.
    fn stop<H: RedisHost>(&self, host: &H) {
        self.up.set(false);
        self.pipe.clear();
        let batched = std::mem::take(&mut *self.batch.borrow_mut()).tickets;
        let failed: Vec<Pending> = self.pending.borrow_mut().drain(..).collect();
        for pending in failed {
            match pending {
                Pending::Setup(_) | Pending::Ignored(_) => {}
                Pending::Presence { request, .. } => {
                    host.on_presence(request, Err(Refused::Unavailable))
                }
                Pending::Occupancy { ch, on } => host.on_occupancy(&ch, on, None),
                Pending::Publish { tickets, .. } => {
                    self.answer(host, tickets, Err(Refused::OutcomeUnknown))
                }
                Pending::Position { ask, .. } => host.on_position(ask, Err(Refused::Unavailable)),
            }
        }
        self.answer(host, batched, Err(Refused::Unavailable));
        host.on_link(self.index, false);
    }

    /// Reads and writes until the connection fails or goes silent; says why.
    async fn serve<H: RedisHost>(&self, stream: &SharedStream, host: &H) -> String {
        let decode = |buf: &mut BytesMut| loop {
            match resp::next_frame(buf) {
                Ok(Some(frame)) => self.handle(frame, host)?,
                Ok(None) => return Ok(()),
                Err(error) => return Err(error.to_string()),
            }
        };
        let traffic = self.pipe.serve(stream, "Redis", decode, || self.seal());
        let alive = super::watch_liveness(
            self.settings.timeout,
            || (!self.pending.borrow().is_empty()).then(|| self.awaiting_since.get()),
            || {
                self.command(|out| resp::command(out, &[b"PING"]));
                self.expect(Pending::Setup("PING"));
            },
        );
        traffic.or(alive).await
    }

    /// One frame from Redis: a push, or the reply to the oldest request.
    fn handle<H: RedisHost>(&self, frame: BytesFrame, host: &H) -> Result<(), String> {
        if resp::is_push(&frame) {
            if let Some((channel, message)) = resp::pushed_message(&frame) {
                self.on_push(channel, message, host);
            }
            return Ok(());
        }
        let Some(pending) = self.pending.borrow_mut().pop_front() else {
            return Err("a reply nobody asked for".into());
        };
        self.awaiting_since.set(crate::clock::now_ns());
        match pending {
            Pending::Setup(what) => {
                if let Some(error) = resp::error_text(&frame) {
                    tracing::error!(redis = %self.addr.shown, what, %error, "Redis refused the connection's setup");
                    return Err(format!("{what}: {error}"));
                }
            }
            Pending::Publish { tickets, sent_ns } => {
                self.timed(host, sent_ns);
                // Negative: the publication made before under its
                // idempotency key.
                let offsets = resp::array(&frame)
                    .filter(|items| items.len() == 2 * tickets.len())
                    .and_then(|items| {
                        let offsets = items.iter().step_by(2).map(resp::integer);
                        offsets.collect::<Option<Vec<i64>>>()
                    });
                let result = offsets.ok_or_else(|| {
                    self.refusal(&frame);
                    publish_refusal(resp::error_text(&frame).as_deref())
                });
                self.answer(host, tickets, result);
            }
            Pending::Ignored(what) => {
                if let Some(error) = resp::error_text(&frame) {
                    self.refusal(&frame);
                    tracing::warn!(redis = %self.addr.shown, what, %error, "Redis refused a request");
                }
            }
            Pending::Presence {
                request,
                counting,
                sent_ns,
            } => {
                self.timed(host, sent_ns);
                let answer = match counting {
                    true => resp::integer(&frame)
                        .and_then(|n| usize::try_from(n).ok())
                        .map(PresenceAnswer::Count),
                    false => presence_page(&frame),
                };
                host.on_presence(request, answer.ok_or_else(|| self.refusal(&frame)));
            }
            Pending::Occupancy { ch, on } => {
                let answer = resp::array(&frame).and_then(|items| match items {
                    [changed, nodes] => Some((resp::integer(changed)? == 1, resp::integer(nodes)?)),
                    _ => None,
                });
                if answer.is_none() {
                    self.refusal(&frame);
                }
                host.on_occupancy(
                    &ch,
                    on,
                    answer.map(|(changed, nodes)| (changed, nodes as u64)),
                );
            }
            Pending::Position { ask, sent_ns } => {
                self.timed(host, sent_ns);
                let result = standing(&frame).ok_or_else(|| self.refusal(&frame));
                host.on_position(ask, result);
            }
        }
        Ok(())
    }

    /// Tells each publisher its `seq` (`offsets`, in ticket order), or why
    /// it was refused; publishers may go on once few enough are in flight.
    fn answer<H: RedisHost>(
        &self,
        host: &H,
        tickets: Vec<PublishTicket>,
        offsets: Result<Vec<i64>, Refused>,
    ) {
        self.in_flight
            .set(self.in_flight.get().saturating_sub(tickets.len()));
        match offsets {
            Ok(offsets) => {
                for (ticket, offset) in tickets.into_iter().zip(offsets) {
                    if offset < 0 {
                        bump(&host.stats().publications_deduplicated, 1);
                    }
                    host.on_published(ticket, Ok(offset.unsigned_abs()));
                }
            }
            Err(why) => {
                for ticket in tickets {
                    host.on_published(ticket, Err(why));
                }
            }
        }
        if self.busy.get() && self.in_flight.get() < IN_FLIGHT_HIGH_WATER / 2 {
            self.busy.set(false);
            host.on_backlog(false);
        }
    }

    /// A reply that is not the script's answer: after `NOSCRIPT` (Redis
    /// lost its script cache) the scripts are loaded again.
    fn refusal(&self, frame: &BytesFrame) -> Refused {
        let error = resp::error_text(frame).unwrap_or_else(|| "unexpected reply".into());
        if error.starts_with("NOSCRIPT") {
            self.command(load_scripts);
            let mut pending = self.pending.borrow_mut();
            for _ in scripts::ALL {
                pending.push_back(Pending::Setup("SCRIPT LOAD"));
            }
            drop(pending);
            tracing::warn!(redis = %self.addr.shown, "Redis lost the scripts; loading them again");
        } else {
            tracing::warn!(redis = %self.addr.shown, %error, "Redis refused a script");
        }
        Refused::Unavailable
    }

    fn timed<H: RedisHost>(&self, host: &H, sent_ns: u64) {
        let stats = host.stats();
        bump(&stats.engine_replies, 1);
        bump(
            &stats.engine_rtt_us,
            crate::clock::now_ns().saturating_sub(sent_ns) / 1000,
        );
    }

    fn on_push<H: RedisHost>(&self, channel: &Bytes, message: &Bytes, host: &H) {
        bump(&host.stats().engine_messages, 1);
        let Some(name) = channel_name(&self.settings.prefix, channel) else {
            if **channel == *control_channel(&self.settings.prefix) {
                host.on_control(message);
            }
            return;
        };
        if let Some(event) = presence_event(message, self.settings.node) {
            if let Some((join, member)) = event {
                host.on_presence_event(name, join, member);
            }
            return;
        }
        let decoded = record::split_published(message)
            .and_then(|(seq, epoch, bytes)| Ok((seq, epoch, record::decode(bytes)?)));
        match decoded {
            Ok((seq, epoch, record)) => host.on_message(name, seq, epoch, record),
            Err(error) => {
                bump(&host.stats().engine_unreadable, 1);
                tracing::warn!(channel = name, %error, "unreadable message from Redis, dropped");
            }
        }
    }
}

/// What the publish script's answer that is not its result (`error`: the
/// error reply's text; `None`: a reply of the wrong shape) means for its
/// publications. Errors Redis raises before a script writes anything —
/// the script unknown, Redis busy, loading, a replica, out of memory (it
/// refuses only a script's first write), not authenticated — mean nothing
/// was applied. Any other error may come from part way through the batch
/// (a key of the wrong type, say), after earlier publications were made,
/// and a reply of the wrong shape comes from a script that ran: those may
/// have been applied.
fn publish_refusal(error: Option<&str>) -> Refused {
    const NOT_RUN: [&str; 7] = [
        "NOSCRIPT",
        "BUSY",
        "LOADING",
        "READONLY",
        "MASTERDOWN",
        "OOM",
        "NOAUTH",
    ];
    let code = error.and_then(|e| e.split_whitespace().next());
    match code {
        Some(code) if NOT_RUN.contains(&code) => Refused::Unavailable,
        _ => Refused::OutcomeUnknown,
    }
}

/// A presence event another node published: `J` (join) or `L` (leave),
/// its node's hash in 16 hex digits, `:`, the member's JSON. `None`: not a
/// presence event; `Some(None)`: this node's own (already delivered here).
fn presence_event(message: &[u8], node: u64) -> Option<Option<(bool, &[u8])>> {
    let join = match message.first()? {
        b'J' => true,
        b'L' => false,
        _ => return None,
    };
    let (origin, member) = super::untag(&message[1..])?;
    Some((origin != node).then_some((join, member)))
}

/// The head of `EVALSHA sha` on `channel`'s keys, one
/// `<prefix>:{<channel>}:<suffix>` per suffix (the hash tag keeps them in
/// one Cluster slot), to be followed by `argv` arguments.
fn script_call(
    out: &mut BytesMut,
    sha: &str,
    prefix: &[u8],
    channel: &[u8],
    suffixes: &[&[u8]],
    argv: usize,
) {
    resp::array_head(out, 3 + suffixes.len() + argv);
    resp::bulk(out, &[b"EVALSHA"]);
    resp::bulk(out, &[sha.as_bytes()]);
    resp::bulk(
        out,
        &[itoa::Buffer::new().format(suffixes.len()).as_bytes()],
    );
    for suffix in suffixes {
        resp::bulk(out, &[prefix, b":{", channel, b"}:", suffix]);
    }
}

/// The presence query's page: `{count, more, conn1, json1, ...}`.
fn presence_page(frame: &BytesFrame) -> Option<PresenceAnswer> {
    let items = resp::array(frame)?;
    let (head, pairs) = items.split_at_checked(2)?;
    let count = usize::try_from(resp::integer(&head[0])?).ok()?;
    let more = resp::integer(&head[1])? == 1;
    if pairs.len() % 2 != 0 {
        return None;
    }
    let members = pairs
        .chunks_exact(2)
        .map(|pair| Some((resp::blob(&pair[0])?.clone(), resp::blob(&pair[1])?.clone())))
        .collect::<Option<Vec<_>>>()?;
    Some(PresenceAnswer::Page {
        count,
        more,
        members,
    })
}

/// The position script's reply: `{offset, epoch, o1, r1, ...}`.
fn standing(frame: &BytesFrame) -> Option<Standing> {
    let items = resp::array(frame)?;
    let (head, rest) = items.split_at_checked(2)?;
    let seq = u64::try_from(resp::integer(&head[0])?).ok()?;
    let epoch = std::str::from_utf8(resp::blob(&head[1])?).ok()?.into();
    let mut entries = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks_exact(2) {
        let offset = u64::try_from(resp::integer(&pair[0])?).ok()?;
        let record = record::decode(resp::blob(&pair[1])?).ok()?;
        entries.push((offset, record));
    }
    Some(Standing {
        seq,
        epoch,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        protocol::PayloadKind,
        publication::{Reply, ReplyId},
    };

    #[test]
    fn pubsub_channels_name_their_channel() {
        assert_eq!(pubsub_channel("sc", "a:b"), b"sc:p:a:b");
        assert_eq!(channel_name("sc", b"sc:p:a:b"), Some("a:b"));
        assert_eq!(channel_name("sc", b"other:p:a"), None);
    }

    #[test]
    fn a_position_reply_reads_as_a_standing() {
        let mut record_bytes = BytesMut::new();
        record::encode(
            &mut record_bytes,
            &Payload::copy_of(PayloadKind::Json, b"7"),
            9,
            None,
        );
        let blob = |b: &[u8]| BytesFrame::BlobString {
            data: Bytes::copy_from_slice(b),
            attributes: None,
        };
        let number = |n| BytesFrame::Number {
            data: n,
            attributes: None,
        };
        let reply = BytesFrame::Array {
            data: vec![
                number(12),
                blob(b"e1"),
                number(11),
                blob(&record_bytes),
                number(12),
                blob(&record_bytes),
            ],
            attributes: None,
        };
        let got = standing(&reply).unwrap();
        assert_eq!((got.seq, &*got.epoch), (12, "e1"));
        assert_eq!(
            got.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            [11, 12]
        );
        assert_eq!(&got.entries[0].1.payload.bytes[..], b"7");
        let short = BytesFrame::Array {
            data: vec![number(1)],
            attributes: None,
        };
        assert!(standing(&short).is_none());
        let bad_record = BytesFrame::Array {
            data: vec![number(1), blob(b"e"), number(1), blob(b"x")],
            attributes: None,
        };
        assert!(standing(&bad_record).is_none());
    }

    /// A host that records what its publishers are told.
    #[derive(Default)]
    struct Told {
        published: RefCell<Vec<(u32, Result<u64, Refused>)>>,
        stats: Stats,
    }

    impl RedisHost for Told {
        fn on_message(&self, _: &str, _: u64, _: &str, _: Record) {}
        fn on_published(&self, ticket: PublishTicket, result: Result<u64, Refused>) {
            let Reply::Http { index, .. } = ticket.reply else {
                panic!("{:?}", ticket.reply)
            };
            self.published.borrow_mut().push((index, result));
        }
        fn on_position(&self, _: PositionAsk, _: Result<Standing, Refused>) {}
        fn on_link(&self, _: usize, _: bool) {}
        fn on_backlog(&self, _: bool) {}
        fn resume_from(&self, _: &str) -> Option<u64> {
            None
        }
        fn on_presence(&self, _: PresenceRequest, _: Result<PresenceAnswer, Refused>) {}
        fn on_presence_event(&self, _: &str, _: bool, _: &[u8]) {}
        fn on_occupancy(&self, _: &str, _: bool, _: Option<(bool, u64)>) {}
        fn on_control(&self, _: &[u8]) {}
        fn stats(&self) -> &Stats {
            &self.stats
        }
    }

    /// A link that is up, without a socket (nothing is written anywhere).
    fn link_up() -> RedisLink {
        let addr = BrokerAddr::parse("redis://127.0.0.1:6379", "redis").unwrap();
        let settings = RedisSettings {
            prefix: "sc".into(),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_secs(60),
            node: 1,
            timeout: Duration::from_secs(3),
            replay_bytes: 1 << 20,
            presence_ttl: Duration::from_secs(30),
            idempotency_window: Duration::from_secs(120),
        };
        let link = RedisLink::new(0, addr, ([127, 0, 0, 1], 6379).into(), Rc::new(settings));
        link.up.set(true);
        link
    }

    fn publish(link: &RedisLink, index: u32) {
        let ticket = PublishTicket {
            from: 0,
            reply: Reply::Http {
                to: ReplyId::new(0, 0, 0),
                index,
                idempotency_key: Some("1:k".into()),
            },
        };
        let payload = Payload::copy_of(PayloadKind::Json, b"1");
        assert!(link.publish("orders", &payload, None, ticket).is_ok());
    }

    #[test]
    fn a_publication_sent_and_unanswered_may_have_been_applied_one_never_sent_was_not() {
        // Issue 24, finding 16: both were `unavailable`, "not accepted",
        // yet a stalled Redis, resumed, applied what it had read.
        let (link, host) = (link_up(), Told::default());
        publish(&link, 0);
        link.seal(); // written: the writer's turn came
        publish(&link, 1); // still in this turn's batch
        link.stop(&host);
        assert_eq!(
            *host.published.borrow(),
            [
                (0, Err(Refused::OutcomeUnknown)),
                (1, Err(Refused::Unavailable))
            ]
        );
        assert!(!link.is_up());
        let ticket = PublishTicket {
            from: 0,
            reply: Reply::None,
        };
        assert!(
            link.publish(
                "orders",
                &Payload::copy_of(PayloadKind::Json, b"1"),
                None,
                ticket
            )
            .is_err(),
            "refused at once while down"
        );
    }

    #[test]
    fn a_script_error_tells_whether_the_publications_may_have_been_applied() {
        let error = |text: &str| BytesFrame::SimpleError {
            data: text.to_owned().into(),
            attributes: None,
        };
        let (link, host) = (link_up(), Told::default());
        // What Redis refuses before the script writes: nothing applied.
        for (index, text) in [
            "NOSCRIPT No matching script. Please use EVAL.",
            "BUSY Redis is busy running a script.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "READONLY You can't write against a read only replica.",
        ]
        .into_iter()
        .enumerate()
        {
            publish(&link, index as u32);
            link.seal();
            link.pending
                .borrow_mut()
                .retain(|p| matches!(p, Pending::Publish { .. }));
            link.handle(error(text), &host).unwrap();
        }
        // A failure part way through, or a reply that is not the result.
        publish(&link, 10);
        link.seal();
        link.pending
            .borrow_mut()
            .retain(|p| matches!(p, Pending::Publish { .. }));
        link.handle(
            error("WRONGTYPE Operation against a key holding the wrong kind of value"),
            &host,
        )
        .unwrap();
        publish(&link, 11);
        link.seal();
        let odd = BytesFrame::Number {
            data: 1,
            attributes: None,
        };
        link.handle(odd, &host).unwrap();
        let told = host.published.borrow();
        let unknown: Vec<u32> = told
            .iter()
            .filter(|(_, r)| *r == Err(Refused::OutcomeUnknown))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(unknown, [10, 11], "{told:?}");
        assert_eq!(told.len(), 6);
    }
}
