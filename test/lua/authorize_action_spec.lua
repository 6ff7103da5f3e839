-- The connect_authorize action end to end on the built bundle: install() on
-- a stub core, a stub TXN carrying real openssl certificates, and a scripted
-- agent behind a fake cosocket (so the HTTP and JSON code runs too).
local ch = dofile("dist/connect-haproxy.lua")
local stub = require("test.lua.support.haproxy_stub")
local certs = require("test.lua.support.certs")
local bundle = require("test.lua.support.installed_bundle")

local TD, WEB = bundle.TD, bundle.WEB
local haproxy = bundle.haproxy

local dir, ca, web_der, web_pem, foreign_der, agent_der, two_uri_der, dns_only_der
setup(function()
  dir = certs.tmpdir()
  ca = certs.ca(dir)
  web_der, web_pem = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. WEB, serial = "0x00c0ffee" })
  foreign_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:spiffe://other.consul/ns/default/dc/dc1/svc/web" })
  agent_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:spiffe://" .. TD .. "/agent/client/dc/dc1/id/node1" })
  two_uri_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. WEB .. ",URI:" .. WEB })
  dns_only_der = certs.leaf(dir, ca, { extensions = "subjectAltName=DNS:web.example" })
end)
teardown(function() certs.remove(dir) end)

