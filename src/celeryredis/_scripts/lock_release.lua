-- Release a token lock, only by its owner.
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token
-- Returns 1 if the lock was released, 0 if the caller did not hold it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
