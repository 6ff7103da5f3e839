-- The path an L7 rule is matched against is the path forwarded: the normal
-- form (request-path.ts), and connect_authorize refusing any other, so that a
-- deny on /admin cannot be walked around.
local ch = dofile("dist/connect-haproxy.lua")
local certs = require("test.lua.support.certs")
local bundle = require("test.lua.support.installed_bundle")

local normalize, problem_of = ch.requestPath.normalizePath, ch.requestPath.pathProblem

describe("request paths", function()
  it("computes the normal form HAProxy's normalize-uri lines produce", function()
    local cases = {
      { "/admin", "/admin" },
      { "/a/../admin", "/admin" },
      { "//admin", "/admin" },
      { "/%61dmin", "/admin" },
      { "/public/%2e%2e/admin", "/admin" },
      { "/public/%2E%2E/admin", "/admin" },
      { "/./admin", "/admin" },
      { "/../admin", "/admin" },
      { "/a//../admin", "/admin" },
      { "/a/b/..", "/a/" },
      { "/a/.", "/a/" },
      { "/.well-known/x", "/.well-known/x" },
      { "/%7euser", "/~user" },
      { "/a%3fb", "/a%3Fb" },
      { "/", "/" },
    }
    for _, case in ipairs(cases) do
      assert.are.equal(case[2], (normalize(case[1])), case[1])
    end
  end)

  it("refuses what cannot be normalized safely", function()
    for path, why in pairs({
      ["/a%2fadmin"] = "encoded / or",
      ["/a%5Cadmin"] = "encoded / or",
      ["/a\\admin"] = "backslash",
      ["/a%zz"] = "invalid percent%-encoding",
      ["/a%4"] = "invalid percent%-encoding",
      ["/a%%36%36"] = "invalid percent%-encoding",
      ["/a\0b"] = "NUL",
      ["/a%00b"] = "NUL",
      ["admin"] = "does not start with /",
      ["*"] = "does not start with /",
    }) do
      local normal, problem = normalize(path)
      assert.is_nil(normal, path)
      assert.matches(why, problem, nil, nil, path)
    end
  end)

  it("accepts only a path already in normal form (what HAProxy forwards)", function()
    assert.are.equal("", problem_of("/admin"))
    assert.matches("not normalized", problem_of("/a/../admin"))
    assert.matches("no request path", problem_of(nil))
  end)

  it("no bypass of a deny on /admin: each attempt is refused, never matched as something else", function()
    local dir = certs.tmpdir()
    local der = certs.leaf(dir, certs.ca(dir), { extensions = "subjectAltName=URI:" .. bundle.WEB })
    certs.remove(dir)
    -- The agent answers as Consul does for a source an L7 intention governs.
    local world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = bundle.TD }, function()
      return 200, '{"Authorized":false,"Reason":"Matched L7 intention: default/web => default/api (Precedence: 9)"}'
    end)
    world.self = { DefaultIntentionPolicy = "deny" }
    world.intentions.api = { {
      SourceName = "web", SourceNS = "default", DestinationName = "api", Precedence = 9, SourceType = "consul",
      Permissions = { { Action = "deny", HTTP = { PathPrefix = "/admin" } }, { Action = "allow", HTTP = { PathPrefix = "/" } } },
    } }
    world.poll("api")
    for _, path in ipairs({ "/a/../admin", "//admin", "/%61dmin", "/public/%2e%2e/admin", "/public%2f..%2fadmin", "/public/..%5cadmin", "/admin" }) do
      local txn = world.request(der, "api", { path = path })
      assert.are.equal(0, txn.vars["txn.connect_allowed"], path)
    end
    assert.are.equal(1, world.request(der, "api", { path = "/public/x" }).vars["txn.connect_allowed"])
  end)
end)
