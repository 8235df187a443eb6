-- Reliable transport, restore step 2: requeue one claimed entry if it is still claimed.
-- KEYS[1]: the unacked index; KEYS[2]: the unacked hash; KEYS[3]: the poison list
-- KEYS[4..]: the queue lists to push the message to (none: the entry was unreadable and
--            its raw value goes to the poison list instead)
-- ARGV[1]: delivery tag; ARGV[2]: the claimed score returned by transport_claim.lua
-- ARGV[3]: the payload to push (already marked redelivered by the caller) or the raw value;
--          it is RPUSHed, like kombu's restore, so it is consumed next
-- Returns 1 when requeued, 2 when poisoned, 0 when the entry was acked, renewed or
-- restored by someone else since the claim.
local index, hash = KEYS[1], KEYS[2]
if redis.call('ZSCORE', index, ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', index, ARGV[1])
redis.call('HDEL', hash, ARGV[1])
if #KEYS == 3 then
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, 999)
  return 2
end
for i = 4, #KEYS do
  redis.call('RPUSH', KEYS[i], ARGV[3])
end
return 1
