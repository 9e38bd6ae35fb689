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
    backoff::random_u64,
    pipe::{self, Pipe},
    record::{self, Record},
    resp, scripts, Refused,
};
use crate::{
    conn::stream::SharedStream,
    mesh::Reply,
    publication::{ConnRef, Payload, Skip},
    stats::{bump, Stats},
};

/// Requests awaiting their reply over which publishers are held back
/// (the shard's congestion flag), and under half of which they go on.
const PENDING_HIGH_WATER: usize = 16_384;

/// What every link of one shard is configured with.
#[derive(Debug, Clone)]
pub struct RedisSettings {
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
}

/// A publication waiting for the script's answer.
#[derive(Debug)]
pub struct PublishTicket {
    /// The shard the publisher is on.
    pub from: usize,
    pub reply: Reply,
}

/// Who asked where a channel stands.
#[derive(Debug)]
pub enum PositionAsk {
    /// A subscription waiting for its position (as `MeshMsg::Position`).
    Subscriber {
        ch: Box<str>,
        from: usize,
        conn: ConnRef,
        token: u32,
        since: Option<(u64, Box<str>)>,
        id: Option<Box<str>>,
    },
    /// The shard lost pushes and fills them from the stream.
    Fill { ch: Box<str> },
}

/// Where a channel stands in Redis, and what its stream holds after the
/// offset asked about.
#[derive(Debug, Clone)]
pub struct Standing {
    pub seq: u64,
    pub epoch: Box<str>,
    pub entries: Vec<(u64, Record)>,
}

/// What a link hands to the shard it serves.
pub trait RedisHost {
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
    fn stats(&self) -> &Stats;
}

