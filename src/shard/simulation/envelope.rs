//! What a simulated client reads: the JSON protocol's server messages
//! (docs/protocol.md), parsed from the text of each frame into the few
//! fields the invariants look at. A message the client cannot read is an
//! error the run reports.

use serde::Deserialize;

/// One server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Envelope {
    /// `{"op":"msg",..}`: publication `seq` of `ch`; `conflated`: how many
    /// older ones it stands for.
    Msg {
        ch: String,
        seq: u64,
        data: String,
        conflated: u64,
    },
    /// `{"op":"ack","id":..}`: a `sub`'s has `seq` and `epoch` (and
    /// `recovered` after `since`, `conflate` on a conflating channel), a
    /// `pub`'s has `seq`, an `unsub`'s nothing more.
    Ack {
        id: u64,
        seq: Option<u64>,
        epoch: Option<String>,
        recovered: Option<bool>,
        conflate: bool,
    },
    /// `{"op":"err",..}`.
    Err { id: Option<u64>, code: String },
    /// `{"op":"presence",..}`: the members' connection ids, and the
    /// cursor of the next page when there is one.
    Presence {
        id: Option<u64>,
        ch: String,
        members: Vec<String>,
        count: u64,
        cursor: Option<String>,
    },
    /// `{"op":"join"|"leave",..}` of the member with connection id `conn`.
    Event {
        join: bool,
        ch: String,
        conn: String,
    },
}

/// Every field any server message of interest has (the others are
/// ignored).
#[derive(Deserialize)]
struct Fields {
    op: String,
    ch: Option<String>,
    seq: Option<u64>,
    /// Data is what the clients publish: always a JSON string.
    data: Option<String>,
    conflated: Option<u64>,
    id: Option<u64>,
    epoch: Option<String>,
    recovered: Option<bool>,
    conflate: Option<bool>,
    code: Option<String>,
    members: Option<Vec<Member>>,
    count: Option<u64>,
    cursor: Option<String>,
    conn: Option<String>,
}

/// A presence list's member: its connection id is all that is compared.
#[derive(Deserialize)]
struct Member {
    conn: String,
}

/// Reads one frame's text.
pub(super) fn parse(text: &[u8]) -> Result<Envelope, String> {
    let Fields {
        op,
        ch,
        seq,
        data,
        conflated,
        id,
        epoch,
        recovered,
        conflate,
        code,
        members,
        count,
        cursor,
        conn,
    } = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let missing = |name: &str| format!("no `{name}` in {}", String::from_utf8_lossy(text));
    let ch = ch.ok_or_else(|| missing("ch"));
    let envelope = match op.as_str() {
        "msg" => Envelope::Msg {
            ch: ch?,
            seq: seq.ok_or_else(|| missing("seq"))?,
            data: data.ok_or_else(|| missing("data"))?,
            conflated: conflated.unwrap_or(0),
        },
        "ack" => Envelope::Ack {
            id: id.ok_or_else(|| missing("id"))?,
            seq,
            epoch,
            recovered,
            conflate: conflate == Some(true),
        },
        "err" => Envelope::Err {
            id,
            code: code.ok_or_else(|| missing("code"))?,
        },
        "presence" => Envelope::Presence {
            id,
            ch: ch?,
            members: (members.ok_or_else(|| missing("members"))?)
                .into_iter()
                .map(|m| m.conn)
                .collect(),
            count: count.ok_or_else(|| missing("count"))?,
            cursor,
        },
        "join" | "leave" => Envelope::Event {
            join: op == "join",
            ch: ch?,
            conn: conn.ok_or_else(|| missing("conn"))?,
        },
        other => return Err(format!("unexpected op `{other}`")),
    };
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{frame, protocol};

    fn text(frame: &[u8]) -> &[u8] {
        frame::payload_of(frame)
    }

    #[test]
    fn reads_what_the_codec_writes() {
        let msg =
            protocol::encode_msg_conflated("px.a", 7, protocol::PayloadKind::Json, b"\"p:1.2\"", 3);
        assert_eq!(
            parse(text(&msg)),
            Ok(Envelope::Msg {
                ch: "px.a".into(),
                seq: 7,
                data: "p:1.2".into(),
                conflated: 3
            })
        );
        let id = protocol::RequestId::parse("5").unwrap();
        let ack = protocol::encode_sub_ack(id, 4, "1-2", Some(true), false);
        assert_eq!(
            parse(text(&ack)),
            Ok(Envelope::Ack {
                id: 5,
                seq: Some(4),
                epoch: Some("1-2".into()),
                recovered: Some(true),
                conflate: false
            })
        );
        let join = protocol::encode_presence_event(true, "room.a", br#"{"conn":"sim.0.1.1"}"#);
        assert_eq!(
            parse(text(&join)),
            Ok(Envelope::Event {
                join: true,
                ch: "room.a".into(),
                conn: "sim.0.1.1".into()
            })
        );
        assert!(parse(b"{\"op\":\"pong\"}").is_err());
    }
}
