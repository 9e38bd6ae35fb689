//! Why a connection closes: one list of reasons that decides the close
//! frame a client gets and the label its close is counted under. Plain data,
//! shared by the connection layer, the shard's counters and the exposition.

/// Why a connection is being closed; decides the close frame and is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed (close frame or end of stream).
    Normal,
    /// The outgoing queue went over `max-queue-bytes` (1008).
    SlowConsumer,
    /// No sign of life within the ping timeout (1001).
    HeartbeatTimeout,
    /// A message over `max-message-bytes` (1009).
    TooLarge,
    /// A text frame that is not UTF-8 (1007).
    BadUtf8,
    /// A WebSocket protocol violation (1002).
    Protocol,
    /// The server is shutting down or draining: reconnect elsewhere (1012).
    Shutdown,
    /// Reading or writing the socket failed; no close frame can be sent.
    SocketError,
    /// Tokens are required and no `auth` came within the auth timeout (4001).
    AuthTimeout,
    /// The token was refused, or the client did something before `auth`
    /// (4001).
    Unauthorized,
    /// The connection's token expired without a refresh (4001).
    TokenExpired,
    /// Publishing (or channel operations) far over the rate limit, again
    /// and again (1008).
    RateLimited,
    /// A raw-room member published without the token's permission (1008).
    Forbidden,
    /// A message begun and not finished within `message-timeout` (1008).
    MessageTimeout,
    /// Queued bytes the socket did not take for `send-timeout`; no close
    /// frame can get through.
    SendTimeout,
    /// A compressed message (permessage-deflate) that does not inflate
    /// (1007).
    BadCompression,
    /// `POST /api/disconnect`, with the code and reason it gave (4000
    /// "disconnected" unless told otherwise); a raw-room member told to
    /// leave its room by `POST /api/unsubscribe` (4000 "unsubscribed").
    Disconnected,
}

impl CloseReason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [CloseReason; 17] = [
        CloseReason::Normal,
        CloseReason::SlowConsumer,
        CloseReason::HeartbeatTimeout,
        CloseReason::TooLarge,
        CloseReason::BadUtf8,
        CloseReason::Protocol,
        CloseReason::Shutdown,
        CloseReason::SocketError,
        CloseReason::AuthTimeout,
        CloseReason::Unauthorized,
        CloseReason::TokenExpired,
        CloseReason::RateLimited,
        CloseReason::Forbidden,
        CloseReason::MessageTimeout,
        CloseReason::SendTimeout,
        CloseReason::BadCompression,
        CloseReason::Disconnected,
    ];

    /// The close code and reason sent to the client, if any.
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            CloseReason::Normal | CloseReason::SocketError | CloseReason::SendTimeout => None,
            CloseReason::SlowConsumer => Some((1008, "slow consumer")),
            CloseReason::HeartbeatTimeout => Some((1001, "ping timeout")),
            CloseReason::TooLarge => Some((1009, "message too large")),
            CloseReason::BadUtf8 => Some((1007, "invalid UTF-8")),
            CloseReason::Protocol => Some((1002, "protocol error")),
            CloseReason::Shutdown => Some((1012, "service restart")),
            CloseReason::AuthTimeout => Some((4001, "authentication timed out")),
            CloseReason::Unauthorized => Some((4001, "unauthorized")),
            CloseReason::TokenExpired => Some((4001, "token expired")),
            CloseReason::RateLimited => Some((1008, "rate limit exceeded")),
            CloseReason::Forbidden => Some((1008, "not allowed to publish here")),
            CloseReason::MessageTimeout => Some((1008, "message not finished in time")),
            CloseReason::BadCompression => Some((1007, "invalid compressed data")),
            CloseReason::Disconnected => Some((4000, "disconnected")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::TooLarge => "too_large",
            CloseReason::BadUtf8 => "bad_utf8",
            CloseReason::Protocol => "protocol_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SocketError => "socket_error",
            CloseReason::AuthTimeout => "auth_timeout",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Forbidden => "forbidden",
            CloseReason::MessageTimeout => "message_timeout",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::BadCompression => "bad_compression",
            CloseReason::Disconnected => "disconnected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_index_their_table() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
    }

    #[test]
    fn every_close_frame_is_one_an_endpoint_may_send() {
        // RFC 6455 7.4: 1004-1006 and 1015 are never sent; 3000-4999 are
        // for applications.
        for reason in CloseReason::ALL {
            if let Some((code, text)) = reason.close_frame() {
                let registered = matches!(code, 1000..=1003 | 1007..=1014);
                assert!(
                    registered || (3000..5000).contains(&code),
                    "{reason:?}: {code}"
                );
                // Two bytes of code and the reason in a control frame's 125.
                assert!(!text.is_empty() && text.len() <= 123, "{reason:?}");
            }
        }
    }

    #[test]
    fn every_close_frame_reads_back_with_its_code_and_reason() {
        for reason in CloseReason::ALL {
            let Some((code, text)) = reason.close_frame() else {
                continue;
            };
            let frame = crate::frame::close(code, text);
            let payload = crate::frame::payload_of(&frame);
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
            assert_eq!(&payload[2..], text.as_bytes(), "{reason:?}");
        }
    }

    #[test]
    fn every_close_frame_is_documented() {
        let protocol = include_str!("../../docs/protocol.md");
        for reason in CloseReason::ALL {
            let Some((code, text)) = reason.close_frame() else {
                continue;
            };
            let row = format!("| {code} | `{text}` |");
            assert!(protocol.contains(&row), "{reason:?}: {code} {text}");
        }
    }

    #[test]
    fn every_label_is_its_own_and_snake_case() {
        let labels: std::collections::HashSet<&str> =
            CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), CloseReason::ALL.len());
        for label in labels {
            assert!(
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{label}"
            );
        }
    }
}
