//! One client connection's own parts, none of which knows the shard: HTTP
//! parsing and routes, the WebSocket session's protocol as a state machine
//! without I/O, the codec its frames are written in, its bounded queue and
//! the shard-wide flush pass that writes it, the socket, its permit. Also
//! [`Conn`], the per-connection state the shard's index and fan-out refer
//! to. The shard drives them (`shard/serve.rs`, `shard/session.rs`).

pub(crate) mod api_query;
pub(crate) mod batch;
mod chunk;
pub(crate) mod follow;
pub(crate) use shardcast_core::{codec, deflate, extension, msgpack};
pub(crate) mod flush;
pub(crate) mod http;
pub(crate) mod machine;
pub(crate) mod outbox;
pub(crate) mod permit;
mod queue;

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
};

use bytes::Bytes;
use shardcast_core::subscriptions::Subscriber;

use self::{
    codec::Codec,
    flush::Flusher,
    follow::TailSlot,
    outbox::{Outbox, Pushed},
    permit::Permit,
};
use crate::{
    close::CloseReason,
    heartbeat::Heartbeat,
    publication::ConnRef,
    security::{
        ip_cap::IpSlot,
        rate::{RateLimit, TokenBucket, Verdict},
    },
    stream::SharedStream,
};

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The public address: clients, publishers.
    Public,
    /// `--admin-listen`: metrics, stats and the dashboard, trusted network.
    Admin,
}

/// A WebSocket connection as the shard sees it.
pub struct Conn {
    pub id: ConnRef,
    /// How every frame for this connection is written.
    pub codec: Codec,
    /// Shared with the shard's flush pass.
    pub outbox: Rc<Outbox>,
    pub heartbeat: Heartbeat,
    /// When the client began the message it has not finished
    /// ([`clock::now_ns`](crate::clock::now_ns)); 0 when none is unfinished.
    /// The sweep closes it after `message-timeout`.
    pub message_started_ns: Cell<u64>,
    /// Channels subscribed to, with the slot in each channel's subscriber list.
    subscriptions: RefCell<Vec<(Rc<str>, u32)>>,
    /// Tokens, rate limit and per-IP slot: allocated only when one of them
    /// is in use, so an anonymous server's idle connections do not pay for
    /// them (`None`: may do everything, no deadline, no limit).
    guard: RefCell<Option<Box<Guard>>>,
}

/// A connection's security state (see [`Conn::guard`]).
struct Guard {
    /// What the connection may do.
    permit: Permit,
    /// When the connection must be closed for want of a (fresh) token, on
    /// the shard's clock; `u64::MAX`: never.
    deadline_ms: u64,
    /// The publish rate limit's bucket, when a limit is configured.
    bucket: Option<TokenBucket>,
    /// The channel operations' bucket (`--subscribe-rate`), made at the
    /// first such op (a connection subscribed by its URL never needs one).
    channel_ops: Option<TokenBucket>,
    /// This connection's place under the per-IP cap, held until it ends.
    _ip_slot: Option<IpSlot>,
}

/// The permit of a connection without a [`Guard`].
const EVERYTHING: &Permit = &Permit::Everything;

impl Conn {
    pub fn new(
        id: ConnRef,
        codec: Codec,
        max_queue_bytes: usize,
        now_ms: u64,
        flusher: Rc<Flusher>,
        stream: Option<SharedStream>,
        batch: bool,
    ) -> Self {
        Conn {
            id,
            codec,
            outbox: Rc::new(Outbox::new(max_queue_bytes, flusher, stream, batch)),
            heartbeat: Heartbeat::new(now_ms),
            message_started_ns: Cell::new(0),
            subscriptions: RefCell::new(Vec::new()),
            guard: RefCell::new(None),
        }
    }

    /// Sets up what an admitted connection may do: its permit and deadline
    /// (shard clock; `u64::MAX`: never), its publish rate limit and its
    /// per-IP slot. Allocates only if one of them is in use.
    pub fn admit(
        &self,
        permit: Permit,
        deadline_ms: u64,
        publish_limit: Option<RateLimit>,
        ip_slot: Option<IpSlot>,
        now_ms: u64,
    ) {
        let plain = matches!(permit, Permit::Everything) && deadline_ms == u64::MAX;
        if plain && publish_limit.is_none() && ip_slot.is_none() {
            return;
        }
        *self.guard.borrow_mut() = Some(Box::new(Guard {
            permit,
            deadline_ms,
            bucket: publish_limit.map(|limit| TokenBucket::new(limit, now_ms)),
            channel_ops: None,
            _ip_slot: ip_slot,
        }));
    }

