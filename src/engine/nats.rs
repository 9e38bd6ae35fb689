//! One shard's connection to NATS (core NATS, no JetStream): publications
//! ordered on this node go out as `PUB <prefix>.<channel>` with the record as
//! body, and the channels this shard owns and has subscribers for are
//! `SUB`scribed, so other nodes' publications come in as `MSG`s, which the
//! shard orders and fans out as its own. `echo` is off: a node never
//! receives its own. At most once: what is in flight when the connection
//! drops is lost, and each node numbers and keeps history on its own
//! (`docs/cluster.md`). Reconnects with backoff and jitter, subscribing
//! again; while down, publications are refused.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::SocketAddr,
    rc::Rc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_lite::FutureExt;
use glommio::net::TcpStream;

use super::{
    addr::BrokerAddr,
    backoff::{random_u64, Backoff},
    nats_proto::{self, ServerOp},
    record::{self, Record},
};
use crate::{
    conn::stream::SharedStream,
    publication::{Payload, Skip},
    stats::{bump, Stats},
    sync::WaitQueue,
};

/// Time allowed to connect to NATS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes not yet written over which publications are refused (the
/// connection is not keeping up).
const MAX_UNWRITTEN: usize = 16 << 20;
/// Most bytes read from the socket at once.
const READ_CHUNK: usize = 64 << 10;

/// What a link hands to the shard it serves.
pub trait NatsHost {
    /// Another node's publication on `channel`.
    fn on_remote(&self, channel: &str, record: Record);
    /// The link came up or went down.
    fn on_link(&self, link: usize, up: bool);
    fn stats(&self) -> &Stats;
}

/// One shard's link to NATS.
pub struct NatsLink {
    addr: BrokerAddr,
    socket: SocketAddr,
    prefix: String,
    node: u64,
    /// The client name NATS shows (`shardcast-<shard>`).
    name: String,
    up: Cell<bool>,
    out: RefCell<BytesMut>,
    writer: WaitQueue,
    /// Channels with subscribers here, by subscription id.
    wanted: RefCell<HashMap<Box<str>, u64>>,
    next_sid: Cell<u64>,
    scratch: RefCell<BytesMut>,
    /// `--engine-timeout`, and since when a `PING` of ours has waited for
    /// its `PONG` (0: none outstanding).
    timeout: Duration,
    ping_sent: Cell<u64>,
}

impl NatsLink {
    pub fn new(
        addr: BrokerAddr,
        socket: SocketAddr,
        prefix: &str,
        node: u64,
        shard: usize,
    ) -> Self {
        NatsLink {
            addr,
            socket,
            prefix: prefix.into(),
            node,
            name: format!("shardcast-{shard}"),
            up: Cell::new(false),
            out: RefCell::new(BytesMut::new()),
            writer: WaitQueue::default(),
            wanted: RefCell::new(HashMap::new()),
            next_sid: Cell::new(0),
            scratch: RefCell::new(BytesMut::new()),
            timeout: Duration::from_secs(3),
            ping_sent: Cell::new(0),
        }
    }

