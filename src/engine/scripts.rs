//! The two Lua scripts the Redis engine runs (Centrifugo's scheme): one
//! publishes — next offset, append to the channel's stream, publish the
//! record tagged with offset and epoch — and one answers where a channel
//! stands and what its stream holds after an offset. Each runs atomically
//! in Redis, so a channel's offset is its `seq` on every node. Called with
//! `EVALSHA` by their SHA-1, computed here.
//!
//! Keys: for each channel, its meta hash (`e` epoch, `o` offset), kept
//! meta-ttl ms after its last use, and its stream of records under ids
//! `<offset>-0`, capped at the history size and expiring history-ttl after
//! its last publication. A channel whose meta is gone starts over at offset
//! 0 under a new epoch made from the caller's (`ARGV[1]`, never used
//! before), its old stream dropped first so offsets never go backwards
//! inside it.

/// Publishes a batch: `KEYS` the meta hash and stream of each
/// publication's channel, in pairs; `ARGV` 1 new epoch, 2 meta ttl ms, 3
/// history size, 4 history ttl ms, 5 idempotency window ms, then each
/// publication's record, pub/sub channel and idempotency key (the key's
/// name in Redis, or empty), in threes. Publishes them in order and returns
/// `{offset1, epoch1, offset2, epoch2, ...}`; a publication whose
/// idempotency key is still held is not published again, and answered
/// with the offset it got then, negated. One call carries every
/// publication a shard made in one executor turn: Redis's cost per call
/// (dispatch, script lookup, Lua entry), and per channel (its epoch, the
/// two expiries), is paid once for all of them. The stream is trimmed
/// approximately (`MAXLEN ~`: whole nodes at a time, several times
/// cheaper), so it keeps at least the history size, a little more at times.
pub(crate) const PUBLISH: &str = r#"
local size = tonumber(ARGV[3])
local result = {}
local epochs = {}
local touched = {}
for i = 1, #KEYS / 2 do
  local meta, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local record, once = ARGV[3 + 3 * i], ARGV[5 + 3 * i]
  local epoch = epochs[meta]
  if not epoch then
    epoch = redis.call('hget', meta, 'e')
    if not epoch then
      epoch = ARGV[1] .. 'x' .. i
      redis.call('del', stream)
      redis.call('hset', meta, 'e', epoch, 'o', 0)
    end
    epochs[meta] = epoch
    table.insert(touched, i)
  end
  local before = once ~= '' and redis.call('get', once)
  if before then
    result[2 * i - 1] = -tonumber(before)
  else
    local offset = redis.call('hincrby', meta, 'o', 1)
    if size > 0 then
      redis.call('xadd', stream, 'MAXLEN', '~', size, offset .. '-0', 'r', record)
    end
    redis.call('publish', ARGV[4 + 3 * i], offset .. ':' .. epoch .. ':' .. record)
    if once ~= '' then
      redis.call('set', once, offset, 'PX', ARGV[5])
    end
    result[2 * i - 1] = offset
  end
  result[2 * i] = epoch
end
for _, i in ipairs(touched) do
  redis.call('pexpire', KEYS[2 * i - 1], ARGV[2])
  if size > 0 then
    redis.call('pexpire', KEYS[2 * i], ARGV[4])
  end
end
return result
"#;

