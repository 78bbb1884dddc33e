-- loragate rate limiter, version 2: settle a reservation once the real usage
-- is known. A positive ARGV[2] returns unused tokens; a negative one charges
-- tokens used beyond the estimate (the bucket may go into debt). The lease
-- is released either way.
-- Version 2: the bucket key lives until the bucket would be full again, so
-- debt lasts as long as it takes to repay (version 1 dropped it after 120 s).
-- KEYS[1] token bucket  KEYS[2] concurrency leases
-- ARGV[1] tokens/min (0: none)  ARGV[2] token adjustment  ARGV[3] lease id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tpm, adjust = tonumber(ARGV[1]), tonumber(ARGV[2])
local MARGIN = 1000
if tpm > 0 and adjust ~= 0 then
  local v = redis.call('HMGET', KEYS[1], 'level', 'ts')
  local lvl, ts = tonumber(v[1]), tonumber(v[2])
  if not lvl then lvl, ts = tpm, now end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  lvl = math.min(tpm, math.min(tpm, lvl + elapsed * tpm / 60000) + adjust)
  redis.call('HSET', KEYS[1], 'level', tostring(lvl), 'ts', tostring(now))
  local full_in = 0
  if lvl < tpm then full_in = math.ceil((tpm - lvl) * 60000 / tpm) end
  -- Never shorter than it is: another gateway may run with a larger estimate.
  local wanted = full_in + MARGIN
  if redis.call('PTTL', KEYS[1]) < wanted then redis.call('PEXPIRE', KEYS[1], wanted) end
end
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
