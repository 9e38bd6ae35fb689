//! What a publication is, as every layer passes it around: its payload,
//! the connection it must skip, the channel position a subscriber is
//! answered with, and how a connection is named on its shard. Plain data:
//! the mesh, the owner, fan-out and the connections share these types
//! without importing each other.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{Arc, OnceLock},
};

use bytes::Bytes;

use crate::protocol::{PayloadKind, RequestIdBuf};

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
    /// When the server received it, in nanoseconds of the server's monotonic
    /// clock: deliveries are timed from here. 0: not timed (the core reads
    /// no clock; the edge that receives a publication stamps it with
    /// [`Payload::received_at`]).
    pub published_at: u64,
    /// Its conflation key (`"key"`), on a channel that conflates
    /// (`--conflate`): a newer publication of the channel with the same key
    /// may replace it in the queue of a subscriber that fell behind.
    pub key: Option<Arc<str>>,
}

impl Payload {
    /// A publication copied out of the buffer it was read into (one
    /// allocation of exactly its length).
    pub fn copy_of(kind: PayloadKind, bytes: &[u8]) -> Self {
        Payload::new(kind, Bytes::copy_from_slice(bytes))
    }

    /// A JSON publication's `data` (valid JSON), copied. A raw line break
    /// in it can only be whitespace between tokens (JSON strings escape
    /// them), so it becomes a space: every envelope is one line, and
    /// batched envelopes split on `\n` (`conn/batch.rs`).
    pub fn json(raw: &[u8]) -> Self {
        let mut bytes = bytes::BytesMut::from(raw);
        if memchr::memchr2(b'\n', b'\r', raw).is_some() {
            for byte in bytes.iter_mut().filter(|b| matches!(b, b'\n' | b'\r')) {
                *byte = b' ';
            }
        }
        Payload::new(PayloadKind::Json, bytes.freeze())
    }

    /// This payload conflating under `key` (see [`Payload::key`]).
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.into());
        self
    }

    /// A publication whose `bytes` the caller built for it (they must not
    /// be a slice of a longer-lived buffer); not timed until stamped.
    pub fn new(kind: PayloadKind, bytes: Bytes) -> Self {
        Payload {
            kind,
            bytes,
            published_at: 0,
            key: None,
        }
    }

    /// This payload received at `now_ns` (the server's monotonic clock):
    /// its deliveries are timed from then.
    pub fn received_at(mut self, now_ns: u64) -> Self {
        self.published_at = now_ns;
        self
    }
}

/// What a connection's queue compares to find the older publication a
/// keyed one replaces (`conn/outbox.rs`): the channel and the key, hashed
/// with this process's secret (SipHash, keys drawn at start), never 0
/// (none). Unlike an unkeyed hash, no one can search for two keys that
/// collide: a publication on one channel cannot remove another's.
pub fn conflation_id(channel: &str, key: &str) -> u64 {
    static SECRET: OnceLock<RandomState> = OnceLock::new();
    SECRET
        .get_or_init(RandomState::new)
        .hash_one((channel, key))
        .max(1)
}

/// Where the assigned `seq` of a publication must be reported, and the
/// idempotency key it is made under, if any (as the owner remembers it:
/// tagged with its form, `api::remembered_key`): a publication the owner
/// (or Redis) already made under that key on the channel within
/// `--idempotency-window` is answered with that one's `seq` and not made
/// again.
#[derive(Debug)]
pub enum Reply {
    /// Nobody is waiting (raw-room frames, the server's own publications).
    None,
    /// A JSON `pub` without an `id`: nothing to acknowledge, but a refusal
    /// is still reported to `conn` (an `err` without `id`).
    Quiet {
        conn: ConnRef,
        idempotency_key: Option<Box<str>>,
    },
    /// A JSON `pub` with an `id`: send an `ack` to that connection.
    Ack {
        conn: ConnRef,
        id: RequestIdBuf,
        idempotency_key: Option<Box<str>>,
    },
    /// An HTTP publish waiting for its answer under `to` (the server's
    /// pending table);
    /// `index`: which of the request's publications this is.
    Http {
        to: ReplyId,
        index: u32,
        idempotency_key: Option<Box<str>>,
    },
}

impl Reply {
    /// Whether somebody waits for the publication's `seq`.
    pub fn wants_seq(&self) -> bool {
        matches!(self, Reply::Ack { .. } | Reply::Http { .. })
    }

