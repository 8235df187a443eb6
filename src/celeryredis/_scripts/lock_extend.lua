-- Extend a token lock, only by its owner, and never shorten it.
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token
-- ARGV[2]: the TTL in milliseconds it should have at least
-- Returns 1 if the caller holds the lock (its TTL is now >= ARGV[2]), 0 otherwise.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
