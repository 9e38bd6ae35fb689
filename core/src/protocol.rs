//! The JSON wire protocol of `GET /ws`: parsing what clients send (only the
//! envelope; `data` stays raw bytes and is never re-serialised) and encoding
//! what the server sends (`msg`, `ack`, `err`, `pong`) straight into WebSocket
//! frames. Pure functions, no I/O; `docs/protocol.md` is the specification.

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::{
    channel::{self, Access, ChannelError},
    frame::{self, FrameBuilder, OpCode},
    json_data,
};

mod request_id;

pub use request_id::{BadRequestId, RequestId, RequestIdBuf, MAX_ID_LEN};

/// Deepest nesting of arrays and objects accepted in `data` (and in raw-room
/// text delivered to JSON subscribers as `data`): deeper is `bad_json`. Any
/// subscriber's parser handles this much inside the `msg` envelope (Python's
/// and serde_json's recursion limits are 1000 and 128).
pub const MAX_DATA_DEPTH: usize = 64;

/// An operation a client asked for, borrowing from the frame it came in.
#[derive(Debug, PartialEq)]
pub enum ClientOp<'a> {
    Sub {
        ch: Cow<'a, str>,
        id: Option<RequestId<'a>>,
        /// Resume after this `seq` of that epoch (`"since"`, `"epoch"`).
        since: Option<Since<'a>>,
        /// `"delta":"fossil"`: publications may come as fossil deltas
        /// against the one before.
        delta: bool,
        /// `"join_leave":true`: also deliver `join` and `leave` events of a
        /// presence channel.
        join_leave: bool,
    },
    Unsub {
        ch: Cow<'a, str>,
        id: Option<RequestId<'a>>,
    },
    Pub {
        ch: Cow<'a, str>,
        data: &'a str,
        id: Option<RequestId<'a>>,
        /// `"key"`: on a conflated channel, what a newer publication with
        /// the same key may replace for a subscriber that fell behind.
        key: Option<Cow<'a, str>>,
        /// `"idempotency_key"`: a retry under the same key within
        /// `--idempotency-window` is answered with the first one's `seq`
        /// and not published again (as HTTP publish's, `docs/api.md`).
        idempotency_key: Option<Cow<'a, str>>,
    },
    Ping {
        id: Option<RequestId<'a>>,
    },
    /// Authenticate, or refresh the token before it expires.
    Auth {
        token: Cow<'a, str>,
        id: Option<RequestId<'a>>,
    },
    /// Who is subscribed to a presence channel: a page of at most `limit`
    /// members after `cursor`.
    Presence {
        ch: Cow<'a, str>,
        id: Option<RequestId<'a>>,
        cursor: Option<Cow<'a, str>>,
        limit: usize,
    },
    /// How many are subscribed to a presence channel.
    Occupancy {
        ch: Cow<'a, str>,
        id: Option<RequestId<'a>>,
    },
}

/// Members a `presence` page holds unless `limit` says fewer.
pub const PRESENCE_PAGE: usize = 100;
/// The most members one `presence` page may hold.
pub const MAX_PRESENCE_PAGE: usize = 1000;

/// Stable error codes carried by `err` frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not a JSON object of the expected shape.
    BadJson,
    /// `op` names no known operation.
    UnknownOp,
    /// `ch` is missing, malformed, too long or reserved.
    BadChannel,
    /// A message is over `max-message-bytes` (HTTP publish; WebSocket frames
    /// over the limit close the connection with 1009 instead).
    TooLarge,
    /// `unsub` for a channel the connection is not subscribed to.
    NotSubscribed,
    /// `sub` beyond `max-subscriptions` for this connection.
    TooManySubscriptions,
    /// The server is shutting down and takes no new work.
    ShuttingDown,
    /// The operation is not allowed on this channel: outside the token's
    /// permissions, or publishing on a read-only system channel.
    Forbidden,
    /// No valid token: the connection must `auth` first, or the token was
    /// refused (the connection then closes with 4001).
    Unauthorized,
    /// Over the connection's publish rate; the publication was dropped.
    RateLimited,
    /// The server is over its memory budget (`max-memory`) and takes no new
    /// connection or subscription for now; retry later.
    OverCapacity,
    /// `presence` or `occupancy` of a channel that is not a presence
    /// channel (`--presence`).
    NoPresence,
    /// The cluster engine (Redis, NATS) is unreachable: the publication was
    /// not accepted; retry later.
    Unavailable,
    /// The publication was sent to Redis and no answer came (the link was
    /// lost, or Redis was silent for `--engine-timeout`): it may have been
    /// applied. Retry with the same `idempotency_key` to publish it at most
    /// once.
    OutcomeUnknown,
}

impl ErrorCode {
    /// The HTTP status a request refused for this reason gets.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Forbidden => 403,
            ErrorCode::Unauthorized => 401,
            ErrorCode::RateLimited => 429,
            ErrorCode::TooLarge => 413,
            ErrorCode::ShuttingDown | ErrorCode::OverCapacity | ErrorCode::Unavailable => 503,
            // The gateway's upstream (Redis) did not answer.
            ErrorCode::OutcomeUnknown => 504,
            _ => 400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::OverCapacity => "over_capacity",
            ErrorCode::NoPresence => "no_presence",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
        }
    }
}

/// A request the server refuses; answered with an `err` frame, the connection
/// stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError<'a> {
    pub code: ErrorCode,
    pub msg: Cow<'static, str>,
    /// The request's `id`, when it could be read.
    pub id: Option<RequestId<'a>>,
}

impl<'a> OpError<'a> {
    pub fn new(
        code: ErrorCode,
        msg: impl Into<Cow<'static, str>>,
        id: Option<RequestId<'a>>,
    ) -> Self {
        OpError {
            code,
            msg: msg.into(),
            id,
        }
    }
}

/// Where a resubscribing client left off: the last `seq` it has of a channel
/// and the channel epoch that `seq` belongs to (both from an earlier ack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since<'a> {
    pub seq: u64,
    pub epoch: Cow<'a, str>,
}

/// How a subscription wants its channel's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// Publications may come as fossil deltas (`"delta":"fossil"`).
    pub delta: bool,
    /// A presence channel's `join` and `leave` events too (`"join_leave"`).
    pub join_leave: bool,
}

/// What a `presence` or `occupancy` op asks of a presence channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceAsk {
    /// A page of at most `limit` members after `cursor`.
    Page {
        cursor: Option<Box<str>>,
        limit: usize,
    },
    /// Just how many.
    Count,
}

/// `data` must be kept even when it is JSON `null`, which `Option` would eat.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ch: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default)]
    join_leave: Option<bool>,
    #[serde(borrow, default)]
    cursor: Option<Cow<'a, str>>,
    #[serde(default)]
    limit: Option<u64>,
}

