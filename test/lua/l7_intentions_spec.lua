-- L7 intentions decided per request by connect_authorize on an HTTP stream:
-- the built bundle installed on a stub core, the destination's intention list
-- served by a scripted agent (match endpoint, /v1/agent/self, authorize), real
-- certificates, and regexes on a real PCRE2 engine (lua-rex-pcre2).
local certs = require("test.lua.support.certs")
local bundle = require("test.lua.support.installed_bundle")

local TD, WEB = bundle.TD, bundle.WEB

local dir, web_der, admin_der
setup(function()
  dir = certs.tmpdir()
  local ca = certs.ca(dir)
  web_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. WEB })
  admin_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:spiffe://" .. TD .. "/ns/default/dc/dc1/svc/admin" })
end)
teardown(function() certs.remove(dir) end)

local function l7(source, permissions, precedence)
  return { SourceName = source, SourceNS = "default", SourcePartition = "default", DestinationName = "api", DestinationNS = "default",
    SourceType = "consul", Action = "", Permissions = permissions, Precedence = precedence or 9 }
end
local function l4(source, action, precedence)
  return { SourceName = source, SourceNS = "default", DestinationName = "api", DestinationNS = "default", SourceType = "consul",
    Action = action, Precedence = precedence or (source == "*" and 8 or 9) }
end
local function allow(http) return { Action = "allow", HTTP = http } end
local function deny(http) return { Action = "deny", HTTP = http } end

-- The agent's /v1/agent/connect/authorize as Consul answers it (written here
-- independently of the bundle): the first intention whose source matches
-- governs; one with permissions gives "Matched L7 intention" (the agent cannot
-- evaluate them), one without gives its action; none gives the default policy.
local function blank(value, ...)
  if value == nil or value == "" then return true end
  for _, allowed in ipairs({ ... }) do if value == allowed then return true end end
  return false
end
local function consul_authorize(world, body)
  local source = body:match('"ClientCertURI":"[^"]*/svc/([^"/]+)"')
  for _, ixn in ipairs(world.intentions.api or {}) do
    if (ixn.SourceName == source or ixn.SourceName == "*") and blank(ixn.SourceNS, "default", "*")
      and blank(ixn.SourcePartition, "default", "*") and blank(ixn.SourcePeer) then
      if ixn.Permissions ~= nil and #ixn.Permissions > 0 then
        return 200, string.format('{"Authorized":false,"Reason":"Matched L7 intention: default/%s => default/api (Precedence: %d)"}', ixn.SourceName, ixn.Precedence)
      end
      return 200, string.format('{"Authorized":%s,"Reason":"Matched L4 intention: default/%s => default/api (Precedence: %d, Action: %s)"}',
        ixn.Action == "allow" and "true" or "false", ixn.SourceName, ixn.Precedence, ixn.Action == "allow" and "ALLOW" or "DENY")
    end
  end
  local allow = world.self ~= nil and world.self.DefaultIntentionPolicy == "allow"
  return 200, string.format('{"Authorized":%s,"Reason":"Default intention policy"}', allow and "true" or "false")
end

-- A world where `api` has `list` as intentions and the default policy is `default_policy`
-- ("allow" | "deny", read from /v1/agent/self), its list loaded by one task query.
local function world_with(list, default_policy, env)
  local world
  world = bundle.haproxy(env or { CONNECT_TRUST_DOMAIN = TD }, function(body) return consul_authorize(world, body) end)
  world.intentions.api = list
  world.self = { DefaultIntentionPolicy = default_policy or "deny" }
  world.poll("api")
  return world
end

local function decide(world, http, der)
  local txn = world.request(der or web_der, "api", http)
  return txn.vars["txn.connect_allowed"], txn.vars["txn.connect_reason"], txn
end

local function allowed(world, http, der) return (decide(world, http, der)) == 1 end

