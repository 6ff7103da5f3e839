-- install(): what the bundle registers with HAProxy's core.
local bundle = require("test.lua.support.installed_bundle")

local TD = bundle.TD
local haproxy = bundle.haproxy

describe("install()", function()
  it("registers both actions for tcp-req and http-req, the CLI commands, the roots task and the intention tasks", function()
    local world = haproxy()
    local named = world.core.actions.connect_authorize
    assert.are.same({ "tcp-req", "http-req" }, named.where)
    assert.are.equal(1, named.nargs)
    assert.are.equal(0, world.core.actions.connect_authorize_default.nargs)
    for _, command in ipairs({ "connect cache flush", "connect cache stats", "connect show config", "connect intentions", "connect revoked" }) do
      assert.is_function(world.core.clis[command])
    end
    -- Roots, the default policy, and the intention workers: all at load (see intention-watch.ts WORKERS).
    assert.are.equal(2 + bundle.ch.intentionWatch.WORKERS, #world.core.tasks)
    assert.matches("agent 127%.0%.0%.1:8500, token not set", world.core.logs[#world.core.logs].message)
  end)

  it("stops the start-up when a setting it read changed by the end of parsing (a setenv below lua-load), naming what to move", function()
    local stub = require("test.lua.support.haproxy_stub")
    local env = { CONNECT_TRUST_DOMAIN = TD }
    local core = stub.core(stub.agent(function() return 500, "" end))
    bundle.ch.install(core, stub.env(env))
    assert.are.equal(1, #core.inits)
    assert.has_no.errors(core.inits[1])
    env.CONSUL_HTTP_ADDR = "10.0.0.5:8500"
    env.CONNECT_TRUST_DOMAIN = "other.consul"
    local ok, message = pcall(core.inits[1])
    assert.is_false(ok)
    assert.are.equal("connect-haproxy: CONNECT_TRUST_DOMAIN, CONSUL_HTTP_ADDR set after lua-load: the authorizer reads its settings when lua-load runs, "
      .. "so move the setenv/presetenv line(s) for CONNECT_TRUST_DOMAIN, CONSUL_HTTP_ADDR above lua-load in the global section", message)
  end)

  it("registers no roots task when the trust domain is configured", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    assert.are.equal(1 + bundle.ch.intentionWatch.WORKERS, #world.core.tasks)
  end)
end)
