//! The MessagePack protocol (`Sec-WebSocket-Protocol: shardcast.msgpack`):
//! the JSON protocol one to one — the same ops and field names — in binary
//! frames of MessagePack maps. Server messages are the JSON protocol's,
//! transcoded (one code path decides what they say); a publication's
//! `data` is carried as MessagePack, and binary data (raw-room frames, a
//! `pub` whose `data` is `bin`) as `bin`, without base64. A client's op is
//! transcoded to the JSON op and read by the JSON parser, so both protocols
//! obey the same rules; only `bin` data takes a path of its own. Pure code.

use bytes::Bytes;
use rmpv::Value;

use crate::{
    frame::{self, OpCode},
    protocol::{self, ErrorCode, OpError, PayloadKind, RequestId, RequestIdBuf, MAX_DATA_DEPTH},
    publication::Payload,
};

/// A client op, read.
#[derive(Debug, PartialEq)]
pub enum Op {
    /// The same op as JSON text, for the JSON protocol's parser.
    Json(String),
    /// A `pub` whose `data` is binary: the op with `"data":null` as JSON
    /// (for its channel, id and key), and the data.
    BinaryPub { op: String, data: Vec<u8> },
}

/// A client frame refused: why, and the request's `id` when the map could
/// be read far enough to find it (and it is one the JSON protocol takes).
#[derive(Debug, PartialEq)]
pub struct Refused {
    pub msg: &'static str,
    pub id: Option<RequestIdBuf>,
}

impl Refused {
    /// The `err` this answers with (`bad_json`, as the JSON protocol's).
    pub fn error(&self) -> OpError<'_> {
        OpError::new(
            ErrorCode::BadJson,
            self.msg,
            self.id.as_ref().map(RequestIdBuf::as_id),
        )
    }
}

/// How deep `rmpv` may read: the envelope's map, then `data` nested one
/// level deeper than the JSON protocol allows (so that the JSON protocol's
/// rule, applied once the op is transcoded, refuses it with the request's
/// id), with a string at the bottom. `rmpv` counts each array or map twice
/// (the value, then its items) and a string twice more.
const MAX_READ_DEPTH: usize = 2 * (MAX_DATA_DEPTH + 2) + 3;

/// Reads one client frame: a MessagePack map, nothing after it.
pub fn parse_op(bytes: &[u8]) -> Result<Op, Refused> {
    let unread = |msg: &'static str| Refused { msg, id: None };
    let mut rest = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut rest, MAX_READ_DEPTH)
        .map_err(|_| unread("expected a MessagePack map with an op"))?;
    if !rest.is_empty() {
        return Err(unread("bytes after the MessagePack map"));
    }
    let Value::Map(mut fields) = value else {
        return Err(unread("expected a MessagePack map with an op"));
    };
    // The id, for an error about the rest to carry.
    let id = fields
        .iter()
        .find(|(k, _)| k.as_str() == Some("id"))
        .and_then(|(_, v)| match v {
            Value::String(_) | Value::Integer(_) => to_json(v.clone()).ok(),
            _ => None,
        })
        .and_then(|id| {
            RequestId::parse(&id.to_string())
                .ok()
                .map(RequestId::to_buf)
        });
    let bad = |msg: &'static str| Refused {
        msg,
        id: id.clone(),
    };
    let mut binary = None;
    let is_pub = fields
        .iter()
        .any(|(k, v)| k.as_str() == Some("op") && v.as_str() == Some("pub"));
    if is_pub {
        for (key, value) in fields.iter_mut() {
            if key.as_str() == Some("data") {
                if let Value::Binary(data) = value {
                    binary = Some(std::mem::take(data));
                    *value = Value::Nil;
                }
            }
        }
    }
    let json = to_json(Value::Map(fields)).map_err(bad)?.to_string();
    Ok(match binary {
        Some(data) => Op::BinaryPub { op: json, data },
        None => Op::Json(json),
    })
}

/// A server frame of the JSON protocol (built by `protocol.rs`), as the
/// MessagePack protocol's binary frame.
pub fn from_json_frame(json_frame: &[u8]) -> Bytes {
    let value = serde_json::from_slice(frame::payload_of(json_frame))
        .map(from_json)
        .unwrap_or(Value::Nil);
    encode(&value)
}

