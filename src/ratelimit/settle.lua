-- loragate rate limiter, version 1: settle a reservation once the real usage
-- is known. A positive ARGV[2] returns unused tokens; a negative one charges
-- tokens used beyond the estimate (the bucket may go into debt). The lease
-- is released either way.
-- KEYS[1] token bucket  KEYS[2] concurrency leases
-- ARGV[1] tokens/min (0: none)  ARGV[2] token adjustment  ARGV[3] lease id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tpm, adjust = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and adjust ~= 0 then
  local v = redis.call('HMGET', KEYS[1], 'level', 'ts')
  local lvl, ts = tonumber(v[1]), tonumber(v[2])
  if not lvl then lvl, ts = tpm, now end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  lvl = math.min(tpm, math.min(tpm, lvl + elapsed * tpm / 60000) + adjust)
  redis.call('HSET', KEYS[1], 'level', tostring(lvl), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], 120000)
end
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
