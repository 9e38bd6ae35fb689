//! The server API's requests and answers (`docs/api.md`): the bodies of
//! `POST /api/publish` (one channel, several channels, or a batch, with an
//! idempotency key), `POST /api/disconnect` and `POST /api/unsubscribe`;
//! the queries of `GET /api/history/<ch>` and `GET /api/channels`; and the
//! JSON each is answered with. Pure functions over text; the shard routes
//! the requests (`shard/api.rs`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    channel::Access,
    conn::http::{check_channel, HttpError},
    engine::Refused,
    frame,
    protocol::{self, ErrorCode, OpError},
    security::pattern::ChannelPattern,
};

/// Publications one `POST /api/publish` may carry.
pub(crate) const MAX_PUBLICATIONS: usize = 1_000;

pub(crate) use crate::conn::api_query::{ChannelsQuery, HistoryQuery};

/// Bytes of publications (their `msg` envelopes, as JSON) one history page
/// holds at most, whatever its `limit`: the page ends before the
/// publication that would go over, with `more` (but always lists one,
/// however large: at most six times `--max-message-bytes` once escaped).
pub(crate) const HISTORY_PAGE_BYTES: usize = 1 << 20;

/// The close code `POST /api/disconnect` sends unless told another.
pub(crate) const DISCONNECT_CODE: u16 = 4000;

/// Longest close reason: a close frame's payload is at most 125 bytes,
/// two of them the code.
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// One publication of a `POST /api/publish`.
#[derive(Debug, PartialEq)]
pub(crate) struct ApiPublication<'a> {
    pub ch: Cow<'a, str>,
    pub data: &'a str,
    /// Its conflation key (`"key"`).
    pub key: Option<Cow<'a, str>>,
    /// What the owner remembers it under (see [`remembered_key`]): the
    /// request's `idempotency_key`, tagged with the request's form and the
    /// publication's place in a `messages` batch.
    pub idempotency_key: Option<String>,
}

/// A `POST /api/publish` body.
#[derive(Debug, PartialEq)]
pub(crate) struct PublishRequest<'a> {
    pub publications: Vec<ApiPublication<'a>>,
    /// `{"ch":..}`: answered `{"seq":N}`; else `{"seqs":[..]}`.
    pub single: bool,
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow, default)]
    ch: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channels: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    messages: Option<Vec<MessageBody<'a>>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageBody<'a> {
    #[serde(borrow, default)]
    ch: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::new(400, ErrorCode::BadJson.as_str(), msg)
}

fn refused(error: OpError<'_>) -> HttpError {
    HttpError::new(
        error.code.http_status(),
        error.code.as_str(),
        error.msg.into_owned(),
    )
}

/// One publication's channel, data and key, checked as a `pub` op's are;
/// its data at most `max_data` bytes (413 above).
fn publication<'a>(
    ch: Option<Cow<'a, str>>,
    data: Option<&'a RawValue>,
    key: Option<Cow<'a, str>>,
    max_data: usize,
) -> Result<ApiPublication<'a>, HttpError> {
    let ch = ch.ok_or_else(|| HttpError::new(400, ErrorCode::BadChannel.as_str(), "missing ch"))?;
    check_channel(&ch, Access::Publish)?;
    let data = protocol::read_data(data, None).map_err(refused)?;
    if data.len() > max_data {
        return Err(HttpError::new(
            413,
            ErrorCode::TooLarge.as_str(),
            format!("data of {ch:?} is over max-message-bytes ({max_data})"),
        ));
    }
    Ok(ApiPublication {
        ch,
        data,
        key: protocol::read_key(key, None).map_err(refused)?,
        idempotency_key: None,
    })
}

/// The forms of a publication under an idempotency key: the three of a
/// `POST /api/publish` body, and a WebSocket `pub`, which is a single
/// publish (`One`): one publication on one channel answered with its `seq`,
/// the same request over either transport, so a publisher may retry over
/// HTTP what it sent on a WebSocket that died (`docs/api.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `{"ch":..}`, and a WebSocket `pub`.
    One,
    /// `{"channels":[..]}`
    Channels,
    /// `{"messages":[..]}`
    Batch,
}

