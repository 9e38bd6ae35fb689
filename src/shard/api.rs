//! The shard's side of the server API (`docs/api.md`): a request made on
//! the shard that read it goes to the shards that can answer it — a
//! channel's history to its owner, the channel list and disconnects to
//! every shard — and their answers come back to the request's entry in the
//! shard's pending table (`mesh/pending.rs`).
//! Publishes from HTTP (one, several channels, a batch) are sent all at
//! once and their `seq`s collected in order. The HTTP handlers at the end
//! turn each request into its JSON answer.

use std::{rc::Rc, time::Duration};

use super::Shard;
use crate::{
    api::{self, ApiAnswer, ApiRequest, ChannelRow, ChannelsQuery, HistoryQuery, Kick, Target},
    channel::ChannelName,
    conn::{codec::Protocol, http::HttpError, Conn},
    engine::{
        broker::{Asked, PositionAsk},
        Refused,
    },
    mesh::{Answer, Published, Question, Reply, ReplyId},
    publication::Payload,
    security::pattern::ChannelPattern,
    stats::bump,
};

/// What an HTTP publish asks of one publication.
pub(crate) struct HttpPublication {
    pub ch: ChannelName,
    pub payload: Payload,
    pub idempotency_key: Option<Box<str>>,
}

/// How long an API request waits for the shards it asked.
fn api_wait(shard: &Shard) -> Duration {
    shard.config.timeouts.shutdown.max(Duration::from_secs(1))
}

/// Publishes each of `publications` as an HTTP publish (all sent before
/// any answer is awaited) and returns their `seq`s in order, or why one
/// was refused (`OutcomeUnknown` when its owner did not answer in
/// time: it may have been made).
pub(crate) async fn publish_all_and_wait(
    shard: &Shard,
    publications: Vec<HttpPublication>,
) -> Vec<Result<u64, Refused>> {
    let count = publications.len();
    let waiting = shard.pending.wait::<Published>(count);
    for (index, publication) in publications.into_iter().enumerate() {
        let owner = shard.owner_of(publication.ch.as_bytes());
        shard.links.wait_for_room(owner).await;
        let reply = Reply::Http {
            to: waiting.id(),
            index: index as u32,
            idempotency_key: publication.idempotency_key,
        };
        shard.publish(publication.ch, publication.payload, None, reply);
    }
    // Handed to its owner and not answered in time: it may yet be made.
    let mut seqs = vec![Err(Refused::OutcomeUnknown); count];
    let wait = api_wait(shard);
    waiting
        .collect_within(count, wait, |Published { index, result }| {
            if let Some(seq) = seqs.get_mut(index as usize) {
                *seq = result;
            }
        })
        .await;
    seqs
}

/// The owners of `channels`, other than this shard, each once.
pub(crate) fn other_owners(shard: &Shard, channels: &[&str]) -> Vec<usize> {
    let mut owners: Vec<usize> = channels
        .iter()
        .map(|ch| shard.owner_of(ch.as_bytes()))
        .filter(|&owner| owner != shard.id)
        .collect();
    owners.sort_unstable();
    owners.dedup();
    owners
}

/// Waits until each of `owners` has taken in what this shard sent it
/// so far (see [`ApiRequest::Sync`]), for at most `--handshake-timeout`.
pub(crate) async fn sync_with(shard: &Shard, owners: &[usize]) {
    if owners.is_empty() {
        return;
    }
    let _ = glommio::timer::timeout(shard.config.timeouts.handshake, async {
        Ok(ask_shards(shard, owners, ApiRequest::Sync).await)
    })
    .await;
}

/// Sends `request` to each of `peers` (this shard may be one) and
/// collects the answers that come within the wait.
async fn ask_shards(shard: &Shard, peers: &[usize], request: ApiRequest) -> Vec<ApiAnswer> {
    let waiting = shard.pending.wait::<ApiAnswer>(peers.len());
    for &peer in peers {
        shard.ask(peer, waiting.id(), Question::Api(Box::new(request.clone())));
    }
    let mut answers = Vec::with_capacity(peers.len());
    let wait = api_wait(shard);
    waiting
        .collect_within(peers.len(), wait, |answer| answers.push(answer))
        .await;
    answers
}

