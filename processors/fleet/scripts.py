"""The Redis Lua scripts: :mod:`processors.fleet.gcra`'s math, atomic for the whole fleet.

Every script's keys share one hash slot (Redis Cluster runs a script on one node), and every
script reads the clock with ``TIME`` on the Redis server, so workers on machines
with skewed clocks still share one timeline. The prelude defines what all three need.
"""

from __future__ import annotations

PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local function factor_of(ctl, recovery)
  local f0 = tonumber(ctl[1]) or 1
  if f0 >= 1 then return 1 end
  local climbed = 1
  if recovery > 0 then climbed = (now - (tonumber(ctl[2]) or 0)) / recovery end
  if climbed < 0 then climbed = 0 end
  return math.min(1, f0 + (1 - f0) * climbed)
end
local function load(key)
  local state = redis.call('HMGET', key, 'tat', 'last')
  return tonumber(state[1]), tonumber(state[2]) or 0
end
local function store(key, tat, last)
  redis.call('HSET', key, 'tat', string.format('%.3f', tat), 'last', string.format('%.3f', last))
  redis.call('PEXPIRE', key, math.max(1, math.ceil(tat - now)) + 60000)
end
"""

# KEYS: per candidate (deployments a call may go to, in order of preference): its control
# key, then its bucket keys (all in one hash slot: see FleetState's keys).
# ARGV: recovery_ms, horizon_ms, candidates, then per candidate: its number of buckets, then
# per bucket: interval_ms, tolerance_ms, cost, adaptive.
# Books the first candidate that can send now; if none can, the one that can send soonest.
# Returns {0, wait_ms, send_ms, candidate index (0-based), mark per bucket...} (reserved) |
# {2, come_back_ms} (even the soonest is booked further ahead than the horizon).
# A bucket's ``credit`` is capacity the provider announced and the fleet has not spent yet
# (see SETTLE): a request it covers goes now and spends it; the bucket's pacing is only
# held so that no burst builds up meanwhile (the credit already is the provider's count).
# ``sent`` counts every unit reserved; the mark returned is its value after this one (less,
# for a credited send, the paced units booked to go after it).
RESERVE = (
    PRELUDE
    + """
local recovery, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local function plan_of(k, a, n)
  local ctl = redis.call('HMGET', KEYS[k], 'f0', 'pts', 'pause')
  local factor = factor_of(ctl, recovery)
  local p = {send = math.max(now, tonumber(ctl[3]) or 0), keys = {}, tats = {},
             intervals = {}, costs = {}, credits = {}, tolerances = {}}
  for i = 1, n do
    local base = a + (i - 1) * 4
    local interval = tonumber(ARGV[base])
    local tolerance = tonumber(ARGV[base + 1])
    local cost = tonumber(ARGV[base + 2])
    local adaptive = ARGV[base + 3] == '1'
    if adaptive then interval = interval / factor end
    local key = KEYS[k + i]
    local tat = load(key)
    tat = tat or now
    local learned = redis.call('HMGET', key, 'credit', 'burst')
    local credit = tonumber(learned[1] or '0')
    if adaptive and (tonumber(learned[2]) or 0) <= now then tolerance = 0 end
    local earliest = tat
    if credit >= cost then
      earliest = now
    else
      local amount = cost * interval
      if amount <= tolerance then earliest = tat + amount - tolerance end
    end
    if earliest > p.send then p.send = earliest end
    p.keys[i], p.tats[i], p.intervals[i], p.costs[i] = key, tat, interval, cost
    p.credits[i], p.tolerances[i] = credit, tolerance
  end
  return p
end
local chosen, best = 0, nil
local k, a = 1, 4
for c = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[a])
  local p = plan_of(k, a + 1, n)
  k, a = k + 1 + n, a + 1 + 4 * n
  if best == nil or p.send < best.send then chosen, best = c, p end
  if p.send <= now then break end
end
local send = best.send
if send - now > horizon then
  return {2, string.format('%.3f', send - now - horizon)}
end
local answer = {0, string.format('%.3f', send - now), string.format('%.3f', send), chosen - 1}
for i, key in ipairs(best.keys) do
  local credit, cost, tat = best.credits[i], best.costs[i], best.tats[i]
  if credit >= cost then
    -- no burst builds up while credit is spent: once it is gone, pacing resumes one
    -- interval after the last credited send, never with a burst the provider cannot take
    store(key, math.max(tat, send + best.tolerances[i]), send)
    redis.call('HSET', key, 'credit', credit - cost, 'credited', string.format('%.3f', send))
  else
    store(key, math.max(tat, send) + cost * best.intervals[i], send)
  end
  local mark = redis.call('HINCRBY', key, 'sent', cost)
  if credit >= cost then
    -- a credited send goes ahead of the paced sends already booked: the provider will not
    -- have counted those when it answers this one, so its mark is as if booked after them
    mark = mark - math.floor(math.max(0, tat - send) / best.intervals[i])
  end
  answer[4 + i] = tostring(mark)
