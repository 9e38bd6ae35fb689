//! The two Lua scripts the Redis engine runs (Centrifugo's scheme): one
//! publishes — next offset, append to the channel's stream, publish the
//! record tagged with offset and epoch — and one answers where a channel
//! stands and what its stream holds after an offset. Each runs atomically
//! in Redis, so a channel's offset is its `seq` on every node. Called with
//! `EVALSHA` by their SHA-1, computed here.
//!
//! Keys: `KEYS[1]` the channel's meta hash (`e` epoch, `o` offset), kept
//! meta-ttl ms after its last use; `KEYS[2]` its stream of records under
//! ids `<offset>-0`, capped at the history size and expiring history-ttl
//! after its last publication. Both scripts start the same way
//! (`epoch_prelude!`): a channel whose meta is gone starts over at offset 0
//! under the new epoch the caller gives in `ARGV[1]`, its old stream dropped
//! first so offsets never go backwards inside it; `ARGV[2]` is the meta ttl.

/// The start both scripts share (see the module's text).
macro_rules! epoch_prelude {
    () => {
        r#"
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', epoch, 'o', 0)
end
redis.call('pexpire', KEYS[1], ARGV[2])
"#
    };
}

/// `ARGV` after the prelude's: 3 record, 4 history size, 5 history ttl ms,
/// 6 pub/sub channel. Returns `{offset, epoch}`.
pub const PUBLISH: &str = concat!(
    epoch_prelude!(),
    r#"local offset = redis.call('hincrby', KEYS[1], 'o', 1)
if tonumber(ARGV[4]) > 0 then
  redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0', 'r', ARGV[3])
  redis.call('pexpire', KEYS[2], ARGV[5])
end
redis.call('publish', ARGV[6], offset .. ':' .. epoch .. ':' .. ARGV[3])
return {offset, epoch}
"#
);

/// `ARGV` after the prelude's: 3 after (an offset; -1: no entries wanted),
/// 4 most entries. Returns `{offset, epoch, o1, r1, o2, r2, ...}`: the
/// channel's last offset and epoch, then the stream's entries after
/// `after`, oldest first.
pub const POSITION: &str = concat!(
    epoch_prelude!(),
    r#"local offset = tonumber(redis.call('hget', KEYS[1], 'o'))
local result = {offset, epoch}
local after = tonumber(ARGV[3])
if after >= 0 and after < offset then
  local entries = redis.call('xrange', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', ARGV[4])
  for _, entry in ipairs(entries) do
    table.insert(result, tonumber(string.match(entry[1], '^(%d+)')))
    table.insert(result, entry[2][2])
  end
end
return result
"#
);

/// A script's SHA-1 in lower-case hex, the name `EVALSHA` takes.
pub fn sha1_hex(script: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, script.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_the_known_digest() {
        // `printf abc | sha1sum`
        assert_eq!(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_ne!(sha1_hex(PUBLISH), sha1_hex(POSITION));
    }
}
