-- The LRU and the verdict cache (TTL, bound, eviction, single flight, grace)
-- of the built bundle, with a controlled clock.
local ch = dofile("dist/connect-haproxy.lua")

describe("lru.BoundedLru", function()
  it("evicts the least recently used entry in O(1) when full", function()
    local cache = ch.lru.newBoundedLru(3)
    cache:set("a", 1)
    cache:set("b", 2)
    cache:set("c", 3)
    assert.are.equal(1, cache:get("a")) -- a is now the most recent
    cache:set("d", 4) -- evicts b
    assert.is_nil(cache:get("b"))
    assert.are.same({ "d", "a", "c" }, cache:keys())
    assert.are.equal(3, cache:size())
    assert.are.equal(1, cache.evictions)
  end)

  it("peek does not refresh, set on an existing key does", function()
    local cache = ch.lru.newBoundedLru(2)
    cache:set("a", 1)
    cache:set("b", 2)
    assert.are.equal(1, cache:peek("a"))
    cache:set("c", 3) -- a was not refreshed by peek: evicted
    assert.is_nil(cache:peek("a"))
    cache:set("b", 20)
    cache:set("d", 4) -- c is the oldest now
    assert.are.same({ "d", "b" }, cache:keys())
    assert.are.equal(20, cache:get("b"))
  end)

  it("deletes and clears", function()
    local cache = ch.lru.newBoundedLru(5)
    for i = 1, 5 do cache:set("k" .. i, i) end
    assert.is_true(cache:delete("k3"))
    assert.is_false(cache:delete("k3"))
    assert.are.same({ "k5", "k4", "k2", "k1" }, cache:keys())
    assert.is_true(cache:delete("k5"))
    assert.is_true(cache:delete("k1"))
    assert.are.same({ "k4", "k2" }, cache:keys())
    assert.are.equal(2, cache:clear())
    assert.are.equal(0, cache:size())
    assert.are.same({}, cache:keys())
    cache:set("x", 1)
    assert.are.same({ "x" }, cache:keys())
  end)

  it("caches nothing with capacity 0", function()
    local cache = ch.lru.newBoundedLru(0)
    cache:set("a", 1)
    assert.is_nil(cache:get("a"))
    assert.are.equal(0, cache:size())
  end)

  it("stays consistent under a random workload", function()
    math.randomseed(3)
    local cache = ch.lru.newBoundedLru(50)
    for _ = 1, 20000 do
      local key = "k" .. math.random(1, 120)
      local r = math.random()
      if r < 0.5 then cache:set(key, key) elseif r < 0.9 then
        local v = cache:get(key)
        assert.is_true(v == nil or v == key)
      else cache:delete(key) end
      assert.is_true(cache:size() <= 50)
    end
    local keys = cache:keys()
    assert.are.equal(cache:size(), #keys)
  end)
end)

-- An authorizer over a scripted agent and a fake clock.
local function harness(options, answer)
  local h = { clock = 0, calls = {}, answer = answer }
  h.deps = {
    now = function() return h.clock end,
    sleep = function(ms)
      h.clock = h.clock + ms
      if coroutine.isyieldable() then coroutine.yield("sleep") end
    end,
    authorize = function(target, uri, serial)
      h.calls[#h.calls + 1] = { target = target, uri = uri, serial = serial }
      if h.block and coroutine.isyieldable() then coroutine.yield("agent") end
      return h.answer(target, uri, serial)
    end,
  }
  local defaults = { allowTtlMs = 10000, denyTtlMs = 2000, cacheSize = 100, agentDownGraceMs = 0, waitLimitMs = 3500 }
  for k, v in pairs(options or {}) do defaults[k] = v end
  h.authorizer = ch.authorizer.newAuthorizer(defaults, h.deps)
  function h.decide(target, uri)
    return h.authorizer:decide(target, uri, function() return "aa:bb" end)
  end
  return h
end

local allow = function() return { authorized = true, reason = "Matched L4 intention: web => db (allow)" } end
local deny = function() return { authorized = false, reason = "Matched L4 intention: web => db (deny)" } end
local down = function() return nil, "cannot connect to the agent at 127.0.0.1:8500 (Can't connect)" end

describe("authorizer.Authorizer", function()
  it("asks the agent once, then answers from the cache until the allow TTL", function()
    local h = harness(nil, allow)
    local allowed, reason, origin = h.decide("db", "spiffe://td/ns/default/dc/dc1/svc/web")
    assert.are.same({ true, "Matched L4 intention: web => db (allow)", "agent" }, { allowed, reason, origin })
    assert.are.same({ target = "db", uri = "spiffe://td/ns/default/dc/dc1/svc/web", serial = "aa:bb" }, h.calls[1])
    h.clock = 9999
    allowed, _, origin = h.decide("db", "spiffe://td/ns/default/dc/dc1/svc/web")
    assert.are.same({ true, "cache" }, { allowed, origin })
    assert.are.equal(1, #h.calls)
    h.clock = 10000
    _, _, origin = h.decide("db", "spiffe://td/ns/default/dc/dc1/svc/web")
    assert.are.equal("agent", origin)
    assert.are.equal(2, #h.calls)
    local stats = h.authorizer:stats()
    assert.are.same({ 1, 2, 2, 1, 0 }, { stats.hits, stats.misses, stats.agentCalls, stats.entries, stats.errors })
  end)

  it("keeps denies for the deny TTL only", function()
    local h = harness(nil, deny)
    assert.is_false((h.decide("db", "u1")))
    h.clock = 1999
    local _, _, origin = h.decide("db", "u1")
    assert.are.equal("cache", origin)
    h.clock = 2000
    _, _, origin = h.decide("db", "u1")
    assert.are.equal("agent", origin)
  end)

  it("keys by target and client", function()
    local h = harness(nil, function(target) return { authorized = target == "db", reason = target } end)
    assert.is_true((h.decide("db", "u1")))
    assert.is_false((h.decide("api", "u1")))
    assert.is_true((h.decide("db", "u2")))
    assert.are.equal(3, #h.calls)
    assert.are.equal("cache", select(3, h.decide("api", "u1")))
  end)

  it("never holds more than the cache size, evicting the least recently used", function()
    local h = harness({ cacheSize = 3 }, allow)
    for i = 1, 4 do h.decide("db", "u" .. i) end
    assert.are.same({ "db\nu4", "db\nu3", "db\nu2" }, h.authorizer:cachedKeys())
    assert.are.equal(1, h.authorizer:stats().evictions)
    h.decide("db", "u1")
    assert.are.equal(5, #h.calls, "u1 had been evicted")
    for i = 1, 1000 do h.decide("db", "x" .. i) end
    assert.are.equal(3, h.authorizer:stats().entries)
  end)

  it("does not cache with a TTL of 0", function()
    local h = harness({ allowTtlMs = 0 }, allow)
    h.decide("db", "u")
    h.decide("db", "u")
    assert.are.equal(2, #h.calls)
  end)

  it("denies when the agent is down, says why, and does not cache the failure", function()
    local h = harness(nil, down)
    local allowed, reason, origin = h.decide("db", "u")
    assert.is_false(allowed)
    assert.matches("cannot ask the Consul agent: cannot connect", reason)
    assert.are.equal("agent-error", origin)
    h.decide("db", "u")
    assert.are.equal(2, #h.calls)
    assert.are.equal(2, h.authorizer:stats().errors)
    assert.are.equal(0, h.authorizer:stats().entries)
  end)

  it("turns a raising agent call into a deny", function()
    local h = harness(nil, function() error("boom") end)
    local allowed, reason, origin = h.decide("db", "u")
    assert.is_false(allowed)
    assert.matches("internal error: .*boom", reason)
    assert.are.equal("agent-error", origin)
    assert.are.equal(0, h.authorizer:stats().inflight)
  end)

  it("with no grace period, an expired allow is not honoured when the agent is down", function()
    local h = harness(nil, allow)
    h.decide("db", "u")
    h.answer = down
    h.clock = 10001
    assert.is_false((h.decide("db", "u")))
  end)

  it("with a grace period, honours a recently expired allow, never a deny, never a stranger", function()
    local h = harness({ agentDownGraceMs = 5000 }, allow)
    h.decide("db", "u")
    h.answer = down
    h.clock = 10000 + 5000
    local allowed, reason, origin = h.decide("db", "u")
    assert.is_true(allowed)
    assert.are.equal("grace", origin)
    assert.matches("honouring an allow that expired 5000 ms ago", reason)
    h.clock = 10000 + 5001
    assert.is_false((h.decide("db", "u")), "past the grace period")
    assert.is_false((h.decide("db", "stranger")))
    local d = harness({ agentDownGraceMs = 5000 }, deny)
    d.decide("db", "u")
    d.answer = down
    d.clock = 2500
    assert.are.equal("agent-error", select(3, d.decide("db", "u")))
    assert.are.equal(1, h.authorizer:stats().graceAllows)
  end)

  it("flush drops everything and voids grace", function()
    local h = harness({ agentDownGraceMs = 5000 }, allow)
    h.decide("db", "u1")
    h.decide("db", "u2")
    assert.are.equal(2, h.authorizer:flush())
    assert.are.equal(0, h.authorizer:stats().entries)
    h.decide("db", "u1")
    assert.are.equal(3, #h.calls)
    h.authorizer:flush()
    h.answer = down
    assert.is_false((h.decide("db", "u1")))
  end)

  describe("single flight", function()
    -- Runs `count` decisions for the same key as coroutines, round-robin,
    -- the way HAProxy interleaves yielding actions.
    local function concurrently(h, count, key)
      local results, threads = {}, {}
      for i = 1, count do
        threads[i] = coroutine.create(function()
          results[i] = { h.authorizer:decide("db", key or "u", function() return "aa:bb" end) }
        end)
      end
      local alive = count
      local rounds = 0
      while alive > 0 do
        rounds = rounds + 1
        if rounds > 100000 then error("did not finish") end
        alive = 0
        for i = 1, count do
          if coroutine.status(threads[i]) ~= "dead" then
            local ok, err = coroutine.resume(threads[i])
            assert(ok, err)
            if coroutine.status(threads[i]) ~= "dead" then alive = alive + 1 end
          end
        end
      end
      return results
    end

    it("makes concurrent connections for one key wait for a single agent call", function()
      local h = harness(nil, allow)
      h.block = true
      local results = concurrently(h, 20)
      assert.are.equal(1, #h.calls)
      for i = 1, 20 do assert.is_true(results[i][1]) end
      assert.are.equal("agent", results[1][3])
      assert.are.equal("shared", results[2][3])
      local stats = h.authorizer:stats()
      assert.are.same({ 1, 19, 0 }, { stats.misses, stats.shared, stats.inflight })
    end)

    it("shares a failure too, instead of stampeding a dead agent", function()
      local h = harness(nil, down)
      h.block = true
      local results = concurrently(h, 10)
      assert.are.equal(1, #h.calls)
      for i = 1, 10 do
        assert.is_false(results[i][1])
        assert.matches("cannot ask the Consul agent", results[i][2])
      end
    end)

    it("lets different keys proceed in parallel", function()
      local h = harness(nil, allow)
      h.block = true
      local threads = {}
      for i = 1, 3 do
        threads[i] = coroutine.create(function() h.authorizer:decide("db", "u" .. i, function() return "s" end) end)
        coroutine.resume(threads[i])
      end
      assert.are.equal(3, #h.calls, "all three are at the agent at once")
      assert.are.equal(3, h.authorizer:stats().inflight)
      for i = 1, 3 do coroutine.resume(threads[i]) end
      assert.are.equal(0, h.authorizer:stats().inflight)
    end)

    it("gives up waiting after the wait limit (deny)", function()
      local h = harness({ waitLimitMs = 50 }, allow)
      h.block = true
      local leader = coroutine.create(function() h.authorizer:decide("db", "u", function() return "s" end) end)
      coroutine.resume(leader) -- parked at the agent, never resumed
      local allowed, reason, origin = h.decide("db", "u")
      assert.is_false(allowed)
      assert.are.equal("wait-timeout", origin)
      assert.matches("no verdict within 50 ms", reason)
    end)

    it("does not cache an answer that arrives after a flush", function()
      local h = harness(nil, allow)
      h.block = true
      local leader = coroutine.create(function() return h.authorizer:decide("db", "u", function() return "s" end) end)
      coroutine.resume(leader)
      h.authorizer:flush()
      local _, allowed = coroutine.resume(leader)
      assert.is_true(allowed, "the connection that asked still gets its answer")
      assert.are.equal(0, h.authorizer:stats().entries)
    end)
  end)
end)
