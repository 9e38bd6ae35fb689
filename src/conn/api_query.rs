//! The server API's `GET` queries, parsed where the router reads them:
//! `/api/history/<ch>`, `/api/channels` and `/api/presence/<ch>`, each a
//! channel from the path (percent-decoded and checked) and values from the
//! query, with one `limit` rule for all (1 to the page's most, a default
//! when absent). A bad value is a 400 `bad_json` naming it. What the
//! queries are answered with is the API's (`api.rs`, `shard/api.rs`).

use crate::{
    channel::Access,
    conn::http::{check_channel, percent_decode, query_values, HttpError},
    protocol::{self, ErrorCode},
    security::pattern::ChannelPattern,
};

/// Entries one history page holds by default, and at most.
pub(crate) const HISTORY_PAGE: usize = 100;
pub(crate) const MAX_HISTORY_PAGE: usize = 1_000;

/// Channels one `GET /api/channels` page lists by default, and at most.
pub(crate) const CHANNELS_PAGE: usize = 100;
pub(crate) const MAX_CHANNELS_PAGE: usize = 1_000;

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::new(400, ErrorCode::BadJson.as_str(), msg)
}

/// A `limit` query value: 1 to `max`, `default` when absent.
fn limit(query: &str, default: usize, max: usize) -> Result<usize, HttpError> {
    match query_values(query, "limit").next() {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n @ 1..) if n <= max => Ok(n),
            _ => Err(bad(format!("limit must be 1 to {max}"))),
        },
    }
}

/// The channel named in a path, percent-decoded and checked.
fn channel_of(path_part: &str) -> Result<String, HttpError> {
    let ch =
        percent_decode(path_part).ok_or_else(|| bad("channel is not percent-encoded UTF-8"))?;
    check_channel(&ch, Access::Subscribe)?;
    Ok(ch)
}

/// `GET /api/history/<ch>?since=N&epoch=E&limit=M`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistoryQuery {
    pub ch: String,
    /// Publications after this `seq` (0: from the oldest kept).
    pub since: u64,
    /// The epoch `since` belongs to, if the caller knows it.
    pub epoch: Option<String>,
    pub limit: usize,
}

/// Parses `/api/history/<ch>` (the part after the prefix) and its query.
pub(crate) fn parse_history(channel: &str, query: &str) -> Result<HistoryQuery, HttpError> {
    let ch = channel_of(channel)?;
    let since = match query_values(query, "since").next() {
        None => 0,
        Some(text) => text
            .parse()
            .map_err(|_| bad("since must be a sequence number"))?,
    };
    let epoch = query_values(query, "epoch")
        .next()
        .filter(|e| !e.is_empty());
    Ok(HistoryQuery {
        ch,
        since,
        epoch,
        limit: limit(query, HISTORY_PAGE, MAX_HISTORY_PAGE)?,
    })
}

/// `GET /api/channels?pattern=P&cursor=C&limit=M`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelsQuery {
    /// Only channels it matches (the token grants' pattern syntax).
    pub pattern: Option<ChannelPattern>,
    /// Only channels whose names sort after it (the last page's `cursor`).
    pub after: Option<String>,
    pub limit: usize,
}

pub(crate) fn parse_channels(query: &str) -> Result<ChannelsQuery, HttpError> {
    let pattern = match query_values(query, "pattern").next() {
        None => None,
        Some(text) => {
            Some(ChannelPattern::parse(&text).map_err(|e| bad(format!("pattern {text:?}: {e}")))?)
        }
    };
    Ok(ChannelsQuery {
        pattern,
        after: query_values(query, "cursor")
            .next()
            .filter(|c| !c.is_empty()),
        limit: limit(query, CHANNELS_PAGE, MAX_CHANNELS_PAGE)?,
    })
}

/// `GET /api/presence/<ch>?cursor=C&limit=M`: a presence channel's
/// members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceQuery {
    pub channel: String,
    /// The last page's `cursor`.
    pub cursor: Option<String>,
    pub limit: usize,
}

/// Parses `/api/presence/<ch>` (the part after the prefix) and its query.
pub(crate) fn parse_presence(channel: &str, query: &str) -> Result<PresenceQuery, HttpError> {
    Ok(PresenceQuery {
        channel: channel_of(channel)?,
        cursor: query_values(query, "cursor").next(),
        limit: limit(query, protocol::PRESENCE_PAGE, protocol::MAX_PRESENCE_PAGE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_query_takes_its_pages_limit_and_default() {
        assert_eq!(parse_history("a", "").unwrap().limit, HISTORY_PAGE);
        assert_eq!(parse_channels("").unwrap().limit, CHANNELS_PAGE);
        let presence = parse_presence("a", "limit=7&cursor=c").unwrap();
        assert_eq!((presence.limit, presence.cursor.as_deref()), (7, Some("c")));
        assert_eq!(
            parse_presence("a", "").unwrap().limit,
            protocol::PRESENCE_PAGE
        );
        let over = format!("limit={}", protocol::MAX_PRESENCE_PAGE + 1);
        let error = parse_presence("a", &over).unwrap_err();
        assert_eq!((error.status, error.code), (400, "bad_json"));
        assert!(parse_history("a", &format!("limit={MAX_HISTORY_PAGE}")).is_ok());
        assert!(parse_channels(&format!("limit={}", MAX_CHANNELS_PAGE + 1)).is_err());
    }

    #[test]
    fn the_channel_in_the_path_is_percent_decoded_and_checked() {
        assert_eq!(parse_presence("a%2Eb", "").unwrap().channel, "a.b");
        assert_eq!(parse_history("a%ZZ", "").unwrap_err().status, 400);
        assert_eq!(parse_presence("", "").unwrap_err().code, "bad_channel");
    }
}
