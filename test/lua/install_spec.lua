-- install(): what the bundle registers with HAProxy's core.
local bundle = require("test.lua.support.installed_bundle")

local TD = bundle.TD
local haproxy = bundle.haproxy

describe("install()", function()
  it("registers both actions for tcp-req and http-req, the CLI commands and the roots task", function()
    local world = haproxy()
    local named = world.core.actions.connect_authorize
    assert.are.same({ "tcp-req", "http-req" }, named.where)
    assert.are.equal(1, named.nargs)
    assert.are.equal(0, world.core.actions.connect_authorize_default.nargs)
    for _, command in ipairs({ "connect cache flush", "connect cache stats", "connect show config" }) do
      assert.is_function(world.core.clis[command])
    end
    assert.are.equal(1, #world.core.tasks)
    assert.matches("agent 127%.0%.0%.1:8500, token not set", world.core.logs[#world.core.logs].message)
  end)

  it("registers no task when the trust domain is configured", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    assert.are.equal(0, #world.core.tasks)
  end)
end)
