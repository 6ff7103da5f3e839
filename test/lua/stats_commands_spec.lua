-- The stats-socket commands (connect cache flush|stats, connect show config)
-- on the built bundle installed on a stub core.
local stub = require("test.lua.support.haproxy_stub")
local certs = require("test.lua.support.certs")
local bundle = require("test.lua.support.installed_bundle")

local TD, WEB = bundle.TD, bundle.WEB
local haproxy = bundle.haproxy

local dir, web_der, two_uri_der
setup(function()
  dir = certs.tmpdir()
  local ca = certs.ca(dir)
  web_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. WEB })
  two_uri_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. WEB .. ",URI:" .. WEB })
end)
teardown(function() certs.remove(dir) end)

describe("stats-socket commands", function()
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

  it("reports decisions by verdict and origin, and the agent calls, in Prometheus text", function()
    local verdict = true
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD }, function()
      return 200, '{"Authorized":' .. tostring(verdict) .. ',"Reason":"r"}'
    end)
    world.run(web_der, nil, "db")
    world.run(web_der, nil, "db")
    verdict = false
    world.run(web_der, nil, "api")
    world.run(two_uri_der, nil, "db")
    world.agent.down = true
    world.run(web_der, nil, "web")
    local text = stub.cli(world.core, "connect metrics")
    assert.matches('connect_authorizer_decisions_total{verdict="allow",origin="agent"} 1\n', text, 1, true)
    assert.matches('connect_authorizer_decisions_total{verdict="allow",origin="cache"} 1\n', text, 1, true)
    assert.matches('connect_authorizer_decisions_total{verdict="deny",origin="agent"} 1\n', text, 1, true)
    assert.matches('connect_authorizer_decisions_total{verdict="deny",origin="agent-error"} 1\n', text, 1, true)
    assert.matches('connect_authorizer_decisions_total{verdict="deny",origin="identity"} 1\n', text, 1, true)
    assert.matches("connect_authorizer_agent_calls_total 3\n", text, 1, true)
    assert.matches("connect_authorizer_agent_errors_total 1\n", text, 1, true)
    assert.matches("connect_authorizer_cache_hits_total 1\n", text, 1, true)
    assert.matches('connect_authorizer_agent_call_seconds_bucket{le="+Inf"} 3\n', text, 1, true)
    assert.matches("# TYPE connect_authorizer_agent_call_seconds histogram\n", text, 1, true)
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

describe("lua.connect_control (the commands over HTTP, for the controller)", function()
  it("answers each command as the stats socket does, the path naming its words", function()
    local verdict = true
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD }, function()
      return 200, '{"Authorized":' .. tostring(verdict) .. ',"Reason":"r"}'
    end)
    world.run(web_der, nil, "db")
    local stats = stub.http_service(world.core, "connect_control", "/connect/cache/stats")
    assert.are.equal(200, stats.status)
    assert.are.equal("text/plain", stats.headers["content-type"])
    assert.are.equal(stub.cli(world.core, "connect cache stats"), stats.body)
    assert.are.equal(tostring(#stats.body), stats.headers["content-length"])
    verdict = false
    local flushed = stub.http_service(world.core, "connect_control", "/connect/cache/flush", "POST")
    assert.are.same({ 200, "flushed 1 cached verdicts\n" }, { flushed.status, flushed.body })
    assert.are.equal(0, world.run(web_der, nil, "db").vars["txn.connect_allowed"])
  end)

  it("passes the words after the command, percent-escapes decoded", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    local usage = stub.http_service(world.core, "connect_control", "/connect/sync")
    assert.are.same({ 200, "usage: connect sync <target> <index>\n" }, { usage.status, usage.body })
    assert.are.same({ "connect", "sync", "my db", "7" }, bundle.ch.statsCommands.pathWords("/connect/sync/my%20db/7"))
  end)

  it("answers 404 to an unknown command and 500 with the error to one that fails, without raising", function()
    local world = haproxy({ CONNECT_TRUST_DOMAIN = TD })
    local unknown = stub.http_service(world.core, "connect_control", "/connect/nothing")
    assert.are.same({ 404, "unknown command: connect nothing\n" }, { unknown.status, unknown.body })
    assert.are.equal(404, stub.http_service(world.core, "connect_control", "/").status)
    world.installed.context.intentions.all = function() error("broken on purpose") end
    local broken = stub.http_service(world.core, "connect_control", "/connect/intentions")
    assert.are.equal(500, broken.status)
    assert.matches("^error: .*broken on purpose\n$", broken.body)
    assert.matches("^error: .*broken on purpose\n$", stub.cli(world.core, "connect intentions"))
  end)
end)
