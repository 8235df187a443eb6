-- Cluster broker: raise a queue's recorded partition count to ARGV[1] (never lower it),
-- so consumers configured with fewer partitions still drain the others.
-- KEYS[1]: the record ({<queue>}:partitions). Returns the recorded count.
local have = tonumber(redis.call('GET', KEYS[1]) or '1')
local want = tonumber(ARGV[1])
if want > have then
  redis.call('SET', KEYS[1], want)
  return want
end
return have
