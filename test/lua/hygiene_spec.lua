-- Lua hygiene of the built bundle: it creates no globals (HAProxy shares one
-- Lua state between every lua-load'ed file and defines globals of its own,
-- such as `Map`), and it does not touch HAProxy's.
local stub = require("test.lua.support.haproxy_stub")
local certs = require("test.lua.support.certs")

describe("the bundle", function()
  it("loads, installs and decides without creating or reading unexpected globals", function()
    local dir = certs.tmpdir()
    local der = certs.leaf(dir, certs.ca(dir), { extensions = "subjectAltName=URI:spiffe://td.consul/ns/default/dc/dc1/svc/web" })
    certs.remove(dir)

    local haproxy_map = {} -- stands for HAProxy's own global Map class
    local created, read = {}, {}
    local allowed_reads = {
      string = true, table = true, math = true, os = true, io = true, type = true, tostring = true, tonumber = true,
      pcall = true, error = true, setmetatable = true, getmetatable = true, rawget = true, rawset = true, select = true,
      next = true, pairs = true, ipairs = true, require = true, unpack = true, assert = true, coroutine = true,
      _G = true, core = true,
    }
    local saved_map, saved_core = rawget(_G, "Map"), rawget(_G, "core")
    rawset(_G, "Map", haproxy_map)
    local agent = stub.agent(function(request)
      if request:find("/ca/roots", 1, true) then return 200, '{"TrustDomain":"td.consul","Roots":[]}' end
      return 200, '{"Authorized":true,"Reason":"ok"}'
    end)
    local core = stub.core(agent)
    local watched = setmetatable({}, {
      __index = function(_, name)
        if not allowed_reads[name] and name ~= "Map" then read[#read + 1] = name end
        return rawget(_G, name)
      end,
      __newindex = function(_, name) created[#created + 1] = name end,
    })
    rawset(_G, "core", core)
    local ok, err = pcall(function()
      local chunk = assert(loadfile("dist/connect-haproxy.lua", "t", watched))
      local ch = chunk()
      assert(ch.installed, "with a global core, the bundle installs itself")
      local txn = stub.txn(der)
      core.actions.connect_authorize.fn(txn, "db")
      assert(txn.vars["txn.connect_allowed"] == 1, tostring(txn.vars["txn.connect_reason"]))
      local response = stub.txn(nil, { server_der = der })
      core.actions.connect_verify_upstream.fn(response, "web")
      assert(response.vars["txn.connect_upstream_ok"] == 1, tostring(response.vars["txn.connect_upstream_reason"]))
    end)
    rawset(_G, "Map", saved_map)
    rawset(_G, "core", saved_core)
    assert(ok, err)
    assert.are.same({}, created)
    assert.are.same({}, read)
  end)

  it("only exports its modules when there is no HAProxy", function()
    local ch = dofile("dist/connect-haproxy.lua")
    assert.is_nil(ch.installed)
    for _, name in ipairs({ "der", "spiffe", "json", "http", "lru", "agent", "authorizer", "trust", "config", "sanitize", "peerIdentity", "failClosed", "authorizeAction", "statsCommands", "verifyUpstreamAction" }) do
      assert.is_table(ch[name], name)
    end
    assert.is_function(ch.install)
  end)
end)