end
return answer
"""
)

# KEYS: control key, bucket keys...
# ARGV: recovery_ms, pause_ms, send_ms (when the answered call was booked to go; -1: not
# known), then per bucket: interval_ms, refund_units, adaptive,
# remaining (what the provider announced for it; -1: nothing), mark (RESERVE's), cap,
# shape (how the provider's bucket refills: -2 it does not say, -1 continuously, else in
# steps, with its reset in ms).
# The provider's ``remaining`` counted the call and what reached it before; every unit
# reserved since the call's own reservation (``sent`` - mark) may not have reached it, so
# the fleet's credit becomes remaining - (sent - mark), at most ``cap`` (the configured
# limit stays the ceiling); only an answer to a later reservation than the one that set it
# replaces it, so the announced capacity is spent once across the fleet. Calls sent
# together reach the provider in any order, so an answer to a call booked to go less than
# SETTLED_MS after a credited send sets nothing (its ``remaining`` may not have counted
# calls booked before it). A bucket refilled in steps gets nothing back before its reset:
# the pacing's sends until then are taken off the credit. ``burst`` (a time) says until
# when RESERVE may send the configured burst: a minute after an answer that did not say
# what the provider has left. A provider that says gets no burst: the credit is its burst,
# exact (a configured one could land on an empty bucket, or on top of the pacing in one
# step); nor is there one before the first answer.
SETTLED_MS = 500
SETTLE = (
    PRELUDE
    + f"local SETTLED_MS = {SETTLED_MS}\n"
    + """
local ctl = redis.call('HMGET', KEYS[1], 'f0', 'pts', 'pause')
local factor = factor_of(ctl, tonumber(ARGV[1]))
local send_ms = tonumber(ARGV[3])
for i = 2, #KEYS do
  local base = 3 + (i - 2) * 7
  local tat, last = load(KEYS[i])
  local refund = tonumber(ARGV[base + 2])
  local interval = tonumber(ARGV[base + 1])
  if ARGV[base + 3] == '1' then interval = interval / factor end
  if tat and refund ~= 0 then
    -- never behind a send already reserved: sends stay in reservation order
    store(KEYS[i], math.max(last, tat - refund * interval), last)
  end
  local remaining, mark = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  if remaining >= 0 and mark >= 0 then
    local state = redis.call('HMGET', KEYS[i], 'sent', 'from', 'credited')
    local settled = send_ms >= (tonumber(state[3]) or 0) + SETTLED_MS
    if mark >= (tonumber(state[2]) or -1) and settled then
      local unseen = math.max(0, (tonumber(state[1]) or 0) - mark)
      local stepped = tonumber(ARGV[base + 7])
      local credit = remaining - unseen
      if stepped >= 0 then credit = credit - stepped / interval end
      credit = math.max(0, math.min(tonumber(ARGV[base + 6]), math.floor(credit)))
      redis.call('HSET', KEYS[i], 'credit', credit, 'from', mark)
    end
  end
  if ARGV[base + 3] == '1' then
    local burst = 0
    if tonumber(ARGV[base + 7]) == -2 then burst = now + 60000 end
    redis.call('HSET', KEYS[i], 'burst', string.format('%.3f', burst))
  end
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], 120000) end
end
local pause = tonumber(ARGV[2])
if pause > 0 then
  local until_ms = math.max(tonumber(ctl[3]) or 0, now + pause)
  redis.call('HSET', KEYS[1], 'pause', string.format('%.3f', until_ms))
  redis.call('PEXPIRE', KEYS[1], math.ceil(until_ms - now) + 60000)
end
return 1
"""
)

# KEYS: control key
# ARGV: retry_after_ms, recovery_ms, min_factor, debounce_ms
PENALIZE = (
    PRELUDE
    + """
local ctl = redis.call('HMGET', KEYS[1], 'f0', 'pts', 'pause')
local recovery = tonumber(ARGV[2])
local f0, pts = tonumber(ctl[1]) or 1, tonumber(ctl[2]) or 0
if now - pts >= tonumber(ARGV[4]) then
  f0 = math.max(tonumber(ARGV[3]), factor_of(ctl, recovery) * 0.5)
  pts = now
end
local pause = math.max(tonumber(ctl[3]) or 0, now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'f0', tostring(f0), 'pts', string.format('%.3f', pts),
           'pause', string.format('%.3f', pause))
redis.call('PEXPIRE', KEYS[1], math.ceil(pause - now + recovery) + 60000)
return tostring(f0)
"""
)
