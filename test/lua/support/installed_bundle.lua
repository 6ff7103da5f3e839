-- The bundle installed on a stub HAProxy (haproxy_stub) with a scripted
-- agent that knows the trust domain TD and answers authorize calls, as the
-- specs of the actions, the stats-socket commands and the roots task use it.
local stub = require("test.lua.support.haproxy_stub")
-- HAProxy's global Regex class (what install() compiles intention regexes with).
rawset(_G, "Regex", rawget(_G, "Regex") or stub.regex_class())
local ch = dofile("dist/connect-haproxy.lua")
local assert = require("luassert")

local M = {}
M.ch = ch

M.TD = "11111111-2222-3333-4444-555555555555.consul"
M.WEB = "spiffe://" .. M.TD .. "/ns/default/dc/dc1/svc/web"

-- A small JSON encoder for intention lists written as Lua tables in specs
-- (arrays are tables with [1]; objects are the rest; json_null for null).
M.json_null = setmetatable({}, { __tostring = function() return "null" end })
function M.json(value)
  local kind = type(value)
  if value == M.json_null then return "null" end
  if kind == "string" then return string.format("%q", value) end -- ASCII without newlines: valid JSON
  if kind == "number" or kind == "boolean" then return tostring(value) end
  if kind == "table" then
    if value[1] ~= nil then
      local parts = {}
      for i, item in ipairs(value) do parts[i] = M.json(item) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for key in pairs(value) do keys[#keys + 1] = key end
    table.sort(keys)
    local parts = {}
    for i, key in ipairs(keys) do parts[i] = M.json(key) .. ":" .. M.json(value[key]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("cannot encode " .. kind)
end

-- web's leaf (URI SAN M.WEB) under a fresh CA, for one spec file: give it the
-- file's busted `setup` and `teardown` (they are not globals here); fixture.der
-- and fixture.dir (a scratch directory) are set once setup ran.
function M.web_certificate_fixture(setup, teardown)
  local certs = require("test.lua.support.certs")
  local fixture = {}
  setup(function()
    fixture.dir = certs.tmpdir()
    fixture.der = certs.leaf(fixture.dir, certs.ca(fixture.dir), { extensions = "subjectAltName=URI:" .. M.WEB })
  end)
  teardown(function() certs.remove(fixture.dir) end)
  return fixture
end

-- A stubbed HAProxy with the bundle installed. `policy(body)` answers authorize calls.
-- world.intentions[target] (a Lua list of intentions) answers the match
-- endpoint, with world.intentions_index as X-Consul-Index; world.self answers
-- /v1/agent/self: nil → 403, else { DefaultIntentionPolicy = "", ACLsEnabled = false, ACLDefaultPolicy = "allow" }.
function M.haproxy(env, policy)
  local world = { authorize_bodies = {}, intentions = {}, intentions_index = 7, intention_queries = {} }
  world.agent = stub.agent(function(request)
    local path = request:match("^%u+ (%S+)")
    if path:find("^/v1/agent/connect/ca/roots") then
      return 200, '{"ActiveRootID":"x","TrustDomain":"' .. M.TD .. '","Roots":[]}', { ["X-Consul-Index"] = "12" }
    end
    if path:find("^/v1/connect/intentions/match") then
      world.intention_queries[#world.intention_queries + 1] = path
      local name = path:match("[?&]name=([^&]+)")
      local list = world.intentions[name]
      local body = "{" .. M.json(name) .. ":" .. ((list == nil or #list == 0) and "[]" or M.json(list)) .. "}"
      if world.intentions_body then body = world.intentions_body end
      if world.intentions_status then return world.intentions_status, "Permission denied" end
      return 200, body, { ["X-Consul-Index"] = tostring(world.intentions_index) }
    end
    if path == "/v1/agent/self" then
      if world.self == nil then return 403, "Permission denied: token lacks agent:read" end
      return 200, '{"Config":{},"DebugConfig":{"DefaultIntentionPolicy":' .. M.json(world.self.DefaultIntentionPolicy or "")
        .. ',"ACLResolverSettings":{"ACLsEnabled":' .. tostring(world.self.ACLsEnabled == true) .. ',"ACLDefaultPolicy":'
        .. M.json(world.self.ACLDefaultPolicy or "allow") .. '}}}'
    end
    assert.are.equal("/v1/agent/connect/authorize", path)
    local body = request:match("\r\n\r\n(.*)$")
    world.authorize_bodies[#world.authorize_bodies + 1] = body
    return (policy or function() return 200, '{"Authorized":true,"Reason":"Matched L4 intention: web => db (allow)"}' end)(body, request)
  end)
  world.core = stub.core(world.agent)
  world.installed = ch.install(world.core, stub.env(env or {}))
  -- Runs the task watching `target`'s intentions once (one query), starting it if needed.
  function world.poll(target)
    world.watch_tasks = world.watch_tasks or {}
    local task = world.watch_tasks[target]
    if task == nil then
      -- The tasks install() registered: [roots task,] the default-policy task, then the workers.
      local tasks = world.core.tasks
      local workers = ch.intentionWatch.WORKERS
      local first_worker = #tasks - workers + 1
      if world.default_task == nil then
        world.default_task = coroutine.create(tasks[first_worker - 1])
        assert(coroutine.resume(world.default_task))
        world.next_worker = first_worker
      end
      world.installed.context.intentions:watch(target)
      task = coroutine.create(tasks[world.next_worker])
      world.next_worker = world.next_worker + 1
      world.watch_tasks[target] = task
    end
    assert(coroutine.resume(task))
  end
  -- An HTTP request through connect_authorize on an HTTP stream.
  function world.request(der, target, http, opts)
    opts = opts or {}
    opts.http = http
    return world.run(der, opts, target)
  end
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
