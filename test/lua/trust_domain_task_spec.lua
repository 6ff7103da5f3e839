-- The trust-domain task (core.register_task) on the built bundle installed on
-- a stub core: it learns the trust domain from the agent and long-polls it.
local stub = require("test.lua.support.haproxy_stub")
local certs = require("test.lua.support.certs")
local bundle = require("test.lua.support.installed_bundle")

local TD, WEB = bundle.TD, bundle.WEB
local haproxy = bundle.haproxy

local dir, web_der
setup(function()
  dir = certs.tmpdir()
  web_der = certs.leaf(dir, certs.ca(dir), { extensions = "subjectAltName=URI:" .. WEB })
end)
teardown(function() certs.remove(dir) end)

describe("the trust-domain task", function()
  it("learns the trust domain, then long-polls with the index, pausing between queries", function()
    local world = haproxy()
    local task = coroutine.create(world.core.tasks[1])
    assert(coroutine.resume(task))
    assert.matches("^GET /v1/agent/connect/ca/roots HTTP/1%.1", world.agent.requests[1])
    assert.matches("trust_domain: " .. TD:gsub("%p", "%%%0") .. " %(learned from the agent%)", stub.cli(world.core, "connect show config"))
    assert(coroutine.resume(task))
    assert.matches("^GET /v1/agent/connect/ca/roots%?index=12&wait=5s HTTP/1%.1", world.agent.requests[2])
    assert.are.equal("suspended", coroutine.status(task), "it runs forever")
  end)

  it("removes every request and server pass when the trust domain changes, not when it is first learned", function()
    local world = haproxy({ CONNECT_PASS_MAP = "/p.map", CONNECT_SERVER_PASS_MAP = "/s.map" })
    world.core.maps["/p.map"], world.core.maps["/s.map"] = {}, {}
    world.installed.context.passes:grant("api|" .. WEB, "2000000000")
    world.installed.upstreamContext.passes:grant("AB12", "db")
    local task = coroutine.create(world.core.tasks[1])
    assert(coroutine.resume(task))
    assert.are.equal("db", world.core.maps["/s.map"].AB12, "first learned: nothing was verified against another one")
    local original = bundle.TD
    bundle.TD = "22222222-2222-3333-4444-555555555555.consul"
    local ok, err = coroutine.resume(task)
    bundle.TD = original
    assert(ok, err)
    assert.matches("trust_domain: 22222222", stub.cli(world.core, "connect show config"))
    assert.is_nil(next(world.core.maps["/p.map"]))
    assert.is_nil(next(world.core.maps["/s.map"]))
  end)

  it("ends once HAProxy is stopping, so that a soft stop or a reload is not held up", function()
    local world = haproxy()
    local task = coroutine.create(world.core.tasks[1])
    assert(coroutine.resume(task))
    assert(coroutine.resume(task))
    assert.are.equal("suspended", coroutine.status(task))
    local queries = #world.agent.requests
    world.core.stopping = 1
    for _ = 1, 10 do
      if coroutine.status(task) ~= "suspended" then break end
      assert(coroutine.resume(task))
    end
    assert.are.equal("dead", coroutine.status(task))
    assert.is_true(#world.agent.requests <= queries + 1, "no new query once stopping")
  end)

  it("makes connections wait for its first query instead of denying them at start-up", function()
    local world = haproxy()
    world.agent.yield_on_call = true
    local task = coroutine.create(world.core.tasks[1])
    assert(coroutine.resume(task)) -- parked inside its first roots query
    local txn
    local connection = coroutine.create(function() txn = world.run(web_der, nil, "db") end)
    assert(coroutine.resume(connection)) -- waits for the task's answer
    assert.is_nil(txn)
    assert(coroutine.resume(task)) -- the roots reply arrives
    while coroutine.status(connection) ~= "dead" do assert(coroutine.resume(connection)) end
    assert.are.equal(1, txn.vars["txn.connect_allowed"])
    local roots = 0
    for _, request in ipairs(world.agent.requests) do if request:find("/ca/roots", 1, true) then roots = roots + 1 end end
    assert.are.equal(1, roots, "the connection did not query the roots itself")
  end)

  it("backs off while the agent is down, and recovers", function()
    local world = haproxy()
    world.agent.down = true
    local task = coroutine.create(world.core.tasks[1])
    local before = world.core.clock_ms
    for _ = 1, 8 do assert(coroutine.resume(task)) end
    local waited = world.core.clock_ms - before
    assert.is_true(waited >= 500 + 1000 + 2000 + 4000 + 8000 + 15000, "exponential backoff: " .. waited)
    local warnings = 0
    for _, entry in ipairs(world.core.logs) do if entry.level == "Warning" then warnings = warnings + 1 end end
    assert.are.equal(1, warnings, "the first failure is logged, not every retry")
    world.agent.down = false
    assert(coroutine.resume(task))
    assert.matches("learned from the agent", stub.cli(world.core, "connect show config"))
  end)
end)
