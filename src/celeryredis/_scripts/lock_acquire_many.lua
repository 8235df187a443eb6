-- Acquire many token locks in one call (bulk enqueue of a unique task).
-- KEYS[i]: a lock key
-- ARGV[1]: the TTL in milliseconds
-- ARGV[2]: '1' for all or nothing (take no lock if any is held by another owner), else '0'
-- ARGV[2 + i]: the owner token for KEYS[i] (a task id)
-- Returns one entry per key, in order: {1, token} when the caller holds it now (newly or
-- again, TTL reset); {0, holder, pttl} when another owner holds it; {2, ''} when it was
-- free but not taken because another key was held in all-or-nothing mode.
local ttl = ARGV[1]
local strict = ARGV[2] == '1'
local holders = {}
local conflict = false
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  holders[i] = holder
  if holder and holder ~= ARGV[2 + i] then
    conflict = true
  end
end
local out = {}
for i, key in ipairs(KEYS) do
  local token = ARGV[2 + i]
  local holder = holders[i]
  if holder and holder ~= token then
    out[i] = {0, holder, redis.call('PTTL', key)}
  elseif strict and conflict then
    out[i] = {2, ''}
  else
    if holder then
      redis.call('PEXPIRE', key, ttl)
    else
      redis.call('SET', key, token, 'PX', ttl)
    end
    out[i] = {1, token}
  end
end
return out
