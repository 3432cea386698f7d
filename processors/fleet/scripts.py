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

# KEYS: control key, bucket keys... (one hash slot: see FleetState's keys)
# ARGV: recovery_ms, horizon_ms, then per bucket: interval_ms, tolerance_ms, cost, adaptive.
# Returns {0, wait_ms, send_ms} (reserved) | {2, come_back_ms}.
RESERVE = (
    PRELUDE
    + """
local n = #KEYS - 1
if n == 0 then return {0, '0', string.format('%.3f', now)} end
local ctl = redis.call('HMGET', KEYS[1], 'f0', 'pts', 'pause')
local factor = factor_of(ctl, tonumber(ARGV[1]))
local send = math.max(now, tonumber(ctl[3]) or 0)
local tats, intervals, costs = {}, {}, {}
for i = 1, n do
  local base = 2 + (i - 1) * 4
  local interval = tonumber(ARGV[base + 1])
  local tolerance = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  if ARGV[base + 4] == '1' then interval = interval / factor end
  local tat, last = load(KEYS[1 + i])
  tat = tat or now
  local amount = cost * interval
  local earliest = tat
  if amount <= tolerance then earliest = tat + amount - tolerance end
  if earliest > send then send = earliest end
  tats[i], intervals[i], costs[i] = tat, interval, cost
end
local horizon = tonumber(ARGV[2])
if send - now > horizon then
  return {2, string.format('%.3f', send - now - horizon)}
end
for i = 1, n do
  store(KEYS[1 + i], math.max(tats[i], send) + costs[i] * intervals[i], send)
end
return {0, string.format('%.3f', send - now), string.format('%.3f', send)}
"""
)

# KEYS: control key, bucket keys...
# ARGV: recovery_ms, pause_ms, then per bucket: interval_ms, refund_units, adaptive
SETTLE = (
    PRELUDE
    + """
local ctl = redis.call('HMGET', KEYS[1], 'f0', 'pts', 'pause')
local factor = factor_of(ctl, tonumber(ARGV[1]))
for i = 2, #KEYS do
  local base = 2 + (i - 2) * 3
  local tat, last = load(KEYS[i])
  if tat then
    local interval = tonumber(ARGV[base + 1])
    if ARGV[base + 3] == '1' then interval = interval / factor end
    -- never behind a send already reserved: sends stay in reservation order
    store(KEYS[i], math.max(last, tat - tonumber(ARGV[base + 2]) * interval), last)
  end
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