/// The frame of publication `seq` of `channel`: `{op:"msg",ch,seq,data}`
/// with `data` as MessagePack; binary data as `bin` bytes, raw-room text
/// that is not JSON as `text`, as in the JSON protocol.
pub fn publication(channel: &str, seq: u64, payload: &Payload) -> Bytes {
    if payload.kind != PayloadKind::Binary {
        return from_json_frame(&protocol::encode_msg(
            channel,
            seq,
            payload.kind,
            &payload.bytes,
        ));
    }
    encode(&Value::Map(vec![
        (Value::from("op"), Value::from("msg")),
        (Value::from("ch"), Value::from(channel)),
        (Value::from("seq"), Value::from(seq)),
        (Value::from("bin"), Value::Binary(payload.bytes.to_vec())),
    ]))
}

fn encode(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(64);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    frame::encode(OpCode::Binary, &out)
}

/// JSON as MessagePack: numbers as integers when they are, else floats.
fn from_json(value: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::from(u),
            (_, Some(i)) => Value::from(i),
            _ => Value::F64(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::from(s),
        J::Array(items) => Value::Array(items.into_iter().map(from_json).collect()),
        J::Object(fields) => Value::Map(
            fields
                .into_iter()
                .map(|(k, v)| (Value::from(k), from_json(v)))
                .collect(),
        ),
    }
}

/// MessagePack as JSON, for what JSON can say: no binary (but as a
/// `pub`'s whole `data`), no extension types, string keys, finite floats.
fn to_json(value: Value) -> Result<serde_json::Value, &'static str> {
    use serde_json::Value as J;
    Ok(match value {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(b),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => J::from(u),
            (_, Some(i)) => J::from(i),
            _ => return Err("an integer out of range"),
        },
        Value::F32(f) => finite(f64::from(f))?,
        Value::F64(f) => finite(f)?,
        Value::String(s) => J::String(s.into_str().ok_or("a string that is not UTF-8")?),
        Value::Binary(_) => return Err("binary values only as the whole data of a pub"),
        Value::Array(items) => J::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Map(fields) => {
            let mut object = serde_json::Map::with_capacity(fields.len());
            for (key, value) in fields {
                let Value::String(key) = key else {
                    return Err("map keys must be strings");
                };
                let key = key.into_str().ok_or("a key that is not UTF-8")?;
                if object.insert(key, to_json(value)?).is_some() {
                    return Err("a map holds a key twice");
                }
            }
            J::Object(object)
        }
        Value::Ext(..) => return Err("MessagePack extension types are not accepted"),
    })
}

