-- DER walking on the built bundle: real certificates from openssl (and one
-- recorded from a real Consul agent), hand-built edge cases, and broken input.
local ch = dofile("dist/connect-haproxy.lua")
local der = ch.der
local certs = require("test.lua.support.certs")
local build = require("test.lua.support.der_builder")

local SPIFFE_WEB = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web"

-- Calls the parser under pcall: whatever the input, it must return, not raise.
local function parse(bytes)
  local ok, parsed, err = pcall(der.parseCertificate, bytes)
  assert(ok, "parseCertificate raised: " .. tostring(parsed))
  return parsed, err
end

describe("der.readHeader", function()
  it("reads short and long form lengths", function()
    local tag, start, finish = der.readHeader(build.tlv(0x04, "abc"), 1, 6)
    assert.are.same({ 0x04, 3, 6 }, { tag, start, finish })
    for _, size in ipairs({ 127, 128, 255, 256, 65535, 65536, 70000 }) do
      local element = build.tlv(0x04, string.rep("x", size))
      tag, start, finish = der.readHeader(element, 1, #element + 1)
      assert.are.equal(0x04, tag)
      assert.are.equal(#element + 1, finish)
      assert.are.equal(size, finish - start)
    end
  end)

  it("accepts a four-byte length and refuses five", function()
    local four = "\4\132\0\0\0\3abc"
    local tag, start, finish = der.readHeader(four, 1, #four + 1)
    assert.are.same({ 4, 7, 10 }, { tag, start, finish })
    local tag5, why = der.readHeader("\4\133\0\0\0\0\3abc", 1, 11)
    assert.are.equal(-1, tag5)
    assert.matches("length field too long", why)
  end)

  it("refuses indefinite lengths, multi-byte tags and overruns", function()
    local cases = {
      { "\48\128\0\0", "indefinite" },
      { "\31\1\0", "multi%-byte tags" },
      { "\4\5abc", "runs past" },
      { "\4", "truncated element header" },
      { "\4\130\1", "truncated length field" },
    }
    for _, case in ipairs(cases) do
      local tag, why = der.readHeader(case[1], 1, #case[1] + 1)
      assert.are.equal(-1, tag)
      assert.matches(case[2], why)
    end
  end)

  it("respects the container limit, not the string length", function()
    local element = build.tlv(0x04, "abcdef") .. "trailing"
    local tag = der.readHeader(element, 1, 5)
    assert.are.equal(-1, tag)
  end)
end)

describe("der.parseCertificate on openssl certificates", function()
  local dir, ca
  setup(function()
    dir = certs.tmpdir()
    ca = certs.ca(dir)
  end)
  teardown(function() certs.remove(dir) end)

  it("finds the single URI SAN of an EC leaf and formats its serial like Consul", function()
    local bytes, pem = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. SPIFFE_WEB, serial = "0x1a2b3c" })
    assert.are.equal(0x82, bytes:byte(2), "a real certificate uses a two-byte long-form length")
    local parsed, err = parse(bytes)
    assert.is_nil(err)
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
    assert.is_false(parsed.sanCritical)
    assert.are.equal("1a:2b:3c", der.formatSerial(bytes, parsed.serialStart, parsed.serialEnd))
    assert.are.equal(certs.openssl_serial(pem), der.formatSerial(bytes, parsed.serialStart, parsed.serialEnd))
    local uri, why = der.onlyUri(parsed)
    assert.are.equal(SPIFFE_WEB, uri)
    assert.is_nil(why)
  end)

  it("handles an RSA leaf (longer key, longer signature)", function()
    local bytes = certs.leaf(dir, ca, { keytype = "rsa", extensions = "subjectAltName=URI:" .. SPIFFE_WEB })
    local parsed = parse(bytes)
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
  end)

  it("handles a leaf issued by an RSA CA through an intermediate, and the intermediate itself", function()
    local rsa_root = certs.ca(dir, { keytype = "rsa", cn = "RSA root" })
    local intermediate_der, intermediate_pem, intermediate_key = certs.leaf(dir, rsa_root, {
      cn = "intermediate",
      extensions = "basicConstraints=critical,CA:TRUE\nsubjectAltName=URI:spiffe://11111111-2222-3333-4444-555555555555.consul",
    })
    local leaf = certs.leaf(dir, { cert = intermediate_pem, key = intermediate_key }, { extensions = "subjectAltName=URI:" .. SPIFFE_WEB })
    assert.are.same({ SPIFFE_WEB }, parse(leaf).uris)
    local parsed_intermediate = parse(intermediate_der)
    assert.are.same({ "spiffe://11111111-2222-3333-4444-555555555555.consul" }, parsed_intermediate.uris)
    local identity, why = ch.spiffe.parseServiceIdentity(parsed_intermediate.uris[1])
    assert.is_nil(identity)
    assert.matches("no path", why)
  end)

  it("sees a critical subjectAltName", function()
    local parsed = parse(certs.leaf(dir, ca, { extensions = "subjectAltName=critical,URI:" .. SPIFFE_WEB }))
    assert.is_true(parsed.sanCritical)
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
  end)

  it("separates DNS and URI names", function()
    local parsed = parse(certs.leaf(dir, ca, {
      extensions = "subjectAltName=DNS:web.example,URI:" .. SPIFFE_WEB .. ",DNS:web.internal,IP:127.0.0.1,email:a@b.example",
    }))
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
    assert.are.same({ "web.example", "web.internal" }, parsed.dnsNames)
    assert.are.equal(SPIFFE_WEB, (der.onlyUri(parsed)))
  end)

  it("reports several URIs, which onlyUri refuses", function()
    local parsed = parse(certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. SPIFFE_WEB .. ",URI:spiffe://x.consul/ns/default/dc/dc1/svc/db" }))
    assert.are.equal(2, #parsed.uris)
    local uri, why = der.onlyUri(parsed)
    assert.is_nil(uri)
    assert.matches("2 URI subjectAltNames", why)
  end)

  it("refuses a certificate with extensions but no subjectAltName", function()
    local parsed, why = parse(certs.leaf(dir, ca, { extensions = "basicConstraints=CA:FALSE" }))
    assert.is_nil(parsed)
    assert.matches("no subjectAltName", why)
  end)

  it("refuses a v1 certificate (no extensions at all)", function()
    local bytes = certs.leaf(dir, ca, {})
    assert.are_not.equal(0xa0, bytes:byte(5), "openssl made a v1 certificate: no [0] version")
    local parsed, why = parse(bytes)
    assert.is_nil(parsed)
    assert.matches("no extensions", why)
  end)

  it("reports a URI-less certificate through onlyUri", function()
    local parsed = parse(certs.leaf(dir, ca, { extensions = "subjectAltName=DNS:only.example" }))
    local uri, why = der.onlyUri(parsed)
    assert.is_nil(uri)
    assert.matches("no URI subjectAltName", why)
  end)

  it("walks a certificate whose lengths need three bytes (SAN over 64 KiB)", function()
    local names = {}
    for i = 1, 400 do names[#names + 1] = "DNS:" .. string.rep("a", 60) .. "." .. string.rep("b", 60) .. "." .. string.rep("c", 60) .. "." .. i .. ".example" end
    local bytes = certs.leaf(dir, ca, { extensions = "subjectAltName=" .. table.concat(names, ",") .. ",URI:" .. SPIFFE_WEB })
    assert.are.equal(0x83, bytes:byte(2))
    local parsed = parse(bytes)
    assert.are.equal(400, #parsed.dnsNames)
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
  end)

  it("strips the sign octet of a serial with its high bit set, as big.Int.Bytes does", function()
    local bytes, pem = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. SPIFFE_WEB, serial = "0x80ff0102" })
    local parsed = parse(bytes)
    assert.are.equal(5, parsed.serialEnd - parsed.serialStart, "DER keeps a leading 0x00")
    assert.are.equal("80:ff:01:02", der.formatSerial(bytes, parsed.serialStart, parsed.serialEnd))
    assert.are.equal(certs.openssl_serial(pem), "80:ff:01:02")
  end)

  it("formats a 20-octet serial", function()
    local bytes, pem = certs.leaf(dir, ca, { extensions = "subjectAltName=URI:" .. SPIFFE_WEB, serial = "0x7f0102030405060708090a0b0c0d0e0f10111213" })
    local parsed = parse(bytes)
    local serial = der.formatSerial(bytes, parsed.serialStart, parsed.serialEnd)
    assert.are.equal("7f:01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10:11:12:13", serial)
    assert.are.equal(certs.openssl_serial(pem), serial)
  end)
end)

describe("der.parseCertificate on a certificate issued by a real Consul agent", function()
  -- Recorded from Consul 1.22.3's built-in CA (GET /v1/agent/connect/ca/leaf/web);
  -- the public certificate only. The integration test checks a live one too.
  local fixture = "test/fixtures/certs/consul-leaf-web.pem"
  local expected = "test/fixtures/certs/consul-leaf-web.json"

  it("yields the agent's ServiceURI and SerialNumber", function()
    local dir = certs.tmpdir()
    local bytes = certs.pem_to_der(dir, fixture)
    certs.remove(dir)
    local facts = certs.read(expected)
    local service_uri = facts:match('"ServiceURI"%s*:%s*"([^"]+)"')
    local serial = facts:match('"SerialNumber"%s*:%s*"([^"]+)"')
    local parsed, why = parse(bytes)
    assert.is_nil(why)
    assert.are.equal(service_uri, (der.onlyUri(parsed)))
    assert.are.equal(serial, der.formatSerial(bytes, parsed.serialStart, parsed.serialEnd))
    local identity = ch.spiffe.parseServiceIdentity(service_uri)
    assert.are.equal("web", identity.service)
  end)
end)

describe("der.parseCertificate on hand-built certificates", function()
  local function san(uri) return build.extension(build.OID_SAN, build.general_names({ { 0x86, uri } })) end

  it("accepts an explicit critical=FALSE flag", function()
    local parsed = parse(build.certificate({ extensions = { san(SPIFFE_WEB) } }))
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
    local explicit = build.extension(build.OID_SAN, build.general_names({ { 0x86, SPIFFE_WEB } }), false)
    parsed = parse(build.certificate({ extensions = { explicit } }))
    assert.is_false(parsed.sanCritical)
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
  end)

  it("skips other extensions before and after the SAN", function()
    local other = build.extension(build.OID_BASIC_CONSTRAINTS, build.seq(), true)
    local parsed = parse(build.certificate({ extensions = { other, san(SPIFFE_WEB), other } }))
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
  end)

  it("skips issuer and subject unique IDs", function()
    local trailer = build.tlv(0x81, "\0\1") .. build.tlv(0x82, "\0\2")
    local parsed = parse(build.certificate({ trailer = trailer, extensions = { san(SPIFFE_WEB) } }))
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
  end)

  it("accepts a certificate without the version field but with extensions", function()
    local parsed = parse(build.certificate({ no_version = true, extensions = { san(SPIFFE_WEB) } }))
    assert.are.same({ SPIFFE_WEB }, parsed.uris)
  end)

  it("refuses two subjectAltName extensions", function()
    local parsed, why = parse(build.certificate({ extensions = { san(SPIFFE_WEB), san("spiffe://x/ns/a/dc/b/svc/c") } }))
    assert.is_nil(parsed)
    assert.matches("two subjectAltName", why)
  end)

  it("refuses trailing bytes, a wrong outer tag and an empty serial", function()
    local good = build.certificate({ extensions = { san(SPIFFE_WEB) } })
    local parsed, why = parse(good .. "\0")
    assert.is_nil(parsed)
    assert.matches("trailing bytes", why)
    parsed, why = parse("\49" .. good:sub(2))
    assert.is_nil(parsed)
    assert.matches("certificate: unexpected tag 0x31", why)
    parsed, why = parse(build.certificate({ serial = "", extensions = { san(SPIFFE_WEB) } }))
    assert.is_nil(parsed)
    assert.matches("empty serial", why)
    parsed, why = parse(build.certificate({ serial = string.rep("\1", 65), extensions = { san(SPIFFE_WEB) } }))
    assert.is_nil(parsed)
    assert.matches("serial number too long", why)
  end)

  it("refuses a malformed critical flag and an extension value that is not an OCTET STRING", function()
    local bad_flag = build.seq(build.OID_SAN, build.tlv(0x01, "\255\255"), build.tlv(0x04, build.general_names({ { 0x86, SPIFFE_WEB } })))
    local parsed, why = parse(build.certificate({ extensions = { bad_flag } }))
    assert.is_nil(parsed)
    assert.matches("critical flag", why)
    local bad_value = build.seq(build.OID_SAN, build.tlv(0x03, "\0"))
    parsed, why = parse(build.certificate({ extensions = { bad_value } }))
    assert.is_nil(parsed)
    assert.matches("extension value", why)
  end)

  it("refuses an oversized URI and a SAN whose GeneralNames do not fill the extension", function()
    local parsed, why = parse(build.certificate({ extensions = { san("spiffe://x/" .. string.rep("a", 3000)) } }))
    assert.is_nil(parsed)
    assert.matches("too long", why)
    local short = build.extension(build.OID_SAN, build.general_names({ { 0x86, SPIFFE_WEB } }) .. "\0\0")
    parsed, why = parse(build.certificate({ extensions = { short } }))
    assert.is_nil(parsed)
    assert.matches("subjectAltName", why)
  end)

  it("refuses an unexpected element after subjectPublicKeyInfo", function()
    local parsed, why = parse(build.certificate({ trailer = build.tlv(0x04, "x"), extensions = { san(SPIFFE_WEB) } }))
    assert.is_nil(parsed)
    assert.matches("tbsCertificate trailer", why)
  end)
end)

describe("der.parseCertificate on broken input", function()
  local dir, real
  setup(function()
    dir = certs.tmpdir()
    real = certs.leaf(dir, certs.ca(dir), { extensions = "subjectAltName=DNS:web.example,URI:" .. SPIFFE_WEB })
  end)
  teardown(function() certs.remove(dir) end)

  it("returns an error value for non-strings and empty input", function()
    for _, input in ipairs({ "", "\48", "\48\0" }) do
      local parsed, why = parse(input)
      assert.is_nil(parsed)
      assert.is_string(why)
    end
    local parsed, why = parse(nil)
    assert.is_nil(parsed)
    assert.matches("not a string", why)
    assert.is_nil((parse(42)))
  end)

  it("refuses every truncation of a real certificate", function()
    for length = 0, #real - 1 do
      local parsed, why = parse(real:sub(1, length))
      assert.is_nil(parsed, "prefix of length " .. length .. " parsed")
      assert.is_string(why)
    end
  end)

  it("never raises when any single byte is replaced", function()
    local parsed_count = 0
    for position = 1, #real do
      for _, value in ipairs({ 0x00, 0x01, 0x30, 0x7f, 0x80, 0x81, 0x84, 0x86, 0xff }) do
        local mutated = real:sub(1, position - 1) .. string.char(value) .. real:sub(position + 1)
        local parsed, why = parse(mutated)
        if parsed then
          parsed_count = parsed_count + 1
          assert.is_table(parsed.uris)
        else
          assert.is_string(why)
        end
      end
    end
    -- Bytes inside the key and signature do not matter to the walker.
    assert.is_true(parsed_count > 0)
  end)

  it("never raises on random bytes, with or without a plausible header", function()
    math.randomseed(42)
    for i = 1, 3000 do
      local bytes = {}
      for j = 1, math.random(0, 400) do bytes[j] = string.char(math.random(0, 255)) end
      local body = table.concat(bytes)
      if i % 2 == 0 then body = "\48\130" .. string.char(#body // 256, #body % 256) .. body end
      local parsed, why = parse(body)
      assert.is_true(parsed ~= nil or type(why) == "string")
    end
  end)
end)
