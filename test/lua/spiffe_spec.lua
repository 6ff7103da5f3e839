-- SPIFFE ID parsing on the built bundle.
local ch = dofile("dist/connect-haproxy.lua")
local spiffe = ch.spiffe

local TD = "11111111-2222-3333-4444-555555555555.consul"

local function refused(uri, pattern)
  local ok, identity, why = pcall(spiffe.parseServiceIdentity, uri)
  assert(ok, "parseServiceIdentity raised: " .. tostring(identity))
  assert.is_nil(identity, uri .. " was accepted")
  assert.matches(pattern, why)
  return why
end

describe("spiffe.parseServiceIdentity", function()
  it("parses a default-partition service ID", function()
    local uri = "spiffe://" .. TD .. "/ns/default/dc/dc1/svc/web"
    local identity, why = spiffe.parseServiceIdentity(uri)
    assert.is_nil(why)
    assert.are.same({
      uri = uri, trustDomain = TD, partition = "default", namespace = "default", datacenter = "dc1", service = "web",
    }, identity)
  end)

  it("parses partitions and namespaces", function()
    local identity = spiffe.parseServiceIdentity("spiffe://" .. TD .. "/ap/team-a/ns/payments/dc/eu-west/svc/billing-api")
    assert.are.equal("team-a", identity.partition)
    assert.are.equal("payments", identity.namespace)
    assert.are.equal("eu-west", identity.datacenter)
    assert.are.equal("billing-api", identity.service)
  end)

  it("percent-decodes each segment after splitting, so %2F cannot add a segment", function()
    local identity = spiffe.parseServiceIdentity("spiffe://" .. TD .. "/ns/my%20ns/dc/dc%2D1/svc/a%2Fb")
    assert.are.equal("my ns", identity.namespace)
    assert.are.equal("dc-1", identity.datacenter)
    assert.are.equal("a/b", identity.service)
    local partitioned = spiffe.parseServiceIdentity("spiffe://" .. TD .. "/ap/p%41rt/ns/default/dc/dc1/svc/web")
    assert.are.equal("pArt", partitioned.partition)
  end)

  it("refuses malformed or control-character escapes", function()
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/we%", "percent%-encoding")
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/we%4", "percent%-encoding")
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/we%zz", "percent%-encoding")
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/we%0a", "percent%-encoding")
    refused("spiffe://" .. TD .. "/ap/%00/ns/default/dc/dc1/svc/web", "percent%-encoding")
  end)

  it("lowercases the trust domain and accepts an upper-case scheme", function()
    local identity = spiffe.parseServiceIdentity("SPIFFE://ABC.Consul/ns/default/dc/dc1/svc/Web")
    assert.are.equal("abc.consul", identity.trustDomain)
    assert.are.equal("Web", identity.service)
    assert.is_true(spiffe.inTrustDomain(identity, "abc.CONSUL"))
    assert.is_false(spiffe.inTrustDomain(identity, "other.consul"))
  end)

  it("refuses other schemes", function()
    refused("https://" .. TD .. "/ns/default/dc/dc1/svc/web", "wrong scheme")
    refused("spiffe:/" .. TD .. "/ns/default/dc/dc1/svc/web", "wrong scheme")
    refused("urn:uuid:1234", "wrong scheme")
    refused("", "wrong scheme")
  end)

  it("refuses agent, server and mesh-gateway identities", function()
    refused("spiffe://" .. TD .. "/agent/client/dc/dc1/id/node-1", "agent")
    refused("spiffe://" .. TD .. "/ap/default/agent/client/dc/dc1/id/node-1", "agent")
    refused("spiffe://" .. TD .. "/agent/server/dc/dc1", "agent")
    refused("spiffe://" .. TD .. "/gateway/mesh/dc/dc1", "mesh gateway")
    refused("spiffe://" .. TD .. "/ap/p1/gateway/mesh/dc/dc1", "mesh gateway")
  end)

  it("refuses IDs that are not exactly the service shape", function()
    refused("spiffe://" .. TD, "no path")
    refused("spiffe://" .. TD .. "/", "not a Consul service")
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/web/extra", "not a Consul service")
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/", "not a Consul service")
    refused("spiffe://" .. TD .. "/ns//dc/dc1/svc/web", "not a Consul service")
    refused("spiffe://" .. TD .. "/dc/dc1/ns/default/svc/web", "not a Consul service")
    refused("spiffe://" .. TD .. "//ns/default/dc/dc1/svc/web", "not a Consul service")
  end)

  it("refuses queries, fragments, whitespace, userinfo and ports", function()
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/web?x=1", "query")
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/web#frag", "query")
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/w eb", "spaces")
    refused("spiffe://" .. TD .. "/ns/default/dc/dc1/svc/w\0eb", "control")
    refused("spiffe://user@" .. TD .. "/ns/default/dc/dc1/svc/web", "trust domain")
    refused("spiffe://" .. TD .. ":8443/ns/default/dc/dc1/svc/web", "trust domain")
    refused("spiffe:///ns/default/dc/dc1/svc/web", "trust domain")
  end)

  it("sanitizes what it quotes from untrusted input", function()
    local why = refused("https://evil\"\\" .. string.rep("x", 500), "wrong scheme")
    assert.is_nil(why:find('evil"', 1, true))
    assert.is_true(#why < 300)
    refused("spiffe://" .. string.rep("a", 3000), "too long")
  end)
end)
