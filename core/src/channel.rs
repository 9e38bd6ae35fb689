//! Channel names: what characters and length are allowed, which are the
//! server's own (read-only) system channels, and which shard owns a channel
//! (orders its publications). Pure functions, and [`ChannelName`]: a name
//! checked once where it comes in, then carried between shards as it is.

use std::{fmt, sync::Arc};

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Names starting with this are reserved for the server's own channels:
/// clients may subscribe to the ones in [`SYSTEM_CHANNELS`], never publish.
pub const RESERVED_PREFIX: char = '$';

/// Each shard publishes its figures here once a second (the dashboard's feed).
pub const STATS_CHANNEL: &str = "$stats";

/// The system channels clients may subscribe to.
pub const SYSTEM_CHANNELS: [&str; 1] = [STATS_CHANNEL];

/// What a client wants to do with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Subscribe,
    /// Publish (raw-room members may do both, so rooms ask for this).
    Publish,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name may only contain A-Z a-z 0-9 and . _ - : @")]
    BadCharacter,
    #[error("channel name has an empty segment (a leading, trailing or doubled '.')")]
    EmptySegment,
    #[error("channel names starting with '$' are reserved")]
    Reserved,
    #[error("system channels are read-only: subscribe with the JSON protocol")]
    ReadOnly,
}

/// Checks a client-supplied channel name for `access`: 1 to 128 bytes of
/// `A-Z a-z 0-9 . _ - : @` whose `.`-separated segments are never empty
/// (token patterns match whole segments); names starting with `$` only to
/// subscribe to a system channel.
pub fn validate(name: &str, access: Access) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    if name.starts_with(RESERVED_PREFIX) {
        return match (SYSTEM_CHANNELS.contains(&name), access) {
            (false, _) => Err(ChannelError::Reserved),
            (true, Access::Publish) => Err(ChannelError::ReadOnly),
            (true, Access::Subscribe) => Ok(()),
        };
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
    {
        return Err(ChannelError::BadCharacter);
    }
    if name.split('.').any(str::is_empty) {
        return Err(ChannelError::EmptySegment);
    }
    Ok(())
}

