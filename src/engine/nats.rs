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

use super::{
    addr::BrokerAddr,
    nats_proto::{self, ServerOp},
    pipe::{self, Pipe},
    record::{self, Record},
};
use crate::{
    publication::{Payload, Skip},
    stats::{bump, Stats},
    stream::SharedStream,
};

/// Bytes not yet written over which publications are refused (the
/// connection is not keeping up).
const MAX_UNWRITTEN: usize = 16 << 20;

/// What a link hands to the shard it serves.
pub(crate) trait NatsHost {
    /// Another node's publication on `channel`.
    fn on_remote(&self, channel: &str, record: Record);
    /// The link came up or went down.
    fn on_link(&self, link: usize, up: bool);
    /// A control message of another node (`super::control`).
    fn on_control(&self, message: &[u8]);
    fn stats(&self) -> &Stats;
}

/// The subject of control messages: a system channel's, which is never
/// sent to other nodes, so no channel's publications use it.
const CONTROL: &str = "$ctl";

/// The subscription id of the control subject (channels' count up from 1).
const CONTROL_SID: u64 = u64::MAX;

/// One shard's link to NATS.
pub(crate) struct NatsLink {
    addr: BrokerAddr,
    socket: SocketAddr,
    prefix: String,
    node: u64,
    /// The client name NATS shows (`shardcast-<shard>`).
    name: String,
    up: Cell<bool>,
    pipe: Pipe,
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
    pub(crate) fn new(
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
            pipe: Pipe::default(),
            wanted: RefCell::new(HashMap::new()),
            next_sid: Cell::new(0),
            scratch: RefCell::new(BytesMut::new()),
            timeout: Duration::from_secs(3),
            ping_sent: Cell::new(0),
        }
    }

    /// The same link, taken for lost after `timeout` without an answer.
    pub(crate) fn with_timeout(self, timeout: Duration) -> Self {
        NatsLink { timeout, ..self }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.get()
    }

    /// Sends a publication ordered here to the other nodes; `false` (the
    /// publication is refused) while the link is down or far behind.
    pub(crate) fn publish(&self, name: &str, payload: &Payload, skip: Option<Skip>) -> bool {
        if !self.up.get() || self.pipe.unwritten() > MAX_UNWRITTEN {
            return false;
        }
        let mut body = self.scratch.borrow_mut();
        body.clear();
        record::encode(&mut body, payload, self.node, skip);
        self.pipe
            .write(|out| nats_proto::publish(out, &self.subject(name), &body));
        true
    }

    /// Sends a control message to every node (`super::control`); `false`
    /// while down.
    pub(crate) fn control(&self, message: &[u8]) -> bool {
        if !self.up.get() {
            return false;
        }
        self.pipe
            .write(|out| nats_proto::publish(out, &self.subject(CONTROL), message));
        true
    }

    /// This shard wants `name`'s publications from other nodes (or no
    /// longer). Kept while down, for the reconnect.
    pub(crate) fn want(&self, name: &str, on: bool) {
        let mut wanted = self.wanted.borrow_mut();
        if on && !wanted.contains_key(name) {
            let sid = self.next_sid.get() + 1;
            self.next_sid.set(sid);
            wanted.insert(name.into(), sid);
            if self.up.get() {
                self.pipe
                    .write(|out| nats_proto::subscribe(out, &self.subject(name), sid));
            }
        } else if !on {
            if let Some(sid) = wanted.remove(name) {
                if self.up.get() {
                    self.pipe.write(|out| nats_proto::unsubscribe(out, sid));
                }
            }
        }
    }

    fn subject(&self, name: &str) -> Vec<u8> {
        let mut subject = Vec::with_capacity(self.prefix.len() + 1 + name.len());
        subject.extend_from_slice(self.prefix.as_bytes());
        subject.push(b'.');
        subject.extend_from_slice(name.as_bytes());
        subject
    }

    /// Keeps this link connected until the shard drops the future.
    pub(crate) async fn run<H: NatsHost>(self: Rc<Self>, host: &H) {
        pipe::keep_connected(self.socket, &self.addr.host_port, &self.addr.shown, host.stats(), async |stream| {
            self.start();
            let ended = self.serve(&stream, host).await;
            let was_up = self.up.replace(false);
            self.pipe.clear();
            tracing::warn!(nats = %self.addr.shown, reason = %ended, "lost NATS; refusing publications until it is back");
            if was_up {
                host.on_link(0, false);
            }
        })
        .await;
    }

    /// A fresh connection: `CONNECT`, `PING`, and every wanted channel
    /// subscribed again. Up once the server's `PONG` answers.
    fn start(&self) {
        self.pipe.clear();
        let (user, password) = (self.addr.user.as_deref(), self.addr.password.as_deref());
        self.ping_sent.set(crate::clock::now_ns());
        self.pipe.write(|out| {
            nats_proto::connect(out, &self.name, user, password);
            nats_proto::subscribe(out, &self.subject(CONTROL), CONTROL_SID);
            for (name, sid) in self.wanted.borrow().iter() {
                nats_proto::subscribe(out, &self.subject(name), *sid);
            }
        });
    }

    /// Reads and writes until the connection fails or goes silent; says why.
    async fn serve<H: NatsHost>(&self, stream: &SharedStream, host: &H) -> String {
        let traffic = self.pipe.serve(
            stream,
            "NATS",
            |buf| loop {
                match nats_proto::next_op(buf) {
                    Ok(Some(op)) => self.handle(op, host)?,
                    Ok(None) => return Ok(()),
                    Err(error) => return Err(error.to_string()),
                }
            },
            || {},
        );
        let alive = super::watch_liveness(
            self.timeout,
            || Some(self.ping_sent.get()).filter(|sent| *sent != 0),
            || {
                self.ping_sent.set(crate::clock::now_ns());
                self.pipe.write(nats_proto::ping);
            },
        );
        traffic.or(alive).await
    }

    fn handle<H: NatsHost>(&self, op: ServerOp, host: &H) -> Result<(), String> {
        match op {
            ServerOp::Msg { subject, body, .. } => self.on_msg(&subject, &body, host),
            ServerOp::Ping => {
                self.pipe.write(nats_proto::pong);
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
        if name == CONTROL {
            return host.on_control(body);
        }
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
