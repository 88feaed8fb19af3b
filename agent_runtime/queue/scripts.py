"""Lua scripts for the queue operations that must be atomic in Redis.

Each script does a check and the action that depends on it in one step, so no other client can
act in between (for example claim an entry between our ownership check and our claim). Used by
the producer (SUBMIT_IDEMPOTENT), the consumer (COMPLETE, ADOPT, HAND_BACK) and the
maintenance (the rest).
"""

from __future__ import annotations

# KEYS: stream, then per task: result, last error[, reply list].
# ARGV: group, result ttl, reply ttl, then per task: entry id, result JSON, task id, has reply.
# Records finished tasks and acknowledges their entries in one step: one command and one reply
# for all the tasks a worker finished in one event-loop iteration, where MULTI/EXEC costs eight
# replies per task and a pipeline one per task (parsing them was a third of a busy worker's
# CPU). The entries are acknowledged, deleted and their last errors dropped with one command
# each for the whole batch (in chunks, within Lua's limit on unpacked values), not per task:
# Redis shares the machine's cores with the workers. Like EXEC it does not roll back; an XACK
# without the group (Redis lost it) is not an error. Running it again is harmless: the same
# result is stored, the entry is already gone. A reply key holding another type is skipped
# (the result is stored and the entry acknowledged all the same; the client still finds the
# result by reading it): the ids of those tasks are returned, so the worker can say so.
COMPLETE = """
local k = 2
local unreplied = {}
local ids = {}
local last_errors = {}
for a = 4, #ARGV, 4 do
  redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', tonumber(ARGV[2]))
  last_errors[#last_errors + 1] = KEYS[k + 1]
  k = k + 2
  if ARGV[a + 3] == '1' then
    local pushed = redis.pcall('RPUSH', KEYS[k], ARGV[a + 2])
    if type(pushed) == 'table' and pushed.err then
      unreplied[#unreplied + 1] = ARGV[a + 2]
    else
      redis.call('EXPIRE', KEYS[k], tonumber(ARGV[3]))
    end
    k = k + 1
  end
  ids[#ids + 1] = ARGV[a]
end
for first = 1, #ids, 1000 do
  local last = math.min(first + 999, #ids)
  local acked = redis.pcall('XACK', KEYS[1], ARGV[1], unpack(ids, first, last))
  if type(acked) == 'table' and acked.err and not string.find(acked.err, 'NOGROUP', 1, true) then
    return acked
  end
  redis.call('XDEL', KEYS[1], unpack(ids, first, last))
  redis.call('DEL', unpack(last_errors, first, last))
end
return unreplied
"""

# KEYS: stream, idempotency key. ARGV: ttl, task id, field, value, ...
# Returns the id of the task registered under the key: ours if new, the earlier one otherwise.
SUBMIT_IDEMPOTENT = """
local existing = redis.call('GET', KEYS[2])
if existing then return existing end
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[1]))
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
return ARGV[2]
"""

# KEYS: stream, pods. ARGV: group, min idle ms, pod id ("" for none), consumer, consumer, ...
# Resets the idle time of the consumers' pending entries without bumping their delivery counts
# (JUSTID): the lease of running tasks, so XAUTOCLAIM in other pods never steals them. Also
# records that the pod is alive (score: Redis's clock, ms), for PRUNE_CONSUMERS.
RENEW_LEASES = """
local renewed = 0
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', tonumber(ARGV[2]),
                             '-', '+', 1000, ARGV[i])
  if #pending > 0 then
    -- unpack() must be the last argument of a call, or Lua passes only its first value.
    local args = {KEYS[1], ARGV[1], ARGV[i], 0}
    for _, p in ipairs(pending) do args[#args + 1] = p[1] end
    args[#args + 1] = 'JUSTID'
    redis.call('XCLAIM', unpack(args))
    renewed = renewed + #pending
  end
end
if ARGV[3] ~= '' then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[3])
end
return renewed
"""