/// A channel name known to be valid (for subscribing, the wider of the two
/// accesses): checked where it came in, shared by every message that
/// carries it (a clone is a reference count), read as `&str` at no cost.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Checks a name that came from outside for `access`.
    pub fn parse(name: &str, access: Access) -> Result<Self, ChannelError> {
        validate(name, access)?;
        Ok(ChannelName(name.into()))
    }

    /// A name checked before it got here: read by the protocol parser, or
    /// one the shard holds (its index, owners and members take only names
    /// that were). Checked again in debug builds only.
    pub fn of_valid(name: &str) -> Self {
        debug_assert_eq!(validate(name, Access::Subscribe), Ok(()), "{name:?}");
        ChannelName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::ops::Deref for ChannelName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `name` is one of the server's own channels.
pub fn is_system(name: &[u8]) -> bool {
    name.first() == Some(&(RESERVED_PREFIX as u8))
}

/// The shard that owns `name` among `shards`: FNV-1a of the name, so every
/// shard (and every node of a later cluster) computes the same owner.
pub fn owner_of(name: &[u8], shards: usize) -> usize {
    (fnv1a(name) % shards as u64) as usize
}

/// The 64-bit FNV-1a hash of `bytes`: stable across processes and
/// machines (channel owners, conflation keys).
pub fn fnv1a<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    bytes
        .into_iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["news", "user.42.inbox", "a-b_c:d@e", &"x".repeat(128)] {
            assert_eq!(validate(name, Access::Publish), Ok(()), "{name}");
        }
    }

    #[test]
    fn system_channels_are_read_only() {
        assert_eq!(validate("$stats", Access::Subscribe), Ok(()));
        assert_eq!(
            validate("$stats", Access::Publish),
            Err(ChannelError::ReadOnly)
        );
        assert_eq!(
            validate("$other", Access::Subscribe),
            Err(ChannelError::Reserved)
        );
        assert!(is_system(b"$stats") && !is_system(b"stats"));
    }

    #[test]
    fn refuses_bad_names() {
        let validate = |name: &str| validate(name, Access::Subscribe);
        assert_eq!(validate(""), Err(ChannelError::Empty));
        assert_eq!(validate(&"x".repeat(129)), Err(ChannelError::TooLong));
        assert_eq!(validate("$system"), Err(ChannelError::Reserved));
        for name in ["a b", "a/b", "é", "a,b", "a?b", "a\"b"] {
            assert_eq!(validate(name), Err(ChannelError::BadCharacter), "{name}");
        }
        for name in [".", "news.", ".news", "chat..x", "a.b."] {
            assert_eq!(validate(name), Err(ChannelError::EmptySegment), "{name}");
        }
    }

    #[test]
    fn a_channel_name_is_checked_where_it_comes_in() {
        let name = ChannelName::parse("user.42", Access::Publish).unwrap();
        assert_eq!(name.as_str(), "user.42");
        assert_eq!(name.clone(), name);
        assert_eq!(
            ChannelName::parse("a..b", Access::Subscribe),
            Err(ChannelError::EmptySegment)
        );
        assert!(ChannelName::parse(STATS_CHANNEL, Access::Subscribe).is_ok());
        assert_eq!(
            ChannelName::parse(STATS_CHANNEL, Access::Publish),
            Err(ChannelError::ReadOnly)
        );
    }

    #[test]
    fn owners_spread_and_are_stable() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_of(format!("room-{i}").as_bytes(), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(owner_of(b"news", 7), owner_of(b"news", 7));
        assert_eq!(owner_of(b"anything", 1), 0);
    }

    #[test]
    fn length_is_checked_in_bytes_before_characters() {
        // 65 two-byte characters: 130 bytes, too long before it is a bad
        // character; 64 of them (128 bytes) are only bad characters.
        assert_eq!(
            validate(&"é".repeat(65), Access::Subscribe),
            Err(ChannelError::TooLong)
        );
        assert_eq!(
            validate(&"é".repeat(64), Access::Subscribe),
            Err(ChannelError::BadCharacter)
        );
    }

    #[test]
    fn wildcards_control_bytes_and_non_ascii_are_bad_characters() {
        for name in [
            "a*", "a.>", "*", ">", "a\0b", "a\tb", "a\nb", "a\u{7f}", "ü", "a#b",
        ] {
            assert_eq!(
                validate(name, Access::Publish),
                Err(ChannelError::BadCharacter),
                "{name:?}"
            );
        }
    }

    #[test]
    fn each_allowed_punctuation_may_make_a_whole_segment() {
        for name in ["_", "-", ":", "@", "a.-.b", "0.9", "A.z"] {
            assert_eq!(validate(name, Access::Publish), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn only_the_exact_name_of_a_system_channel_may_be_subscribed() {
        for name in ["$", "$stats.x", "$STATS", "$stats ", "$statsx"] {
            assert_eq!(
                validate(name, Access::Subscribe),
                Err(ChannelError::Reserved),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_dollar_is_reserved_only_at_the_start() {
        assert!(is_system(b"$"));
        assert!(!is_system(b""));
        assert!(!is_system(b"a$"));
        assert_eq!(
            validate("a$", Access::Subscribe),
            Err(ChannelError::BadCharacter)
        );
    }

    #[test]
    fn fnv1a_gives_the_reference_values() {
        // The test vectors of the FNV reference (draft-eastlake-fnv): every
        // process and every node must compute the same owner.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn owner_of_is_the_hash_modulo_and_always_in_range() {
        for shards in 1..=crate::owner::MAX_SHARDS {
            for i in 0..200 {
                let name = format!("user.{i}.inbox");
                let owner = owner_of(name.as_bytes(), shards);
                assert!(owner < shards, "{name} on {shards}: {owner}");
                assert_eq!(owner as u64, fnv1a(name.as_bytes()) % shards as u64);
            }
        }
    }

    #[test]
    fn a_channel_name_reads_displays_and_debugs_as_its_text() {
        let name = ChannelName::of_valid("user.42");
        assert_eq!(&*name, "user.42");
        assert_eq!(name.as_bytes(), b"user.42");
        assert_eq!(name.to_string(), "user.42");
        assert_eq!(format!("{name:?}"), "\"user.42\"");
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic]
    fn a_name_said_to_be_valid_is_checked_in_debug_builds() {
        ChannelName::of_valid("a..b");
    }
}
