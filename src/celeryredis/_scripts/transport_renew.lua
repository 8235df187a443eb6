-- Reliable transport: apply acks and renew the leases of held messages, atomically.
-- KEYS[1]: the unacked hash; KEYS[2]: the unacked index (sorted set)
-- ARGV[1]: lease offset in seconds (lease - visibility_timeout), added to server TIME
-- ARGV[2]: n, the number of acks; ARGV[3 .. 2+n]: delivery tags to ack (ZREM + HDEL)
-- ARGV[3+n ..]: delivery tags whose lease is renewed (ZADD XX: an entry that was acked
--               or restored meanwhile is not created again)
-- Returns the number of leases renewed.
local hash, index = KEYS[1], KEYS[2]
local nacks = tonumber(ARGV[2])
for i = 3, 2 + nacks do
  redis.call('ZREM', index, ARGV[i])
  redis.call('HDEL', hash, ARGV[i])
end
if #ARGV <= 2 + nacks then return 0 end
local now = redis.call('TIME')
local score = tonumber(now[1]) + tonumber(now[2]) / 1000000 + tonumber(ARGV[1])
local renewed = 0
for i = 3 + nacks, #ARGV do
  renewed = renewed + redis.call('ZADD', index, 'XX', 'CH', score, ARGV[i])
end
return renewed