/// Just the `id` of an envelope whose other fields are wrong, so the error
/// still names the request it answers.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

fn id_of(text: &str) -> Option<RequestId<'_>> {
    if !is_object(text) {
        return None;
    }
    let envelope: IdOnly<'_> = serde_json::from_str(text).ok()?;
    read_id(envelope.id).ok().flatten()
}

/// Reads an `id`: a number or a string of at most [`MAX_ID_LEN`] bytes.
fn read_id(raw: Option<&RawValue>) -> Result<Option<RequestId<'_>>, OpError<'_>> {
    let Some(raw) = raw else { return Ok(None) };
    match RequestId::parse(raw.get()) {
        Ok(id) => Ok(Some(id)),
        Err(bad) => Err(OpError::new(ErrorCode::BadJson, bad.to_string(), None)),
    }
}

fn read_channel<'a>(
    ch: Option<Cow<'a, str>>,
    access: Access,
    id: Option<RequestId<'a>>,
) -> Result<Cow<'a, str>, OpError<'a>> {
    let ch = ch.ok_or_else(|| OpError::new(ErrorCode::BadChannel, "missing ch", id))?;
    channel::validate(&ch, access)
        .map_err(|e| OpError::new(channel_error_code(e), e.to_string(), id))?;
    Ok(ch)
}

/// The error code for a refused channel name.
pub fn channel_error_code(error: ChannelError) -> ErrorCode {
    match error {
        ChannelError::ReadOnly => ErrorCode::Forbidden,
        _ => ErrorCode::BadChannel,
    }
}

/// `since` needs the `epoch` it belongs to.
fn read_since<'a>(
    since: Option<u64>,
    epoch: Option<Cow<'a, str>>,
    id: Option<RequestId<'a>>,
) -> Result<Option<Since<'a>>, OpError<'a>> {
    match (since, epoch) {
        (None, _) => Ok(None),
        (Some(seq), Some(epoch)) if epoch.len() <= MAX_EPOCH_LEN => Ok(Some(Since { seq, epoch })),
        (Some(_), _) => Err(OpError::new(
            ErrorCode::BadJson,
            "since needs the epoch (a string from the sub ack) it belongs to",
            id,
        )),
    }
}

/// `delta` of a `sub`: absent, or `"fossil"`, the one delta encoding.
pub fn read_delta<'a>(delta: Option<&str>, id: Option<RequestId<'a>>) -> Result<bool, OpError<'a>> {
    match delta {
        None => Ok(false),
        Some(DELTA_FOSSIL) => Ok(true),
        Some(_) => Err(OpError::new(
            ErrorCode::BadJson,
            "delta must be \"fossil\"",
            id,
        )),
    }
}

/// The delta encoding's name in `sub` and `?delta=`.
pub const DELTA_FOSSIL: &str = "fossil";

/// Longest `epoch` accepted (the server's are 18–38 bytes).
const MAX_EPOCH_LEN: usize = 64;

/// Whether `text` starts (after white space) like a JSON object: serde
/// would also read the envelope's fields from an array.
fn is_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
}

/// `data` of a publication: present, and data every subscriber's parser
/// holds (`json_data.rs`: nested at most [`MAX_DATA_DEPTH`] deep, finite
/// numbers, valid Unicode).
pub fn read_data<'a>(
    data: Option<&'a RawValue>,
    id: Option<RequestId<'a>>,
) -> Result<&'a str, OpError<'a>> {
    let data = data.ok_or_else(|| OpError::new(ErrorCode::BadJson, "pub needs data", id))?;
    json_data::check(data.get().as_bytes())
        .map_err(|why| OpError::new(ErrorCode::BadJson, format!("data refused: {why}"), id))?;
    Ok(data.get())
}

/// Parses one client text frame.
pub fn parse_client_op(text: &str) -> Result<ClientOp<'_>, OpError<'_>> {
    if !is_object(text) {
        return Err(OpError::new(
            ErrorCode::BadJson,
            "expected a JSON object with an op",
            None,
        ));
    }
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        OpError::new(
            ErrorCode::BadJson,
            format!("expected a JSON object with an op: {e}"),
            id_of(text),
        )
    })?;
    let id = read_id(envelope.id)?;
    let op = envelope
        .op
        .ok_or_else(|| OpError::new(ErrorCode::BadJson, "missing op", id))?;
    match op.as_ref() {
        "sub" => Ok(ClientOp::Sub {
            ch: read_channel(envelope.ch, Access::Subscribe, id)?,
            id,
            since: read_since(envelope.since, envelope.epoch, id)?,
            delta: read_delta(envelope.delta.as_deref(), id)?,
            join_leave: envelope.join_leave.unwrap_or(false),
        }),
        "presence" => Ok(ClientOp::Presence {
            ch: read_channel(envelope.ch, Access::Subscribe, id)?,
            id,
            cursor: envelope.cursor,
            limit: match envelope.limit {
                None => PRESENCE_PAGE,
                Some(n @ 1..) if n as usize <= MAX_PRESENCE_PAGE => n as usize,
                Some(_) => {
                    return Err(OpError::new(
                        ErrorCode::BadJson,
                        format!("limit must be 1 to {MAX_PRESENCE_PAGE}"),
                        id,
                    ))
                }
            },
        }),
        "occupancy" => Ok(ClientOp::Occupancy {
            ch: read_channel(envelope.ch, Access::Subscribe, id)?,
            id,
        }),
        "unsub" => Ok(ClientOp::Unsub {
            ch: read_channel(envelope.ch, Access::Subscribe, id)?,
            id,
        }),
        "pub" => Ok(ClientOp::Pub {
            ch: read_channel(envelope.ch, Access::Publish, id)?,
            data: read_data(envelope.data, id)?,
            id,
            key: read_key(envelope.key, id)?,
            idempotency_key: read_idempotency_key(envelope.idempotency_key, id)?,
        }),
        "ping" => Ok(ClientOp::Ping { id }),
        "auth" => Ok(ClientOp::Auth {
            token: envelope
                .token
                .ok_or_else(|| OpError::new(ErrorCode::BadJson, "auth needs a token", id))?,
            id,
        }),
        _ => Err(OpError::new(
            ErrorCode::UnknownOp,
            "op must be one of sub, unsub, pub, ping, auth, presence, occupancy",
            id,
        )),
    }
}

/// The longest conflation key.
pub const MAX_KEY_LEN: usize = 128;

/// A publication's `key`: a string of 1 to [`MAX_KEY_LEN`] bytes.
pub fn read_key<'a>(
    key: Option<Cow<'a, str>>,
    id: Option<RequestId<'a>>,
) -> Result<Option<Cow<'a, str>>, OpError<'a>> {
    read_bounded("key", MAX_KEY_LEN, key, id)
}

