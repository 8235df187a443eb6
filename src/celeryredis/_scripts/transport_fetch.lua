-- Reliable transport: apply acks, then pop up to ARGV[1] messages and record them as
-- unacked, all in one atomic call (no moment in which a popped message exists nowhere).
-- KEYS[1]: the unacked hash (kombu's `unacked`, with the global key prefix)
-- KEYS[2]: the unacked index (kombu's `unacked_index`, a sorted set of delivery tags)
-- KEYS[3]: the poison list (`celeryredis:poison`): items that are not kombu messages
-- KEYS[4..]: the queue lists, priority-major: for priority level p (1..np) and queue q
--            (1..nq, in the consumer's round-robin order) the key is KEYS[3 + (p-1)*nq + q]
-- ARGV[1]: the most messages to pop (0 pops none and only applies the acks)
-- ARGV[2]: lease offset in seconds (lease - visibility_timeout); an entry's score is
--          server TIME + offset, so stock kombu's rule "restore when the score is older
--          than now - visibility_timeout" reads as "restore when the lease has expired"
-- ARGV[3]: nq, the number of queues; ARGV[4]: np, the number of priority levels
-- ARGV[5 .. 4+nq]: "1" when queue q is consumed without acks (never recorded as unacked)
-- ARGV[5+nq]: the number of acks that follow; ARGV[6+nq ..]: the delivery tags to ack
-- Returns a flat array {queue index (0-based), raw payload, ...} in delivery order.
-- Rules: payloads are never re-encoded (the unacked value is built by concatenation);
-- nothing after the first pop can raise (decoding runs under pcall), because Redis does
-- not roll a script back; an undecodable item goes to the poison list (capped at 1000).
local hash, index, poison = KEYS[1], KEYS[2], KEYS[3]
local want = tonumber(ARGV[1])
local offset = tonumber(ARGV[2])
local nq, np = tonumber(ARGV[3]), tonumber(ARGV[4])
local noack = {}
for q = 1, nq do noack[q] = ARGV[4 + q] == '1' end
local nacks = tonumber(ARGV[5 + nq])
for i = 1, nacks do
  local tag = ARGV[5 + nq + i]
  redis.call('ZREM', index, tag)
  redis.call('HDEL', hash, tag)
end
local out = {}
if want <= 0 then return out end
local now = redis.call('TIME')
local score = tonumber(now[1]) + tonumber(now[2]) / 1000000 + offset
local function json(value)
  if value == nil then return 'null' end
  local ok, text = pcall(cjson.encode, value)
  if ok then return text end
  return 'null'
end
local order, empty = {}, {}
for q = 1, nq do order[q] = q end
local popped = 0
while popped < want do
  local found = false
  for p = 1, np do
    for pos = 1, nq do
      local q = order[pos]
      local key = KEYS[3 + (p - 1) * nq + q]
      if not empty[key] then
        local item = redis.call('RPOP', key)
        if item then
          found = true
          popped = popped + 1
          -- like kombu's round-robin cycle: the queue just served goes to the end
          table.remove(order, pos)
          table.insert(order, q)
          local ok, msg = pcall(cjson.decode, item)
          local tag, exchange, routing_key
          if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
            tag = msg.properties.delivery_tag
            local info = msg.properties.delivery_info
            if type(info) == 'table' then
              exchange, routing_key = info.exchange, info.routing_key
            end
          end
          if type(tag) ~= 'string' then
            redis.call('LPUSH', poison, item)
            redis.call('LTRIM', poison, 0, 999)
          else
            if not noack[q] then
              redis.call('ZADD', index, score, tag)
              redis.call('HSET', hash, tag,
                '[' .. item .. ',' .. json(exchange) .. ',' .. json(routing_key) .. ']')
            end
            out[#out + 1] = q - 1
            out[#out + 1] = item
          end
          break
        else
          empty[key] = true
        end
      end
    end
    if found then break end
  end
  if not found then break end
end
return out
