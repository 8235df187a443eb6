-- Reliable transport, restore step 1: claim expired unacked entries for a short while.
-- KEYS[1]: the unacked index (sorted set); KEYS[2]: the unacked hash
-- ARGV[1]: visibility_timeout (seconds): an entry is expired when its score is at or
--          below server TIME - visibility_timeout (kombu's own rule)
-- ARGV[2]: claim seconds: a claimed entry's score becomes TIME + claim - visibility_timeout,
--          so no other sweeper takes it, and another one does if this sweeper dies
-- ARGV[3]: the most entries to claim
-- Returns a flat array {tag, claimed score (as ZSCORE prints it), unacked value or '', ...}.
-- Step 2 (transport_restore.lua) requeues an entry only if its score is still the claimed
-- one: an ack (ZREM) or a lease renewal by a live owner (ZADD XX) in between wins.
local index, hash = KEYS[1], KEYS[2]
local vt = tonumber(ARGV[1])
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local ceil = string.format('%.6f', t - vt)
local tags = redis.call('ZRANGE', index, '-inf', ceil, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = string.format('%.6f', t + tonumber(ARGV[2]) - vt)
local out = {}
for _, tag in ipairs(tags) do
  redis.call('ZADD', index, 'XX', claimed, tag)
  out[#out + 1] = tag
  out[#out + 1] = redis.call('ZSCORE', index, tag)
  out[#out + 1] = redis.call('HGET', hash, tag) or ''
end
return out