/// A string `field` of 1 to `max` bytes, when present.
fn read_bounded<'a>(
    field: &str,
    max: usize,
    value: Option<Cow<'a, str>>,
    id: Option<RequestId<'a>>,
) -> Result<Option<Cow<'a, str>>, OpError<'a>> {
    match value {
        Some(value) if value.is_empty() || value.len() > max => Err(OpError::new(
            ErrorCode::BadJson,
            format!("{field} must be 1 to {max} bytes"),
            id,
        )),
        value => Ok(value),
    }
}

/// The longest `idempotency_key` (WebSocket `pub` and HTTP publish).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A publication's `idempotency_key`: a string of 1 to
/// [`MAX_IDEMPOTENCY_KEY_LEN`] bytes, the same rule for a `pub` op and an
/// HTTP publish.
pub fn read_idempotency_key<'a>(
    key: Option<Cow<'a, str>>,
    id: Option<RequestId<'a>>,
) -> Result<Option<Cow<'a, str>>, OpError<'a>> {
    read_bounded("idempotency_key", MAX_IDEMPOTENCY_KEY_LEN, key, id)
}

/// What a publication's bytes are, which decides how each kind of subscriber
/// receives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// Valid JSON (from a JSON `pub` or HTTP publish).
    Json,
    /// A text frame sent to a raw room: UTF-8, maybe JSON, maybe not.
    Text,
    /// A binary frame sent to a raw room.
    Binary,
}

/// Encodes the `msg` envelope for JSON subscribers:
/// `{"op":"msg","ch":..,"seq":..,"data":<json>}`; raw-room text that is not JSON
/// goes in `"text"` as a JSON string, binary in `"bin"` as base64.
/// `ch` must be a validated channel name (needs no escaping).
pub fn encode_msg(ch: &str, seq: u64, kind: PayloadKind, payload: &[u8]) -> Bytes {
    let mut out = msg_head(ch, seq, payload.len() + payload.len() / 3);
    push_data(&mut out, kind, payload);
    out.finish()
}

/// Like [`encode_msg`], for a publication that replaced `conflated` older
/// ones with its key still queued for a subscriber that fell behind:
/// `{"op":"msg","ch":..,"seq":..,"conflated":N,"data":..}`.
pub fn encode_msg_conflated(
    ch: &str,
    seq: u64,
    kind: PayloadKind,
    payload: &[u8],
    conflated: u32,
) -> Bytes {
    let mut out = msg_head(ch, seq, 24 + payload.len() + payload.len() / 3);
    out.push(b",\"conflated\":");
    out.push(itoa::Buffer::new().format(conflated).as_bytes());
    push_data(&mut out, kind, payload);
    out.finish()
}

/// The data of a `msg` envelope, and its closing brace: JSON as it is,
/// raw-room text as a string (`"text"`), binary as base64 (`"bin"`). Always
/// the envelope's last field.
fn push_data(out: &mut FrameBuilder, kind: PayloadKind, payload: &[u8]) {
    let as_json = match kind {
        PayloadKind::Json => true,
        PayloadKind::Text => json_data::check(payload).is_ok(),
        PayloadKind::Binary => false,
    };
    if as_json {
        out.push(b",\"data\":");
        push_one_line(out, payload);
    } else if kind == PayloadKind::Text {
        out.push(b",\"text\":");
        // Raw-room text frames were UTF-8-checked by the reader.
        let text = String::from_utf8_lossy(payload);
        // Writing a str into an in-memory buffer cannot fail.
        let _ = serde_json::to_writer(&mut *out, text.as_ref());
    } else {
        out.push(b",\"bin\":\"");
        let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
        out.push(encoded.as_bytes());
        out.push(b"\"");
    }
    out.push(b"}");
}

/// Valid JSON `json`, its raw line breaks (white space between tokens:
/// strings escape theirs) made spaces, so that every envelope is one line
/// and batched envelopes split on `\n` (`conn/batch.rs`). Publications'
/// data is made so when received (`Payload::json`); raw-room text taken for
/// JSON is made so here.
fn push_one_line(out: &mut FrameBuilder, json: &[u8]) {
    let mut rest = json;
    while let Some(at) = memchr::memchr2(b'\n', b'\r', rest) {
        out.push(&rest[..at]);
        out.push(b" ");
        rest = &rest[at + 1..];
    }
    out.push(rest);
}

/// A `msg` envelope up to its `seq` (`{"op":"msg","ch":..,"seq":N`), in a
/// frame with room for `rest` more bytes.
fn msg_head(ch: &str, seq: u64, rest: usize) -> FrameBuilder {
    let mut seq_text = itoa::Buffer::new();
    let seq_text = seq_text.format(seq);
    let mut out = FrameBuilder::new(OpCode::Text, 40 + ch.len() + seq_text.len() + rest);
    out.push(b"{\"op\":\"msg\",\"ch\":\"");
    out.push(ch.as_bytes());
    out.push(b"\",\"seq\":");
    out.push(seq_text.as_bytes());
    out
}

/// The frame of publication `seq` of `ch` as a fossil delta against
/// publication `seq - 1`: `{"op":"msg","ch":..,"seq":N,"delta":true,
/// "data":"<delta>"}`, the delta's bytes written as a JSON string of the
/// code points U+0000–U+00FF of the same values (docs/protocol.md).
pub fn encode_msg_delta(ch: &str, seq: u64, delta: &[u8]) -> Bytes {
    let mut out = msg_head(ch, seq, 8 + delta.len() + delta.len() / 8);
    out.push(b",\"delta\":true,\"data\":\"");
    for &byte in delta {
        let (bytes, len) = delta_char(byte);
        out.push(&bytes[..len]);
    }
    out.push(b"\"}");
    out.finish()
}

/// How one byte of a delta is written in its JSON string: as the code
/// point of the same value, JSON-escaped where it must be (`\"`, `\\`,
/// `\n`, `\u00XX` for other control characters and 0x7f), two bytes of
/// UTF-8 from 0x80. Returns the bytes and how many of them there are.
fn delta_char(byte: u8) -> ([u8; 6], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' | b'\\' => ([b'\\', byte, 0, 0, 0, 0], 2),
        b'\n' => ([b'\\', b'n', 0, 0, 0, 0], 2),
        0x00..=0x1f | 0x7f => {
            let (hi, lo) = (HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]);
            ([b'\\', b'u', b'0', b'0', hi, lo], 6)
        }
        0x20..=0x7e => ([byte, 0, 0, 0, 0, 0], 1),
        _ => ([0xc0 | byte >> 6, 0x80 | (byte & 0x3f), 0, 0, 0, 0], 2),
    }
}

