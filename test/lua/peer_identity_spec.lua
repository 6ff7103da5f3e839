-- Certificate → verified identity, shared by connect_authorize (clients) and
-- connect_verify_upstream (servers): the DER read once per distinct
-- certificate, the trust domain checked on every call.
local ch = dofile("dist/connect-haproxy.lua")
local certs = require("test.lua.support.certs")
local peers = ch.peerIdentity

local TD = "11111111-2222-3333-4444-555555555555.consul"
local WEB = "spiffe://" .. TD .. "/ns/default/dc/dc1/svc/web"

local dir, web_der, foreign_der, agent_der, two_uri_der
setup(function()
  dir = certs.tmpdir()
  local ca = certs.ca(dir)
  web_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. WEB, serial = "0x00c0ffee" })
  foreign_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:spiffe://other.consul/ns/default/dc/dc1/svc/web" })
  agent_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:spiffe://" .. TD .. "/agent/client/dc/dc1/id/node1" })
  two_uri_der = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. WEB .. ",URI:" .. WEB })
end)
teardown(function() certs.remove(dir) end)

-- Stands for a TrustDomainSource: `answer` is what ensure() returns.
local function trust_domains(answer, err)
  local source = { answer = answer, err = err, calls = 0 }
  function source:ensure()
    self.calls = self.calls + 1
    return self.answer, self.err
  end
  return source
end

describe("PeerIdentities", function()
  it("verifies a service of this cluster and can say its serial as Consul writes it", function()
    local identities = peers.newPeerIdentities(peers.CLIENT_ROLE, trust_domains(TD))
    local reading, problem, kind = identities:verify(web_der)
    assert.are.equal("", problem)
    assert.are.equal("", kind)
    assert.are.equal(WEB, reading.identity.uri)
    assert.are.equal("web", reading.identity.service)
    assert.are.equal("c0:ff:ee", reading.serialOf())
  end)

  it("names the missing certificate as its role says", function()
    local clients = peers.newPeerIdentities(peers.CLIENT_ROLE, trust_domains(TD))
    local servers = peers.newPeerIdentities(peers.SERVER_ROLE, trust_domains(TD))
    for _, der in ipairs({ false, "" }) do
      local reading, problem, kind = clients:verify(der or nil)
      assert.is_nil(reading)
      assert.are.equal("client certificate unavailable", problem)
      assert.are.equal(peers.IDENTITY_PROBLEM, kind)
      assert.are.equal("no server certificate (not a TLS server connection?)", select(2, servers:verify(der or nil)))
    end
  end)

  it("says why a certificate is unusable, naming the role", function()
    local clients = peers.newPeerIdentities(peers.CLIENT_ROLE, trust_domains(TD))
    local servers = peers.newPeerIdentities(peers.SERVER_ROLE, trust_domains(TD))
    local cases = {
      { web_der:sub(1, 100), "^unusable client certificate: ", "^unusable server certificate: " },
      { two_uri_der, "^client certificate has 2 URI subjectAltNames", "^server certificate has 2 URI subjectAltNames" },
      { agent_der, "^SPIFFE ID names a Consul agent", "^server SPIFFE ID names a Consul agent" },
    }
    for _, case in ipairs(cases) do
      local reading, problem, kind = clients:verify(case[1])
      assert.is_nil(reading.identity)
      assert.matches(case[2], problem)
      assert.are.equal(peers.IDENTITY_PROBLEM, kind)
      assert.matches(case[3], select(2, servers:verify(case[1])))
    end
  end)

  it("reads each distinct certificate once, bad ones included, within its capacity", function()
    local identities = peers.newPeerIdentities(peers.SERVER_ROLE, trust_domains(TD))
    local first = identities:verify(web_der:sub(1))
    local bad = identities:verify(two_uri_der:sub(1))
    assert.are.equal(first, (identities:verify(web_der:sub(1))), "the same reading, from the cache")
    assert.are.equal(bad, (identities:verify(two_uri_der:sub(1))))
    assert.are.equal(2, identities:size())
    local small = peers.newPeerIdentities(peers.CLIENT_ROLE, trust_domains(TD), 1)
    small:verify(web_der)
    small:verify(two_uri_der)
    assert.are.equal(1, small:size())
  end)

  it("checks the trust domain on every call, cache hits included", function()
    local source = trust_domains(TD)
    local identities = peers.newPeerIdentities(peers.CLIENT_ROLE, source)
    assert.are.equal("", select(2, identities:verify(web_der)))
    source.answer = "other.consul"
    local reading, problem, kind = identities:verify(web_der)
    assert.are.equal("client trust domain " .. TD .. " is not this cluster's (other.consul)", problem)
    assert.are.equal(peers.IDENTITY_PROBLEM, kind)
    assert.are.equal(WEB, reading.identity.uri, "the reading still says who the peer claims to be")
    assert.are.equal(2, source.calls)
    assert.matches("^server trust domain other%.consul is not", select(2, peers.newPeerIdentities(peers.SERVER_ROLE, trust_domains(TD)):verify(foreign_der)))
  end)

  it("reports an unknown trust domain as our side's problem", function()
    local identities = peers.newPeerIdentities(peers.CLIENT_ROLE, trust_domains(nil, "trust domain unknown: agent down"))
    local reading, problem, kind = identities:verify(web_der)
    assert.are.equal("trust domain unknown: agent down", problem)
    assert.are.equal(peers.TRUST_DOMAIN_PROBLEM, kind)
    assert.are.equal(WEB, reading.identity.uri)
  end)
end)
