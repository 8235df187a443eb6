-- Acquire a token lock, re-entrant for its owner.
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token (a task id)
-- ARGV[2]: the TTL in milliseconds
-- Returns {1, token} when the caller holds the lock now (newly or again, TTL reset),
--         {0, holder, pttl} when another owner holds it.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ARGV[1]}
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, holder}
end
return {0, holder, redis.call('PTTL', KEYS[1])}
