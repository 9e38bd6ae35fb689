//! Channel names: what characters and length are allowed, and which shard owns
//! a channel (orders its publications). Pure functions.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Names starting with this are reserved for the server's own channels and
/// cannot be subscribed to or published on by clients.
pub const RESERVED_PREFIX: char = '$';

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name may only contain A-Z a-z 0-9 and . _ - : @")]
    BadCharacter,
    #[error("channel names starting with '$' are reserved")]
    Reserved,
}

/// Checks a client-supplied channel name: 1 to 128 bytes of `A-Z a-z 0-9 . _ -
/// : @`, not starting with `$`.
pub fn validate(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(ChannelError::Reserved);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
    {
        return Err(ChannelError::BadCharacter);
    }
    Ok(())
}

/// The shard that owns `name` among `shards`: FNV-1a of the name, so every
/// shard (and every node of a later cluster) computes the same owner.
pub fn owner_of(name: &[u8], shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in name {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["news", "user.42.inbox", "a-b_c:d@e", &"x".repeat(128)] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate(""), Err(ChannelError::Empty));
        assert_eq!(validate(&"x".repeat(129)), Err(ChannelError::TooLong));
        assert_eq!(validate("$system"), Err(ChannelError::Reserved));
        for name in ["a b", "a/b", "é", "a,b", "a?b", "a\"b"] {
            assert_eq!(validate(name), Err(ChannelError::BadCharacter), "{name}");
        }
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
}