/// What publication `index` of a request of `form` under `idempotency_key`
/// is remembered under: a tag of the form (`1`, `n`, or `b` and the
/// publication's place in the batch), a colon, then the key as given. The
/// tag has no colon, so two requests' keys meet only when their forms,
/// places and keys all do: a batch under `order` never finds the
/// publication a single publish made under `order#0` or `b0:order`.
pub(crate) fn remembered_key(form: Form, idempotency_key: &str, index: usize) -> String {
    match form {
        Form::One => format!("1:{idempotency_key}"),
        Form::Channels => format!("n:{idempotency_key}"),
        Form::Batch => format!("b{index}:{idempotency_key}"),
    }
}

/// Parses a `POST /api/publish` body: exactly one of `{"ch":..,"data":..}`,
/// `{"channels":[..],"data":..}` and `{"messages":[{"ch":..,"data":..},..]}`,
/// with an optional `idempotency_key` (1 to 128 bytes).
pub(crate) fn parse_publish(body: &str, max_data: usize) -> Result<PublishRequest<'_>, HttpError> {
    let shape = "expected {\"ch\":..,\"data\":..}, {\"channels\":[..],\"data\":..} \
                 or {\"messages\":[..]}";
    if !body.trim_start().starts_with('{') {
        return Err(bad(shape));
    }
    let body: PublishBody<'_> =
        serde_json::from_str(body).map_err(|e| bad(format!("{shape}: {e}")))?;
    let once = protocol::read_idempotency_key(body.idempotency_key, None).map_err(refused)?;
    let batch = body.messages.is_some();
    let (mut publications, single) = match (body.ch, body.channels, body.messages) {
        (Some(ch), None, None) => (
            vec![publication(Some(ch), body.data, body.key, max_data)?],
            true,
        ),
        (None, Some(channels), None) => {
            if channels.is_empty() {
                return Err(bad("channels is empty"));
            }
            if channels.len() > MAX_PUBLICATIONS {
                return Err(bad(format!("at most {MAX_PUBLICATIONS} channels")));
            }
            let mut publications = Vec::with_capacity(channels.len());
            for ch in channels {
                if publications.iter().any(|p: &ApiPublication<'_>| p.ch == ch) {
                    return Err(bad(format!("channel {ch:?} is listed twice")));
                }
                publications.push(publication(
                    Some(ch),
                    body.data,
                    body.key.clone(),
                    max_data,
                )?);
            }
            (publications, false)
        }
        (None, None, Some(messages)) => {
            if body.data.is_some() || body.key.is_some() {
                return Err(bad("data and key go inside each of messages"));
            }
            if messages.is_empty() {
                return Err(bad("messages is empty"));
            }
            if messages.len() > MAX_PUBLICATIONS {
                return Err(bad(format!("at most {MAX_PUBLICATIONS} messages")));
            }
            let publications = messages
                .into_iter()
                .map(|m| publication(m.ch, m.data, m.key, max_data))
                .collect::<Result<Vec<_>, _>>()?;
            (publications, false)
        }
        _ => {
            return Err(bad(format!(
                "{shape}: exactly one of ch, channels, messages"
            )))
        }
    };
    if let Some(once) = once {
        let form = match (single, batch) {
            (true, _) => Form::One,
            (false, false) => Form::Channels,
            (false, true) => Form::Batch,
        };
        for (i, publication) in publications.iter_mut().enumerate() {
            publication.idempotency_key = Some(remembered_key(form, &once, i));
        }
    }
    Ok(PublishRequest {
        publications,
        single,
    })
}

/// The answer to a publish: 200 `{"seq":N}` (one channel) or
/// `{"seqs":[..]}`; else the status and code of the refusal that matters
/// most to a retry, with the `seqs` of the publications that were made
/// (`null` for the others), so a retry under the same idempotency key
/// publishes only what is missing: 504 `outcome_unknown` if any may have
/// been applied (a retry without the key could publish it twice), else
/// 503 `over_capacity` (the owner's idempotency store is full), else 503
/// `unavailable` (the cluster engine; nothing refused was applied).
pub(crate) fn publish_answer(single: bool, seqs: &[Result<u64, Refused>]) -> (u16, Vec<u8>) {
    let why = seqs
        .iter()
        .filter_map(|s| s.err())
        .max_by_key(|why| match why {
            Refused::Unavailable => 0,
            Refused::IdempotencyFull => 1,
            Refused::OutcomeUnknown => 2,
        });
    let mut body = Vec::with_capacity(16 + 8 * seqs.len());
    match (single, why) {
        (true, None) => {
            body.extend_from_slice(b"{\"seq\":");
            push_seq(&mut body, seqs[0].ok());
            body.push(b'}');
            return (200, body);
        }
        (false, None) => body.push(b'{'),
        (_, Some(why)) => {
            body.extend_from_slice(b"{\"error\":\"");
            body.extend_from_slice(why.code().as_str().as_bytes());
            body.extend_from_slice(b"\",\"msg\":");
            let msg = match single {
                true => why.to_string(),
                false => format!("some publications were not acknowledged (null in seqs): {why}"),
            };
            push_string(&mut body, &msg);
            if !single {
                body.push(b',');
            }
        }
    }
    if !single {
        body.extend_from_slice(b"\"seqs\":[");
        for (i, seq) in seqs.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            push_seq(&mut body, seq.ok());
        }
        body.push(b']');
    }
    body.push(b'}');
    (why.map_or(200, |why| why.code().http_status()), body)
}

