-- The one sanitiser for untrusted text in reasons and log lines.
local ch = dofile("dist/connect-haproxy.lua")
local sanitize = ch.sanitize

describe("sanitize", function()
  it("keeps ordinary text as it is", function()
    assert.are.equal("Matched L4 intention: web => db (allow)", sanitize.sanitize("Matched L4 intention: web => db (allow)", 300))
  end)

  it("replaces control characters, double quotes and backslashes, so a log line cannot be forged or unquoted", function()
    assert.are.equal("a?b?c?d?e", sanitize.sanitize('a\nb"c\\d\0e', 300))
    assert.are.equal("x?? y", sanitize.sanitize("x\r\n y", 300))
  end)

  it("cuts at the limit and says so", function()
    assert.are.equal("abc…", sanitize.sanitize("abcdef", 3))
    assert.are.equal("abc", sanitize.sanitize("abc", 3))
  end)

  it("quotes for a reason=\"…\" field, at 300 bytes unless told", function()
    assert.are.equal('"a?b"', sanitize.quoted('a"b'))
    local long = string.rep("x", 400)
    assert.are.equal('"' .. string.rep("x", 300) .. '…"', sanitize.quoted(long))
    assert.are.equal('"xx…"', sanitize.quoted(long, 2))
  end)

  it("is what SPIFFE parse errors use to quote the rejected ID (200 bytes)", function()
    local _, err = ch.spiffe.parseServiceIdentity('http://"' .. string.rep("a", 300))
    assert.are.equal('not a SPIFFE ID (wrong scheme): "http://?' .. string.rep("a", 192) .. '…"', err)
  end)
end)