describe("connect_authorize", function()
  it("allows web when the agent says so, and publishes the verified identity", function()
    local world = haproxy({ CONSUL_HTTP_TOKEN = "s3cr3t-token" })
    local txn = world.run(web_der, nil, "db")
    assert.are.equal(1, txn.vars["txn.connect_allowed"])
    assert.are.equal("Matched L4 intention: web => db (allow)", txn.vars["txn.connect_reason"])
    assert.are.equal("web", txn.vars["txn.connect_source"])
    assert.are.equal(WEB, txn.vars["txn.connect_spiffe"])
    -- What the agent was asked, and how.
    local body = world.authorize_bodies[1]
    local decoded = ch.json.decode(body)
    assert.are.same({ Target = "db", ClientCertURI = WEB, ClientCertSerial = "c0:ff:ee" }, { Target = decoded.Target, ClientCertURI = decoded.ClientCertURI, ClientCertSerial = decoded.ClientCertSerial })
    assert.are.equal(certs.openssl_serial(web_pem), decoded.ClientCertSerial)
    local request = world.agent.requests[#world.agent.requests]
    assert.matches("\r\nX%-Consul%-Token: s3cr3t%-token\r\n", request)
    assert.matches("^POST /v1/agent/connect/authorize HTTP/1%.1\r\n", request)
    -- Allow is logged at debug, without the token.
    assert.are.equal(1, #txn.logs)
    assert.are.equal("Debug", txn.logs[1].level)
    assert.matches("connect_authorize: allow target=db client=" .. WEB:gsub("%p", "%%%0") .. ' reason="Matched L4 intention: web => db %(allow%)" via=agent', txn.logs[1].message)
    for _, entry in ipairs(world.core.logs) do assert.is_nil(entry.message:find("s3cr3t", 1, true)) end
    assert.is_nil(txn.logs[1].message:find("s3cr3t", 1, true))
  end)

  it("learns the trust domain from the agent first, then reuses it", function()
    local world = haproxy()
    world.run(web_der, nil, "db")
    world.run(web_der, nil, "db")
    local roots = 0
    for _, request in ipairs(world.agent.requests) do
      if request:find("^GET /v1/agent/connect/ca/roots HTTP/1%.1") then roots = roots + 1 end
    end
    assert.are.equal(1, roots)
    assert.are.equal(2, #world.agent.requests, "one roots lookup, one authorize, then a cache hit")
  end)

  it("denies with Consul's reason, logged at info", function()
    local world = haproxy(nil, function() return 200, '{"Authorized":false,"Reason":"Matched L4 intention: web => db (deny)"}' end)
    local txn = world.run(web_der, nil, "db")
    assert.are.equal(0, txn.vars["txn.connect_allowed"])
    assert.are.equal("Matched L4 intention: web => db (deny)", txn.vars["txn.connect_reason"])
    assert.are.equal("web", txn.vars["txn.connect_source"], "the identity was verified; only the intention said no")
    assert.are.equal("Info", txn.logs[1].level)
    assert.matches("connect_authorize: deny target=db", txn.logs[1].message)
  end)

  it("logs allows at info with CONNECT_LOG_ALLOWED=1", function()
    local world = haproxy({ CONNECT_LOG_ALLOWED = "1" })
    assert.are.equal("Info", world.run(web_der, nil, "db").logs[1].level)
  end)

  local function assert_denied(txn, pattern, level)
    assert.are.equal(0, txn.vars["txn.connect_allowed"])
    assert.matches(pattern, txn.vars["txn.connect_reason"])
    assert.is_nil(txn.vars["txn.connect_source"], "unverified identities are not published")
    assert.is_nil(txn.vars["txn.connect_spiffe"])
    assert.are.equal(level or "Info", txn.logs[1].level)
  end

  it("denies without a certificate, without TLS, and when verification failed (0 is true in Lua)", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    assert_denied(world.run(nil, nil, "db"), "no client certificate")
    assert_denied(world.run(nil, { used = false }, "db"), "no client certificate")
    assert_denied(world.run(web_der, { used = 0 }, "db"), "no client certificate")
    assert_denied(world.run(web_der, { verify = 20 }, "db"), "not verified %(OpenSSL error 20%)")
    assert_denied(world.run(web_der, { verify = false }, "db"), "not verified")
    assert.are.equal(0, #world.agent.requests, "the agent is not asked about unverified clients")
  end)

  it("denies unusable certificates and identities", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    assert_denied(world.run("", nil, "db"), "certificate unavailable")
    assert_denied(world.run(web_der:sub(1, 100), nil, "db"), "unusable client certificate")
    assert_denied(world.run(two_uri_der, nil, "db"), "2 URI subjectAltNames")
    assert_denied(world.run(dns_only_der, nil, "db"), "no URI subjectAltName")
    assert_denied(world.run(agent_der, nil, "db"), "names a Consul agent")
    assert.are.equal(0, #world.agent.requests)
  end)

  it("denies a foreign trust domain, configured or learned, case-insensitively", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD:upper() })
    assert_denied(world.run(foreign_der, nil, "db"), "trust domain other%.consul is not this cluster's")
    assert.are.equal(1, world.run(web_der, nil, "db").vars["txn.connect_allowed"])
    local learned = haproxy()
    assert_denied(learned.run(foreign_der, nil, "db"), "is not this cluster's")
  end)

  it("denies while the trust domain cannot be learned (agent down), at warning", function()
    local world = haproxy()
    world.agent.down = true
    assert_denied(world.run(web_der, nil, "db"), "trust domain unknown: cannot connect to the agent", "Warning")
    world.core.clock_ms = world.core.clock_ms + 1000
    world.agent.down = false
    assert.are.equal(1, world.run(web_der, nil, "db").vars["txn.connect_allowed"])
  end)

  it("denies when the agent is unreachable, at warning, and HAProxy's action still returns", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    world.agent.down = true
    local txn = world.run(web_der, nil, "db")
    assert.are.equal(0, txn.vars["txn.connect_allowed"])
    assert.matches("cannot ask the Consul agent: cannot connect to the agent at 127%.0%.0%.1:8500", txn.vars["txn.connect_reason"])
    assert.are.equal("web", txn.vars["txn.connect_source"])
    assert.are.equal("Warning", txn.logs[1].level)
  end)

  it("denies on an ACL error, garbage JSON, a wrong shape and an oversized reply", function()
    local replies = {
      { function() return 403, "Permission denied: token with AccessorID 'x' lacks permission 'service:write'" end, "agent replied HTTP 403: Permission denied" },
      { function() return 200, "<html>" end, "invalid JSON" },
      { function() return 502, "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head></html>" end, "agent replied HTTP 502: <!DOCTYPE html> <html>" },
      { function() return 500, "rpc error making call: No cluster leader" end, "agent replied HTTP 500: rpc error making call" },
      { function() return 200, '{"Authorized":true,"Reas' end, "authorize reply: " },
      { function() return "HTTP/1.1 200 OK\r\nContent-Length: 52428800\r\n\r\n[0,0,0" end, "larger than 65536" },
      { function() return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n" .. string.rep("0", 65537) end, "larger than 65536" },
      { function() return 200, '{"Authorized":"yes"}' end, "no boolean Authorized" },
      { function() return 200, "[true]" end, "no boolean Authorized" },
      { function() return 200, string.rep(" ", 70000) .. "{}" end, "larger than 65536" },
      { function() return "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}" end, "closed before the reply was complete" },
    }
    for _, case in ipairs(replies) do
      local world = haproxy({ CONNECT_TRUST_DOMAIN = TD }, case[1])
      local txn = world.run(web_der, nil, "db")
      assert.are.equal(0, txn.vars["txn.connect_allowed"])
      assert.matches(case[2], txn.vars["txn.connect_reason"])
    end
  end)

  it("fails closed on an internal error (a fetch that raises)", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    local txn = world.run(web_der, { der_error = "fetch exploded" }, "db")
    assert.are.equal(0, txn.vars["txn.connect_allowed"])
    assert.matches("internal error: .*fetch exploded", txn.vars["txn.connect_reason"])
    assert.are.equal("Warning", txn.logs[1].level)
  end)

  it("fails closed when setting a variable raises", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    local txn = stub.txn(web_der)
    local set = txn.set_var
    function txn:set_var(name, value)
      if name == "txn.connect_reason" then error("no room") end
      return set(self, name, value)
    end
    world.core.actions.connect_authorize.fn(txn, "db")
    assert.are.equal(0, txn.vars["txn.connect_allowed"])
  end)

  it("uses CONNECT_DEFAULT_TARGET for connect_authorize_default and for '-'", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD, CONNECT_DEFAULT_TARGET = "db" })
    assert.are.equal(1, world.run(web_der, nil, nil, "connect_authorize_default").vars["txn.connect_allowed"])
    world.run(web_der, nil, "-")
    assert.are.equal("db", ch.json.decode(world.authorize_bodies[1]).Target)
    assert.are.equal(1, #world.authorize_bodies, "same key: the second was a cache hit")
    local none = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    assert_denied(none.run(web_der, nil, nil, "connect_authorize_default"), "no target service", "Warning")
  end)

  it("denies everything, saying why, when CONSUL_HTTP_ADDR is unusable", function()
    local world = haproxy({ CONSUL_HTTP_ADDR = "https://127.0.0.1:8501" })
    assert_denied(world.run(web_der, nil, "db"), "configuration error: .*only http://", "Warning")
    world.core.tasks[1]() -- the roots task has nothing to talk to: it returns at once
    assert.are.equal(0, #world.agent.requests)
  end)
end)