/// Serves an API request, answering under `to`.
pub(super) fn serve_api(shard: &Shard, to: ReplyId, request: ApiRequest) {
    let answer = match request {
        ApiRequest::History(query) => {
            let ask = PositionAsk::History {
                ch: query.ch.as_str().into(),
                to,
                limit: query.limit,
            };
            // From the broker if it holds the history (answered in
            // `on_position`), else from the owner's own.
            match shard.broker_for(&query.ch).position(ask, Some(query.since)) {
                Asked::Sent => return,
                Asked::Unavailable(_) => ApiAnswer::History(Err(Refused::Unavailable)),
                Asked::Local(_) => {
                    let now_ms = shard.now_ms();
                    let page = shard.owner.borrow_mut().history(
                        &query.ch,
                        query.since,
                        query.limit,
                        now_ms,
                    );
                    ApiAnswer::History(Ok(page))
                }
            }
        }
        ApiRequest::Channels {
            pattern,
            after,
            limit,
        } => ApiAnswer::Channels(channel_rows(
            shard,
            pattern.as_ref(),
            after.as_deref(),
            limit,
        )),
        ApiRequest::Kick(kick) => ApiAnswer::Kicked(kick_here(shard, &kick)),
        ApiRequest::Sync => ApiAnswer::Synced,
    };
    shard.answer(to, Answer::Api(Box::new(answer)));
}

/// This shard's part of the channel list: the channels it has
/// subscribers of and those it owns that other shards have subscribers
/// of, sorted, after `after`, at most `limit` (picked in one pass, see
/// [`api::first_names`]).
fn channel_rows(
    shard: &Shard,
    pattern: Option<&ChannelPattern>,
    after: Option<&str>,
    limit: usize,
) -> Vec<ChannelRow> {
    let index = shard.index.borrow();
    let owner = shard.owner.borrow();
    let names = index
        .channels()
        .map(|(name, _)| name)
        .chain(owner.remotely_subscribed())
        .filter(|name| after.is_none_or(|a| *name > a));
    let names = api::first_names(names, limit, |name| pattern.is_none_or(|p| p.matches(name)));
    names
        .into_iter()
        .map(|name| ChannelRow {
            ch: name.into(),
            subscribers: index.subscriber_count(name) as u64,
            seq: match shard.owner_of(name.as_bytes()) == shard.id {
                true => Some(owner.seq_of(name).unwrap_or(0)),
                false => None,
            },
        })
        .collect()
}

/// Whether `conn` is one `target` names.
fn is_kicked(shard: &Shard, conn: &Conn, target: &Target) -> bool {
    match target {
        Target::User(user) => match &*conn.permit() {
            crate::conn::permit::Permit::Token(grant) => grant.user == *user,
            _ => false,
        },
        Target::Conn(id) => super::presence::conn_id(shard, conn) == **id,
    }
}

/// Disconnects or unsubscribes this shard's connections that `kick`
/// names; returns how many.
pub(super) fn kick_here(shard: &Shard, kick: &Kick) -> usize {
    let conns: Vec<Rc<Conn>> = shard
        .registry
        .borrow()
        .iter()
        .filter(|c| c.outbox.closing().is_none() && is_kicked(shard, c, kick.target()))
        .cloned()
        .collect();
    let mut kicked = 0;
    for conn in conns {
        match kick {
            Kick::Disconnect { code, reason, .. } => {
                conn.outbox.close_told(*code, reason);
                kicked += 1;
            }
            Kick::Unsubscribe { ch, .. } => {
                if conn.subscription_slot(ch).is_none() {
                    continue;
                }
                if conn.codec.protocol == Protocol::Raw {
                    // A raw-room member is its room's: it leaves it
                    // by being closed.
                    conn.outbox.close_told(api::DISCONNECT_CODE, "unsubscribed");
                } else if shard.unsubscribe(&conn, ch, None).is_ok() {
                    conn.send(conn.codec.unsubscribed(ch, "server"));
                }
                kicked += 1;
            }
        }
    }
    bump(&shard.stats.api_kicks, kicked as u64);
    kicked
}

/// Tells the other nodes of the cluster to act on `kick` too: a
/// control message through the engine, which every shard of every node
/// hears (this node's shards are asked over the mesh instead).
fn kick_elsewhere(shard: &Shard, kick: &Kick) {
    let Ok(json) = serde_json::to_vec(kick) else {
        return;
    };
    let message = crate::engine::tagged(shard.node, &json);
    if !shard.broker.control(&message) {
        tracing::warn!(shard = shard.id, "the cluster engine is down: the other nodes were not told of an API disconnect or unsubscribe");
    }
}

