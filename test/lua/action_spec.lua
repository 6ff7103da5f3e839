-- The connect_authorize action end to end on the built bundle: install() on
-- a stub core, a stub TXN carrying real openssl certificates, and a scripted
-- agent behind a fake cosocket (so the HTTP and JSON code runs too).
local ch = dofile("dist/connect-haproxy.lua")
local stub = require("test.lua.support.haproxy_stub")
local certs = require("test.lua.support.certs")

local TD = "11111111-2222-3333-4444-555555555555.consul"
local WEB = "spiffe://" .. TD .. "/ns/default/dc/dc1/svc/web"

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

-- A stubbed HAProxy with the bundle installed. `policy(body)` answers authorize calls.
local function haproxy(env, policy)
  local world = { authorize_bodies = {} }
  world.agent = stub.agent(function(request)
    local path = request:match("^%u+ (%S+)")
    if path:find("^/v1/agent/connect/ca/roots") then
      return 200, '{"ActiveRootID":"x","TrustDomain":"' .. TD .. '","Roots":[]}', { ["X-Consul-Index"] = "12" }
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

describe("CLI commands", function()
  it("flushes the cache so the next connection asks the agent again", function()
    local verdict = true
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD }, function()
      return 200, '{"Authorized":' .. tostring(verdict) .. ',"Reason":"r"}'
    end)
    assert.are.equal(1, world.run(web_der, nil, "db").vars["txn.connect_allowed"])
    verdict = false
    assert.are.equal(1, world.run(web_der, nil, "db").vars["txn.connect_allowed"], "cached")
    assert.are.equal("flushed 1 cached verdicts\n", stub.cli(world.core, "connect cache flush"))
    assert.are.equal(0, world.run(web_der, nil, "db").vars["txn.connect_allowed"])
  end)

  it("reports cache statistics", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    world.run(web_der, nil, "db")
    world.run(web_der, nil, "db")
    world.run(web_der, nil, "api")
    world.agent.down = true
    world.run(web_der, nil, "web")
    local stats = stub.cli(world.core, "connect cache stats")
    assert.matches("entries: 2\n", stats)
    assert.matches("hits: 1\n", stats)
    assert.matches("misses: 3\n", stats)
    assert.matches("agent_calls: 3\n", stats)
    assert.matches("errors: 1\n", stats)
    assert.matches("capacity: 10000\n", stats)
  end)

  it("reads each distinct certificate once (identity cache), bad ones included", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    for _ = 1, 3 do
      assert.are.equal(1, world.run(web_der:sub(1), nil, "db").vars["txn.connect_allowed"])
      local txn = world.run(two_uri_der:sub(1), nil, "db")
      assert.are.equal(0, txn.vars["txn.connect_allowed"])
      assert.matches("2 URI subjectAltNames", txn.vars["txn.connect_reason"])
    end
    assert.matches("certificates_cached: 2\n", stub.cli(world.core, "connect cache stats"))
    -- The cached identity is still checked against the trust domain and the cache of verdicts.
    world.installed.context.authorizer:flush()
    assert.are.equal(1, world.run(web_der, nil, "db").vars["txn.connect_allowed"])
    assert.are.equal(2, #world.authorize_bodies)
  end)

  it("shows the configuration without the token", function()
    local world = haproxy({
      CONSUL_HTTP_ADDR = "http://127.0.0.1:18500/", CONSUL_HTTP_TOKEN = "super-secret-token", CONNECT_ALLOW_TTL = "30s",
      CONNECT_DENY_TTL = "500ms", CONNECT_CACHE_SIZE = "77", CONNECT_AGENT_DOWN_GRACE = "1h", CONNECT_DEFAULT_TARGET = "db",
      CONNECT_AGENT_READ_TIMEOUT = "soon",
    })
    local text = stub.cli(world.core, "connect show config")
    assert.is_nil(text:find("super-secret-token", 1, true))
    assert.matches("token: set %(from CONSUL_HTTP_TOKEN%)\n", text)
    assert.matches("agent: 127%.0%.0%.1:18500\n", text)
    assert.matches("allow_ttl_ms: 30000\n", text)
    assert.matches("deny_ttl_ms: 500\n", text)
    assert.matches("cache_size: 77\n", text)
    assert.matches("agent_down_grace_ms: 300000\n", text, "capped at 5 minutes")
    assert.matches("agent_read_timeout_ms: 2000\n", text, "bad value: default")
    assert.matches("warning: CONNECT_AGENT_READ_TIMEOUT=\"soon\" is not a duration", text)
    assert.matches("default_target: db\n", text)
    assert.matches("trust_domain: unknown %(not fetched yet%)\n", text)
    assert.matches("token: not set\n", stub.cli(haproxy().core, "connect show config"))
  end)
end)

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
