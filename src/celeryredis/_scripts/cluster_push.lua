-- Cluster broker: push one message and, when its list was empty, ring the partition's
-- wake-up shard channel, so a consumer blocked on that channel fetches (one call).
-- KEYS[1]: the list (a queue partition's list for the message's priority step)
-- ARGV[1]: the payload; ARGV[2]: the wake-up shard channel (same hash tag as KEYS[1])
-- Returns the list's new length.
local n = redis.call('LPUSH', KEYS[1], ARGV[1])
if n == 1 then
  redis.call('SPUBLISH', ARGV[2], '1')
end
return n
