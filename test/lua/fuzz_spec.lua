-- Fuzz: mutated certificates through the identity path of the built bundle
-- (DER walk, URI SAN, SPIFFE parsing, serial formatting), and through the
-- whole action on a stub core. Nothing may raise; the action must always
-- leave txn.connect_allowed set to 0 or 1.
local ch = dofile("dist/connect-haproxy.lua")
local certs = require("test.lua.support.certs")
local build = require("test.lua.support.der_builder")
local stub = require("test.lua.support.haproxy_stub")

local MUTANTS = tonumber(os.getenv("FUZZ_MUTANTS") or "") or 200000
local TD = "11111111-2222-3333-4444-555555555555.consul"
local WEB = "spiffe://" .. TD .. "/ns/default/dc/dc1/svc/web"

local random, char, byte = math.random, string.char, string.byte

local function seeds()
  local dir = certs.tmpdir()
  local ca = certs.ca(dir)
  local list = {
    (certs.leaf(dir, ca, { extensions = "subjectAltName=critical,URI:" .. WEB })),
    (certs.leaf(dir, ca, { keytype = "rsa", extensions = "subjectAltName=DNS:web.example,URI:" .. WEB .. ",DNS:x.example" })),
    (certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. WEB .. ",URI:spiffe://" .. TD .. "/ns/default/dc/dc1/svc/db" })),
    (certs.leaf(dir, ca, { extensions = "basicConstraints=CA:FALSE" })),
    certs.pem_to_der(dir, "test/fixtures/certs/consul-leaf-web.pem"),
    build.certificate({ extensions = { build.extension(build.OID_SAN, build.general_names({ { 0x86, WEB } }), false) } }),
  }
  certs.remove(dir)
  return list
end

-- One random mutation of `der`: flips, overwrites, inserts, deletes,
-- truncations, length-field damage, splices and duplications.
local function mutate(der, other)
  local n = #der
  local kind = random(1, 9)
  local at = random(1, n)
  if kind == 1 then -- flip a bit
    return der:sub(1, at - 1) .. char(byte(der, at) ~ (1 << random(0, 7))) .. der:sub(at + 1)
  elseif kind == 2 then -- overwrite a few bytes
    local count = random(1, 4)
    local bytes = {}
    for i = 1, count do bytes[i] = char(random(0, 255)) end
    return der:sub(1, at - 1) .. table.concat(bytes) .. der:sub(at + count)
  elseif kind == 3 then -- insert bytes
    local bytes = {}
    for i = 1, random(1, 8) do bytes[i] = char(random(0, 255)) end
    return der:sub(1, at) .. table.concat(bytes) .. der:sub(at + 1)
  elseif kind == 4 then -- delete a range
    return der:sub(1, at - 1) .. der:sub(at + random(1, 16))
  elseif kind == 5 then -- truncate
    return der:sub(1, random(0, n - 1))
  elseif kind == 6 then -- damage a length: pick a byte that follows a plausible tag
    local value = ({ 0x00, 0x7f, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0xff })[random(1, 9)]
    return der:sub(1, at - 1) .. char(value) .. der:sub(at + 1)
  elseif kind == 7 then -- splice with another seed
    local cut = random(1, #other)
    return der:sub(1, at) .. other:sub(cut)
  elseif kind == 8 then -- duplicate a slice
    local stop = math.min(n, at + random(1, 64))
    return der:sub(1, stop) .. der:sub(at, stop) .. der:sub(stop + 1)
  else -- several mutations stacked
    local out = der
    for _ = 1, random(2, 5) do
      local p = random(1, #out > 0 and #out or 1)
      out = out:sub(1, p - 1) .. char(random(0, 255)) .. out:sub(p + 1)
    end
    return out
  end
end

describe("fuzz", function()
  local corpus
  setup(function() corpus = seeds() end)

  it("feeds " .. MUTANTS .. " mutated certificates to the identity path without an escaped error", function()
    math.randomseed(20261121)
    local parse, onlyUri, parseIdentity, formatSerial = ch.der.parseCertificate, ch.der.onlyUri, ch.spiffe.parseServiceIdentity, ch.der.formatSerial
    local function identity_path(der)
      local parsed, err = parse(der)
      if not parsed then
        assert(type(err) == "string", "error is not a string")
        return "rejected"
      end
      local serial = formatSerial(der, parsed.serialStart, parsed.serialEnd)
      assert(type(serial) == "string")
      local uri, why = onlyUri(parsed)
      if not uri then
        assert(type(why) == "string")
        return "no identity"
      end
      local id, reason = parseIdentity(uri)
      assert(id ~= nil or type(reason) == "string")
      return id and "identity" or "bad identity"
    end

    local counts = { rejected = 0, ["no identity"] = 0, identity = 0, ["bad identity"] = 0 }
    local started = os.clock()
    for i = 1, MUTANTS do
      local der = corpus[(i % #corpus) + 1]
      local mutant = mutate(der, corpus[random(1, #corpus)])
      local ok, outcome = pcall(identity_path, mutant)
      if not ok then
        error(string.format("mutant %d escaped an error: %s (input hex: %s)", i, tostring(outcome),
          (mutant:sub(1, 200):gsub(".", function(c) return string.format("%02x", byte(c)) end))))
      end
      counts[outcome] = counts[outcome] + 1
    end
    local total = counts.rejected + counts["no identity"] + counts.identity + counts["bad identity"]
    print(string.format("\nfuzz: %d mutated certificates in %.1f s CPU: %d rejected, %d without one URI, %d bad SPIFFE IDs, %d identities",
      total, os.clock() - started, counts.rejected, counts["no identity"], counts["bad identity"], counts.identity))
    assert.are.equal(MUTANTS, total)
    assert.is_true(MUTANTS >= 100000 or os.getenv("FUZZ_MUTANTS") ~= nil)
    -- The mutations must reach past the outer header, or this proves little.
    assert.is_true(counts.identity > 0 and counts["no identity"] > 0 and counts.rejected > 0)
  end)

  it("always leaves a verdict in txn.connect_allowed when the action sees mutated certificates", function()
    math.randomseed(77)
    -- The agent allows web only; whatever reaches it must be what the certificate says.
    local agent = stub.agent(function(request)
      local uri = ch.json.decode(request:match("\r\n\r\n(.*)$")).ClientCertURI
      return 200, '{"Authorized":' .. tostring(uri == WEB) .. ',"Reason":"r"}'
    end)
    local core = stub.core(agent)
    ch.install(core, stub.env({ CONNECT_TRUST_DOMAIN = TD }))
    local action = core.actions.connect_authorize.fn
    local allowed = 0
    for i = 1, 5000 do
      local txn = stub.txn(mutate(corpus[(i % #corpus) + 1], corpus[1]))
      action(txn, "db")
      local verdict = txn.vars["txn.connect_allowed"]
      assert.is_true(verdict == 0 or verdict == 1)
      assert.is_string(txn.vars["txn.connect_reason"])
      if verdict == 1 then
        allowed = allowed + 1
        -- Only a certificate that still names web gets through.
        assert.are.equal(WEB, txn.vars["txn.connect_spiffe"])
      end
    end
    assert.is_true(allowed > 0)
  end)
end)
