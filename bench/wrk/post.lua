-- POST a JSON body to the target with a bearer token; used by bench/run.py.
--
-- Environment:
--   BENCH_BODY_FILE  body template; every "@@KEY@@" becomes the request's group and every
--                    "@@VAL@@" its value
--   BENCH_TOKEN      bearer token (optional)
--   BENCH_MODE       "repeat": groups 0..BENCH_GROUPS-1 in turn, value 0 (byte-identical
--                    repeats: HA duplicates);
--                    "changed": as repeat, but the value differs in every request (a resend
--                    with a refreshed annotation: the full path);
--                    "unique": a new group every request (every request opens an incident)
--   BENCH_GROUPS     how many groups "repeat" and "changed" cycle through
--   BENCH_PREFIX     group name prefix (keeps targets apart)
--   BENCH_SALT       makes new groups and values of this run differ from earlier runs' ones
--   BENCH_RATE       requests/s for this thread (0: as fast as the connections go)
-- done() prints one JSON line, prefixed "BENCH_RESULT ", that bench/run.py reads.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local function split(s, sep)
  local parts, start = {}, 1
  while true do
    local i, j = string.find(s, sep, start, true)
    if not i then
      parts[#parts + 1] = string.sub(s, start)
      return parts
    end
    parts[#parts + 1] = string.sub(s, start, i - 1)
    start = j + 1
  end
end

local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
local template = f:read("*a")
f:close()
-- The template cut at its placeholders: literals, with the slots between them.
local buf, key_slots, val_slots = {}, {}, {}
local pos = 1
while true do
  local ki = string.find(template, "@@KEY@@", pos, true)
  local vi = string.find(template, "@@VAL@@", pos, true)
  local at, slots
  if ki and (not vi or ki < vi) then
    at, slots = ki, key_slots
  elseif vi then
    at, slots = vi, val_slots
  else
    break
  end
  buf[#buf + 1] = string.sub(template, pos, at - 1)
  buf[#buf + 1] = ""
  slots[#slots + 1] = #buf
  pos = at + 7
end
buf[#buf + 1] = string.sub(template, pos)
local mode = os.getenv("BENCH_MODE") or "repeat"
local groups = tonumber(os.getenv("BENCH_GROUPS") or "1000")
local prefix = os.getenv("BENCH_PREFIX") or "g"
local salt = os.getenv("BENCH_SALT") or "0"
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local headers = { ["Content-Type"] = "application/json" }
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  headers["Authorization"] = "Bearer " .. token
end

local counter = 0
local interval = rate > 0 and 1000 / rate or 0
local next_at = 0
local ids = 0

function setup(thread)
  ids = ids + 1
  thread:set("thread_id", ids)
end

function request()
  local key, value = nil, "0"
  if mode == "unique" then
    key = prefix .. "-" .. salt .. "-" .. (thread_id or 0) .. "-" .. counter
  else
    key = prefix .. "-" .. (counter % groups)
    if mode == "changed" then
      value = salt .. "." .. counter
    end
  end
  counter = counter + 1
  for _, i in ipairs(key_slots) do
    buf[i] = key
  end
  for _, i in ipairs(val_slots) do
    buf[i] = value
  end
  return wrk.format("POST", nil, headers, table.concat(buf))
end

if rate > 0 then
  -- Hand out send slots 1/rate apart to whichever connection is free; a slot
  -- missed because every connection was busy is not made up with a burst.
  function delay()
    local t = now_ms()
    local slot = math.max(next_at, t)
    next_at = slot + interval
    return math.floor(slot - t)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
