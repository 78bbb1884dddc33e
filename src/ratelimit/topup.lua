-- loragate rate limiter, version 2: reserve more tokens for a request
-- already admitted. Admission reserved a lower bound on the prompt's tokens
-- (known from its bytes before tokenizing); once the exact count is known,
-- the rest is taken here, or the request is refused and nothing is taken.
-- KEYS[1] token bucket (hash: level, ts)
-- ARGV[1] tokens/min  ARGV[2] extra tokens wanted  ARGV[3] the request's total
-- Returns {refused ('' or 'tokens'), retry after ms (-1: never fits),
--          tokens left, ms until the bucket is full}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tpm, extra, total = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'level', 'ts')
local lvl, ts = tonumber(v[1]), tonumber(v[2])
if not lvl then lvl, ts = tpm, now end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
lvl = math.min(tpm, lvl + elapsed * tpm / 60000)

local function until_full(level)
  if level >= tpm then return 0 end
  return math.ceil((tpm - level) * 60000 / tpm)
end

if total > tpm then
  return {'tokens', -1, math.floor(math.max(lvl, 0)), until_full(lvl)}
end
if lvl < extra then
  return {'tokens', math.ceil((extra - lvl) * 60000 / tpm), math.floor(math.max(lvl, 0)), until_full(lvl)}
end
lvl = lvl - extra
redis.call('HSET', KEYS[1], 'level', tostring(lvl), 'ts', tostring(now))
-- Absence means a full bucket: keep the key until it would be full again.
local keep = until_full(lvl) + 1000
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return {'', 0, math.floor(math.max(lvl, 0)), until_full(lvl)}