/// Whether the delta frame of a publication whose data is `data_len` bytes
/// would be smaller than its whole frame: the delta as its JSON string
/// writes it, plus `,"delta":true` and the string's quotes, against the
/// data.
pub fn delta_frame_is_smaller(delta: &[u8], data_len: usize) -> bool {
    let written: usize = delta.iter().map(|&b| delta_char(b).1).sum();
    const DELTA_OVERHEAD: usize = ",\"delta\":true".len() + 2;
    written + DELTA_OVERHEAD < data_len
}

/// Bytes a `msg` frame adds around its payload at most: the frame header
/// (10), `{"op":"msg","ch":"` (18), the channel (128), `","seq":` (8), the
/// `seq` (20 digits), `,"text":` (8), the string's quotes and `}` (3).
const MSG_OVERHEAD: usize = 10 + 18 + channel::MAX_CHANNEL_LEN + 8 + 20 + 8 + 3;

/// The largest frame one publication of `payload_len` bytes can become for
/// any subscriber: raw-room text of control characters is escaped to six
/// bytes each (`\u0001`) for JSON subscribers; base64 of binary (4/3) and
/// verbatim JSON are smaller. A queue must hold this to take any message.
pub const fn max_msg_frame_len(payload_len: usize) -> usize {
    6 * payload_len + MSG_OVERHEAD
}

/// Encodes the frame raw-room members receive: the payload verbatim, as a text
/// frame (JSON and text) or a binary frame.
pub fn encode_raw(kind: PayloadKind, payload: &[u8]) -> Bytes {
    let opcode = match kind {
        PayloadKind::Binary => OpCode::Binary,
        PayloadKind::Json | PayloadKind::Text => OpCode::Text,
    };
    frame::encode(opcode, payload)
}

fn push_id(out: &mut FrameBuilder, id: Option<RequestId<'_>>) {
    if let Some(id) = id {
        out.push(b",\"id\":");
        out.push(id.as_json().as_bytes());
    }
}

/// `{"op":"ack","id":..}`, with `"seq"` for an acknowledged `pub`.
pub fn encode_ack(id: RequestId<'_>, seq: Option<u64>) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 48 + id.as_json().len());
    out.push(b"{\"op\":\"ack\"");
    push_id(&mut out, Some(id));
    if let Some(seq) = seq {
        out.push(b",\"seq\":");
        out.push(itoa::Buffer::new().format(seq).as_bytes());
    }
    out.push(b"}");
    out.finish()
}

/// The ack of a `sub`: `{"op":"ack","id":..,"seq":N,"epoch":"..."}` with
/// `"recovered":bool` when the `sub` had `since`. `epoch` is the server's
/// own (hex digits and a dash; no escaping needed).
pub fn encode_sub_ack(
    id: RequestId<'_>,
    seq: u64,
    epoch: &str,
    recovered: Option<bool>,
    conflates: bool,
) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 96 + id.as_json().len() + epoch.len());
    out.push(b"{\"op\":\"ack\"");
    push_id(&mut out, Some(id));
    out.push(b",\"seq\":");
    out.push(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b",\"epoch\":\"");
    out.push(epoch.as_bytes());
    out.push(b"\"");
    match recovered {
        Some(true) => out.push(b",\"recovered\":true"),
        Some(false) => out.push(b",\"recovered\":false"),
        None => {}
    }
    if conflates {
        out.push(b",\"conflate\":true");
    }
    out.push(b"}");
    out.finish()
}

/// `{"op":"err","id":..,"code":..,"msg":..}` (`id` only when known).
pub fn encode_err(error: &OpError<'_>) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 64 + error.msg.len());
    out.push(b"{\"op\":\"err\"");
    push_id(&mut out, error.id);
    out.push(b",\"code\":\"");
    out.push(error.code.as_str().as_bytes());
    out.push(b"\",\"msg\":");
    // Writing a str into an in-memory buffer cannot fail.
    let _ = serde_json::to_writer(&mut out, error.msg.as_ref());
    out.push(b"}");
    out.finish()
}

/// `{"op":"reconnect","after_ms":N}`: the server is going away; come back
/// (to another node) after `N` ms, not at once with everyone else.
pub fn encode_reconnect(after_ms: u64) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 40);
    out.push(b"{\"op\":\"reconnect\",\"after_ms\":");
    out.push(itoa::Buffer::new().format(after_ms).as_bytes());
    out.push(b"}");
    out.finish()
}

/// `{"op":"unsubscribed","ch":..,"reason":..}`: the server ended the
/// subscription (`POST /api/unsubscribe`).
pub fn encode_unsubscribed(channel: &str, reason: &str) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 48 + channel.len() + reason.len());
    out.push(b"{\"op\":\"unsubscribed\",\"ch\":\"");
    out.push(channel.as_bytes());
    out.push(b"\",\"reason\":");
    // Writing into an in-memory buffer cannot fail.
    let _ = serde_json::to_writer(&mut out, reason);
    out.push(b"}");
    out.finish()
}

/// `{"op":"pong"}` or `{"op":"pong","id":..}`.
pub fn encode_pong(id: Option<RequestId<'_>>) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 24);
    out.push(b"{\"op\":\"pong\"");
    push_id(&mut out, id);
    out.push(b"}");
    out.finish()
}

/// One presence member as JSON: `{"user":..,"conn":..,"info":{..}}` (no
/// `user` for an anonymous connection, no `info` without one).
pub fn write_member(out: &mut Vec<u8>, user: &str, conn: &str, info: Option<&str>) {
    out.push(b'{');
    if !user.is_empty() {
        out.extend_from_slice(b"\"user\":");
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, user);
        out.push(b',');
    }
    out.extend_from_slice(b"\"conn\":");
    let _ = serde_json::to_writer(&mut *out, conn);
    if let Some(info) = info {
        out.extend_from_slice(b",\"info\":");
        out.extend_from_slice(info.as_bytes());
    }
    out.push(b'}');
}

/// `{"op":"presence","id":..,"ch":..,"members":[..],"count":N}` and, when
/// there are more, `"cursor"`; `members` is JSON text of
/// [`write_member`]s joined by commas. The same text answers
/// `GET /api/presence/<ch>` (without an `id`).
pub fn presence_json(
    id: Option<RequestId<'_>>,
    channel: &str,
    members: &[u8],
    count: usize,
    cursor: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + channel.len() + members.len());
    out.extend_from_slice(b"{\"op\":\"presence\"");
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.as_json().as_bytes());
    }
    out.extend_from_slice(b",\"ch\":\"");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\",\"members\":[");
    out.extend_from_slice(members);
    out.extend_from_slice(b"],\"count\":");
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    if let Some(cursor) = cursor {
        out.extend_from_slice(b",\"cursor\":");
        let _ = serde_json::to_writer(&mut out, cursor);
    }
    out.push(b'}');
    out
}