    pub fn permit(&self) -> std::cell::Ref<'_, Permit> {
        std::cell::Ref::map(self.guard.borrow(), |guard| {
            guard.as_ref().map_or(EVERYTHING, |g| &g.permit)
        })
    }

    /// Replaces what the connection may do; it must renew or be closed at
    /// `deadline_ms` (shard clock; `u64::MAX`: never).
    pub fn set_permit(&self, permit: Permit, deadline_ms: u64) {
        let mut guard = self.guard.borrow_mut();
        match guard.as_mut() {
            Some(g) => {
                g.permit = permit;
                g.deadline_ms = deadline_ms;
            }
            None => {
                *guard = Some(Box::new(Guard {
                    permit,
                    deadline_ms,
                    bucket: None,
                    channel_ops: None,
                    _ip_slot: None,
                }))
            }
        }
    }

    pub fn auth_deadline_ms(&self) -> u64 {
        self.guard
            .borrow()
            .as_ref()
            .map_or(u64::MAX, |g| g.deadline_ms)
    }

    /// Takes a token from the publish rate limit's bucket; `None` without a
    /// limit.
    pub fn take_publish_token(&self, limit: RateLimit, now_ms: u64) -> Option<Verdict> {
        let guard = self.guard.borrow();
        let bucket = guard.as_ref()?.bucket.as_ref()?;
        Some(bucket.take(limit, now_ms))
    }

    /// Takes a token from the channel operations' bucket (made, full, at
    /// the first).
    pub fn take_channel_op_token(&self, limit: RateLimit, now_ms: u64) -> Verdict {
        let mut guard = self.guard.borrow_mut();
        let guard = guard.get_or_insert_with(|| {
            Box::new(Guard {
                permit: Permit::Everything,
                deadline_ms: u64::MAX,
                bucket: None,
                channel_ops: None,
                _ip_slot: None,
            })
        });
        guard
            .channel_ops
            .get_or_insert_with(|| TokenBucket::new(limit, now_ms))
            .take(limit, now_ms)
    }

    /// The channels subscribed to (for re-checking after a token refresh).
    pub fn subscribed_channels(&self) -> Vec<Rc<str>> {
        self.subscriptions
            .borrow()
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Queues a frame; closes the connection as a slow consumer if its queue
    /// is full.
    pub fn send(&self, frame: Bytes) {
        if self.outbox.push(frame) == Pushed::Overflow {
            self.close_slow_consumer();
        }
    }

    /// Queues the frame of a publication published at `published_at`;
    /// closes the connection as a slow consumer if its queue is full.
    pub fn send_published(&self, frame: Bytes, published_at: u64) {
        if self.outbox.push_published(frame, published_at) == Pushed::Overflow {
            self.close_slow_consumer();
        }
    }

    pub fn close_slow_consumer(&self) {
        self.outbox.close(CloseReason::SlowConsumer);
    }

    /// The slot of the subscription to `name` in its channel's list.
    pub fn subscription_slot(&self, name: &str) -> Option<u32> {
        self.subscriptions
            .borrow()
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, slot)| *slot)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.borrow().len()
    }

    pub fn add_subscription(&self, name: Rc<str>, slot: u32) {
        let mut subscriptions = self.subscriptions.borrow_mut();
        // Most connections subscribe to one channel: room for exactly one
        // (a first push would make room for four).
        if subscriptions.capacity() == 0 {
            subscriptions.reserve_exact(1);
        }
        subscriptions.push((name, slot));
    }

    /// Forgets the subscription to `name`; returns its slot if there was one.
    pub fn remove_subscription(&self, name: &str) -> Option<u32> {
        let mut subscriptions = self.subscriptions.borrow_mut();
        let at = subscriptions.iter().position(|(n, _)| &**n == name)?;
        Some(subscriptions.swap_remove(at).1)
    }

    pub fn take_subscriptions(&self) -> Vec<(Rc<str>, u32)> {
        std::mem::take(&mut *self.subscriptions.borrow_mut())
    }
}

/// Fan-out (`shardcast_core::subscriptions`) reaches a connection through
/// its codec and its queue.
impl Subscriber for Conn {
    #[inline]
    fn conn_ref(&self) -> ConnRef {
        self.id
    }

    #[inline]
    fn codec(&self) -> Codec {
        self.codec
    }

    fn send(&self, frame: Bytes) {
        Conn::send(self, frame);
    }

    #[inline]
    fn queued_bytes(&self) -> usize {
        self.outbox.queued_bytes()
    }

    fn take_keyed(&self, conflation: u64) -> Option<u32> {
        self.outbox.take_keyed(conflation)
    }

    #[inline]
    fn push_keyed(
        &self,
        frame: &Bytes,
        published_at: u64,
        conflation: u64,
        conflated: u32,
    ) -> Pushed {
        self.outbox
            .push_keyed(frame, published_at, conflation, conflated)
    }

    fn close_slow_consumer(&self) {
        Conn::close_slow_consumer(self);
    }

    type Tail = TailSlot;

    #[inline]
    fn push_following(&self, tail: &mut TailSlot, frame: &Bytes, published_at: u64) -> Pushed {
        self.outbox.push_following(tail, frame, published_at)
    }

    #[inline]
    fn follows(&self, tail: &TailSlot) -> bool {
        self.outbox.follows(tail)
    }

    #[inline]
    fn extend_tail(tail: &TailSlot, frame: &Bytes, published_at: u64) -> usize {
        tail.extend(frame, published_at)
    }
}