fn push_seq(out: &mut Vec<u8>, seq: Option<u64>) {
    match seq {
        Some(seq) => out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// Whose connections a disconnect or unsubscribe is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// Every connection whose token's `sub` is this.
    User(Box<str>),
    /// The one connection with this id (as presence lists show it).
    Conn(Box<str>),
}

/// What `POST /api/disconnect` and `POST /api/unsubscribe` ask for (as
/// JSON too: how other nodes are told, see `shard/api.rs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Kick {
    /// Close the connections with `code` and `reason`.
    Disconnect {
        target: Target,
        code: u16,
        reason: Box<str>,
    },
    /// End their subscriptions to `ch` (a raw-room member is closed).
    Unsubscribe { target: Target, ch: Box<str> },
}

impl Kick {
    pub(crate) fn target(&self) -> &Target {
        match self {
            Kick::Disconnect { target, .. } | Kick::Unsubscribe { target, .. } => target,
        }
    }
}

#[derive(Deserialize)]
struct KickBody<'a> {
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    conn: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ch: Option<Cow<'a, str>>,
}

fn kick_body(body: &str) -> Result<(Target, KickBody<'_>), HttpError> {
    let mut parsed: KickBody<'_> = match body.trim_start().starts_with('{') {
        true => serde_json::from_str(body).map_err(|e| bad(format!("expected an object: {e}")))?,
        false => return Err(bad("expected {\"user\":..} or {\"conn\":..}")),
    };
    let target = match (parsed.user.take(), parsed.conn.take()) {
        (Some(user), None) if !user.is_empty() => Target::User(user.into()),
        (None, Some(conn)) if !conn.is_empty() => Target::Conn(conn.into()),
        _ => return Err(bad("name exactly one of user and conn (not empty)")),
    };
    Ok((target, parsed))
}

/// `POST /api/disconnect`: `{"user":..}` or `{"conn":..}`, with an
/// optional close `code` (3000 to 4999; default 4000) and `reason` (at
/// most 123 bytes; default "disconnected").
pub(crate) fn parse_disconnect(body: &str) -> Result<Kick, HttpError> {
    let (target, body) = kick_body(body)?;
    let code = body.code.unwrap_or(DISCONNECT_CODE);
    if !(3000..=4999).contains(&code) {
        return Err(bad(
            "code must be 3000 to 4999 (the codes for applications)",
        ));
    }
    let reason = body.reason.unwrap_or(Cow::Borrowed("disconnected"));
    if reason.len() > MAX_CLOSE_REASON {
        return Err(bad(format!(
            "reason must be at most {MAX_CLOSE_REASON} bytes"
        )));
    }
    Ok(Kick::Disconnect {
        target,
        code,
        reason: reason.into(),
    })
}

/// `POST /api/unsubscribe`: `{"user":..,"ch":..}` or `{"conn":..,"ch":..}`.
pub(crate) fn parse_unsubscribe(body: &str) -> Result<Kick, HttpError> {
    let (target, body) = kick_body(body)?;
    let ch = body
        .ch
        .ok_or_else(|| HttpError::new(400, ErrorCode::BadChannel.as_str(), "missing ch"))?;
    check_channel(&ch, Access::Subscribe)?;
    Ok(Kick::Unsubscribe {
        target,
        ch: ch.into(),
    })
}

/// A server API request, made on one shard and served by others
/// (`shard/api.rs`).
#[derive(Debug, Clone)]
pub(crate) enum ApiRequest {
    /// To a channel's owner: a page of its history.
    History(HistoryQuery),
    /// To every shard: its part of the channel list.
    Channels {
        pattern: Option<ChannelPattern>,
        after: Option<String>,
        limit: usize,
    },
    /// To every shard: disconnect or unsubscribe connections.
    Kick(Kick),
    /// To a channel's owner: answered at once. The lane between two shards
    /// keeps its order, so the answer says the owner has taken in every
    /// message sent to it before (a new connection's subscriptions).
    Sync,
}