describe("L7 intentions", function()
  describe("paths", function()
    it("PathExact, PathPrefix and PathRegex (whole path), without the query", function()
      local world = world_with({ l7("web", {
        allow({ PathExact = "/exact" }),
        allow({ PathPrefix = "/prefix/" }),
        allow({ PathRegex = "/items/[0-9]+" }),
      }) })
      assert.is_true(allowed(world, { path = "/exact" }))
      assert.is_false(allowed(world, { path = "/exact/more" }))
      assert.is_false(allowed(world, { path = "/EXACT" }), "paths are case-sensitive")
      assert.is_true(allowed(world, { path = "/prefix/a/b" }))
      assert.is_false(allowed(world, { path = "/prefix" }))
      assert.is_true(allowed(world, { path = "/items/42" }))
      assert.is_false(allowed(world, { path = "/items/42/edit" }), "a regex matches the whole path")
      assert.is_false(allowed(world, { path = "/x/items/42" }), "a regex matches the whole path")
      -- HAProxy's `path` fetch carries no query; a regex that would need one never sees it.
      assert.is_true(allowed(world, { path = "/exact" }))
    end)

    it("a regex ending the path does not accept a trailing newline (PCRE2's $ would)", function()
      local world = world_with({ l7("web", { allow({ PathRegex = "/a" }) }) })
      assert.is_false(allowed(world, { path = "/a\n" }))
    end)
  end)

  describe("methods", function()
    it("allows only the listed methods", function()
      local world = world_with({ l7("web", { allow({ PathPrefix = "/", Methods = { "GET", "HEAD" } }) }) })
      assert.is_true(allowed(world, { method = "GET", path = "/" }))
      assert.is_true(allowed(world, { method = "HEAD", path = "/" }))
      assert.is_false(allowed(world, { method = "POST", path = "/" }))
      assert.is_false(allowed(world, { method = "get", path = "/" }), "methods are case-sensitive")
    end)
  end)

  describe("headers", function()
    local cases = {
      -- rule, value (nil: header missing), expected
      { { Name = "X-T", Present = true }, "any", true },
      { { Name = "X-T", Present = true }, nil, false },
      { { Name = "X-T", Present = true, Invert = true }, nil, true },
      { { Name = "X-T", Present = true, Invert = true }, "any", false },
      { { Name = "X-T", Exact = "Abc" }, "Abc", true },
      { { Name = "X-T", Exact = "Abc" }, "abc", false },
      { { Name = "X-T", Exact = "Abc", IgnoreCase = true }, "aBC", true },
      { { Name = "X-T", Exact = "Abc", Invert = true }, "abc", true },
      { { Name = "X-T", Exact = "Abc", Invert = true }, nil, false },
      { { Name = "X-T", Prefix = "Bear" }, "Bearer x", true },
      { { Name = "X-T", Prefix = "Bear" }, "bearer x", false },
      { { Name = "X-T", Prefix = "BEAR", IgnoreCase = true }, "bearer x", true },
      { { Name = "X-T", Prefix = "Bear", Invert = true }, "Token", true },
      { { Name = "X-T", Suffix = ".json" }, "a.json", true },
      { { Name = "X-T", Suffix = ".json" }, "a.JSON", false },
      { { Name = "X-T", Suffix = ".json", IgnoreCase = true }, "a.JSON", true },
      { { Name = "X-T", Suffix = "toolongsuffix" }, "short", false },
      { { Name = "X-T", Contains = "mid" }, "a-mid-b", true },
      { { Name = "X-T", Contains = "MID", IgnoreCase = true }, "a-mid-b", true },
      { { Name = "X-T", Contains = "m.d" }, "a-mid-b", false, "Contains is literal, not a pattern" },
      { { Name = "X-T", Contains = "mid", Invert = true }, "nope", true },
      { { Name = "X-T", Regex = "v[0-9]+" }, "v12", true },
      { { Name = "X-T", Regex = "v[0-9]+" }, "xv12", false, "a regex matches the whole value" },
      { { Name = "X-T", Regex = "v[0-9]+" }, "V12", false },
      { { Name = "X-T", Regex = "v[0-9]+", IgnoreCase = true }, "V12", false, "IgnoreCase does not apply to regexes (Envoy)" },
      { { Name = "X-T", Regex = "v[0-9]+", Invert = true }, "beta", true },
      { { Name = "X-T", Regex = "v[0-9]+", Invert = true }, nil, false, "Invert on a missing header matches only Present" },
    }
    for i, case in ipairs(cases) do
      local rule, value, expected, note = case[1], case[2], case[3], case[4]
      it(string.format("case %d: %s%s%s on %s → %s", i, rule.Exact and "Exact" or rule.Prefix and "Prefix" or rule.Suffix and "Suffix"
        or rule.Contains and "Contains" or rule.Regex and "Regex" or "Present", rule.IgnoreCase and " IgnoreCase" or "",
        rule.Invert and " Invert" or "", value == nil and "a missing header" or string.format("%q", value), tostring(expected)), function()
        local world = world_with({ l7("web", { allow({ Header = { rule } }) }) })
        local headers = {}
        if value ~= nil then headers["x-t"] = value end
        assert.are.equal(expected, allowed(world, { path = "/", headers = headers }), note)
      end)
    end

    it("matches all values of a repeated header joined with a comma, and needs every rule", function()
      local world = world_with({ l7("web", { allow({ Header = { { Name = "x-a", Exact = "1,2" }, { Name = "x-b", Present = true } } }) }) })
      assert.is_true(allowed(world, { path = "/", headers = { ["x-a"] = { "1", "2" }, ["x-b"] = "" } }))
      assert.is_false(allowed(world, { path = "/", headers = { ["x-a"] = { "1", "2" } } }), "every rule must hold")
    end)

    it("reads the headers only when the governing intention has a header rule", function()
      local world = world_with({ l7("web", { allow({ PathPrefix = "/" }) }) })
      local _, _, txn = decide(world, { path = "/", headers = { ["x-a"] = "1" } })
      assert.are.equal(0, txn.header_reads)
    end)
  end)

  describe("precedence", function()
    it("the first permission that matches decides, in order", function()
      local world = world_with({ l7("web", { deny({ PathPrefix = "/admin" }), allow({ PathPrefix = "/" }) }) })
      local verdict, reason = decide(world, { path = "/admin/users" })
      assert.are.equal(0, verdict)
      assert.matches("L7 intention default/web => default/api %(precedence 9%), permission 1: deny", reason)
      verdict, reason = decide(world, { path = "/public" })
      assert.are.equal(1, verdict)
      assert.matches("permission 2: allow", reason)
      local reversed = world_with({ l7("web", { allow({ PathPrefix = "/" }), deny({ PathPrefix = "/admin" }) }) })
      assert.is_true(allowed(reversed, { path = "/admin/users" }), "an earlier allow wins")
    end)

    it("no permission matched: the default policy, with no fall-through to a lower wildcard intention", function()
      local world = world_with({ l7("web", { allow({ PathPrefix = "/api/" }) }), l4("*", "allow") }, "deny")
      local verdict, reason = decide(world, { path = "/other" })
      assert.are.equal(0, verdict)
      assert.matches("no permission matched: Default intention policy %(deny, from /v1/agent/self%)", reason)
      assert.is_true(allowed(world, { path = "/other" }, admin_der), "the wildcard applies to other sources")
    end)

    it("default allow: a request no permission matches is allowed", function()
      local world = world_with({ l7("web", { deny({ PathPrefix = "/admin" }) }) }, "allow")
      assert.is_true(allowed(world, { path = "/anything" }))
      assert.is_false(allowed(world, { path = "/admin" }))
    end)

    it("CVE-2021-36213: a single L7 deny intention under default deny allows nothing else", function()
      local world = world_with({ l7("web", { deny({ PathExact = "/admin" }) }) }, "deny")
      for _, path in ipairs({ "/", "/admin", "/public", "/admin/x" }) do
        assert.is_false(allowed(world, { path = path }), path)
      end
      assert.is_false(allowed(world, { path = "/" }, admin_der), "a source no intention matches: default deny")
    end)

    it("L4 intentions decide every request on an HTTP stream, exact source before wildcard, as the agent answers them", function()
      local world = world_with({ l4("web", "deny", 9), l4("*", "allow", 8) }, "allow")
      local verdict, reason = decide(world, { path = "/" })
      assert.are.equal(0, verdict)
      assert.are.equal("Matched L4 intention: default/web => default/api (Precedence: 9, Action: DENY)", reason)
      assert.is_true(allowed(world, { path = "/" }, admin_der))
    end)

    it("a source no intention matches gets the default policy", function()
      local world = world_with({ l4("web", "allow") }, "deny")
      local verdict, reason = decide(world, { path = "/" }, admin_der)
      assert.are.equal(0, verdict)
      assert.are.equal("Default intention policy", reason)
    end)

    it("intentions for a peer, another namespace or another partition do not match a local client", function()
      local peered = l4("web", "allow"); peered.SourcePeer = "other-cluster"
      local elsewhere = l4("web", "allow"); elsewhere.SourceNS = "team"
      local partitioned = l4("web", "allow"); partitioned.SourcePartition = "p1"
      local wildcard_ns = l4("web", "allow"); wildcard_ns.SourceNS = "*"
      local world = world_with({ peered, elsewhere, partitioned }, "deny")
      assert.is_false(allowed(world, { path = "/" }))
      assert.is_true(allowed(world_with({ peered, wildcard_ns }, "deny"), { path = "/" }))
    end)
  end)

  describe("fails closed", function()
    it("refuses requests a permission with an unknown match type or a bad regex would decide", function()
      local world = world_with({ l7("web", {
        deny({ PathExact = "/blocked" }),
        allow({ PathPrefix = "/", QueryExact = "x" }),
        allow({ PathPrefix = "/" }),
      }) }, "allow")
      assert.is_false(allowed(world, { path = "/blocked" }), "an earlier permission still decides")
      local verdict, reason = decide(world, { path = "/x" })
      assert.are.equal(0, verdict)
      assert.matches("permission 2 cannot be enforced here: unknown HTTP match \"QueryExact\"", reason)
      local bad = world_with({ l7("web", { allow({ PathRegex = "([a-z" }) }) }, "allow")
      verdict, reason = decide(bad, { path = "/x" })
      assert.are.equal(0, verdict)
      assert.matches("path regex .* cannot be compiled", reason)
    end)

    it("refuses header rules with no or an unknown match type, JWT requirements and unknown actions", function()
      local function refused(permission, intention_extra)
        local intention = l7("web", { permission })
        for key, value in pairs(intention_extra or {}) do intention[key] = value end
        return not allowed(world_with({ intention }, "allow"), { path = "/", headers = { ["x-a"] = "1" } })
      end
      assert.is_true(refused(allow({ Header = { { Name = "x-a" } } })))
      assert.is_true(refused(allow({ Header = { { Name = "x-a", Matches = "1" } } })))
      assert.is_true(refused({ Action = "allow", HTTP = { PathPrefix = "/" }, JWT = { Providers = {} } }))
      assert.is_true(refused({ Action = "audit", HTTP = { PathPrefix = "/" } }))
      assert.is_true(refused(allow({ PathPrefix = "/" }), { JWT = { Providers = {} } }))
      assert.is_false(refused(allow({ PathPrefix = "/", Header = { { Name = "x-a", Exact = "1" } } })))
    end)

    it("refuses every request an L7 intention governs while the list cannot be read, then decides once it is", function()
      local world
      world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD }, function(body) return consul_authorize(world, body) end)
      world.self = { DefaultIntentionPolicy = "allow" }
      world.intentions.api = { l7("web", { allow({ PathPrefix = "/" }) }) }
      world.intentions_status = 403
      world.poll("api")
      local verdict, reason = decide(world, { path = "/" })
      assert.are.equal(0, verdict)
      assert.matches("intentions for api not loaded yet: permission denied", reason)
      world.intentions_status = nil
      world.poll("api")
      assert.is_true(allowed(world, { path = "/" }))
    end)

    it("refuses while the list is older than the index the controller saw (connect sync), then decides once it caught up", function()
      local world = world_with({ l7("web", { allow({ PathPrefix = "/" }) }) })
      assert.is_true(allowed(world, { path = "/admin" }))
      local stub = require("test.lua.support.haproxy_stub")
      assert.matches("api behind index 7 %(wanted 9%)", stub.cli(world.core, "connect sync api 9"))
      local verdict, reason = decide(world, { path = "/admin" })
      assert.are.equal(0, verdict)
      assert.are.equal("intentions for api not current yet (index 7, Consul is at 9)", reason)
      world.intentions.api = { l7("web", { deny({ PathPrefix = "/admin" }), allow({ PathPrefix = "/" }) }) }
      world.intentions_index = 9
      world.poll("api")
      assert.matches("api current index 9 %(wanted 9%)", stub.cli(world.core, "connect sync api 9"))
      assert.is_false(allowed(world, { path = "/admin" }))
      assert.is_true(allowed(world, { path = "/x" }))
    end)

    it("refuses an L7-governed request while the list disagrees with the agent", function()
      local world = world_with({ l4("web", "allow") })
      world.intentions.api = { l7("web", { allow({ PathPrefix = "/api/" }) }) }
      local verdict, reason = decide(world, { path = "/api/x" })
      assert.are.equal(0, verdict)
      assert.matches("being updated", reason)
    end)

    it("waits a bounded time for the first list, then refuses", function()
      local world
      world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD }, function(body) return consul_authorize(world, body) end)
      world.intentions.api = { l7("web", { allow({ PathPrefix = "/" }) }) }
      local before = world.core.clock_ms
      local verdict, reason = decide(world, { path = "/" })
      assert.are.equal(0, verdict)
      assert.are.equal("intentions for api not loaded yet", reason)
      assert.is_true(world.core.clock_ms - before >= 3000, "waited for the task")
    end)
  end)

  describe("keeping current", function()
    it("applies a changed list at the next query, and flushes cached TCP verdicts", function()
      local world = world_with({ l7("web", { allow({ PathPrefix = "/" }) }) })
      assert.is_true(allowed(world, { path = "/admin" }))
      world.intentions.api = { l7("web", { deny({ PathPrefix = "/admin" }), allow({ PathPrefix = "/" }) }) }
      world.intentions_index = 8
      world.poll("api")
      assert.is_false(allowed(world, { path = "/admin" }))
      assert.matches("index=7&wait=4s", world.intention_queries[2], nil, true)
      local stats = require("test.lua.support.haproxy_stub").cli(world.core, "connect cache stats")
      assert.matches("flushes: 1\n", stats)
    end)

    it("a new index with the same list is no change: nothing flushed", function()
      local world = world_with({ l7("web", { allow({ PathPrefix = "/" }) }) })
      assert.is_true(allowed(world, { path = "/admin" }))
      world.intentions_index = 8
      world.poll("api")
      local stub = require("test.lua.support.haproxy_stub")
      assert.matches("flushes: 0\n", stub.cli(world.core, "connect cache stats"))
      -- The next query waits on the new index.
      world.poll("api")
      assert.matches("index=8&wait=4s", world.intention_queries[#world.intention_queries], nil, true)
      assert.matches("flushes: 0\n", stub.cli(world.core, "connect cache stats"))
      -- A list that differs is a change again.
      world.intentions.api = { l7("web", { deny({ PathPrefix = "/admin" }), allow({ PathPrefix = "/" }) }) }
      world.intentions_index = 9
      world.poll("api")
      assert.is_false(allowed(world, { path = "/admin" }))
      assert.matches("flushes: 1\n", stub.cli(world.core, "connect cache stats"))
    end)

    it("a reply that is not the destination's list: requests refused, one warning, backoff (not a query per 100 ms), then recovery", function()
      local world = world_with({ l7("web", { allow({ PathPrefix = "/" }) }) })
      assert.is_true(allowed(world, { path = "/" }))
      local function warnings()
        local n = 0
        for _, entry in ipairs(world.core.logs) do if entry.message:find("intentions for api unusable", 1, true) then n = n + 1 end end
        return n
      end
      for _, body in ipairs({ '{"error":"upstream connect error","code":503}', '{"api":{"not":"a list"}}' }) do
        world.intentions_body = body
        world.intentions_index = world.intentions_index + 1
        local pauses = {}
        for i = 1, 4 do
          local before = world.core.clock_ms
          world.poll("api")
          pauses[i] = world.core.clock_ms - before
        end
        assert.is_true(pauses[1] >= 125 and pauses[4] >= 1000, "backoff: " .. table.concat(pauses, ", "))
        local verdict, reason = decide(world, { path = "/" })
        assert.are.equal(0, verdict)
        assert.matches("intention match reply", reason)
        world.intentions_body = nil
        world.poll("api")
        assert.is_true(allowed(world, { path = "/" }))
      end
      assert.are.equal(2, warnings())
      local recovered = 0
      for _, entry in ipairs(world.core.logs) do if entry.message:find("intentions for api readable again after 4 failed attempt", 1, true) then recovered = recovered + 1 end end
      assert.are.equal(2, recovered)
    end)

    it("ends its task once HAProxy is stopping", function()
      local world = world_with({ l4("web", "allow") })
      world.core.stopping = 1
      world.poll("api")
      assert.are.equal("dead", coroutine.status(world.watch_tasks.api))
    end)
  end)

  describe("the default policy", function()
    it("comes from /v1/agent/self: DefaultIntentionPolicy, else the ACL default, else allow", function()
      local function default_reason(self)
        local world
        world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD }, function(body) return consul_authorize(world, body) end)
        world.intentions.api = { l7("web", { allow({ PathPrefix = "/api/" }) }) }
        world.self = self
        world.poll("api")
        local verdict, reason = decide(world, { path = "/" })
        return verdict, reason
      end
      local verdict, reason = default_reason({ DefaultIntentionPolicy = "deny" })
      assert.are.equal(0, verdict); assert.matches("Default intention policy %(deny", reason)
      verdict, reason = default_reason({ ACLsEnabled = true, ACLDefaultPolicy = "deny" })
      assert.are.equal(0, verdict); assert.matches("Default behavior configured by ACLs %(deny", reason)
      verdict, reason = default_reason({ ACLsEnabled = false })
      assert.are.equal(1, verdict); assert.matches("Default behavior configured by ACLs %(allow", reason)
    end)

    it("without agent:read, asks the authorize endpoint about a probe source when no `*` intention hides it", function()
      local world
      world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD }, function(body)
        if not body:find("connect-haproxy-default-policy-probe", 1, true) then return consul_authorize(world, body) end
        return 200, '{"Authorized":false,"Reason":"Default behavior configured by ACLs"}'
      end)
      world.intentions.api = { l7("web", { allow({ PathPrefix = "/api/" }) }) }
      world.poll("api")
      local verdict, reason = decide(world, { path = "/other" })
      assert.are.equal(0, verdict)
      assert.matches("Default behavior configured by ACLs %(deny, from the agent's authorize endpoint%)", reason)
    end)

    it("unknown (no agent:read, a `*` intention): denies what it would decide and warns once, naming agent:read", function()
      local world
      world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD }, function(body) return consul_authorize(world, body) end)
      world.intentions.api = { l7("web", { allow({ PathPrefix = "/api/" }) }), l4("*", "allow") }
      world.poll("api")
      local verdict, reason = decide(world, { path = "/other" })
      assert.are.equal(0, verdict)
      assert.matches("default policy unknown", reason)
      assert.is_true(allowed(world, { path = "/api/x" }))
      local warnings = 0
      for _, entry in ipairs(world.core.logs) do
        if entry.level == "Warning" and entry.message:find("agent:read", 1, true) then warnings = warnings + 1 end
      end
      assert.are.equal(1, warnings)
    end)
  end)

  describe("logging", function()
    it("one line per refused request with the client, method, path and what decided; allowed requests are not logged", function()
      local world = world_with({ l7("web", { deny({ PathPrefix = "/admin" }), allow({ PathPrefix = "/" }) }) })
      local _, _, txn = decide(world, { method = "DELETE", path = "/admin/x" })
      assert.are.equal(1, #txn.logs)
      assert.are.equal("Info", txn.logs[1].level)
      assert.are.equal('connect_authorize: deny target=api client=' .. WEB .. ' method=DELETE path="/admin/x" reason="L7 intention default/web => default/api (precedence 9), permission 1: deny" via=permission', txn.logs[1].message)
      _, _, txn = decide(world, { path = "/ok" })
      assert.are.equal(0, #txn.logs)
      assert.are.equal("web", txn.vars["txn.connect_source"])
      assert.are.equal(WEB, txn.vars["txn.connect_spiffe"])
    end)
  end)

  describe("later requests of a connection", function()
    it("recall the identity the first request verified, without reading the certificate again", function()
      local world = world_with({ l7("web", { deny({ PathPrefix = "/admin" }), allow({ PathPrefix = "/" }) }) })
      local session = {}
      local first = world.request(web_der, "api", { path = "/x" }, { session = session })
      assert.are.equal(1, first.vars["txn.connect_allowed"])
      assert.are.equal("number", type(session["sess.connect_reading"]))
      local later = world.request(nil, "api", { path = "/admin/x" }, { session = session, der_error = "certificate fetched again" })
      assert.are.equal(0, later.vars["txn.connect_allowed"])
      assert.matches("permission 1: deny", later.vars["txn.connect_reason"], nil, true)
      assert.are.equal(WEB, later.vars["txn.connect_spiffe"])
      later = world.request(nil, "api", { path = "/y" }, { session = session, der_error = "certificate fetched again" })
      assert.are.equal(1, later.vars["txn.connect_allowed"])
    end)

    it("an id the cache does not hold means reading the certificate again, never an identity", function()
      local world = world_with({ l4("web", "allow") })
      local session = { ["sess.connect_reading"] = 424242 }
      local txn = world.request(nil, "api", { path = "/" }, { session = session })
      assert.are.equal(0, txn.vars["txn.connect_allowed"])
      assert.are.equal("no client certificate", txn.vars["txn.connect_reason"])
      txn = world.request(admin_der, "api", { path = "/" }, { session = session })
      assert.are.equal("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/admin", txn.vars["txn.connect_spiffe"])
    end)
  end)

  describe("passes (CONNECT_PASS_MAP): later requests of an L4-allowed source skip the action", function()
    local MAP = "/run/connect/passes.map"
    local KEY = "api|" .. WEB
    local function world_with_passes(list, default_policy)
      local world = world_with(list, default_policy, { CONNECT_TRUST_DOMAIN = TD, CONNECT_PASS_MAP = MAP })
      world.core.maps[MAP] = {}
      world.core.int_maps[MAP] = true -- as haproxy.cfg reads it (map_str_int)
      return world
    end

    it("an allow from an L4 intention sets the session's key and an entry that ends when the cached verdict does", function()
      local world = world_with_passes({ l4("web", "allow") })
      local fresh_until = tostring((world.core.clock_ms + 10000) // 1000) -- the allow TTL is 10 s
      local verdict, _, txn = decide(world, { path = "/anything" })
      assert.are.equal(1, verdict)
      assert.are.equal(KEY, txn.vars["sess.connect_pass_key"])
      assert.are.equal("Matched L4 intention: default/web => default/api (Precedence: 9, Action: ALLOW)", txn.vars["sess.connect_pass_reason"])
      assert.are.equal(fresh_until, world.core.maps[MAP][KEY])
    end)

    it("a source the default policy allows gets one too; a denied source, an L7-governed one and an unsafe path do not", function()
      local world = world_with_passes({ l4("admin", "deny"), l7("web", { allow({ PathPrefix = "/" }) }) }, "allow")
      assert.is_true(allowed(world, { path = "/x" }))
      assert.is_nil(world.core.maps[MAP][KEY], "an L7 permission decided: the next request may differ")
      assert.is_false(allowed(world, { path = "/x" }, admin_der))
      assert.is_nil(next(world.core.maps[MAP]))
      world = world_with_passes({}, "allow")
      local _, _, txn = decide(world, { path = "/a/%2e%2e/b" })
      assert.are.equal(0, txn.vars["txn.connect_allowed"])
      assert.is_nil(txn.vars["sess.connect_pass_key"])
      local fresh_until = tostring((world.core.clock_ms + 10000) // 1000)
      assert.is_true(allowed(world, { path = "/x" }))
      assert.are.equal(fresh_until, world.core.maps[MAP][KEY])
    end)

    it("an intention change, a default-policy change or `connect cache flush` removes every entry", function()
      local world = world_with_passes({ l4("web", "allow") })
      assert.is_true(allowed(world, { path = "/" }))
      assert.is_true(allowed(world, { path = "/" }, admin_der) == false)
      world.intentions.api = { l4("web", "deny") }
      world.intentions_index = 8
      world.poll("api")
      assert.is_nil(next(world.core.maps[MAP]), "revoked by the list change")
      assert.is_false(allowed(world, { path = "/" }))

      world.intentions.api = { l4("web", "allow") }
      world.intentions_index = 9
      world.poll("api")
      assert.is_true(allowed(world, { path = "/" }))
      assert.is_not_nil(world.core.maps[MAP][KEY])
      local out = require("test.lua.support.haproxy_stub").cli(world.core, "connect cache flush")
      assert.matches("flushed", out)
      assert.is_nil(next(world.core.maps[MAP]), "revoked by the flush")
      local stats = require("test.lua.support.haproxy_stub").cli(world.core, "connect cache stats")
      assert.matches("passes: 0\npasses_granted: 2\npasses_revoked: 2\n", stats)
    end)

    it("the controller's native L7 rules: on when the first list is the one they were rendered from, off at the next flush", function()
      local env = { CONNECT_TRUST_DOMAIN = TD, CONNECT_PASS_MAP = MAP, CONNECT_NATIVE_L7_RULES = "api@7" }
      local world = bundle.haproxy(env, function(body) return consul_authorize(world, body) end)
      world.core.maps[MAP] = {}
      world.core.int_maps[MAP] = true
      world.intentions.api = { l4("web", "allow") }
      world.self = { DefaultIntentionPolicy = "deny" }
      world.poll("api")
      assert.are.equal("0", world.core.maps[MAP].l7, "an integer: a text value would be dropped by map_str_int")
      world.intentions.api = { l4("web", "deny") }
      world.intentions_index = 8
      world.poll("api")
      assert.is_nil(world.core.maps[MAP].l7)
      -- The controller confirms rules that still fit the new list.
      assert.are.equal("api stale: list at index 8, rules rendered at 7\n", require("test.lua.support.haproxy_stub").cli(world.core, "connect l7-rules current api 7"))
      assert.are.equal("api enabled at index 8\n", require("test.lua.support.haproxy_stub").cli(world.core, "connect l7-rules current api 8"))
      assert.are.equal("0", world.core.maps[MAP].l7)
      -- A sync to an index newer than the authorizer's list switches them off before that list arrives,
      -- and rules from the older list cannot be switched on again.
      require("test.lua.support.haproxy_stub").cli(world.core, "connect sync api 9")
      assert.is_nil(world.core.maps[MAP].l7)
      assert.matches("^api stale", require("test.lua.support.haproxy_stub").cli(world.core, "connect l7-rules current api 8"))
      assert.is_nil(world.core.maps[MAP].l7)
    end)

    it("native L7 rules rendered from another list stay off", function()
      local env = { CONNECT_TRUST_DOMAIN = TD, CONNECT_PASS_MAP = MAP, CONNECT_NATIVE_L7_RULES = "api@6" }
      local world = bundle.haproxy(env, function(body) return consul_authorize(world, body) end)
      world.core.maps[MAP] = {}
      world.intentions.api = { l4("web", "allow") }
      world.poll("api")
      assert.is_nil(world.core.maps[MAP].l7)
    end)

    it("a map haproxy.cfg does not reference: one warning, the request still decided, no key set", function()
      local world = world_with(nil, nil, { CONNECT_TRUST_DOMAIN = TD, CONNECT_PASS_MAP = "/not/declared.map" })
      world.intentions.api = { l4("web", "allow") }
      world.intentions_index = 10
      world.poll("api")
      local verdict, _, txn = decide(world, { path = "/" })
      assert.are.equal(1, verdict)
      assert.is_nil(txn.vars["sess.connect_pass_key"])
      assert.are.equal(1, #txn.logs)
      assert.matches("CONNECT_PASS_MAP cannot be written %(.*unknown map file '/not/declared.map'", txn.logs[1].message)
      _, _, txn = decide(world, { path = "/" })
      assert.are.equal(0, #txn.logs, "warned once")
    end)
  end)

  describe("on a TCP stream", function()
    it("keeps the agent's verdict per connection and says when an L7 intention is the reason", function()
      local world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD }, function()
        return 200, '{"Authorized":false,"Reason":"Matched L7 intention: default/web => default/db (ID: x, Precedence: 9)"}'
      end)
      local txn = world.run(web_der, nil, "db")
      assert.are.equal(0, txn.vars["txn.connect_allowed"])
      assert.matches("^L7 intention on a TCP service %(permissions need protocol http%): Matched L7 intention", txn.vars["txn.connect_reason"])
    end)
  end)
end)