/// `{"op":"occupancy","id":..,"ch":..,"count":N}`.
pub fn encode_occupancy(id: Option<RequestId<'_>>, channel: &str, count: usize) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 64 + channel.len());
    out.push(b"{\"op\":\"occupancy\"");
    push_id(&mut out, id);
    out.push(b",\"ch\":\"");
    out.push(channel.as_bytes());
    out.push(b"\",\"count\":");
    out.push(itoa::Buffer::new().format(count).as_bytes());
    out.push(b"}");
    out.finish()
}

/// `{"op":"join"|"leave","ch":..,"user":..,"conn":..,"info":..}`: the
/// member's fields after `op` and `ch`.
pub fn encode_presence_event(join: bool, channel: &str, member: &[u8]) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 32 + channel.len() + member.len());
    out.push(if join {
        b"{\"op\":\"join\",\"ch\":\""
    } else {
        b"{\"op\":\"leave\",\"ch\":\""
    });
    out.push(channel.as_bytes());
    out.push(b"\",");
    // The member object without its opening brace.
    out.push(member.get(1..).unwrap_or_default());
    out.finish()
}

/// `{"op":"resync","ch":..,"seq":..,"epoch":..}`: publications of `ch` were
/// lost that cannot be recovered; the channel goes on after `seq` under
/// `epoch` (a client reloads its state, then takes what follows).
pub fn encode_resync(channel: &str, seq: u64, epoch: &str) -> Bytes {
    let mut out = FrameBuilder::new(OpCode::Text, 64 + channel.len() + epoch.len());
    out.push(b"{\"op\":\"resync\",\"ch\":\"");
    out.push(channel.as_bytes());
    out.push(b"\",\"seq\":");
    out.push(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b",\"epoch\":\"");
    out.push(epoch.as_bytes());
    out.push(b"\"}");
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A checked `id` of JSON text `json`.
    fn request_id(json: &str) -> RequestId<'_> {
        RequestId::parse(json).unwrap()
    }

    #[test]
    fn presence_ops_parse_and_their_answers_are_json() {
        let op =
            parse_client_op(r#"{"op":"presence","ch":"room.1","id":7,"cursor":"a.1","limit":2}"#);
        assert!(
            matches!(op, Ok(ClientOp::Presence { limit: 2, cursor: Some(ref c), .. }) if c == "a.1")
        );
        let plain = parse_client_op(r#"{"op":"presence","ch":"room.1"}"#);
        assert!(matches!(
            plain,
            Ok(ClientOp::Presence {
                limit: PRESENCE_PAGE,
                cursor: None,
                ..
            })
        ));
        for bad in [
            r#"{"op":"presence","ch":"r","limit":0}"#,
            r#"{"op":"presence","ch":"r","limit":1001}"#,
        ] {
            assert_eq!(
                parse_client_op(bad).unwrap_err().code,
                ErrorCode::BadJson,
                "{bad}"
            );
        }
        assert!(matches!(
            parse_client_op(r#"{"op":"occupancy","ch":"r","id":1}"#),
            Ok(ClientOp::Occupancy { .. })
        ));
        let sub = parse_client_op(r#"{"op":"sub","ch":"r","join_leave":true}"#);
        assert!(matches!(
            sub,
            Ok(ClientOp::Sub {
                join_leave: true,
                ..
            })
        ));
        let mut member = Vec::new();
        write_member(&mut member, "al\"ice", "n.0.1.1", Some(r#"{"x":1}"#));
        let event = payload_json(&encode_presence_event(true, "room.1", &member));
        assert_eq!(
            event,
            json!({"op":"join","ch":"room.1","user":"al\"ice","conn":"n.0.1.1","info":{"x":1}})
        );
        let mut anonymous = Vec::new();
        write_member(&mut anonymous, "", "n.0.2.1", None);
        let both = [member.as_slice(), b",", anonymous.as_slice()].concat();
        let answer: Value = serde_json::from_slice(&presence_json(
            Some(request_id("7")),
            "room.1",
            &both,
            2,
            Some("n.0.2.1"),
        ))
        .unwrap();
        assert_eq!(answer["members"][1], json!({"conn":"n.0.2.1"}));
        assert_eq!(
            (
                answer["id"].as_u64(),
                answer["count"].as_u64(),
                answer["cursor"].as_str()
            ),
            (Some(7), Some(2), Some("n.0.2.1"))
        );
        let occupancy = payload_json(&encode_occupancy(None, "room.1", 3));
        assert_eq!(occupancy, json!({"op":"occupancy","ch":"room.1","count":3}));
    }

    #[test]
    fn resyncs_name_the_channel_position_and_epoch() {
        assert_eq!(
            payload_json(&encode_resync("a.b", 7, "e1")),
            json!({"op":"resync","ch":"a.b","seq":7,"epoch":"e1"})
        );
    }

    /// The JSON payload of a text frame built by this module.
    fn payload_json(frame: &[u8]) -> Value {
        let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        assert_eq!(frame[0], 0x81, "final text frame");
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    #[test]
    fn parses_each_op() {
        assert_eq!(
            parse_client_op(r#"{"op":"sub","ch":"news","id":1}"#),
            Ok(ClientOp::Sub {
                ch: "news".into(),
                id: Some(request_id("1")),
                since: None,
                delta: false,
                join_leave: false,
            })
        );
        assert_eq!(
            parse_client_op(r#"{"op":"sub","ch":"news","since":41,"epoch":"ab-1"}"#),
            Ok(ClientOp::Sub {
                ch: "news".into(),
                id: None,
                since: Some(Since {
                    seq: 41,
                    epoch: "ab-1".into()
                }),
                delta: false,
                join_leave: false,
            })
        );
        assert_eq!(
            parse_client_op(r#"{"op":"unsub","ch":"news"}"#),
            Ok(ClientOp::Unsub {
                ch: "news".into(),
                id: None
            })
        );
        assert_eq!(
            parse_client_op(r#"{"op":"pub","ch":"news","data":{"a":[1, 2]},"id":"x"}"#),
            Ok(ClientOp::Pub {
                ch: "news".into(),
                data: r#"{"a":[1, 2]}"#,
                id: Some(request_id("\"x\"")),
                key: None,
                idempotency_key: None,
            })
        );
        assert_eq!(
            parse_client_op(r#"{"op":"ping","id":4}"#),
            Ok(ClientOp::Ping {
                id: Some(request_id("4"))
            })
        );
        assert_eq!(
            parse_client_op(r#"{"op":"auth","token":"a.b.c","id":5}"#),
            Ok(ClientOp::Auth {
                token: "a.b.c".into(),
                id: Some(request_id("5"))
            })
        );
        assert_eq!(
            parse_client_op(r#"{"op":"auth","id":6}"#).unwrap_err().code,
            ErrorCode::BadJson
        );
    }

    #[test]
    fn null_data_is_data() {
        assert_eq!(
            parse_client_op(r#"{"op":"pub","ch":"n","data":null}"#),
            Ok(ClientOp::Pub {
                ch: "n".into(),
                data: "null",
                id: None,
                key: None,
                idempotency_key: None,
            })
        );
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        assert!(matches!(
            parse_client_op(r#"{"op":"sub","ch":"n","since":4,"epoch":"e"}"#),
            Ok(ClientOp::Sub { .. })
        ));
    }

    #[test]
    fn escaped_channel_names_are_read() {
        assert_eq!(
            parse_client_op(r#"{"op":"sub","ch":"n\u0065ws"}"#),
            Ok(ClientOp::Sub {
                ch: "news".into(),
                id: None,
                since: None,
                delta: false,
                join_leave: false,
            })
        );
    }

    #[test]
    fn errors_have_stable_codes_and_keep_the_id() {
        let code = |text| parse_client_op(text).unwrap_err().code;
        assert_eq!(code("not json"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"op":"pub","ch":"n"}"#), ErrorCode::BadJson);
        assert_eq!(
            code(r#"{"op":"sub","ch":"n","id":{"x":1}}"#),
            ErrorCode::BadJson
        );
        assert_eq!(code(r#"{"ch":"n"}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"op":"dance","id":1}"#), ErrorCode::UnknownOp);
        assert_eq!(
            code(r#"{"op":"sub","ch":"n","since":4}"#),
            ErrorCode::BadJson,
            "since without its epoch"
        );
        assert_eq!(
            code(r#"{"op":"sub","ch":"n","since":-1,"epoch":"e"}"#),
            ErrorCode::BadJson
        );
        assert_eq!(code(r#"{"op":"ping","id":2E6222}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"op":"ping","id":1.5}"#), ErrorCode::BadJson);
        assert!(parse_client_op(r#"{"op":"ping","id":-12}"#).is_ok());
        assert_eq!(parse_client_op("[2E6222]").unwrap_err().id, None);
        let typed = parse_client_op(r#"{"op":"sub","ch":"n","id":9,"since":-1,"epoch":"e"}"#);
        assert_eq!(
            typed.unwrap_err().id,
            Some(request_id("9")),
            "a mistyped field keeps the id"
        );
        assert_eq!(code(r#"{"op":"sub","ch":"a b"}"#), ErrorCode::BadChannel);
        assert_eq!(code(r#"{"op":"sub"}"#), ErrorCode::BadChannel);
        assert_eq!(code(r#"{"op":"sub","ch":"$sys"}"#), ErrorCode::BadChannel);
        assert!(parse_client_op(r#"{"op":"sub","ch":"$stats"}"#).is_ok());
        assert_eq!(
            code(r#"{"op":"pub","ch":"$stats","data":1}"#),
            ErrorCode::Forbidden
        );
        let err = parse_client_op(r#"{"op":"dance","id":7}"#).unwrap_err();
        assert_eq!(err.id, Some(request_id("7")));
    }

    #[test]
    fn envelopes_are_objects_only() {
        for text in [r#"["sub","arr",null,"a1"]"#, r#" ["pub","c",[1],1]"#, "1"] {
            let err = parse_client_op(text).unwrap_err();
            assert_eq!((err.code, err.id), (ErrorCode::BadJson, None), "{text}");
        }
        assert!(parse_client_op(" \n{\"op\":\"ping\"}").is_ok());
    }

    #[test]
    fn ids_are_limited_to_64_bytes_as_documented() {
        let ping = |id: String| {
            let text = format!(r#"{{"op":"ping","id":{id}}}"#);
            parse_client_op(&text).map(drop).map_err(|e| e.code)
        };
        let string = |n| format!("\"{}\"", "x".repeat(n));
        assert!(ping(string(64)).is_ok(), "64 bytes between the quotes");
        assert_eq!(ping(string(65)).unwrap_err(), ErrorCode::BadJson);
        assert!(ping("9".repeat(64)).is_ok());
        assert!(ping(format!("-{}", "9".repeat(64))).is_ok());
        assert_eq!(ping("9".repeat(65)).unwrap_err(), ErrorCode::BadJson);
    }

    #[test]
    fn deeply_nested_data_is_refused() {
        let nested = |depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let publish = |data: String| {
            let text = format!(r#"{{"op":"pub","ch":"c","data":{data},"id":1}}"#);
            parse_client_op(&text)
                .map(drop)
                .map_err(|e| (e.code, e.id.map(|id| id.as_json().to_owned())))
        };
        assert!(publish(nested(MAX_DATA_DEPTH)).is_ok());
        assert_eq!(
            publish(nested(MAX_DATA_DEPTH + 1)).unwrap_err(),
            (ErrorCode::BadJson, Some("1".to_owned()))
        );
        assert!(publish(nested(30_000)).is_err());
        let brackets_in_strings = format!(r#"{{"a":"{}\"[{{"}}"#, "[".repeat(100));
        assert!(publish(brackets_in_strings).is_ok(), "strings are skipped");
        let deep_text = nested(MAX_DATA_DEPTH + 1);
        let frame = encode_msg("r", 1, PayloadKind::Text, deep_text.as_bytes());
        assert_eq!(
            payload_json(&frame)["text"],
            json!(deep_text),
            "deep raw-room text reaches JSON subscribers as a string"
        );
    }

    #[test]
    fn msg_envelope_keeps_data_bytes_verbatim() {
        let frame = encode_msg("news", 42, PayloadKind::Json, br#"{"b": 1.50}"#);
        let text = std::str::from_utf8(&frame[2..]).unwrap();
        assert_eq!(
            text,
            r#"{"op":"msg","ch":"news","seq":42,"data":{"b": 1.50}}"#
        );
    }

    #[test]
    fn raw_text_and_binary_become_text_data_or_bin() {
        let json_text = payload_json(&encode_msg("r", 1, PayloadKind::Text, b"[1,2]"));
        assert_eq!(json_text["data"], json!([1, 2]));
        let plain = payload_json(&encode_msg("r", 2, PayloadKind::Text, b"hi \"there\""));
        assert_eq!(plain["text"], json!("hi \"there\""));
        assert!(plain.get("data").is_none());
        let bin = payload_json(&encode_msg("r", 3, PayloadKind::Binary, &[0, 1, 255]));
        assert_eq!(bin["bin"], json!("AAH/"));
    }

    #[test]
    fn raw_room_json_with_line_breaks_goes_on_one_line() {
        for conflated in [false, true] {
            let text = b"{\"a\":\r\n[1,\n2],\"s\":\"x\\ny\"}";
            let frame = match conflated {
                false => encode_msg("r", 1, PayloadKind::Text, text),
                true => encode_msg_conflated("r", 1, PayloadKind::Text, text, 2),
            };
            let payload = frame::payload_of(&frame);
            assert!(!payload.contains(&b'\n') && !payload.contains(&b'\r'));
            assert_eq!(
                payload_json(&frame)["data"],
                json!({"a": [1, 2], "s": "x\ny"})
            );
        }
    }

    #[test]
    fn data_no_parser_holds_is_refused_and_raw_room_text_of_it_stays_text() {
        for data in ["1e999", "[-1e400]", "\"\\ud800\"", "{\"\\udfff\":1}"] {
            let text = format!(r#"{{"op":"pub","ch":"c","data":{data},"id":"p1"}}"#);
            let error = parse_client_op(&text).unwrap_err();
            assert_eq!(
                (error.code, error.id),
                (ErrorCode::BadJson, Some(request_id("\"p1\""))),
                "{data}"
            );
            let frame = encode_msg("r", 1, PayloadKind::Text, data.as_bytes());
            assert_eq!(payload_json(&frame)["text"], json!(data), "{data}");
        }
    }

    #[test]
    fn no_encoding_of_a_message_is_over_its_bound() {
        let ch = "c".repeat(channel::MAX_CHANNEL_LEN);
        let n = 70_000;
        let worst_text = "\u{1}".repeat(n);
        let cases = [
            (PayloadKind::Text, worst_text.as_bytes().to_vec()),
            (PayloadKind::Text, "\"".repeat(n).into_bytes()),
            (PayloadKind::Binary, vec![0xff; n]),
            (PayloadKind::Json, vec![b'1'; n]),
        ];
        for (kind, payload) in cases {
            let frame = encode_msg(&ch, u64::MAX, kind, &payload);
            assert!(
                frame.len() <= max_msg_frame_len(n),
                "{kind:?}: {}",
                frame.len()
            );
            assert!(encode_raw(kind, &payload).len() <= max_msg_frame_len(n));
        }
        let frame = encode_msg(&ch, u64::MAX, PayloadKind::Text, worst_text.as_bytes());
        assert!(
            frame.len() + 10 > max_msg_frame_len(n),
            "the bound is tight"
        );
    }

    #[test]
    fn large_envelopes_use_extended_length() {
        let data = format!("\"{}\"", "x".repeat(1000));
        let frame = encode_msg("r", 1, PayloadKind::Json, data.as_bytes());
        assert_eq!(payload_json(&frame)["data"].as_str().unwrap().len(), 1000);
    }

    #[test]
    fn sub_acks_carry_position_and_recovery() {
        let ack = payload_json(&encode_sub_ack(
            request_id("7"),
            41,
            "ab-1",
            Some(true),
            false,
        ));
        assert_eq!(
            ack,
            json!({"op":"ack","id":7,"seq":41,"epoch":"ab-1","recovered":true})
        );
        let plain = payload_json(&encode_sub_ack(request_id("\"s\""), 0, "ab-2", None, false));
        assert_eq!(plain, json!({"op":"ack","id":"s","seq":0,"epoch":"ab-2"}));
        let conflating = payload_json(&encode_sub_ack(request_id("1"), 3, "ab-3", None, true));
        assert_eq!(
            conflating,
            json!({"op":"ack","id":1,"seq":3,"epoch":"ab-3","conflate":true})
        );
    }

    #[test]
    fn acks_errors_and_pongs() {
        assert_eq!(
            payload_json(&encode_ack(request_id("3"), Some(9))),
            json!({"op":"ack","id":3,"seq":9})
        );
        assert_eq!(
            payload_json(&encode_ack(request_id("\"a\""), None)),
            json!({"op":"ack","id":"a"})
        );
        let err = OpError::new(
            ErrorCode::NotSubscribed,
            "not \"subscribed\"",
            Some(request_id("5")),
        );
        assert_eq!(
            payload_json(&encode_err(&err)),
            json!({"op":"err","id":5,"code":"not_subscribed","msg":"not \"subscribed\""})
        );
        assert_eq!(payload_json(&encode_pong(None)), json!({"op":"pong"}));
        assert_eq!(
            payload_json(&encode_pong(Some(request_id("1")))),
            json!({"op":"pong","id":1})
        );
    }

    #[test]
    fn a_delta_frame_is_used_only_when_smaller_than_the_whole_one() {
        let data = br#"{"bids":[[1,2],[3,4]],"n":1}"#;
        // What the delta frame adds: 15 bytes, and each quote's escape.
        assert!(delta_frame_is_smaller(b"abc", data.len()));
        assert!(!delta_frame_is_smaller(
            &data[..data.len() - 10],
            data.len()
        ));
        assert!(!delta_frame_is_smaller(&[b'"'; 10], 25));
        assert!(delta_frame_is_smaller(&[b'a'; 10], 26));
        let whole = encode_msg("c", 2, PayloadKind::Json, data);
        let delta = b"t\n2:ab1;";
        assert!(delta_frame_is_smaller(delta, data.len()));
        assert!(encode_msg_delta("c", 2, delta).len() < whole.len());
        let too_long = b"t\n2:ab3@0,1;";
        assert!(!delta_frame_is_smaller(too_long, data.len()));
        assert!(encode_msg_delta("c", 2, too_long).len() >= whole.len());
    }

    #[test]
    fn publications_may_carry_a_conflation_key() {
        match parse_client_op(r#"{"op":"pub","ch":"prices","key":"AAPL","data":1}"#) {
            Ok(ClientOp::Pub { key, .. }) => assert_eq!(key.as_deref(), Some("AAPL")),
            other => panic!("{other:?}"),
        }
        let long = format!(
            r#"{{"op":"pub","ch":"p","key":"{}","data":1}}"#,
            "k".repeat(129)
        );
        assert_eq!(parse_client_op(&long).unwrap_err().code, ErrorCode::BadJson);
        let empty = r#"{"op":"pub","ch":"p","key":"","data":1}"#;
        assert_eq!(parse_client_op(empty).unwrap_err().code, ErrorCode::BadJson);
        let frame = encode_msg_conflated("prices", 9, PayloadKind::Json, b"{\"px\":1}", 3);
        let text = std::str::from_utf8(crate::frame::payload_of(&frame)).unwrap();
        assert_eq!(
            text,
            r#"{"op":"msg","ch":"prices","seq":9,"conflated":3,"data":{"px":1}}"#
        );
    }

    #[test]
    fn a_pub_may_carry_an_idempotency_key_of_1_to_128_bytes() {
        // Issue 24, finding 16: WebSocket publishers had no key, so the
        // retry advised after `unavailable` published twice.
        let op = r#"{"op":"pub","ch":"orders","data":1,"id":3,"idempotency_key":"order-7"}"#;
        match parse_client_op(op) {
            Ok(ClientOp::Pub {
                idempotency_key, ..
            }) => assert_eq!(idempotency_key.as_deref(), Some("order-7")),
            other => panic!("{other:?}"),
        }
        let longest = format!(
            r#"{{"op":"pub","ch":"p","data":1,"idempotency_key":"{}"}}"#,
            "k".repeat(MAX_IDEMPOTENCY_KEY_LEN)
        );
        assert!(parse_client_op(&longest).is_ok());
        for key in [String::new(), "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1)] {
            let op =
                format!(r#"{{"op":"pub","ch":"p","data":1,"id":9,"idempotency_key":"{key}"}}"#);
            let refused = parse_client_op(&op).unwrap_err();
            assert_eq!(
                (refused.code, refused.id),
                (ErrorCode::BadJson, Some(request_id("9")))
            );
        }
    }

    #[test]
    fn an_unknown_outcome_has_a_code_of_its_own() {
        assert_eq!(ErrorCode::OutcomeUnknown.as_str(), "outcome_unknown");
        assert_eq!(ErrorCode::OutcomeUnknown.http_status(), 504);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
    }

    /// The `id` of `text`'s refusal, as its JSON text.
    fn refused_id(text: &str) -> (ErrorCode, Option<String>) {
        let error = parse_client_op(text).unwrap_err();
        (error.code, error.id.map(|id| id.as_json().to_owned()))
    }

    #[test]
    fn a_numeric_id_is_answered_as_a_number_and_a_string_id_as_a_string() {
        for (text, id) in [
            (r#"{"op":"ping","id":7}"#, json!(7)),
            (r#"{"op":"ping","id":"7"}"#, json!("7")),
            (r#"{"op":"ping","id":-3}"#, json!(-3)),
        ] {
            let Ok(ClientOp::Ping { id: Some(got) }) = parse_client_op(text) else {
                panic!("{text}")
            };
            assert_eq!(payload_json(&encode_pong(Some(got)))["id"], id, "{text}");
        }
    }

    #[test]
    fn a_null_id_is_refused_without_an_id() {
        assert_eq!(
            refused_id(r#"{"op":"ping","id":null}"#),
            (ErrorCode::BadJson, None)
        );
    }

    #[test]
    fn an_op_that_is_not_a_string_is_refused_with_the_id() {
        assert_eq!(
            refused_id(r#"{"op":1,"ch":"n","id":3}"#),
            (ErrorCode::BadJson, Some("3".to_owned()))
        );
    }

    #[test]
    fn a_pub_without_a_channel_is_refused_with_the_id() {
        assert_eq!(
            refused_id(r#"{"op":"pub","data":1,"id":"q"}"#),
            (ErrorCode::BadChannel, Some("\"q\"".to_owned()))
        );
    }

    #[test]
    fn an_epoch_longer_than_64_bytes_is_refused_with_the_id() {
        let sub =
            |epoch: &str| format!(r#"{{"op":"sub","ch":"n","id":4,"since":1,"epoch":"{epoch}"}}"#);
        assert!(parse_client_op(&sub(&"e".repeat(MAX_EPOCH_LEN))).is_ok());
        assert_eq!(
            refused_id(&sub(&"e".repeat(MAX_EPOCH_LEN + 1))),
            (ErrorCode::BadJson, Some("4".to_owned()))
        );
    }

    #[test]
    fn a_delta_other_than_fossil_is_refused_with_the_id() {
        assert!(matches!(
            parse_client_op(r#"{"op":"sub","ch":"n","delta":"fossil"}"#),
            Ok(ClientOp::Sub { delta: true, .. })
        ));
        for delta in ["xdelta", "Fossil", ""] {
            let text = format!(r#"{{"op":"sub","ch":"n","id":2,"delta":"{delta}"}}"#);
            assert_eq!(
                refused_id(&text),
                (ErrorCode::BadJson, Some("2".to_owned())),
                "{delta:?}"
            );
        }
    }

    #[test]
    fn presence_limits_of_1_and_the_largest_page_are_accepted() {
        for limit in [1, MAX_PRESENCE_PAGE] {
            let text = format!(r#"{{"op":"presence","ch":"r","limit":{limit}}}"#);
            assert!(
                matches!(parse_client_op(&text), Ok(ClientOp::Presence { limit: l, .. }) if l == limit),
                "{limit}"
            );
        }
    }

    #[test]
    fn a_delta_frame_writes_each_byte_as_the_code_point_of_its_value() {
        let delta: Vec<u8> = (0..=255).collect();
        let frame = encode_msg_delta("c.1", 8, &delta);
        let msg = payload_json(&frame);
        assert_eq!(
            (&msg["op"], &msg["ch"], &msg["seq"], &msg["delta"]),
            (&json!("msg"), &json!("c.1"), &json!(8), &json!(true))
        );
        let chars: Vec<u32> = msg["data"]
            .as_str()
            .unwrap()
            .chars()
            .map(u32::from)
            .collect();
        assert_eq!(chars, (0..=255).collect::<Vec<u32>>());
    }

    #[test]
    fn a_reconnect_says_after_how_long() {
        assert_eq!(
            payload_json(&encode_reconnect(1234)),
            json!({"op":"reconnect","after_ms":1234})
        );
    }

    #[test]
    fn an_unsubscribed_frame_names_the_channel_and_escapes_the_reason() {
        assert_eq!(
            payload_json(&encode_unsubscribed("room.1", "kicked \"out\"\n")),
            json!({"op":"unsubscribed","ch":"room.1","reason":"kicked \"out\"\n"})
        );
    }

    #[test]
    fn every_error_code_has_a_name_of_its_own_and_an_http_error_status() {
        let all = [
            ErrorCode::BadJson,
            ErrorCode::UnknownOp,
            ErrorCode::BadChannel,
            ErrorCode::TooLarge,
            ErrorCode::NotSubscribed,
            ErrorCode::TooManySubscriptions,
            ErrorCode::ShuttingDown,
            ErrorCode::Forbidden,
            ErrorCode::Unauthorized,
            ErrorCode::RateLimited,
            ErrorCode::OverCapacity,
            ErrorCode::NoPresence,
            ErrorCode::Unavailable,
            ErrorCode::OutcomeUnknown,
        ];
        let names: std::collections::HashSet<&str> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), all.len());
        for code in all {
            let name = code.as_str();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!((400..600).contains(&code.http_status()), "{name}");
        }
    }
}