/// A shard's answer to an [`ApiRequest`].
#[derive(Debug)]
pub enum ApiAnswer {
    History(Result<HistoryPage, Refused>),
    Channels(Vec<ChannelRow>),
    /// How many connections were disconnected or unsubscribed.
    Kicked(usize),
    Synced,
}

pub(crate) use shardcast_core::owner::HistoryPage;

/// The answer to a history query: `{"ch":..,"epoch":..,"seq":N,
/// "complete":bool,"more":bool,"publications":[<msg envelopes>]}`. Each
/// publication is the `msg` envelope a subscriber gets; they take at most
/// [`HISTORY_PAGE_BYTES`] (but one is always listed). `more`: the page
/// ends before the channel's last publication (by `limit`, or by bytes):
/// ask again `since` the last listed. `complete`: every publication after
/// `since` (up to the last listed, or to `seq`) is there, in the epoch
/// asked for.
pub(crate) fn history_json(query: &HistoryQuery, page: &HistoryPage) -> Vec<u8> {
    let mut publications = Vec::new();
    let mut last_listed = None;
    // Whether the listed seqs so far follow `since` one by one.
    let mut unbroken = true;
    let mut cut = false;
    for (seq, payload) in page.entries.iter().filter(|(seq, _)| *seq > query.since) {
        let frame = protocol::encode_msg(&query.ch, *seq, payload.kind, &payload.bytes);
        let envelope = frame::payload_of(&frame);
        if last_listed.is_some() {
            if publications.len() + 1 + envelope.len() > HISTORY_PAGE_BYTES {
                cut = true;
                break;
            }
            publications.push(b',');
        }
        publications.extend_from_slice(envelope);
        unbroken &= *seq == last_listed.unwrap_or(query.since) + 1;
        last_listed = Some(*seq);
    }
    let more = cut || page.more();
    let through = match (more, last_listed) {
        (true, Some(last)) => last,
        _ => page.seq,
    };
    let complete = unbroken
        && last_listed.unwrap_or(query.since) == through
        && query.since <= page.seq
        && query.epoch.as_deref().is_none_or(|e| e == page.epoch);
    let mut out = Vec::with_capacity(128 + query.ch.len() + publications.len());
    out.extend_from_slice(b"{\"ch\":");
    push_string(&mut out, &query.ch);
    out.extend_from_slice(b",\"epoch\":");
    push_string(&mut out, &page.epoch);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(page.seq).as_bytes());
    out.extend_from_slice(if complete {
        b",\"complete\":true"
    } else {
        b",\"complete\":false"
    });
    out.extend_from_slice(if more {
        b",\"more\":true"
    } else {
        b",\"more\":false"
    });
    out.extend_from_slice(b",\"publications\":[");
    out.extend_from_slice(&publications);
    out.extend_from_slice(b"]}");
    out
}

fn push_string(out: &mut Vec<u8>, text: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// One shard's part of a channel's row: its subscribers there and, from
/// the channel's owner, its last `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    pub ch: Box<str>,
    pub subscribers: u64,
    pub seq: Option<u64>,
}

/// The first `limit` distinct names of `names` (any order, repeats
/// allowed) that `wanted` takes, sorted. One pass that holds at most
/// `limit` names: a name that sorts after all of a full selection is
/// passed over with one comparison, before `wanted` is asked; so a page is
/// O(n log limit) of the shard's channels, not a sort of all of them.
pub fn first_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    limit: usize,
    mut wanted: impl FnMut(&str) -> bool,
) -> Vec<&'a str> {
    let mut kept: std::collections::BTreeSet<&'a str> = std::collections::BTreeSet::new();
    for name in names {
        let full = kept.len() >= limit;
        if full && kept.last().is_none_or(|last| name >= *last) {
            continue;
        }
        if kept.contains(name) || !wanted(name) {
            continue;
        }
        kept.insert(name);
        if kept.len() > limit {
            kept.pop_last();
        }
    }
    kept.into_iter().collect()
}

