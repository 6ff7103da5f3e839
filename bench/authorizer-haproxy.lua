-- Loaded by HAProxy (bench/authorizer-round-trips.mjs, run by bench/authorizer.sh): installs the authorizer from
-- the bundle, then a task times decisions against a real Consul agent.
--   miss: flush, then one decision = one POST /v1/agent/connect/authorize
--         round trip on loopback (wall time from core.now(), which HAProxy
--         refreshes when the task wakes up after its socket I/O);
--   hit:  batches of cached decisions, CPU time from os.clock().
-- Environment: CH_BUNDLE, BENCH_CLIENT_URI, BENCH_TARGET, BENCH_ITERATIONS.
local ch = dofile(os.getenv("CH_BUNDLE") or "dist/connect-haproxy.lua")
local context = assert(ch.installed, "the bundle did not install itself (no core?)").context

local uri = assert(os.getenv("BENCH_CLIENT_URI"), "BENCH_CLIENT_URI is not set")
local target = os.getenv("BENCH_TARGET") or "db"
local iterations = tonumber(os.getenv("BENCH_ITERATIONS") or "") or 2000

local function now_us()
  local t = core.now()
  return t.sec * 1000000 + t.usec
end

local function percentile(sorted, p)
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

local function report(label, samples, unit)
  table.sort(samples)
  io.stdout:write(string.format("%-44s p50 %8.1f %s   p99 %8.1f %s   max %8.1f %s   (n=%d)\n", label,
    percentile(samples, 0.5), unit, percentile(samples, 0.99), unit, samples[#samples], unit, #samples))
end

core.register_task(function()
  local authorizer = context.authorizer
  local serial = function() return "0a" end
  local trust_domain, err = context.trustDomains:ensure()
  if not trust_domain then
    io.stdout:write("BENCH FAILED: " .. tostring(err) .. "\n")
    io.stdout:flush()
    return
  end
  for _ = 1, tonumber(os.getenv("BENCH_WARMUP") or "50") do -- warm up the agent's intention cache and our code paths
    authorizer:flush()
    authorizer:decide(target, uri, serial)
  end

  local misses = {}
  for i = 1, iterations do
    authorizer:flush()
    local started = now_us()
    local allowed, reason, origin = authorizer:decide(target, uri, serial)
    misses[i] = now_us() - started
    if origin ~= "agent" then
      io.stdout:write("BENCH FAILED: expected an agent call, got " .. tostring(origin) .. ": " .. tostring(reason) .. "\n")
      io.stdout:flush()
      return
    end
    assert(allowed ~= nil)
  end
  report("miss: decide() with one agent round trip", misses, "us")

  local hits = {}
  local batch = 1000
  for b = 1, 200 do
    local started = os.clock()
    for _ = 1, batch do authorizer:decide(target, uri, serial) end
    hits[b] = (os.clock() - started) / batch * 1e6
  end
  report("hit: decide() from the cache (CPU)", hits, "us")
  io.stdout:write("BENCH DONE\n")
  io.stdout:flush()
end)