    /// The same link, taken for lost after `timeout` without an answer.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        NatsLink { timeout, ..self }
    }

    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    /// Sends a publication ordered here to the other nodes; `false` (the
    /// publication is refused) while the link is down or far behind.
    pub fn publish(&self, name: &str, payload: &Payload, skip: Option<Skip>) -> bool {
        if !self.up.get() || self.out.borrow().len() > MAX_UNWRITTEN {
            return false;
        }
        let mut body = self.scratch.borrow_mut();
        body.clear();
        record::encode(&mut body, payload, self.node, skip);
        nats_proto::publish(&mut self.out.borrow_mut(), &self.subject(name), &body);
        self.writer.wake_all();
        true
    }

    /// This shard wants `name`'s publications from other nodes (or no
    /// longer). Kept while down, for the reconnect.
    pub fn want(&self, name: &str, on: bool) {
        let mut wanted = self.wanted.borrow_mut();
        if on && !wanted.contains_key(name) {
            let sid = self.next_sid.get() + 1;
            self.next_sid.set(sid);
            wanted.insert(name.into(), sid);
            if self.up.get() {
                nats_proto::subscribe(&mut self.out.borrow_mut(), &self.subject(name), sid);
            }
        } else if !on {
            if let Some(sid) = wanted.remove(name) {
                if self.up.get() {
                    nats_proto::unsubscribe(&mut self.out.borrow_mut(), sid);
                }
            }
        }
        drop(wanted);
        self.writer.wake_all();
    }

    fn subject(&self, name: &str) -> Vec<u8> {
        let mut subject = Vec::with_capacity(self.prefix.len() + 1 + name.len());
        subject.extend_from_slice(self.prefix.as_bytes());
        subject.push(b'.');
        subject.extend_from_slice(name.as_bytes());
        subject
    }

    /// Keeps this link connected until the shard drops the future.
    pub async fn run<H: NatsHost>(self: Rc<Self>, host: &H) {
        let mut backoff = Backoff::default();
        let mut attempts = 0u64;
        loop {
            attempts += 1;
            let connected = glommio::timer::timeout(CONNECT_TIMEOUT, async {
                TcpStream::connect(self.socket).await
            })
            .await;
            match connected {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    if attempts > 1 {
                        bump(&host.stats().engine_reconnects, 1);
                    }
                    backoff.reset();
                    let stream = SharedStream::new(tcp);
                    self.start();
                    let ended = self.serve(&stream, host).await;
                    let was_up = self.up.replace(false);
                    self.out.borrow_mut().clear();
                    tracing::warn!(nats = %self.addr.shown, reason = %ended, "lost NATS; refusing publications until it is back");
                    if was_up {
                        host.on_link(0, false);
                    }
                }
                Err(error) => {
                    if attempts == 1 || attempts.is_power_of_two() {
                        tracing::warn!(nats = %self.addr.shown, %error, attempts, "cannot reach NATS");
                    }
                }
            }
            glommio::timer::sleep(backoff.next_delay(random_u64())).await;
        }
    }

    /// A fresh connection: `CONNECT`, `PING`, and every wanted channel
    /// subscribed again. Up once the server's `PONG` answers.
    fn start(&self) {
        let mut out = self.out.borrow_mut();
        out.clear();
        let (user, password) = (self.addr.user.as_deref(), self.addr.password.as_deref());
        nats_proto::connect(&mut out, &self.name, user, password);
        self.ping_sent.set(crate::clock::now_ns());
        for (name, sid) in self.wanted.borrow().iter() {
            nats_proto::subscribe(&mut out, &self.subject(name), *sid);
        }
        drop(out);
        self.writer.wake_all();
    }

    async fn serve<H: NatsHost>(&self, stream: &SharedStream, host: &H) -> String {
        let read = async {
            let mut chunk = vec![0u8; READ_CHUNK];
            let mut buf = BytesMut::new();
            loop {
                let n = match stream.read(&mut chunk).await {
                    Ok(0) => return "closed by NATS".to_string(),
                    Ok(n) => n,
                    Err(error) => return error.to_string(),
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match nats_proto::next_op(&mut buf) {
                        Ok(Some(op)) => {
                            if let Err(reason) = self.handle(op, host) {
                                return reason;
                            }
                        }
                        Ok(None) => break,
                        Err(error) => return error.to_string(),
                    }
                }
            }
        };
        let write = async {
            loop {
                self.writer.until(|| !self.out.borrow().is_empty()).await;
                let chunk = self.out.borrow_mut().split().freeze();
                if let Err(error) = stream.write_all(&chunk).await {
                    return error.to_string();
                }
            }
        };
        let alive = super::watch_liveness(
            self.timeout,
            || Some(self.ping_sent.get()).filter(|sent| *sent != 0),
            || {
                nats_proto::ping(&mut self.out.borrow_mut());
                self.ping_sent.set(crate::clock::now_ns());
                self.writer.wake_all();
            },
        );
        read.or(write).or(alive).await
    }

    fn handle<H: NatsHost>(&self, op: ServerOp, host: &H) -> Result<(), String> {
        match op {
            ServerOp::Msg { subject, body, .. } => self.on_msg(&subject, &body, host),
            ServerOp::Ping => {
                nats_proto::pong(&mut self.out.borrow_mut());
                self.writer.wake_all();
            }
            ServerOp::Pong => {
                self.ping_sent.set(0);
                if !self.up.replace(true) {
                    tracing::info!(nats = %self.addr.shown, "connected to NATS");
                    host.on_link(0, true);
                }
            }
            ServerOp::Info | ServerOp::Ok => {}
            ServerOp::Err(error) => {
                // Permission errors leave the connection open; others close it.
                tracing::warn!(nats = %self.addr.shown, %error, "NATS reported an error");
                if !error.to_ascii_lowercase().contains("permissions violation") {
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    fn on_msg<H: NatsHost>(&self, subject: &Bytes, body: &Bytes, host: &H) {
        bump(&host.stats().engine_messages, 1);
        let name = subject
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"."))
            .and_then(|rest| std::str::from_utf8(rest).ok());
        let Some(name) = name else { return };
        match record::decode(body) {
            // A node never hears itself (echo is off); a second node with
            // the same id would: its publications are dropped, not looped.
            Ok(record) if record.origin != self.node => host.on_remote(name, record),
            Ok(_) => {}
            Err(error) => {
                bump(&host.stats().engine_unreadable, 1);
                tracing::warn!(channel = name, %error, "unreadable message from NATS, dropped");
            }
        }
    }
}
