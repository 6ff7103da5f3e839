-- The connect_verify_upstream action on the built bundle: install() on a stub
-- core, a stub TXN whose ssl_s_der returns real openssl certificates (the
-- upstream server's), and the trust domain configured or learned from a
-- scripted agent, as the authorizer gets it.
local ch = dofile("dist/connect-haproxy.lua")
local stub = require("test.lua.support.haproxy_stub")
local certs = require("test.lua.support.certs")

local TD = "11111111-2222-3333-4444-555555555555.consul"
local DB = "spiffe://" .. TD .. "/ns/default/dc/dc1/svc/db"

local dir, db_der, web_der, foreign_db_der, two_uri_der, dns_only_der, agent_der
setup(function()
  dir = certs.tmpdir()
  local ca = certs.ca(dir)
  db_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. DB })
  web_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:spiffe://" .. TD .. "/ns/default/dc/dc1/svc/web" })
  foreign_db_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:spiffe://other.consul/ns/default/dc/dc1/svc/db" })
  two_uri_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. DB .. ",URI:" .. DB })
  dns_only_der = certs.leaf(dir, ca, { extensions = "subjectAltName=DNS:db.example" })
  agent_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:spiffe://" .. TD .. "/agent/client/dc/dc1/id/node1" })
end)
teardown(function() certs.remove(dir) end)

-- A stubbed HAProxy with the bundle installed; the agent only answers CA roots.
local function haproxy(env)
  local world = { roots_calls = 0 }
  world.agent = stub.agent(function(request)
    assert.matches("^GET /v1/agent/connect/ca/roots", request, "the upstream check calls nothing but the CA roots")
    world.roots_calls = world.roots_calls + 1
    return 200, '{"ActiveRootID":"x","TrustDomain":"' .. TD .. '","Roots":[]}', { ["X-Consul-Index"] = "7" }
  end)
  world.core = stub.core(world.agent)
  world.installed = ch.install(world.core, stub.env(env or { CONNECT_TRUST_DOMAIN = TD }))
  function world.check(server_der, expected, opts)
    opts = opts or {}
    opts.server_der = server_der
    local txn = stub.txn(nil, opts)
    local result = world.core.actions.connect_verify_upstream.fn(txn, expected)
    assert.is_nil(result, "the action returns nothing (act.CONTINUE)")
    return txn
  end
  return world
end

