-- Generic cell rate algorithm: one decision per call, optionally reserving a slot.
-- KEYS[1]: the limiter key (holds the theoretical arrival time, ms)
-- ARGV[1]: emission interval in ms (1000 / rate per second)
-- ARGV[2]: burst tolerance in ms ((burst - 1) * interval)
-- ARGV[3]: 1 to reserve the next slot when over the limit, 0 to only ask
-- ARGV[4]: longest wait in ms a reservation may take (beyond it nothing is reserved)
-- ARGV[5] (optional): lease, the most permits to grant at once when allowed (default 1)
-- ARGV[6] (optional): lease window in ms: extra permits are granted only for slots at
--                     most this far ahead of now
-- Returns {allowed, wait_ms, slot_ms}: allowed is 1 (go now), 2 (a slot was reserved,
-- wait_ms from now) or 0 (refused, wait_ms until a slot); slot_ms is the granted or
-- reserved slot on the Redis clock (ms since the epoch), 0 when refused. With ARGV[5],
-- an allowed call returns {1, 0, slot_ms, n, first_ms, now_ms}: n permits were granted,
-- permit i (0-based) conforms at first_ms + i * interval (never before now_ms); the
-- times are strings with microseconds.
local t = redis.call('TIME')
-- Microsecond resolution: a whole-millisecond clock would let at most one call per
-- millisecond through a burst-1 limiter, whatever its rate.
local now = t[1] * 1000 + t[2] / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
-- PX takes whole milliseconds: the state lives one burst window past the next slot.
local ttl = math.ceil(tat - now + 2 * interval + tolerance) + 1000
-- Stored with '%.3f': Lua's default number format keeps 14 digits, 0.1 ms here.
local next_tat = string.format('%.3f', tat + interval)
if allow_at <= now then
  local lease = tonumber(ARGV[5] or '1')
  if lease <= 1 then
    redis.call('SET', KEYS[1], next_tat, 'PX', ttl)
    return {1, 0, math.floor(now)}
  end
  -- Permit i conforms at allow_at + i * interval: grant those due by now + window.
  local n = 1 + math.floor((now + tonumber(ARGV[6]) - allow_at) / interval)
  if n > lease then n = lease end
  if n < 1 then n = 1 end
  local last = tat + (n - 1) * interval
  ttl = math.ceil(last - now + 2 * interval + tolerance) + 1000
  redis.call('SET', KEYS[1], string.format('%.3f', last + interval), 'PX', ttl)
  return {1, 0, math.floor(now), n, string.format('%.3f', allow_at), string.format('%.3f', now)}
end
local wait = allow_at - now
if ARGV[3] == '1' and wait <= tonumber(ARGV[4]) then
  redis.call('SET', KEYS[1], next_tat, 'PX', ttl)
  return {2, math.ceil(wait), math.ceil(allow_at)}
end
return {0, math.ceil(wait), 0}