fn finite(f: f64) -> Result<serde_json::Value, &'static str> {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .ok_or("a float that is not finite")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_ID_LEN;

    /// Bytes the MessagePack `msg` envelope adds around its data for a channel
    /// of `channel_len` bytes and a `seq` under 2^32: a 4-entry map (1), the
    /// keys `op`, `ch`, `seq`, `data` (3 + 3 + 4 + 5), `"msg"` (4), the
    /// channel (1 + len under 32 bytes) and the `seq` (at most 5).
    fn envelope_overhead(channel_len: usize) -> usize {
        1 + 3 + 4 + 3 + (1 + channel_len) + 4 + 5 + 5
    }

    fn map(pairs: &[(&str, Value)]) -> Vec<u8> {
        let value = Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        );
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &value).unwrap();
        out
    }

    fn decode(frame: &[u8]) -> Value {
        assert_eq!(frame[0] & 0x0f, OpCode::Binary as u8);
        rmpv::decode::read_value(&mut frame::payload_of(frame)).unwrap()
    }

    #[test]
    fn ops_become_the_same_json_ops() {
        let sub = map(&[
            ("op", "sub".into()),
            ("ch", "news".into()),
            ("id", 7.into()),
        ]);
        let Op::Json(json) = parse_op(&sub).unwrap() else {
            panic!()
        };
        assert!(matches!(
            protocol::parse_client_op(&json),
            Ok(protocol::ClientOp::Sub { id: Some(id), .. }) if id.as_json() == "7"
        ));
        let data = Value::Map(vec![
            ("px".into(), Value::F64(1.5)),
            ("n".into(), (-3).into()),
        ]);
        let publish = map(&[("op", "pub".into()), ("ch", "p".into()), ("data", data)]);
        let Op::Json(json) = parse_op(&publish).unwrap() else {
            panic!()
        };
        match protocol::parse_client_op(&json) {
            Ok(protocol::ClientOp::Pub { data, .. }) => {
                let data: serde_json::Value = serde_json::from_str(data).unwrap();
                assert_eq!(data, serde_json::json!({"px": 1.5, "n": -3}));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pub_keeps_its_idempotency_key_with_json_or_binary_data() {
        for data in [Value::from(1), Value::Binary(vec![0, 255])] {
            let publish = map(&[
                ("op", "pub".into()),
                ("ch", "p".into()),
                ("data", data),
                ("idempotency_key", "order-7".into()),
            ]);
            let json = match parse_op(&publish).unwrap() {
                Op::Json(json) | Op::BinaryPub { op: json, .. } => json,
            };
            match protocol::parse_client_op(&json) {
                Ok(protocol::ClientOp::Pub {
                    idempotency_key, ..
                }) => assert_eq!(idempotency_key.as_deref(), Some("order-7")),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn binary_data_takes_its_own_path_and_bad_input_is_refused() {
        let publish = map(&[
            ("op", "pub".into()),
            ("ch", "raw".into()),
            ("data", Value::Binary(vec![0, 255, 7])),
        ]);
        match parse_op(&publish).unwrap() {
            Op::BinaryPub { op, data } => {
                assert_eq!(data, [0, 255, 7]);
                assert!(matches!(
                    protocol::parse_client_op(&op),
                    Ok(protocol::ClientOp::Pub { data: "null", .. })
                ));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            vec![0x93, 1, 2, 3],                    // an array
            vec![0xc1],                             // never used
            vec![0x81, 0xa2, b'o', b'p'],           // cut short
            map(&[("op", "sub".into())]).repeat(2), // two maps
            map(&[("op", "x".into()), ("a", Value::Binary(vec![1]))]),
            map(&[("op", "x".into()), ("a", Value::F64(f64::NAN))]),
            {
                let mut v = map(&[("op", "x".into())]);
                v[0] = 0x82;
                v.extend([0x01, 0x02]); // an integer key
                v
            },
        ] {
            assert!(parse_op(&bad).is_err(), "{bad:?}");
        }
        // Nesting past the data limit is refused before it costs anything.
        let mut deep = vec![0x81, 0xa4, b'd', b'a', b't', b'a'];
        deep.extend(std::iter::repeat_n(0x91, 1000));
        deep.push(0xc0);
        assert!(parse_op(&deep).is_err());
    }

    /// A `pub` whose data nests `depth` arrays around a string.
    fn nested_pub(depth: usize) -> Vec<u8> {
        let mut data = Value::from("deepest");
        for _ in 0..depth {
            data = Value::Array(vec![data]);
        }
        map(&[
            ("op", "pub".into()),
            ("ch", "c".into()),
            ("id", "n1".into()),
            ("data", data),
        ])
    }

    /// The JSON protocol's reading of a MessagePack op: its code and id.
    fn read(bytes: &[u8]) -> Result<(), (ErrorCode, Option<String>)> {
        let refused = |e: OpError<'_>| (e.code, e.id.map(|id| id.as_json().to_owned()));
        match parse_op(bytes) {
            Ok(Op::Json(json)) => protocol::parse_client_op(&json).map(drop).map_err(refused),
            Ok(Op::BinaryPub { op, .. }) => {
                protocol::parse_client_op(&op).map(drop).map_err(refused)
            }
            Err(refusal) => Err(refused(refusal.error())),
        }
    }

    #[test]
    fn data_follows_the_json_protocols_rules() {
        let bad_json = |id: &str| Err((ErrorCode::BadJson, Some(id.to_owned())));
        assert_eq!(read(&nested_pub(MAX_DATA_DEPTH)), Ok(()));
        assert_eq!(read(&nested_pub(MAX_DATA_DEPTH + 1)), bad_json("\"n1\""));
        // A key twice, anywhere, is refused (the JSON envelope refuses it;
        // a map made an object would silently lose one).
        let mut twice = map(&[("op", "pub".into()), ("ch", "c".into()), ("id", 7.into())]);
        twice[0] = 0x85;
        for _ in 0..2 {
            twice.extend([0xa4, b'd', b'a', b't', b'a', 0x01]);
        }
        assert_eq!(read(&twice), bad_json("7"));
        let inner = Value::Map(vec![("k".into(), 1.into()), ("k".into(), 2.into())]);
        let dup_data = map(&[("op", "pub".into()), ("ch", "c".into()), ("data", inner)]);
        assert_eq!(read(&dup_data), Err((ErrorCode::BadJson, None)));
        // An error about data carries the request's id.
        let nested_binary = map(&[
            ("op", "pub".into()),
            ("ch", "c".into()),
            ("id", "b2".into()),
            ("data", Value::Array(vec![Value::Binary(vec![1])])),
        ]);
        assert_eq!(read(&nested_binary), bad_json("\"b2\""));
    }

    #[test]
    fn server_messages_mirror_the_json_ones() {
        let ack = decode(&from_json_frame(&protocol::encode_sub_ack(
            RequestId::parse("\"a\"").unwrap(),
            4,
            "e-1",
            Some(true),
            true,
        )));
        assert_eq!(ack["conflate"].as_bool(), Some(true));
        assert_eq!(ack["op"].as_str(), Some("ack"));
        assert_eq!(ack["id"].as_str(), Some("a"));
        assert_eq!(ack["seq"].as_u64(), Some(4));
        assert_eq!(ack["recovered"].as_bool(), Some(true));
        let json = Payload::copy_of(PayloadKind::Json, br#"{"px":187.25,"tags":["a"]}"#);
        let msg = decode(&publication("prices", 9, &json));
        assert_eq!(msg["data"]["px"].as_f64(), Some(187.25));
        assert_eq!(msg["data"]["tags"][0].as_str(), Some("a"));
        let raw = Payload::copy_of(PayloadKind::Binary, &[1, 2, 3]);
        let msg = decode(&publication("room", 2, &raw));
        assert_eq!(msg["bin"].as_slice(), Some(&[1u8, 2, 3][..]));
        // The envelope overhead, as documented.
        let tick = Payload::copy_of(PayloadKind::Json, b"1");
        let frame = publication("c", 1000, &tick);
        let body = frame::payload_of(&frame).len();
        assert!(body - 1 <= envelope_overhead(1), "{body}");
    }

    #[test]
    fn a_refusal_carries_the_id_when_it_is_a_string_or_an_integer() {
        for (id, json) in [(Value::from("r1"), "\"r1\""), (Value::from(-5), "-5")] {
            let bad = map(&[
                ("op", "sub".into()),
                ("id", id),
                ("x", Value::Ext(1, vec![0])),
            ]);
            let refused = parse_op(&bad).unwrap_err();
            assert_eq!(refused.error().id.map(RequestId::as_json), Some(json));
            assert_eq!(refused.error().code, ErrorCode::BadJson);
        }
    }

    #[test]
    fn an_id_the_json_protocol_would_refuse_is_not_carried() {
        for id in [
            Value::F64(1.0),
            Value::Array(vec![1.into()]),
            Value::from("x".repeat(MAX_ID_LEN + 1)),
        ] {
            let bad = map(&[
                ("op", "sub".into()),
                ("id", id.clone()),
                ("x", Value::Ext(1, vec![0])),
            ]);
            assert_eq!(parse_op(&bad).unwrap_err().id, None, "{id:?}");
        }
    }

    #[test]
    fn strings_that_are_not_utf8_are_refused() {
        let mut op = map(&[("op", "pub".into()), ("ch", "c".into())]);
        op[0] = 0x83;
        op.extend([0xa4, b'd', b'a', b't', b'a', 0xa2, 0xff, 0xfe]);
        assert!(parse_op(&op).is_err());
    }

    #[test]
    fn server_frames_keep_integers_integers_and_floats_floats() {
        let data = br#"{"i":-3,"u":18446744073709551615,"f":2.0}"#;
        let json = Payload::copy_of(PayloadKind::Json, data);
        let msg = decode(&publication("c", 1, &json));
        assert!(matches!(msg["data"]["i"], Value::Integer(i) if i.as_i64() == Some(-3)));
        assert!(matches!(msg["data"]["u"], Value::Integer(i) if i.as_u64() == Some(u64::MAX)));
        assert!(matches!(msg["data"]["f"], Value::F64(f) if f == 2.0));
    }

    #[test]
    fn raw_room_text_that_is_not_json_goes_as_text() {
        let text = Payload::copy_of(PayloadKind::Text, b"hello \"you\"");
        let msg = decode(&publication("room", 3, &text));
        assert_eq!(msg["text"].as_str(), Some("hello \"you\""));
        assert!(msg["data"].is_nil());
        assert_eq!(msg["seq"].as_u64(), Some(3));
    }
}