/// A request sent, in the order its reply will come.
enum Pending {
    /// `HELLO`, `SELECT`, `SCRIPT LOAD`: an error ends the connection.
    Setup(&'static str),
    Publish {
        ticket: PublishTicket,
        sent_ns: u64,
    },
    Position {
        ask: PositionAsk,
        sent_ns: u64,
    },
}

/// One shard's link to one Redis.
pub struct RedisLink {
    /// Its place among `--redis-url`s.
    pub index: usize,
    addr: BrokerAddr,
    socket: SocketAddr,
    settings: Rc<RedisSettings>,
    publish_sha: String,
    position_sha: String,
    up: Cell<bool>,
    busy: Cell<bool>,
    /// Commands not yet written.
    pipe: Pipe,
    pending: RefCell<VecDeque<Pending>>,
    /// Channels this shard wants pushes for (`SUBSCRIBE`d while up).
    wanted: RefCell<HashSet<Box<str>>>,
    /// Scratch for a record and an epoch, reused by every publication.
    scratch: RefCell<(BytesMut, String)>,
    /// Epochs made here: a random start, then counted (never reused).
    epoch_seed: u64,
    epochs_made: Cell<u64>,
    /// Since when the oldest unanswered request has waited (sent, or the
    /// last reply before it came).
    awaiting_since: Cell<u64>,
}

impl RedisLink {
    pub fn new(
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
            publish_sha: scripts::sha1_hex(scripts::PUBLISH),
            position_sha: scripts::sha1_hex(scripts::POSITION),
            up: Cell::new(false),
            busy: Cell::new(false),
            pipe: Pipe::default(),
            pending: RefCell::new(VecDeque::new()),
            wanted: RefCell::new(HashSet::new()),
            scratch: RefCell::new((BytesMut::new(), String::new())),
            epoch_seed: random_u64(),
            epochs_made: Cell::new(0),
            awaiting_since: Cell::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    /// Sends a publication to the script; `Ok(true)` when the link just
    /// became busy. Refused at once while the link is down (the ticket
    /// comes back).
    pub fn publish(
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
        let mut scratch = self.scratch.borrow_mut();
        let (record_buf, epoch) = &mut *scratch;
        record_buf.clear();
        record::encode(record_buf, payload, settings.node, skip);
        self.new_epoch(epoch);
        let mut digits = [itoa::Buffer::new(), itoa::Buffer::new()];
        let [size, ttl] = &mut digits;
        let prefix = settings.prefix.as_bytes();
        self.pipe.write(|out| {
            self.evalsha(out, (&self.publish_sha, name, epoch), 4);
            resp::bulk(out, &[record_buf]);
            resp::bulk(out, &[size.format(settings.history_size).as_bytes()]);
            resp::bulk(out, &[ttl.format(millis(settings.history_ttl)).as_bytes()]);
            resp::bulk(out, &[prefix, b":p:", name.as_bytes()]);
        });
        Ok(self.expect(Pending::Publish {
            ticket,
            sent_ns: crate::clock::now_ns(),
        }))
    }

    /// Asks where `ask`'s channel stands and for the stream's entries after
    /// `after` (`None`: none wanted); `Ok(true)` when the link just became
    /// busy. Refused at once while down.
    pub fn position(&self, ask: PositionAsk, after: Option<u64>) -> Result<bool, PositionAsk> {
        if !self.up.get() {
            return Err(ask);
        }
        let name = match &ask {
            PositionAsk::Subscriber { ch, .. } | PositionAsk::Fill { ch, .. } => ch.clone(),
        };
        let mut epoch = String::new();
        self.new_epoch(&mut epoch);
        let after = after.map_or_else(|| "-1".to_string(), |a| a.to_string());
        let settings = &self.settings;
        let mut count = itoa::Buffer::new();
        self.pipe.write(|out| {
            self.evalsha(out, (&self.position_sha, &name, &epoch), 2);
            resp::bulk(out, &[after.as_bytes()]);
            resp::bulk(
                out,
                &[count.format(settings.history_size.max(1)).as_bytes()],
            );
        });
        Ok(self.expect(Pending::Position {
            ask,
            sent_ns: crate::clock::now_ns(),
        }))
    }

    /// `EVALSHA <sha> 2 <meta key> <stream key> <new epoch> <meta ttl>` of
    /// channel `name` (what the scripts' shared start takes), to be
    /// followed by `argv` more arguments ([`resp::bulk`]). The keys are
    /// written in place, `<prefix>:{<name>}:m` and `:s`: the braces keep
    /// both in one Redis Cluster slot.
    fn evalsha(&self, out: &mut BytesMut, (sha, name, epoch): (&str, &str, &str), argv: usize) {
        let (prefix, name) = (self.settings.prefix.as_bytes(), name.as_bytes());
        let mut meta_ttl = itoa::Buffer::new();
        resp::array_head(out, 7 + argv);
        resp::bulk(out, &[b"EVALSHA"]);
        resp::bulk(out, &[sha.as_bytes()]);
        resp::bulk(out, &[b"2"]);
        resp::bulk(out, &[prefix, b":{", name, b"}:m"]);
        resp::bulk(out, &[prefix, b":{", name, b"}:s"]);
        resp::bulk(out, &[epoch.as_bytes()]);
        resp::bulk(
            out,
            &[meta_ttl.format(millis(self.settings.meta_ttl)).as_bytes()],
        );
    }

    /// This shard wants pushes for `name` (or no longer): `SUBSCRIBE`s or
    /// `UNSUBSCRIBE`s when that changes. Kept while down, for the reconnect.
    pub fn want(&self, name: &str, on: bool) {
        let changed = match on {
            true => self.wanted.borrow_mut().insert(name.into()),
            false => self.wanted.borrow_mut().remove(name),
        };
        if changed && self.up.get() {
            let verb: &[u8] = if on { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
            let channel = pubsub_channel(&self.settings.prefix, name);
            self.pipe.write(|out| resp::command(out, &[verb, &channel]));
        }
    }

    /// Writes a fresh, never-used epoch into `into`.
    fn new_epoch(&self, into: &mut String) {
        use std::fmt::Write;
        let n = self.epochs_made.get() + 1;
        self.epochs_made.set(n);
        into.clear();
        let _ = write!(into, "{:x}{n:x}", self.epoch_seed >> 16);
    }

    /// Queues what the next reply answers; returns whether the link just
    /// became busy (publishers should be held back).
    fn expect(&self, pending: Pending) -> bool {
        let len = {
            let mut queue = self.pending.borrow_mut();
            if queue.is_empty() {
                self.awaiting_since.set(crate::clock::now_ns());
            }
            queue.push_back(pending);
            queue.len()
        };
        let became_busy = len >= PENDING_HIGH_WATER && !self.busy.get();
        if became_busy {
            self.busy.set(true);
        }
        became_busy
    }
}

/// A duration as the scripts take it: whole milliseconds, at least 1.
fn millis(duration: Duration) -> u64 {
    duration.as_millis().max(1) as u64
}

/// `SCRIPT LOAD` of both scripts (two replies).
fn load_scripts(out: &mut BytesMut) {
    resp::command(out, &[b"SCRIPT", b"LOAD", scripts::PUBLISH.as_bytes()]);
    resp::command(out, &[b"SCRIPT", b"LOAD", scripts::POSITION.as_bytes()]);
}

/// The pub/sub channel of `name`: `<prefix>:p:<name>`.
fn pubsub_channel(prefix: &str, name: &str) -> Vec<u8> {
    let mut channel = Vec::with_capacity(prefix.len() + name.len() + 3);
    channel.extend_from_slice(prefix.as_bytes());
    channel.extend_from_slice(b":p:");
    channel.extend_from_slice(name.as_bytes());
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
    pub async fn run<H: RedisHost>(self: Rc<Self>, host: &H) {
        pipe::keep_connected(self.socket, &self.addr.shown, host.stats(), async |stream| {
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
        pending.push_back(Pending::Setup("SCRIPT LOAD"));
        pending.push_back(Pending::Setup("SCRIPT LOAD"));
        drop(pending);
        self.up.set(true);
        let wanted: Vec<Box<str>> = self.wanted.borrow().iter().cloned().collect();
        for name in wanted {
            let channel = pubsub_channel(&self.settings.prefix, &name);
            self.pipe
                .write(|out| resp::command(out, &[b"SUBSCRIBE", &channel]));
            if let Some(after) = host.resume_from(&name) {
                let _ = self.position(PositionAsk::Fill { ch: name }, Some(after));
            }
        }
        host.on_link(self.index, true);
    }

    /// The connection ended: down, and everything in flight refused (a
    /// publication may or may not have been applied; its publisher is told
    /// `unavailable` and may retry).
    fn stop<H: RedisHost>(&self, host: &H) {
        self.up.set(false);
        self.pipe.clear();
        let failed: Vec<Pending> = self.pending.borrow_mut().drain(..).collect();
        for pending in failed {
            match pending {
                Pending::Setup(_) => {}
                Pending::Publish { ticket, .. } => {
                    host.on_published(ticket, Err(Refused::Unavailable))
                }
                Pending::Position { ask, .. } => host.on_position(ask, Err(Refused::Unavailable)),
            }
        }
        self.relieve(host);
        host.on_link(self.index, false);
    }

    /// Reads and writes until the connection fails or goes silent; says why.
    async fn serve<H: RedisHost>(&self, stream: &SharedStream, host: &H) -> String {
        let traffic = self.pipe.serve(stream, "Redis", |buf| loop {
            match resp::next_frame(buf) {
                Ok(Some(frame)) => self.handle(frame, host)?,
                Ok(None) => return Ok(()),
                Err(error) => return Err(error.to_string()),
            }
        });
        let alive = super::watch_liveness(
            self.settings.timeout,
            || (!self.pending.borrow().is_empty()).then(|| self.awaiting_since.get()),
            || {
                self.pipe.write(|out| resp::command(out, &[b"PING"]));
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
            Pending::Publish { ticket, sent_ns } => {
                self.timed(host, sent_ns);
                let result = match resp::array(&frame)
                    .and_then(|a| a.first())
                    .and_then(resp::integer)
                {
                    Some(seq) if seq > 0 => Ok(seq as u64),
                    _ => Err(self.refusal(&frame)),
                };
                host.on_published(ticket, result);
            }
            Pending::Position { ask, sent_ns } => {
                self.timed(host, sent_ns);
                let result = standing(&frame).ok_or_else(|| self.refusal(&frame));
                host.on_position(ask, result);
            }
        }
        self.relieve(host);
        Ok(())
    }

    /// A reply that is not the script's answer: after `NOSCRIPT` (Redis
    /// lost its script cache) the scripts are loaded again.
    fn refusal(&self, frame: &BytesFrame) -> Refused {
        let error = resp::error_text(frame).unwrap_or_else(|| "unexpected reply".into());
        if error.starts_with("NOSCRIPT") {
            self.pipe.write(load_scripts);
            let mut pending = self.pending.borrow_mut();
            pending.push_back(Pending::Setup("SCRIPT LOAD"));
            pending.push_back(Pending::Setup("SCRIPT LOAD"));
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

    /// Under half the high-water mark again: publishers may go on.
    fn relieve<H: RedisHost>(&self, host: &H) {
        if self.busy.get() && self.pending.borrow().len() < PENDING_HIGH_WATER / 2 {
            self.busy.set(false);
            host.on_backlog(false);
        }
    }

    fn on_push<H: RedisHost>(&self, channel: &Bytes, message: &Bytes, host: &H) {
        bump(&host.stats().engine_messages, 1);
        let Some(name) = channel_name(&self.settings.prefix, channel) else {
            return;
        };
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
    use crate::protocol::PayloadKind;

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
}