# KEYS: stream, pods. ARGV: group, gone after ms, idle ms (consumers of no known pod), forget
# pods after ms.
# Deletes the consumers that hold nothing and whose pod is gone: it has not renewed its leases
# for `gone after` (consumers are named "<pod id>-<slot>.<generation>"); a consumer of no
# registered pod goes once idle that long. The emptiness check and the deletion are one step,
# so a consumer that takes an entry meanwhile is never deleted with it (its entry would be lost
# to every consumer). Returns the deleted names.
PRUNE_CONSUMERS = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return {} end
local removed = {}
for _, row in ipairs(consumers) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  if tonumber(info['pending']) == 0 then
    local owner = string.match(info['name'], '^(.+)%-[^%-]+$')
    local seen = owner and redis.call('ZSCORE', KEYS[2], owner)
    local gone
    if seen then
      gone = now - tonumber(seen) > tonumber(ARGV[2])
    else
      gone = tonumber(info['idle']) > tonumber(ARGV[3])
    end
    if gone then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
      removed[#removed + 1] = info['name']
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
return removed
"""

# KEYS: stream. ARGV: group, from consumer, to consumer, then the entries whose execution
# started on the from consumer's worker (read from its board).
# Moves a dead worker's pending entries to its replacement and deletes the dead consumer,
# which is safe once its PEL is empty. An entry's delivery count goes up only if its execution
# had started (RETRYCOUNT): a task that never ran on the dead worker has not used a delivery.
# A count above 1 marks the entry a suspect, which the replacement runs alone.
TRANSFER_PENDING = """
local started = {}
for i = 4, #ARGV do started[ARGV[i]] = true end
local moved = 0
for _ = 1, 1000 do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000, ARGV[2])
  if #pending == 0 then break end
  for _, p in ipairs(pending) do
    local count = p[4]
    if started[p[1]] then count = count + 1 end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, p[1], 'RETRYCOUNT', count, 'JUSTID')
  end
  moved = moved + #pending
end
local left = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #left == 0 then redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end
return moved
"""

# KEYS: stream. ARGV: group, consumer, how many, then entry ids to leave out (running here).
# The consumer's own pending entries that it is not running (moved to it after its
# predecessor died), each as {id, delivery count, fields}: one round trip, and no claim, so
# adopting does not count as a delivery (the hand-over already counted what had started).
# Entries deleted from the stream meanwhile are acknowledged: nothing is left to run.
ADOPT = """
local skip = {}
for i = 4, #ARGV do skip[ARGV[i]] = true end
local wanted = tonumber(ARGV[3])
local out = {}
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', wanted + #ARGV - 3, ARGV[2])
for _, p in ipairs(pending) do
  if #out >= wanted then break end
  if not skip[p[1]] then
    local entry = redis.call('XRANGE', KEYS[1], p[1], p[1])
    if #entry == 1 then
      out[#out + 1] = {p[1], p[4], entry[1][2]}
    else
      redis.call('XACK', KEYS[1], ARGV[1], p[1])
    end
  end
end
return out
"""

# KEYS: stream. ARGV: group, consumer, n, then n entry ids (n = 0: every pending entry of the
# consumer), then the entries whose execution started (on a board).
# Puts entries the consumer still owns back at the tail of the stream as new entries, then
# acknowledges and deletes the originals: any consumer can take them at once, without waiting
# for a lease to expire. Used on drain. The new entry carries the executions so far in
# `retries` (those of the original entry, plus the interrupted one if it had started), and
# `suspect` if an execution of it had died with its worker. Returns how many went back.
HAND_BACK = """
local n = tonumber(ARGV[3])
local ids = {}
local started = {}
for i = 4, 3 + n do ids[#ids + 1] = ARGV[i] end
for i = 4 + n, #ARGV do started[ARGV[i]] = true end
if n == 0 then
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
  for _, p in ipairs(pending) do ids[#ids + 1] = p[1] end
end
local handed = 0
for _, id in ipairs(ids) do
  local owned = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #owned == 1 then
    local entry = redis.call('XRANGE', KEYS[1], id, id)
    if #entry == 1 then
      local count = owned[1][4]
      local ran = count - 1
      if started[id] then ran = count end
      local fields = entry[1][2]
      local found, marked = false, false
      for f = 1, #fields, 2 do
        if fields[f] == 'retries' then
          found = true
          if ran > 0 and string.match(fields[f + 1], '^%d+$') then
            fields[f + 1] = tostring(tonumber(fields[f + 1]) + ran)
          end
        elseif fields[f] == 'suspect' then
          marked = true
        end
      end
      if not found and ran > 0 then
        fields[#fields + 1] = 'retries'
        fields[#fields + 1] = tostring(ran)
      end
      if count > 1 and not marked then
        fields[#fields + 1] = 'suspect'
        fields[#fields + 1] = '1'
      end
      redis.call('XADD', KEYS[1], '*', unpack(fields))
      handed = handed + 1
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
  end
end
return handed
"""

# KEYS: delayed set, stream, dead-letter stream. ARGV: now (Unix seconds), limit.
# Moves retries whose time has come from the delayed set to the work stream. A member that is
# not a JSON object of fields (nothing the runtime writes) goes to the dead-letter stream with
# the reason instead: dropped silently, it would be a lost task.
PROMOTE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local ok, fields = pcall(cjson.decode, member)
  if ok and type(fields) == 'table' and next(fields) ~= nil then
    local flat = {}
    for k, v in pairs(fields) do
      flat[#flat + 1] = tostring(k)
      flat[#flat + 1] = tostring(v)
    end
    redis.call('XADD', KEYS[2], '*', unpack(flat))
  else
    redis.call('XADD', KEYS[3], '*', 'delayed_member', member,
               'dead_reason', 'malformed task: delayed retry is not a JSON object of fields',
               'dead_at', ARGV[1])
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""
