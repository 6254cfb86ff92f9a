//! The room directory's rules as Redis scripts: each runs atomically, so a join checks and takes
//! an id in one step, and the messages a step publishes are in the order steps happened.
//!
//! Keys (with the bus's prefix `P`): `P room:{room}` is a hash of peer id → `instance|conn|role`;
//! `P members:{instance}` the set of `room|peer id` an instance holds; `P instances` the
//! instances; `P alive:{instance}` a key that expires unless its instance keeps it alive.
//! `P lease:{name}` holds the instance that holds a lease. Instance `I` hears its deliveries on channel `P to:{I}` as `{"c": conn, "m": message}`.
//! Room names and peer ids never contain `|` (the signaling rules say what they may contain).

use std::sync::LazyLock;

use redis::Script;

/// KEYS: room hash, instance's members. ARGV: room, peer id, role, instance, conn, most peers
/// (0: any), channel prefix, `1` to send the joiner its `joined` (`0`: putting back a peer the
/// directory lost). Returns `ok`, `taken` or `full`.
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local room, id, role, inst, conn = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max, to, fresh = tonumber(ARGV[6]), ARGV[7], ARGV[8] == '1'
local me = inst .. '|' .. conn .. '|' .. role
local held = redis.call('HGET', KEYS[1], id)
if held then
  if held == me then return 'ok' end
  return 'taken'
end
local all = redis.call('HGETALL', KEYS[1])
if max > 0 and #all / 2 >= max then return 'full' end
if fresh then
  local peers = {}
  for i = 1, #all, 2 do
    peers[#peers + 1] = cjson.encode({peer_id = all[i], role = string.match(all[i + 1], '|(%a+)$')})
  end
  redis.call('PUBLISH', to .. inst, '{"c":' .. conn .. ',"m":{"type":"joined","room":' .. cjson.encode(room)
    .. ',"peer_id":' .. cjson.encode(id) .. ',"peers":[' .. table.concat(peers, ',') .. ']}}')
end
local news = '{"type":"peer_joined","peer_id":' .. cjson.encode(id) .. ',"role":"' .. role .. '"}'
for i = 1, #all, 2 do
  local pi, pc = string.match(all[i + 1], '^([^|]+)|(%d+)|')
  redis.call('PUBLISH', to .. pi, '{"c":' .. pc .. ',"m":' .. news .. '}')
end
redis.call('HSET', KEYS[1], id, me)
redis.call('SADD', KEYS[2], room .. '|' .. id)
return 'ok'
"#,
    )
});

/// KEYS: room hash, instance's members. ARGV: room, peer id, instance, conn, channel prefix.
/// Removes the peer if this connection holds it and tells the others. Returns 1, or 0 if it
/// did not hold it.
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = redis.call('HGET', KEYS[1], ARGV[2])
local mine = ARGV[3] .. '|' .. ARGV[4] .. '|'
if not held or string.sub(held, 1, #mine) ~= mine then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1] .. '|' .. ARGV[2])
local news = '{"type":"peer_left","peer_id":' .. cjson.encode(ARGV[2]) .. '}'
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local pi, pc = string.match(all[i + 1], '^([^|]+)|(%d+)|')
  redis.call('PUBLISH', ARGV[5] .. pi, '{"c":' .. pc .. ',"m":' .. news .. '}')
end
return 1
"#,
    )
});

/// KEYS: room hash. ARGV: sender's id, target's id, instance, conn, message (JSON), channel
/// prefix. Returns `ok`, `not_joined` (this connection is not the sender), `self` or `not_found`.
pub static SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = redis.call('HGET', KEYS[1], ARGV[1])
local mine = ARGV[3] .. '|' .. ARGV[4] .. '|'
if not held or string.sub(held, 1, #mine) ~= mine then return 'not_joined' end
if ARGV[2] == ARGV[1] then return 'self' end
local target = redis.call('HGET', KEYS[1], ARGV[2])
if not target then return 'not_found' end
local pi, pc = string.match(target, '^([^|]+)|(%d+)|')
redis.call('PUBLISH', ARGV[6] .. pi, '{"c":' .. pc .. ',"m":' .. ARGV[5] .. '}')
return 'ok'
"#,
    )
});

/// KEYS: the instance's alive key, the instances set. ARGV: instance, milliseconds to live.
/// Returns 1 if the key was still there (0: the first beat, or the directory forgot this
/// instance — its peers must be put back).
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return had
"#,
    )
});

/// KEYS: the instances set. ARGV: an instance, channel prefix, key prefix. If that instance is
/// no longer alive, removes each of its peers still in a room, tells the others, and forgets the
/// instance. Returns how many peers it removed. Running it twice is nothing.
pub static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local dead, to, p = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p .. 'alive:' .. dead) == 1 then return 0 end
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', p .. 'members:' .. dead)) do
  local room, id = string.match(m, '^(.*)|([^|]+)$')
  local key = p .. 'room:' .. room
  local held = redis.call('HGET', key, id)
  if held and string.sub(held, 1, #dead + 1) == dead .. '|' then
    redis.call('HDEL', key, id)
    n = n + 1
    local news = '{"type":"peer_left","peer_id":' .. cjson.encode(id) .. '}'
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      local pi, pc = string.match(all[i + 1], '^([^|]+)|(%d+)|')
      redis.call('PUBLISH', to .. pi, '{"c":' .. pc .. ',"m":' .. news .. '}')
    end
  end
end
redis.call('DEL', p .. 'members:' .. dead)
redis.call('SREM', KEYS[1], dead)
return n
"#,
    )
});

/// KEYS: a lease. ARGV: the instance. Deletes the lease if that instance holds it.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});