/// A control message from the engine: another node's disconnect or
/// unsubscribe, acted on for this shard's connections.
pub(super) fn on_control_message(shard: &Shard, message: &[u8]) {
    let kick = crate::engine::untag(message)
        .filter(|(origin, _)| *origin != shard.node)
        .and_then(|(_, json)| serde_json::from_slice::<Kick>(json).ok());
    match kick {
        Some(kick) => {
            kick_here(shard, &kick);
        }
        None if crate::engine::untag(message).is_some_and(|(o, _)| o == shard.node) => {}
        None => {
            bump(&shard.stats.engine_unreadable, 1);
            tracing::warn!(
                shard = shard.id,
                "unreadable control message from the cluster engine, dropped"
            );
        }
    }
}

/// `GET /api/history/<ch>`: a page of the channel's history, from its
/// owner (or Redis). Refused while the shard is over its memory budget
/// (checked again once the owner answered: from there to the answer
/// being counted in `http_answer_bytes`, nothing else runs here).
pub(crate) async fn history_answer(
    shard: &Shard,
    query: HistoryQuery,
) -> Result<Vec<u8>, HttpError> {
    within_memory_budget(shard)?;
    let owner = shard.owner_of(query.ch.as_bytes());
    let answers = ask_shards(shard, &[owner], ApiRequest::History(query.clone())).await;
    match answers.into_iter().next() {
        Some(ApiAnswer::History(Ok(page))) => {
            within_memory_budget(shard)?;
            Ok(api::history_json(&query, &page))
        }
        Some(ApiAnswer::History(Err(refused))) => {
            Err(HttpError::new(503, "unavailable", refused.to_string()))
        }
        _ => Err(unanswered()),
    }
}

/// `GET /api/channels`: the channels with subscribers on this node.
pub(crate) async fn channels_answer(
    shard: &Shard,
    query: ChannelsQuery,
) -> Result<Vec<u8>, HttpError> {
    let peers: Vec<usize> = (0..shard.shards).collect();
    let request = ApiRequest::Channels {
        pattern: query.pattern,
        after: query.after,
        limit: query.limit,
    };
    let answers = ask_shards(shard, &peers, request).await;
    if answers.len() < peers.len() {
        return Err(unanswered());
    }
    let parts = answers
        .into_iter()
        .filter_map(|a| match a {
            ApiAnswer::Channels(rows) => Some(rows),
            _ => None,
        })
        .collect();
    let (rows, cursor) = api::merge_channel_rows(parts, query.limit);
    Ok(api::channels_json(&rows, cursor.as_deref()))
}

/// `POST /api/disconnect` and `POST /api/unsubscribe`: every shard of
/// this node acts on its connections; with a cluster engine the other
/// nodes are told too.
pub(crate) async fn kick_answer(shard: &Shard, kick: Kick) -> Result<Vec<u8>, HttpError> {
    let peers: Vec<usize> = (0..shard.shards).collect();
    kick_elsewhere(shard, &kick);
    let answers = ask_shards(shard, &peers, ApiRequest::Kick(kick.clone())).await;
    if answers.len() < peers.len() {
        return Err(unanswered());
    }
    let kicked: usize = answers
        .iter()
        .map(|a| match a {
            ApiAnswer::Kicked(n) => *n,
            _ => 0,
        })
        .sum();
    let field = match kick {
        Kick::Disconnect { .. } => "disconnected",
        Kick::Unsubscribe { .. } => "unsubscribed",
    };
    Ok(format!("{{\"{field}\":{kicked}}}").into_bytes())
}

/// 503 `over_capacity` while the shard is at or over its memory budget.
fn within_memory_budget(shard: &Shard) -> Result<(), HttpError> {
    match shard.refuses_for_memory() {
        false => Ok(()),
        true => Err(HttpError::new(
            503,
            crate::protocol::ErrorCode::OverCapacity.as_str(),
            format!(
                "the server is over its memory budget (max-memory; {} of {} bytes counted \
                 on this shard); try again later",
                shard.memory_use().counted(),
                shard.memory_budget()
            ),
        )),
    }
}

fn unanswered() -> HttpError {
    HttpError::new(503, "unavailable", "a shard of this node did not answer")
}
