-- Builds DER by hand, for certificate shapes openssl will not produce
-- (explicit critical=FALSE, unique IDs, duplicate extensions, bad lengths).
local M = {}

function M.len(n)
  if n < 0x80 then return string.char(n) end
  local bytes = {}
  while n > 0 do
    table.insert(bytes, 1, string.char(n % 256))
    n = n // 256
  end
  return string.char(0x80 + #bytes) .. table.concat(bytes)
end

function M.tlv(tag, content)
  return string.char(tag) .. M.len(#content) .. content
end

function M.seq(...) return M.tlv(0x30, table.concat({ ... })) end

M.OID_SAN = string.char(0x06, 0x03, 0x55, 0x1d, 0x11)
M.OID_BASIC_CONSTRAINTS = string.char(0x06, 0x03, 0x55, 0x1d, 0x13)

function M.extension(oid, value, critical)
  local flag = ""
  if critical ~= nil then flag = M.tlv(0x01, critical and "\255" or "\0") end
  return M.seq(oid, flag, M.tlv(0x04, value))
end

-- GeneralNames from a list of { tag, text } pairs.
function M.general_names(names)
  local parts = {}
  for _, name in ipairs(names) do parts[#parts + 1] = M.tlv(name[1], name[2]) end
  return M.seq(table.concat(parts))
end

-- A structurally valid certificate. opts: serial (bytes), extensions (list of
-- encoded Extension), trailer (bytes placed before [3], e.g. unique IDs),
-- no_version, raw_extensions (replaces the [3] element).
function M.certificate(opts)
  opts = opts or {}
  local version = opts.no_version and "" or M.tlv(0xa0, M.tlv(0x02, "\2"))
  local serial = M.tlv(0x02, opts.serial or "\1\2\3")
  local algorithm = M.seq(M.tlv(0x06, "\42\134\72\206\61\4\3\2"))
  local name = M.seq(M.tlv(0x31, M.seq(M.tlv(0x06, "\85\4\3"), M.tlv(0x0c, "test"))))
  local validity = M.seq(M.tlv(0x17, "260101000000Z"), M.tlv(0x17, "270101000000Z"))
  local spki = M.seq(algorithm, M.tlv(0x03, "\0\4"))
  local extensions = ""
  if opts.raw_extensions then
    extensions = opts.raw_extensions
  elseif opts.extensions then
    extensions = M.tlv(0xa3, M.seq(table.concat(opts.extensions)))
  end
  local tbs = M.seq(version, serial, algorithm, name, validity, name, spki, opts.trailer or "", extensions)
  return M.seq(tbs, algorithm, M.tlv(0x03, "\0\48\0"))
end

return M
