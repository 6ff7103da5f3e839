-- The bundle installed on a stub HAProxy (haproxy_stub) with a scripted
-- agent that knows the trust domain TD and answers authorize calls, as the
-- specs of the actions, the stats-socket commands and the roots task use it.
local stub = require("test.lua.support.haproxy_stub")
-- HAProxy's global Regex class (what install() compiles intention regexes with).
rawset(_G, "Regex", rawget(_G, "Regex") or stub.regex_class())
local ch = dofile("dist/connect-haproxy.lua")
local assert = require("luassert")

local M = {}

M.TD = "11111111-2222-3333-4444-555555555555.consul"
M.WEB = "spiffe://" .. M.TD .. "/ns/default/dc/dc1/svc/web"

-- A stubbed HAProxy with the bundle installed. `policy(body)` answers authorize calls.
function M.haproxy(env, policy)
  local world = { authorize_bodies = {} }
  world.agent = stub.agent(function(request)
    local path = request:match("^%u+ (%S+)")
    if path:find("^/v1/agent/connect/ca/roots") then
      return 200, '{"ActiveRootID":"x","TrustDomain":"' .. M.TD .. '","Roots":[]}', { ["X-Consul-Index"] = "12" }
    end
    assert.are.equal("/v1/agent/connect/authorize", path)
    local body = request:match("\r\n\r\n(.*)$")
    world.authorize_bodies[#world.authorize_bodies + 1] = body
    return (policy or function() return 200, '{"Authorized":true,"Reason":"Matched L4 intention: web => db (allow)"}' end)(body, request)
  end)
  world.core = stub.core(world.agent)
  world.installed = ch.install(world.core, stub.env(env or {}))
  function world.run(der, opts, target, action_name)
    local txn = stub.txn(der, opts)
    local action = world.core.actions[action_name or "connect_authorize"]
    local result = action.fn(txn, target)
    assert.is_nil(result, "the action returns nothing (act.CONTINUE)")
    return txn
  end
  return world
end

return M
