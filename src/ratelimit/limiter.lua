-- loragate rate limiter, version 2: one atomic decision over a tenant's
-- three limits, so several gateway processes sharing Redis hold them exactly.
-- Time comes from the Redis server, not the callers, so clock skew between
-- gateway hosts cannot bend the windows.
-- Version 2 (same keys and data as version 1): a key lives as long as its
-- state matters. A bucket lives until it would be full again (its absence
-- reads as full), so debt is never forgiven early; the lease set lives past
-- its latest lease, and no call ever shortens its expiry, so a gateway with
-- a short lease_ttl cannot drop another's longer leases.
--
-- KEYS[1] request bucket (hash: level, ts)   KEYS[2] token bucket (same)
-- KEYS[3] concurrency leases (zset: lease id -> expiry ms)
-- ARGV[1] requests/min (0: none)  ARGV[2] tokens/min (0: none)
-- ARGV[3] max concurrent (0: none)  ARGV[4] tokens wanted
-- ARGV[5] lease id  ARGV[6] lease ttl ms
-- Returns {refused kind or '', retry after ms, requests left, tokens left,
--          ms until the request bucket is full, ms until the token bucket is full}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, maxc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want, lease, ttl = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
-- Slack past the exact instant, so a key is never gone while its state still counts.
local MARGIN = 1000

local function level(key, cap)
  if cap == 0 then return 0 end
  local v = redis.call('HMGET', key, 'level', 'ts')
  local lvl, ts = tonumber(v[1]), tonumber(v[2])
  if not lvl then return cap end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  return math.min(cap, lvl + elapsed * cap / 60000)
end

local function until_full(lvl, cap)
  if cap == 0 or lvl >= cap then return 0 end
  return math.ceil((cap - lvl) * 60000 / cap)
end

-- PTTL is -1 for a key this script has just created (no expiry yet).
local function extend_expiry(key, ms)
  local left = redis.call('PTTL', key)
  if left < ms then redis.call('PEXPIRE', key, ms) end
end

local req, tok = level(KEYS[1], rpm), level(KEYS[2], tpm)
local active = 0
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  active = redis.call('ZCARD', KEYS[3])
end

local refused, wait = '', 0
if rpm > 0 and req < 1 then
  refused, wait = 'requests', math.ceil((1 - req) * 60000 / rpm)
elseif tpm > 0 and want > tpm then
  refused, wait = 'tokens', -1
elseif tpm > 0 and tok < want then
  refused, wait = 'tokens', math.ceil((want - tok) * 60000 / tpm)
elseif maxc > 0 and active >= maxc then
  local soonest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  refused, wait = 'concurrency', math.max(1, tonumber(soonest[2]) - now)
end

if refused == '' then
  if rpm > 0 then
    req = req - 1
    redis.call('HSET', KEYS[1], 'level', tostring(req), 'ts', tostring(now))
    extend_expiry(KEYS[1], until_full(req, rpm) + MARGIN)
  end
  if tpm > 0 then
    tok = tok - want
    redis.call('HSET', KEYS[2], 'level', tostring(tok), 'ts', tostring(now))
    extend_expiry(KEYS[2], until_full(tok, tpm) + MARGIN)
  end
  if maxc > 0 then
    redis.call('ZADD', KEYS[3], now + ttl, lease)
    local latest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
    extend_expiry(KEYS[3], tonumber(latest[2]) - now + MARGIN)
  end
end

return {refused, wait, math.floor(math.max(req, 0)), math.floor(math.max(tok, 0)),
        until_full(req, rpm), until_full(tok, tpm)}
