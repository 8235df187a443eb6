-- Reliable transport: put a reserved message back at the head of its queue, unchanged.
-- A channel fetched it one ahead of the prefetch window and no slot freed in time.
-- KEYS[1]: the unacked hash; KEYS[2]: the unacked index; KEYS[3]: the queue list it came from
-- ARGV[1]: delivery tag; ARGV[2]: the raw payload, exactly as the fetch popped it
-- It is RPUSHed (consumed next, like kombu's restore) without a redelivered mark: no
-- consumer ever saw it. Returns 1 when put back, 0 when the entry is no longer this
-- channel's (its lease expired and a sweep requeued it already).
local hash, index = KEYS[1], KEYS[2]
if redis.call('HDEL', hash, ARGV[1]) == 0 then return 0 end
redis.call('ZREM', index, ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
