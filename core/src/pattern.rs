//! Channel patterns in token claims: which channels a grant covers. A
//! pattern is a channel name whose dot-separated segments may be `*` (any
//! one segment) and whose last segment may be `>` (one or more segments),
//! as in NATS subjects. `user.42.*` covers `user.42.inbox` but not
//! `user.42` or `user.42.a.b`; `user.42.>` covers both of the latter.
//! Pure functions.

use crate::channel::MAX_CHANNEL_LEN;

/// One parsed channel pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    text: Box<str>,
    /// No `*` or `>`: a plain comparison serves.
    exact: bool,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("channel pattern {0:?} is empty or longer than {MAX_CHANNEL_LEN} bytes")]
    Length(String),
    #[error("channel pattern {0:?} has an empty segment")]
    EmptySegment(String),
    #[error(
        "channel pattern {0:?}: '>' may only be the whole last segment, '*' only a whole segment"
    )]
    Wildcard(String),
}

impl ChannelPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() || text.len() > MAX_CHANNEL_LEN {
            return Err(PatternError::Length(text.to_owned()));
        }
        let segments: Vec<&str> = text.split('.').collect();
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            if segment.is_empty() {
                return Err(PatternError::EmptySegment(text.to_owned()));
            }
            let wild = segment.contains(['*', '>']);
            let whole = *segment == "*" || (*segment == ">" && i == last);
            if wild && !whole {
                return Err(PatternError::Wildcard(text.to_owned()));
            }
        }
        Ok(ChannelPattern {
            text: text.into(),
            exact: !text.contains(['*', '>']),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `channel` is covered by this pattern. A wildcard never
    /// matches an empty segment (valid channel names have none; this holds
    /// even for a name that was not validated).
    pub fn matches(&self, channel: &str) -> bool {
        if self.exact {
            return *self.text == *channel;
        }
        let mut names = channel.split('.');
        for segment in self.text.split('.') {
            match (segment, names.next()) {
                (_, Some("")) => return false,
                (">", Some(_)) => return names.all(|name| !name.is_empty()),
                ("*", Some(_)) => {}
                (literal, Some(name)) if literal == name => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }
}

/// Whether any of `patterns` covers `channel`.
pub fn any_matches(patterns: &[ChannelPattern], channel: &str) -> bool {
    patterns.iter().any(|p| p.matches(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(pattern: &str, channel: &str) -> bool {
        ChannelPattern::parse(pattern).unwrap().matches(channel)
    }

    #[test]
    fn exact_patterns_match_only_themselves() {
        assert!(covers("news", "news"));
        assert!(!covers("news", "news.sport"));
        assert!(!covers("news", "new"));
        assert!(covers("$stats", "$stats"));
    }

    #[test]
    fn star_is_one_segment() {
        assert!(covers("user.42.*", "user.42.inbox"));
        assert!(!covers("user.42.*", "user.42"));
        assert!(!covers("user.42.*", "user.42.a.b"));
        assert!(!covers("user.42.*", "user.43.inbox"));
        assert!(covers("*.chat", "room1.chat"));
        assert!(!covers("*", "a.b"));
    }

    #[test]
    fn gt_is_the_rest() {
        assert!(covers("user.42.>", "user.42.a"));
        assert!(covers("user.42.>", "user.42.a.b"));
        assert!(!covers("user.42.>", "user.42"));
        assert!(covers(">", "anything.at.all"));
    }

    #[test]
    fn wildcards_never_match_empty_segments() {
        assert!(!covers("news.*", "news."));
        assert!(!covers("user.42.*", "user.42."));
        assert!(!covers("chat.>", "chat."));
        assert!(!covers("chat.>", "chat..x"));
        assert!(!covers("chat.>", "chat.x."));
        assert!(!covers("*.a", ".a"));
        assert!(covers("chat.>", "chat.x.y"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", "a..b", ".a", "a.", "user*", "a.>.b", "a>", "x.*y"] {
            assert!(ChannelPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ChannelPattern::parse(&"a".repeat(MAX_CHANNEL_LEN + 1)).is_err());
    }
}