/// Merges the shards' rows (each sorted by name, at most `limit` long)
/// into the page's rows, sorted, at most `limit`; and the cursor of the
/// next page if there may be one. A channel among the first `limit` names
/// of all the shards is among the first `limit` of each shard that knows
/// it, so its row is whole.
pub(crate) fn merge_channel_rows(
    parts: Vec<Vec<ChannelRow>>,
    limit: usize,
) -> (Vec<ChannelRow>, Option<String>) {
    let full = parts.iter().any(|p| p.len() >= limit);
    let mut all: Vec<ChannelRow> = parts.into_iter().flatten().collect();
    all.sort_by(|a, b| a.ch.cmp(&b.ch));
    let mut rows: Vec<ChannelRow> = Vec::new();
    for row in all {
        match rows.last_mut() {
            Some(last) if last.ch == row.ch => {
                last.subscribers += row.subscribers;
                last.seq = last.seq.or(row.seq);
            }
            _ => rows.push(row),
        }
    }
    let more = rows.len() > limit || full;
    rows.truncate(limit);
    let cursor = more
        .then(|| rows.last().map(|r| r.ch.to_string()))
        .flatten();
    (rows, cursor)
}

/// `{"channels":[{"ch":..,"subscribers":N,"seq":N},..],"cursor":..}`
/// (`cursor` only when there may be more).
pub(crate) fn channels_json(rows: &[ChannelRow], cursor: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + rows.len() * 64);
    out.extend_from_slice(b"{\"channels\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"ch\":");
        push_string(&mut out, &row.ch);
        out.extend_from_slice(b",\"subscribers\":");
        out.extend_from_slice(itoa::Buffer::new().format(row.subscribers).as_bytes());
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(row.seq.unwrap_or(0)).as_bytes());
        out.push(b'}');
    }
    out.push(b']');
    if let Some(cursor) = cursor {
        out.extend_from_slice(b",\"cursor\":");
        push_string(&mut out, cursor);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        conn::api_query::{parse_channels, parse_history},
        protocol::PayloadKind,
        publication::Payload,
    };

    const MAX: usize = 64 << 10;

    fn code(body: &str) -> (u16, &'static str) {
        let e = parse_publish(body, MAX).unwrap_err();
        (e.status, e.code)
    }

    #[test]
    fn one_channel() {
        let p = parse_publish(r#"{"ch":"news","data":"hi","key":"K"}"#, MAX).unwrap();
        assert!(p.single);
        assert_eq!(p.publications.len(), 1);
        let one = &p.publications[0];
        assert_eq!((one.ch.as_ref(), one.data), ("news", "\"hi\""));
        assert_eq!(
            (one.key.as_deref(), one.idempotency_key.as_deref()),
            (Some("K"), None)
        );
        assert_eq!(code(r#"{"ch":"news"}"#), (400, "bad_json"));
        assert_eq!(code(r#"{"ch":"","data":1}"#), (400, "bad_channel"));
        assert_eq!(code(r#"["news","hi"]"#), (400, "bad_json"));
        let deep = format!(
            r#"{{"ch":"c","data":{}}}"#,
            "[".repeat(65) + &"]".repeat(65)
        );
        assert_eq!(code(&deep), (400, "bad_json"));
        assert_eq!(code(r#"{"ch":"c","data":1,"key":""}"#), (400, "bad_json"));
    }

    #[test]
    fn several_channels_and_batches() {
        let p = parse_publish(
            r#"{"channels":["a","b"],"data":{"x":1},"idempotency_key":"r1"}"#,
            MAX,
        )
        .unwrap();
        assert!(!p.single);
        let names: Vec<_> = p.publications.iter().map(|p| p.ch.as_ref()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(p.publications.iter().all(|p| p.data == r#"{"x":1}"#));
        assert!(p
            .publications
            .iter()
            .all(|p| p.idempotency_key.as_deref() == Some("n:r1")));
        assert_eq!(
            code(r#"{"channels":["a","a"],"data":1}"#),
            (400, "bad_json")
        );
        assert_eq!(code(r#"{"channels":[],"data":1}"#), (400, "bad_json"));
        let b = parse_publish(
            r#"{"messages":[{"ch":"a","data":1},{"ch":"a","data":2,"key":"k"}],"idempotency_key":"r2"}"#,
            MAX,
        )
        .unwrap();
        let keys: Vec<_> = b
            .publications
            .iter()
            .map(|p| p.idempotency_key.as_deref().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["b0:r2", "b1:r2"],
            "two messages to one channel differ"
        );
        assert_eq!(b.publications[1].key.as_deref(), Some("k"));
        assert_eq!(code(r#"{"messages":[{"ch":"a"}]}"#), (400, "bad_json"));
        assert_eq!(code(r#"{"messages":[],"data":1}"#), (400, "bad_json"));
        assert_eq!(
            code(r#"{"ch":"a","channels":["b"],"data":1}"#),
            (400, "bad_json")
        );
        let many = format!(
            r#"{{"channels":[{}],"data":1}}"#,
            (0..=MAX_PUBLICATIONS)
                .map(|i| format!("\"c{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(code(&many), (400, "bad_json"));
        let long_key = format!(
            r#"{{"ch":"a","data":1,"idempotency_key":"{}"}}"#,
            "k".repeat(129)
        );
        assert_eq!(code(&long_key), (400, "bad_json"));
        let big = format!(r#"{{"ch":"a","data":"{}"}}"#, "x".repeat(100));
        assert_eq!(parse_publish(&big, 50).unwrap_err().status, 413);
    }

    /// The keys each request remembers its publications under.
    fn remembered(body: &str) -> Vec<String> {
        let request = parse_publish(body, MAX).unwrap();
        let keys = request.publications.into_iter();
        keys.map(|p| p.idempotency_key.unwrap()).collect()
    }

    #[test]
    fn idempotency_keys_of_different_forms_never_meet() {
        let one = |key: &str| {
            remembered(&format!(
                r#"{{"ch":"a","data":1,"idempotency_key":"{key}"}}"#
            ))
        };
        let channels = |key: &str| {
            remembered(&format!(
                r#"{{"channels":["a"],"data":1,"idempotency_key":"{key}"}}"#
            ))
        };
        let batch = |key: &str| {
            remembered(&format!(
                r#"{{"messages":[{{"ch":"a","data":1}},{{"ch":"a","data":2}}],"idempotency_key":"{key}"}}"#
            ))
        };
        // Issue 24, finding 14: `order#0` alone was what a batch under
        // `order` remembered its first message under.
        let mut seen = std::collections::HashSet::new();
        for keys in [
            one("order#0"),
            one("order"),
            one("b0:order"),
            one("n:order"),
            channels("order"),
            channels("1:order"),
            batch("order"),
            batch("order#0"),
        ] {
            for key in keys {
                assert!(seen.insert(key.clone()), "{key} remembered twice");
            }
        }
        assert_eq!(
            one("k"),
            remembered(r#"{"ch":"b","data":2,"idempotency_key":"k"}"#)
        );
    }

    #[test]
    fn publish_answers() {
        let down = Err(Refused::Unavailable);
        let full = Err(Refused::IdempotencyFull);
        assert_eq!(
            publish_answer(true, &[Ok(4)]),
            (200, b"{\"seq\":4}".to_vec())
        );
        assert_eq!(
            publish_answer(false, &[Ok(4), Ok(9)]),
            (200, b"{\"seqs\":[4,9]}".to_vec())
        );
        let (status, body) = publish_answer(false, &[Ok(4), down]);
        assert_eq!(status, 503);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "unavailable");
        assert_eq!(json["seqs"], serde_json::json!([4, null]));
        let (status, body) = publish_answer(true, &[down]);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, json["error"].as_str()), (503, Some("unavailable")));
        let (status, body) = publish_answer(false, &[down, Ok(2), full]);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, json["error"].as_str()),
            (503, Some("over_capacity"))
        );
        assert_eq!(json["seqs"], serde_json::json!([null, 2, null]));
        assert!(json["msg"].as_str().unwrap().contains("idempotency keys"));
        let (status, body) = publish_answer(true, &[full]);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, json["error"].as_str()),
            (503, Some("over_capacity"))
        );
    }

    #[test]
    fn a_publication_that_may_have_been_applied_is_answered_504_outcome_unknown() {
        // Issue 24, finding 16: it was 503 `unavailable`, "not accepted".
        let unknown = Err(Refused::OutcomeUnknown);
        let (status, body) = publish_answer(true, &[unknown]);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, json["error"].as_str()),
            (504, Some("outcome_unknown"))
        );
        assert!(json["msg"]
            .as_str()
            .unwrap()
            .contains("may have been applied"));
        let (status, body) = publish_answer(true, &[Err(Refused::Unavailable)]);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json["msg"].as_str().unwrap().contains("not accepted"));
        assert_eq!(status, 503);
        // In a batch, what may have been applied matters most to a retry.
        let (status, body) = publish_answer(
            false,
            &[
                Err(Refused::IdempotencyFull),
                Ok(3),
                unknown,
                Err(Refused::Unavailable),
            ],
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, json["error"].as_str()),
            (504, Some("outcome_unknown"))
        );
        assert_eq!(json["seqs"], serde_json::json!([null, 3, null, null]));
    }

    #[test]
    fn disconnect_and_unsubscribe_bodies() {
        assert_eq!(
            parse_disconnect(r#"{"user":"alice"}"#).unwrap(),
            Kick::Disconnect {
                target: Target::User("alice".into()),
                code: 4000,
                reason: "disconnected".into()
            }
        );
        assert_eq!(
            parse_disconnect(r#"{"conn":"n.0.1.1","code":4100,"reason":"banned"}"#).unwrap(),
            Kick::Disconnect {
                target: Target::Conn("n.0.1.1".into()),
                code: 4100,
                reason: "banned".into()
            }
        );
        for body in [
            r#"{}"#,
            r#"{"user":"a","conn":"b"}"#,
            r#"{"user":""}"#,
            r#"{"user":"a","code":1000}"#,
            r#"{"user":"a","code":5000}"#,
            "[1]",
        ] {
            assert_eq!(parse_disconnect(body).unwrap_err().status, 400, "{body}");
        }
        let long = format!(r#"{{"user":"a","reason":"{}"}}"#, "r".repeat(124));
        assert_eq!(parse_disconnect(&long).unwrap_err().status, 400);
        assert_eq!(
            parse_unsubscribe(r#"{"user":"alice","ch":"room.1"}"#).unwrap(),
            Kick::Unsubscribe {
                target: Target::User("alice".into()),
                ch: "room.1".into()
            }
        );
        assert_eq!(
            parse_unsubscribe(r#"{"user":"alice"}"#).unwrap_err().code,
            "bad_channel"
        );
    }

    fn page(seq: u64, entries: &[u64]) -> HistoryPage {
        HistoryPage {
            seq,
            epoch: "e1".into(),
            entries: entries
                .iter()
                .map(|s| (*s, Payload::json(format!("{{\"n\":{s}}}").as_bytes())))
                .collect(),
        }
    }

    fn history(query: &str, page: &HistoryPage) -> serde_json::Value {
        let q = parse_history("news", query).unwrap();
        serde_json::from_slice(&history_json(&q, page)).unwrap()
    }

    #[test]
    fn history_pages_say_whether_they_are_complete() {
        let all = history("since=2", &page(5, &[3, 4, 5]));
        assert_eq!(all["complete"], true);
        assert_eq!(all["seq"], 5);
        assert_eq!(all["epoch"], "e1");
        assert_eq!(
            all["publications"][0],
            serde_json::json!({"op":"msg","ch":"news","seq":3,"data":{"n":3}})
        );
        let trimmed = history("since=0", &page(5, &[3, 4, 5]));
        assert_eq!(trimmed["complete"], false, "1 and 2 are gone");
        let paged = history("since=2&limit=2", &page(9, &[3, 4]));
        assert_eq!(
            (paged["complete"].as_bool(), paged["more"].as_bool()),
            (Some(true), Some(true))
        );
        let other_epoch = history("since=2&epoch=e0", &page(5, &[3, 4, 5]));
        assert_eq!(other_epoch["complete"], false);
        let ahead = history("since=9", &page(5, &[]));
        assert_eq!(ahead["complete"], false);
        let nothing_new = history("since=5&epoch=e1", &page(5, &[]));
        assert_eq!(nothing_new["complete"], true);
        assert_eq!(parse_history("news", "limit=0").unwrap_err().status, 400);
        assert_eq!(parse_history("news", "since=x").unwrap_err().status, 400);
        assert_eq!(parse_history("", "").unwrap_err().code, "bad_channel");
        let bin = HistoryPage {
            entries: vec![(1, Payload::copy_of(PayloadKind::Binary, &[0, 1]))],
            ..page(1, &[])
        };
        assert_eq!(history("", &bin)["publications"][0]["bin"], "AAE=");
    }

    #[test]
    fn a_history_page_ends_at_its_byte_bound_and_the_next_goes_on() {
        // Issue 24, finding 2: a page held all of up to 1,000 publications,
        // each escaped up to six-fold (here 60 KB of control characters
        // answer as 360 KB).
        let text = "\u{1}".repeat(60_000);
        let mut page = HistoryPage {
            seq: 10,
            epoch: "e1".into(),
            entries: (1..=10)
                .map(|s| (s, Payload::copy_of(PayloadKind::Text, text.as_bytes())))
                .collect(),
        };
        let mut since = 0;
        let mut seen = Vec::new();
        loop {
            let query = parse_history("room", &format!("since={since}&limit=1000")).unwrap();
            page.entries.retain(|(seq, _)| *seq > since);
            let body = history_json(&query, &page);
            assert!(
                body.len() <= HISTORY_PAGE_BYTES + 256,
                "{} bytes",
                body.len()
            );
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["complete"], true, "since={since}");
            let listed = json["publications"].as_array().unwrap();
            assert!(!listed.is_empty());
            for publication in listed {
                assert_eq!(publication["text"].as_str(), Some(text.as_str()));
                seen.push(publication["seq"].as_u64().unwrap());
            }
            if json["more"] == false {
                break;
            }
            assert_eq!(listed.len(), 2, "360 KB each: two fit in 1 MiB");
            since = *seen.last().unwrap();
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "each once, in order");
        // One publication over the bound is listed, alone.
        let huge = "\u{1}".repeat(200_000);
        let page = HistoryPage {
            seq: 2,
            epoch: "e1".into(),
            entries: (1..=2)
                .map(|s| (s, Payload::copy_of(PayloadKind::Text, huge.as_bytes())))
                .collect(),
        };
        let query = parse_history("room", "").unwrap();
        let json: serde_json::Value = serde_json::from_slice(&history_json(&query, &page)).unwrap();
        assert_eq!(json["publications"].as_array().unwrap().len(), 1);
        assert_eq!(
            (json["more"].as_bool(), json["complete"].as_bool()),
            (Some(true), Some(true))
        );
    }

    fn row(ch: &str, subscribers: u64, seq: Option<u64>) -> ChannelRow {
        ChannelRow {
            ch: ch.into(),
            subscribers,
            seq,
        }
    }

    #[test]
    fn the_first_names_are_picked_without_sorting_them_all() {
        let names = ["m", "b", "z", "a", "b", "q", "c", "a", "y"];
        assert_eq!(first_names(names, 3, |_| true), ["a", "b", "c"]);
        assert_eq!(
            first_names(names, 100, |_| true),
            ["a", "b", "c", "m", "q", "y", "z"]
        );
        assert_eq!(first_names(names, 2, |n| n > "b"), ["c", "m"]);
        assert!(first_names(names, 0, |_| true).is_empty());
        // Pages over 2,000 shuffled names, repeated, with a pattern: every
        // wanted name once, in order.
        let all: Vec<String> = (0..2_000)
            .map(|i| format!("ch.{:04}", (i * 7919) % 2_000))
            .collect();
        let twice: Vec<&str> = all.iter().chain(&all).map(String::as_str).collect();
        let wanted = |n: &str| !n.ends_with('3');
        let mut walked: Vec<&str> = Vec::new();
        loop {
            let after = walked.last().copied();
            let page = first_names(
                twice
                    .iter()
                    .copied()
                    .filter(|n| after.is_none_or(|a| *n > a)),
                7,
                wanted,
            );
            if page.is_empty() {
                break;
            }
            walked.extend(page);
        }
        let mut expected: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|n| wanted(n))
            .collect();
        expected.sort_unstable();
        assert_eq!(walked, expected);
    }

    #[test]
    fn channel_rows_merge_over_shards() {
        let (rows, cursor) = merge_channel_rows(
            vec![
                vec![row("a", 2, None), row("c", 1, Some(7))],
                vec![row("a", 1, Some(3)), row("b", 4, Some(1))],
            ],
            10,
        );
        assert_eq!(
            rows,
            [
                row("a", 3, Some(3)),
                row("b", 4, Some(1)),
                row("c", 1, Some(7))
            ]
        );
        assert_eq!(cursor, None);
        let (rows, cursor) = merge_channel_rows(
            vec![
                vec![row("a", 1, Some(1)), row("b", 1, Some(1))],
                vec![row("c", 1, Some(1))],
            ],
            2,
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(cursor.as_deref(), Some("b"));
        let json: serde_json::Value =
            serde_json::from_slice(&channels_json(&rows, cursor.as_deref())).unwrap();
        assert_eq!(
            json["channels"][0],
            serde_json::json!({"ch":"a","subscribers":1,"seq":1})
        );
        assert_eq!(json["cursor"], "b");
        assert!(parse_channels("pattern=news.*&limit=5")
            .unwrap()
            .pattern
            .is_some());
        assert_eq!(parse_channels("limit=1001").unwrap_err().status, 400);
    }
}
