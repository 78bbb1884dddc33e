-- loragate rate limiter, version 2: renew a concurrency lease while its
-- request still runs. Version 1 renewed the lease's score only; the set's
-- own expiry, set at acquisition, then removed every lease at 2 × ttl.
-- KEYS[1] concurrency leases (zset: lease id -> expiry ms)
-- ARGV[1] lease id  ARGV[2] lease ttl ms
-- Returns 1 when renewed, 0 when the lease is gone (released, or its set
-- expired): a gone lease is not brought back, since its slot may be taken.
-- A lease past its score but still present is renewed: acquisition prunes
-- expired leases before counting, so no request can have taken its slot yet.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, ttl = ARGV[1], tonumber(ARGV[2])
local MARGIN = 1000
if not redis.call('ZSCORE', KEYS[1], lease) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, lease)
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local wanted = tonumber(latest[2]) - now + MARGIN
if redis.call('PTTL', KEYS[1]) < wanted then redis.call('PEXPIRE', KEYS[1], wanted) end
return 1
