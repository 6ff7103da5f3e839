-- The JSON decoder and string encoder of the built bundle.
local ch = dofile("dist/connect-haproxy.lua")
local json = ch.json

local function decodes(text)
  local ok, value, err = pcall(json.decode, text)
  assert(ok, "decode raised: " .. tostring(value))
  assert.is_nil(err)
  return value
end

local function refuses(text, pattern)
  local ok, value, err = pcall(json.decode, text)
  assert(ok, "decode raised: " .. tostring(value))
  assert.is_nil(value, "accepted: " .. tostring(text))
  assert.matches(pattern or "invalid JSON", err)
end

describe("json.decode", function()
  it("decodes the agent's authorize reply", function()
    local value = decodes('{"Authorized":true,"Reason":"Matched L4 intention: web => db (allow)"}')
    assert.is_true(value.Authorized)
    assert.are.equal("Matched L4 intention: web => db (allow)", value.Reason)
    value = decodes(' {\n "Authorized" : false ,\r\n\t"Reason":"Default behavior configured by ACLs"} ')
    assert.is_false(value.Authorized)
  end)

  it("decodes nested objects, arrays, numbers and null", function()
    local value = decodes('{"Roots":[{"ID":"a","Active":true},{"ID":"b","Active":false}],"N":-12.5e2,"Z":0,"F":0.25,"X":null,"E":[],"O":{}}')
    assert.are.equal(2, #value.Roots)
    assert.are.equal("b", value.Roots[2].ID)
    assert.are.equal(-1250, value.N)
    assert.are.equal(0, value.Z)
    assert.are.equal(0.25, value.F)
    assert.are.equal(json.jsonNull, value.X)
    assert.are.equal(0, #value.E)
    assert.is_nil(next(value.O))
    local list = decodes("[1,null,3]")
    assert.are.equal(3, #list)
    assert.are.equal(json.jsonNull, list[2])
  end)

  it("decodes escapes, including surrogate pairs", function()
    assert.are.equal('a"b\\c/d\b\f\n\r\t', decodes('"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t"'))
    assert.are.equal("é€", decodes('"\\u00e9\\u20AC"'))
    assert.are.equal("\240\159\152\128", decodes('"\\ud83d\\ude00"'))
    assert.are.equal("\0", decodes('"\\u0000"'))
    assert.are.equal("del\127ok", decodes('"del\127ok"'))
    assert.are.equal("héllo", decodes('"héllo"'))
  end)

  it("refuses malformed text", function()
    for _, text in ipairs({
      "", " ", "{", "}", "[1,]", "[1 2]", '{"a" 1}', '{"a":}', '{a:1}', '{"a":1,}', "tru", "nul", "01", "-", "1.", ".5",
      '"abc', '"a\\x"', '"\\u12"', '"\\ud83d"', '"\\ude00"', '"\\ud83d\\u0041"', '"tab\there"', '"nl\nhere"',
      "[1] x", '{"a":1}{', "\0", "NaN", "Infinity",
    }) do
      refuses(text)
    end
  end)

  it("refuses non-strings and deep nesting without raising", function()
    refuses(nil, "not a string")
    refuses(12, "not a string")
    refuses(string.rep("[", 100) .. string.rep("]", 100), "nested too deep")
    assert.is_table(decodes(string.rep("[", 60) .. string.rep("]", 60)))
  end)

  it("never raises on random or mutated input", function()
    math.randomseed(7)
    local sample = '{"Authorized":true,"Reason":"Matched L4 intention: \\u0041 => db","Roots":[1,2.5,null,false]}'
    for _ = 1, 5000 do
      local mutated = {}
      for i = 1, #sample do
        local c = sample:sub(i, i)
        if math.random() < 0.05 then c = string.char(math.random(0, 255)) end
        mutated[#mutated + 1] = c
      end
      local text = table.concat(mutated):sub(1, math.random(0, #sample))
      local ok, _, err = pcall(json.decode, text)
      assert.is_true(ok, "raised on " .. text)
      assert.is_true(err == nil or type(err) == "string")
    end
  end)
end)

describe("json.encodeString", function()
  it("escapes quotes, backslashes and control characters", function()
    assert.are.equal('"plain"', json.encodeString("plain"))
    assert.are.equal('"a\\"b\\\\c\\u000a\\u0000"', json.encodeString('a"b\\c\n\0'))
    assert.are.equal('"spiffe://x.consul/ns/default/dc/dc1/svc/web"', json.encodeString("spiffe://x.consul/ns/default/dc/dc1/svc/web"))
  end)

  it("round-trips through decode", function()
    local text = 'tab\tquote"slash\\é\1'
    assert.are.equal(text, json.decode(json.encodeString(text)))
  end)
end)