/// `KEYS` the channel's meta hash and stream; `ARGV` 1 new epoch, 2 meta
/// ttl ms, 3 after (an offset; -1: no entries wanted), 4 most entries, 5
/// most bytes of records. Returns `{offset, epoch, o1, r1, o2, r2, ...}`:
/// the channel's last offset and epoch, then the stream's entries after
/// `after`, oldest first, as many as fit the byte budget (but at least one): a
/// reply on a subscribed connection counts against Redis's pub/sub output
/// limit, which would cut the connection off.
pub(crate) const POSITION: &str = r#"
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', epoch, 'o', 0)
end
redis.call('pexpire', KEYS[1], ARGV[2])
local offset = tonumber(redis.call('hget', KEYS[1], 'o'))
local result = {offset, epoch}
local after = tonumber(ARGV[3])
if after >= 0 and after < offset then
  local entries = redis.call('xrange', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', ARGV[4])
  local bytes, budget = 0, tonumber(ARGV[5])
  for _, entry in ipairs(entries) do
    bytes = bytes + #entry[2][2]
    if bytes > budget and #result > 2 then
      break
    end
    table.insert(result, tonumber(string.match(entry[1], '^(%d+)')))
    table.insert(result, entry[2][2])
  end
end
return result
"#;

/// The milliseconds of Redis's own clock, in a script (every node's
/// member expiries are on this one clock).
macro_rules! redis_now {
    () => {
        "local t = redis.call('time')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// A presence member joins or leaves: `KEYS` the channel's member hash
/// (conn → member JSON), expiry set (conn by expiry time) and name set
/// (conns, all scored 0, for pages in conn order); `ARGV` 1 `j` or `l`,
/// 2 conn, 3 member JSON, 4 ttl ms, 5 pub/sub channel, 6 the event to
/// publish when it changed something. Returns 1 if it did.
pub(crate) const PRESENCE_CHANGE: &str = concat!(
    redis_now!(),
    r#"local changed
if ARGV[1] == 'j' then
  changed = redis.call('hset', KEYS[1], ARGV[2], ARGV[3])
  redis.call('zadd', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
  redis.call('zadd', KEYS[3], 0, ARGV[2])
else
  changed = redis.call('hdel', KEYS[1], ARGV[2])
  redis.call('zrem', KEYS[2], ARGV[2])
  redis.call('zrem', KEYS[3], ARGV[2])
end
for i = 1, 3 do
  redis.call('pexpire', KEYS[i], ARGV[4])
end
if changed == 1 then
  redis.call('publish', ARGV[5], ARGV[6])
end
return changed
"#
);

/// A node's members are still there: `KEYS` as above; `ARGV` 1 ttl ms,
/// then conn and member JSON pairs, each kept until now + ttl.
pub(crate) const PRESENCE_REFRESH: &str = concat!(
    redis_now!(),
    r#"local expiry = now + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('zadd', KEYS[2], expiry, ARGV[i])
  redis.call('zadd', KEYS[3], 0, ARGV[i])
end
for i = 1, 3 do
  redis.call('pexpire', KEYS[i], ARGV[1])
end
return 1
"#
);

/// Who is there: `KEYS` as above; `ARGV` 1 `count`, or `page` with 2 the
/// cursor (the last conn of the page before; empty for the first) and 3
/// the most members. Members whose node stopped refreshing them are
/// dropped first. Returns the count, or `{count, more, conn1, json1, ...}`
/// (`more` 1 when members follow the page): a page costs its own size,
/// however many members the channel has.
pub(crate) const PRESENCE_QUERY: &str = concat!(
    redis_now!(),
    r#"local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
for i = 1, #expired, 1000 do
  local some = {unpack(expired, i, math.min(i + 999, #expired))}
  redis.call('hdel', KEYS[1], unpack(some))
  redis.call('zrem', KEYS[3], unpack(some))
end
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
end
local count = redis.call('hlen', KEYS[1])
if ARGV[1] == 'count' then
  return count
end
local from = '-'
if ARGV[2] ~= '' then
  from = '(' .. ARGV[2]
end
local limit = tonumber(ARGV[3])
local conns = redis.call('zrangebylex', KEYS[3], from, '+', 'LIMIT', 0, limit + 1)
local more = 0
if #conns > limit then
  more = 1
  conns[#conns] = nil
end
local result = {count, more}
if #conns > 0 then
  local members = redis.call('hmget', KEYS[1], unpack(conns))
  for i, conn in ipairs(conns) do
    if members[i] then
      table.insert(result, conn)
      table.insert(result, members[i])
    end
  end
end
return result
"#
);

/// Every script, loaded on each connection (and again after `NOSCRIPT`).
/// The nodes where a channel has subscribers, for webhooks sent once
/// across nodes: `KEYS[1]` the channel's node set (node by expiry);
/// `ARGV` 1 `j` (the channel has subscribers on this node: also the
/// refresh) or `l` (no longer), 2 the node, 3 ttl ms. Nodes that stopped
/// refreshing are dropped first. Returns `{changed, nodes}`: whether this
/// node's entry came or went, and how many nodes are left.
pub(crate) const NODE_OCCUPANCY: &str = concat!(
    redis_now!(),
    r#"redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local changed
if ARGV[1] == 'j' then
  changed = redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
else
  changed = redis.call('zrem', KEYS[1], ARGV[2])
end
redis.call('pexpire', KEYS[1], ARGV[3])
return {changed, redis.call('zcard', KEYS[1])}
"#
);

pub(crate) const ALL: [&str; 6] = [
    PUBLISH,
    POSITION,
    PRESENCE_CHANGE,
    PRESENCE_REFRESH,
    PRESENCE_QUERY,
    NODE_OCCUPANCY,
];

/// A script's SHA-1 in lower-case hex, the name `EVALSHA` takes.
pub(crate) fn sha1_hex(script: &str) -> String {
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
