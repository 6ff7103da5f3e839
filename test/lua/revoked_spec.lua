-- `connect revoked`: allowed TCP connections recorded with their identity and
-- target, listed once the current intentions deny their source.
local stub = require("test.lua.support.haproxy_stub")
local certs = require("test.lua.support.certs")
local bundle = require("test.lua.support.installed_bundle")

local TD, WEB = bundle.TD, bundle.WEB

local dir, web_der
setup(function()
  dir = certs.tmpdir()
  web_der = certs.leaf(dir, certs.ca(dir), { extensions = "subjectAltName=URI:" .. WEB })
end)
teardown(function() certs.remove(dir) end)

local function intention(action, permissions)
  return { SourceName = "web", SourceNS = "default", DestinationName = "db", Precedence = 9, SourceType = "consul", Action = action, Permissions = permissions }
end

describe("connect revoked", function()
  it("lists a recorded TCP connection once its source is denied: L4 deny, L7 on TCP, default deny", function()
    local world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD })
    world.self = { DefaultIntentionPolicy = "deny" }
    world.intentions.db = { intention("allow") }
    world.poll("db")
    local txn = world.run(web_der, { src = "10.0.0.5", src_port = 51234, fe_name = "db_mesh" }, "db")
    assert.are.equal(1, txn.vars["txn.connect_allowed"])
    assert.are.equal("", stub.cli(world.core, "connect revoked"))

    world.intentions.db = { intention("deny") }
    world.intentions_index = 8
    world.poll("db")
    -- With the seconds since the connection was allowed: the controller closes only a session that old.
    assert.are.equal("10.0.0.5:51234 db " .. WEB .. " 0s L4 intention default/web => default/db (precedence 9): deny\n", stub.cli(world.core, "connect revoked"))
    world.core.clock_ms = world.core.clock_ms + 12500
    assert.matches("^10%.0%.0%.5:51234 db %S+ 12s L4 intention", stub.cli(world.core, "connect revoked"))

    world.intentions.db = { intention("", { { Action = "allow", HTTP = { PathPrefix = "/" } } }) }
    world.intentions_index = 9
    world.poll("db")
    assert.matches("^10%.0%.0%.5:51234 db .* L7 intention on a TCP service: default/web => default/db", stub.cli(world.core, "connect revoked"))

    world.intentions.db = {}
    world.intentions_index = 10
    world.poll("db")
    assert.matches("no intention matched: Default intention policy %(deny", stub.cli(world.core, "connect revoked"))
    assert.matches("recorded_connections: 1\n", stub.cli(world.core, "connect intentions"))
    -- The same client port allowed again is a new connection: its own age.
    world.intentions.db = { intention("allow") }
    world.intentions_index = 11
    world.poll("db")
    world.run(web_der, { src = "10.0.0.5", src_port = 51234, fe_name = "db_mesh" }, "db")
    world.intentions.db = { intention("deny") }
    world.intentions_index = 12
    world.poll("db")
    assert.matches("^10%.0%.0%.5:51234 db %S+ 0s L4 intention", stub.cli(world.core, "connect revoked"))
  end)

  it("does not record refused connections, nor HTTP requests, and keeps the table bounded", function()
    local world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD, CONNECT_CACHE_SIZE = "2" }, function()
      return 200, '{"Authorized":true,"Reason":"ok"}'
    end)
    world.self = { DefaultIntentionPolicy = "deny" }
    world.intentions.db = { intention("deny") }
    world.poll("db")
    for port = 1, 3 do world.run(web_der, { src_port = port }, "db") end
    local listed = stub.cli(world.core, "connect revoked")
    assert.is_nil(listed:find("127.0.0.1:1 ", 1, true), "the oldest was evicted")
    assert.matches("127%.0%.0%.1:3 db", listed)
    world.request(web_der, "db", { path = "/" }, { src_port = 9 })
    assert.is_nil(stub.cli(world.core, "connect revoked"):find(":9 ", 1, true))
  end)
end)
