//! How the generator speaks to each kind of server: which path a subscriber
//! or publisher connects to, what a publication looks like on the wire, and
//! where the generator's payload sits in what subscribers receive.
//!
//! - `shardcast-json`: `/ws?sub=c`; publish `{"op":"pub","ch":"c","data":P}`;
//!   receive the `msg` envelope around P.
//! - `shardcast-raw`: raw room `/ws/c` (publishers `?echo=0` unless they also
//!   subscribe); frames verbatim.
//! - `peer`: the peers' subset, `/ws?sub=c` and `/ws?pub=c`; frames verbatim.
//! - `nats`: NATS text protocol over WebSocket: `CONNECT`, `SUB c 1`,
//!   `PUB c n`, `MSG c 1 n`.

use std::fmt::Write as _;

use shardcast_wire::OpCode;

use super::wsclient::push_frame;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    ShardcastJson,
    ShardcastRaw,
    Peer,
    Nats,
}

/// What a connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subscriber,
    Publisher,
    /// Subscribes and publishes on the same channel (chat rooms).
    Both,
}

impl Target {
    /// The upgrade path for a connection on `channel`.
    pub fn path(self, channel: &str, role: Role) -> String {
        match (self, role) {
            (Target::ShardcastJson, Role::Subscriber | Role::Both) => format!("/ws?sub={channel}"),
            (Target::ShardcastJson, Role::Publisher) => "/ws".into(),
            (Target::ShardcastRaw, Role::Subscriber | Role::Both) => format!("/ws/{channel}"),
            (Target::ShardcastRaw, Role::Publisher) => format!("/ws/{channel}?echo=0"),
            (Target::Peer, Role::Subscriber) => format!("/ws?sub={channel}"),
            (Target::Peer, Role::Publisher) => format!("/ws?pub={channel}"),
            (Target::Peer, Role::Both) => format!("/ws?sub={channel}&pub={channel}"),
            (Target::Nats, _) => "/".into(),
        }
    }

    /// Frames to send right after the upgrade (NATS handshake and
    /// subscription).
    pub fn hello(self, channel: &str, role: Role, out: &mut Vec<u8>) {
        if self == Target::Nats {
            let mut text =
                String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":true}\r\n");
            if role != Role::Publisher {
                let _ = write!(text, "SUB {channel} 1\r\n");
            }
            push_frame(out, OpCode::Binary, text.as_bytes());
        }
    }

    /// Appends one publication of `payload` on `channel`.
    pub fn publish(self, channel: &str, payload: &[u8], out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
        scratch.clear();
        match self {
            Target::ShardcastJson => {
                scratch.extend_from_slice(b"{\"op\":\"pub\",\"ch\":\"");
                scratch.extend_from_slice(channel.as_bytes());
                scratch.extend_from_slice(b"\",\"data\":");
                scratch.extend_from_slice(payload);
                scratch.push(b'}');
                push_frame(out, OpCode::Text, scratch);
            }
            Target::ShardcastRaw | Target::Peer => push_frame(out, OpCode::Text, payload),
            Target::Nats => {
                let _ = write!(SliceWriter(scratch), "PUB {channel} {}\r\n", payload.len());
                scratch.extend_from_slice(payload);
                scratch.extend_from_slice(b"\r\n");
                push_frame(out, OpCode::Binary, scratch);
            }
        }
    }
}

/// `fmt::Write` into a byte vector.
struct SliceWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The generator's payload: `{"s":SEQ,"i":PUBLISHER,"t":NANOS,"p":"xx…"}`,
/// padded to `size` bytes.
pub fn payload(seq: u64, publisher: u32, nanos: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    let _ = write!(
        SliceWriter(out),
        "{{\"s\":{seq},\"i\":{publisher},\"t\":{nanos},\"p\":\""
    );
    let pad = size.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// A payload found in a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub publisher: u32,
    pub nanos: u64,
}

fn number_after(bytes: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = memchr::memmem::find(bytes, key)? + key.len();
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let text = std::str::from_utf8(&bytes[at..at + digits]).ok()?;
    Some((text.parse().ok()?, at + digits))
}

/// Finds the generator's payload inside a received message (envelope or
/// verbatim): the first `{"s":`.
pub fn find_stamp(message: &[u8]) -> Option<Stamp> {
    let start = memchr::memmem::find(message, b"{\"s\":")?;
    let rest = &message[start..];
    let (seq, used) = number_after(rest, b"{\"s\":")?;
    let (publisher, used2) = number_after(&rest[used..], b",\"i\":")?;
    let (nanos, _) = number_after(&rest[used + used2..], b",\"t\":")?;
    Some(Stamp {
        seq,
        publisher: publisher as u32,
        nanos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_is_found_again() {
        let mut p = Vec::new();
        payload(42, 7, 123456789, 100, &mut p);
        assert_eq!(p.len(), 100);
        serde_json::from_slice::<serde_json::Value>(&p).unwrap();
        let envelope =
            shardcast::protocol::encode_msg("c", 9, shardcast::protocol::PayloadKind::Json, &p);
        assert_eq!(
            find_stamp(&envelope),
            Some(Stamp {
                seq: 42,
                publisher: 7,
                nanos: 123456789
            })
        );
    }

    #[test]
    fn publications_for_each_target() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        Target::Nats.publish("c", b"hi", &mut out, &mut scratch);
        assert_eq!(&out[6..], b"PUB c 2\r\nhi\r\n");
        out.clear();
        Target::ShardcastJson.publish("c", b"1", &mut out, &mut scratch);
        assert_eq!(&out[6..], br#"{"op":"pub","ch":"c","data":1}"#);
    }
}