local function refused(txn, pattern)
  assert.are.equal(0, txn.vars["txn.connect_upstream_ok"])
  assert.matches(pattern, txn.vars["txn.connect_upstream_reason"])
  assert.are.equal("Warning", txn.logs[#txn.logs].level)
  assert.matches("^connect_verify_upstream: refuse ", txn.logs[#txn.logs].message)
end

describe("connect_verify_upstream", function()
  it("is registered for tcp-res and http-res with one mandatory argument", function()
    local action = haproxy().core.actions.connect_verify_upstream
    assert.are.same({ "tcp-res", "http-res" }, action.where)
    assert.are.equal(1, action.nargs)
  end)

  it("passes the server whose certificate names the expected service, silently", function()
    local txn = haproxy().check(db_der, "db")
    assert.are.equal(1, txn.vars["txn.connect_upstream_ok"])
    assert.are.equal(DB, txn.vars["txn.connect_upstream_spiffe"])
    assert.matches("server is " .. DB, txn.vars["txn.connect_upstream_reason"], 1, true)
    assert.are.same({}, txn.logs)
  end)

  it("refuses another service's valid certificate and says which", function()
    local txn = haproxy().check(web_der, "db")
    refused(txn, "server is service web, not db")
    assert.matches("server=spiffe://", txn.logs[1].message, 1, true)
  end)

  it("refuses the expected service from a foreign trust domain", function()
    refused(haproxy().check(foreign_db_der, "db"), "server trust domain other%.consul is not this cluster's")
  end)

  it("refuses certificates that do not name exactly one service", function()
    local world = haproxy()
    refused(world.check(two_uri_der, "db"), "server certificate has 2 URI subjectAltNames")
    refused(world.check(dns_only_der, "db"), "server certificate has no URI subjectAltName")
    refused(world.check(agent_der, "db"), "names a Consul agent")
  end)

  it("refuses when there is no server certificate, or garbage", function()
    local world = haproxy()
    refused(world.check(nil, "db"), "no server certificate")
    refused(world.check("", "db"), "no server certificate")
    refused(world.check("\48\130\1\0garbage", "db"), "unusable server certificate")
    refused(world.check(db_der:sub(1, 100), "db"), "unusable server certificate")
  end)

  it("refuses when the fetch raises, and the error does not escape", function()
    refused(haproxy().check(nil, "db", { server_der_error = "boom from ssl_s_der" }), "internal error: .*boom from ssl_s_der")
  end)

  it("refuses an empty expected service", function()
    refused(haproxy().check(db_der, ""), "no expected service")
  end)

  it("leaves no pass behind when setting the variables fails", function()
    local world = haproxy()
    local txn = stub.txn(nil, { server_der = db_der })
    function txn:set_var(name, value)
      if name ~= "txn.connect_upstream_ok" then error("no room for variables") end
      self.vars[name] = value
    end
    world.core.actions.connect_verify_upstream.fn(txn, "db")
    assert.are.equal(0, txn.vars["txn.connect_upstream_ok"])
  end)

  it("parses a certificate once, then answers from the cache by its DER", function()
    local world = haproxy()
    local cache = world.installed.upstreamContext.identities
    world.check(db_der, "db")
    world.check(web_der, "db")
    world.check(db_der, "db")
    assert.are.equal(2, cache:size())
    -- The cache holds what the certificate says, not the verdict: another expected service still refuses.
    refused(world.check(db_der, "web"), "server is service db, not web")
  end)

  it("uses the trust domain learned from the agent when none is configured", function()
    local world = haproxy({})
    local txn = world.check(db_der, "db")
    assert.are.equal(1, txn.vars["txn.connect_upstream_ok"], tostring(txn.vars["txn.connect_upstream_reason"]))
    assert.are.equal(1, world.roots_calls)
    refused(world.check(foreign_db_der, "db"), "not this cluster's")
  end)

  it("refuses while the trust domain cannot be learned", function()
    local world = haproxy({})
    world.agent.down = true
    refused(world.check(db_der, "db"), "trust domain unknown")
  end)

  describe("server passes (CONNECT_SERVER_PASS_MAP)", function()
    local MAP = "/run/connect/servers.map"
    local function fingerprint(der)
      return (stub.sha1(der):gsub(".", function(c) return string.format("%02X", c:byte()) end))
    end

    it("an HTTP response from a verified server stores its certificate's fingerprint → service; TCP and refusals store nothing", function()
      local world = haproxy({ CONNECT_TRUST_DOMAIN = TD, CONNECT_SERVER_PASS_MAP = MAP })
      world.core.maps[MAP] = {}
      world.check(db_der, "db")
      assert.is_nil(next(world.core.maps[MAP]), "TCP: checked once per connection anyway")
      world.check(web_der, "db", { http = { path = "/" } })
      assert.is_nil(next(world.core.maps[MAP]), "a refused server gets no pass")
      local txn = world.check(db_der, "db", { http = { path = "/" } })
      assert.are.equal(1, txn.vars["txn.connect_upstream_ok"])
      assert.are.same({ [fingerprint(db_der)] = "db" }, world.core.maps[MAP])
    end)

    it("a map haproxy.cfg does not reference: one warning, the response still checked", function()
      local world = haproxy({ CONNECT_TRUST_DOMAIN = TD, CONNECT_SERVER_PASS_MAP = "/missing.map" })
      local txn = world.check(db_der, "db", { http = { path = "/" } })
      assert.are.equal(1, txn.vars["txn.connect_upstream_ok"])
      assert.are.equal(1, #txn.logs)
      assert.matches("CONNECT_SERVER_PASS_MAP cannot be written", txn.logs[1].message, nil, true)
      txn = world.check(db_der, "db", { http = { path = "/" } })
      assert.are.equal(0, #txn.logs)
    end)

  end)
end)
