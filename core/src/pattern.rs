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

    #[test]
    fn a_pattern_star_does_not_cross_a_dot() {
        assert!(!covers("*.b", "a.x.b"));
        assert!(!covers("a.*", "a.b.c"));
        assert!(covers("a.*.c", "a.b.c"));
        assert!(!covers("a.*.c", "a.c"));
        assert!(!covers("a.*.c", "a.b.b.c"));
    }

    #[test]
    fn a_literal_segment_matches_only_the_whole_segment() {
        assert!(!covers("news.*", "newsy.x"));
        assert!(!covers("news.*", "new.x"));
        assert!(!covers("*.chat", "room.chatty"));
        assert!(!covers("News.*", "news.x"), "case counts");
    }

    #[test]
    fn a_gt_after_stars_needs_a_segment_of_its_own() {
        assert!(covers("*.>", "a.b"));
        assert!(covers("*.>", "a.b.c.d"));
        assert!(!covers("*.>", "a"));
        assert!(!covers("a.*.>", "a.b"));
    }

    #[test]
    fn each_kind_of_malformed_pattern_says_which() {
        let error = |text: &str| ChannelPattern::parse(text).unwrap_err();
        assert_eq!(error(""), PatternError::Length(String::new()));
        assert!(matches!(error("a..b"), PatternError::EmptySegment(t) if t == "a..b"));
        for wild in ["a.>.b", ">.a", "**", "a*", "*>", ">>"] {
            assert!(
                matches!(error(wild), PatternError::Wildcard(ref t) if t == wild),
                "{wild}"
            );
        }
    }

    #[test]
    fn a_pattern_of_the_longest_channel_length_is_accepted_and_kept_as_written() {
        let text = format!("{}.>", "a".repeat(MAX_CHANNEL_LEN - 2));
        let pattern = ChannelPattern::parse(&text).unwrap();
        assert_eq!(pattern.as_str(), text);
        assert!(pattern.matches(&format!("{}.x", "a".repeat(MAX_CHANNEL_LEN - 2))));
    }

    #[test]
    fn any_matches_needs_one_pattern_that_covers() {
        let patterns: Vec<ChannelPattern> = ["news", "user.42.*"]
            .iter()
            .map(|p| ChannelPattern::parse(p).unwrap())
            .collect();
        assert!(any_matches(&patterns, "news"));
        assert!(any_matches(&patterns, "user.42.inbox"));
        assert!(!any_matches(&patterns, "user.43.inbox"));
        assert!(!any_matches(&[], "news"), "no grant covers nothing");
    }
}