    /// The idempotency key the publication is made under.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            Reply::None => None,
            Reply::Quiet {
                idempotency_key, ..
            }
            | Reply::Ack {
                idempotency_key, ..
            }
            | Reply::Http {
                idempotency_key, ..
            } => idempotency_key.as_deref(),
        }
    }
}

/// Names a question's entry in the pending table of the shard that asked
/// it (the server's `mesh/pending.rs`), so that its answer finds the way
/// back: the shard, the entry's slot, and the generation that tells it
/// from a later question given the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyId {
    shard: u16,
    slot: u32,
    generation: u32,
}

impl ReplyId {
    pub fn new(shard: u16, slot: u32, generation: u32) -> Self {
        ReplyId {
            shard,
            slot,
            generation,
        }
    }

    /// The shard that asked (and waits for the answer).
    pub fn shard(self) -> usize {
        usize::from(self.shard)
    }

    pub fn slot(self) -> u32 {
        self.slot
    }

    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// The answer to a subscription that asked for the channel's position and,
/// with `since`, for what it missed.
#[derive(Debug, Clone)]
pub struct Position {
    /// The channel's epoch: changes when the server restarts or the channel's
    /// state was reclaimed.
    pub epoch: String,
    /// The channel's last `seq` when the subscription took effect.
    pub seq: u64,
    /// With `since`: whether every publication after it is in `missed`.
    pub recovered: Option<bool>,
    /// Publications after `since`, oldest first (empty unless recovered).
    pub missed: Vec<(u64, Payload)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_becomes_one_line() {
        let data = "{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n2]\n}";
        let payload = Payload::json(data.as_bytes());
        let text = std::str::from_utf8(&payload.bytes).unwrap();
        assert!(!text.contains(['\n', '\r']));
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        let original: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(parsed, original, "the same value, escapes kept");
    }

    /// The id a queue compares is keyed by a secret of this process: it is
    /// not the unkeyed FNV-1a it was (collisions of which were found in
    /// minutes), stays the same for the same channel and key, and tells
    /// channels apart.
    #[test]
    fn conflation_ids_are_keyed_by_a_secret() {
        let unkeyed = |ch: &str, key: &str| {
            crate::channel::fnv1a(ch.as_bytes().iter().chain(b"\0").chain(key.as_bytes())).max(1)
        };
        for (ch, key) in [("prices", "AAPL"), ("a", "b"), ("chat.1", "typing")] {
            assert_eq!(conflation_id(ch, key), conflation_id(ch, key));
            assert_ne!(conflation_id(ch, key), unkeyed(ch, key));
            assert_ne!(conflation_id(ch, key), conflation_id("other", key));
            assert_ne!(conflation_id(ch, key), 0);
        }
        // The pair is hashed as a pair: a name and a key cannot be shifted
        // into one another.
        assert_ne!(conflation_id("ab", "c"), conflation_id("a", "bc"));
    }

    #[test]
    fn json_data_without_line_breaks_is_kept_byte_for_byte() {
        let data = br#"{"a": "x\ty", "b":[1, 2.50]}"#;
        assert_eq!(&Payload::json(data).bytes[..], data);
        assert_eq!(Payload::json(data).kind, PayloadKind::Json);
    }

    #[test]
    fn only_an_ack_or_an_http_publish_waits_for_the_seq() {
        let conn = ConnRef { key: 1, gen: 1 };
        let id = crate::protocol::RequestId::parse("1").unwrap().to_buf();
        let to = ReplyId::new(0, 0, 0);
        assert!(!Reply::None.wants_seq());
        assert!(!Reply::Quiet {
            conn,
            idempotency_key: None
        }
        .wants_seq());
        assert!(Reply::Ack {
            conn,
            id,
            idempotency_key: None
        }
        .wants_seq());
        assert!(Reply::Http {
            to,
            index: 0,
            idempotency_key: None
        }
        .wants_seq());
    }

    #[test]
    fn every_reply_but_none_tells_its_idempotency_key() {
        let conn = ConnRef { key: 1, gen: 1 };
        let key = || Some(Box::<str>::from("k"));
        assert_eq!(Reply::None.idempotency_key(), None);
        let quiet = Reply::Quiet {
            conn,
            idempotency_key: key(),
        };
        let ack = Reply::Ack {
            conn,
            id: crate::protocol::RequestId::parse("2").unwrap().to_buf(),
            idempotency_key: key(),
        };
        let http = Reply::Http {
            to: ReplyId::new(1, 2, 3),
            index: 4,
            idempotency_key: key(),
        };
        for reply in [quiet, ack, http] {
            assert_eq!(reply.idempotency_key(), Some("k"), "{reply:?}");
        }
    }
}
