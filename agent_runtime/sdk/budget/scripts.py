"""Lua scripts of the budget limiter: each check and the grant that depends on it in one step.

All times are Redis's clock (TIME, ms), so pods with skewed clocks share one timeline. Windows
are sliding logs, not token buckets: a bucket refilled at the limit's rate admits a full burst
and then the steady rate, up to twice the limit within one window, which a provider counting
in a sliding window answers with 429s. Each window is widened by a safety margin (a few per
cent) so a request that leaves its worker a little later than the grant still lands inside the
provider's window.
"""

from __future__ import annotations

# KEYS: requests, tokens, token counts, leases, cooldown, recovering.
# ARGV: rps, rpm, tpm, concurrency (0: no limit), tokens to reserve, permit id, lease ms,
#       margin per mille, this client's last permit id ('' for none), its grant time (ms).
# Returns {1, now ms, ''} when granted; {0, ms to wait, reason} when not yet; {-1, 0, reason}
# when never (the reservation alone exceeds the tokens per minute).
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rps, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local conc, estimate = tonumber(ARGV[4]), tonumber(ARGV[5])
local margin = tonumber(ARGV[8])
local second = 1000 + math.floor(1000 * margin / 1000)
local minute = 60000 + math.floor(60000 * margin / 1000)
local longest = second
if rpm > 0 or tpm > 0 then longest = minute end
if tpm > 0 and estimate > tpm then return {-1, 0, 'tokens_per_minute'} end

local wait, reason = 0, ''
local function deny(ms, why)
  if ms > wait then wait = ms; reason = why end
end

-- A grant this client was given within the window is gone from the log: Redis lost data (a
-- restart without persistence, or the last second of an everysec AOF). The grants it lost
-- still count at the provider, so nothing is granted for one whole window.
if ARGV[9] ~= '' and tonumber(ARGV[10]) > now - longest
    and not redis.call('ZSCORE', KEYS[1], ARGV[9]) then
  redis.call('SET', KEYS[6], '1', 'PX', longest)
end
local recovering = redis.call('PTTL', KEYS[6])
if recovering > 0 then deny(recovering, 'recovering') end
local cooling = redis.call('PTTL', KEYS[5])
if cooling > 0 then deny(cooling, 'cooldown') end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
local function requests_wait(limit, span)
  local from = now - span + 1
  local count = redis.call('ZCOUNT', KEYS[1], from, '+inf')
  if count < limit then return 0 end
  -- the grant whose leaving brings the window below the limit
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], from, '+inf', 'WITHSCORES',
                            'LIMIT', count - limit, 1)
  return tonumber(oldest[2]) + span - now
end
if rps > 0 then deny(requests_wait(rps, second), 'requests_per_second') end
if rpm > 0 then deny(requests_wait(rpm, minute), 'requests_per_minute') end

if tpm > 0 then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - minute)
  local gone = 0
  for i = 1, #expired, 500 do
    local chunk = {unpack(expired, i, math.min(i + 499, #expired))}
    local counts = redis.call('HMGET', KEYS[3], unpack(chunk))
    for j = 1, #counts do gone = gone + (tonumber(counts[j]) or 0) end
    redis.call('HDEL', KEYS[3], unpack(chunk))
  end
  if #expired > 0 then
    redis.call('HINCRBY', KEYS[3], '_total', -gone)
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - minute)
  end
  local total = tonumber(redis.call('HGET', KEYS[3], '_total') or '0')
  if total + estimate > tpm then
    -- walk from the oldest reservation until enough tokens will have left the window
    local excess, freed, at = total + estimate - tpm, 0, nil
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      freed = freed + (tonumber(redis.call('HGET', KEYS[3], entries[i])) or 0)
      if freed >= excess then at = tonumber(entries[i + 1]); break end
    end
    if at then deny(math.max(at + minute - now, 1), 'tokens_per_minute')
    else deny(minute, 'tokens_per_minute') end
  end
end

if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= conc then
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    deny(math.max(tonumber(first[2]) - now, 1), 'concurrent_requests')
  end
end

if wait > 0 then return {0, wait, reason} end

redis.call('ZADD', KEYS[1], now, ARGV[6])
redis.call('PEXPIRE', KEYS[1], 2 * longest)
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[6])
  redis.call('HSET', KEYS[3], ARGV[6], estimate)
  redis.call('HINCRBY', KEYS[3], '_total', estimate)
  redis.call('PEXPIRE', KEYS[2], 2 * minute + tonumber(ARGV[7]))
  redis.call('PEXPIRE', KEYS[3], 2 * minute + tonumber(ARGV[7]))
end
if conc > 0 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[7]), ARGV[6])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[7]) + 1000)
end
return {1, now, ''}
"""

# KEYS: token counts. ARGV: permit id, tokens used.
# Replaces a grant's reservation by what the call really used; a grant that already left the
# window (or was never a token reservation) is left alone.
SETTLE = """
local reserved = redis.call('HGET', KEYS[1], ARGV[1])
if not reserved then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], '_total', tonumber(ARGV[2]) - tonumber(reserved))
return 1
"""

# KEYS: leases, freed. ARGV: permit id, concurrency.
# Ends a lease and wakes one waiter; a lease that already expired wakes no one twice.
RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
"""

# KEYS: cooldown. ARGV: ms. A provider's Retry-After, shared: only ever lengthened.
COOL_DOWN = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
  return 1
end
return 0
"""
