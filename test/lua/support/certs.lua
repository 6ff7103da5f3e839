-- Test-only certificate factory: shells out to openssl to make real CAs and
-- leaves in a temporary directory, so no private key is committed.
local M = {}

local function shell_quote(text)
  return "'" .. text:gsub("'", "'\\''") .. "'"
end
M.quote = shell_quote

function M.run(command)
  local ok, _, code = os.execute(command .. " >/dev/null 2>&1")
  if not ok then error("command failed (" .. tostring(code) .. "): " .. command, 2) end
end

function M.read(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("a")
  file:close()
  return text
end

function M.write(path, text)
  local file = assert(io.open(path, "wb"))
  file:write(text)
  file:close()
end

function M.tmpdir()
  local path = os.tmpname()
  os.remove(path)
  M.run("mkdir -p " .. shell_quote(path))
  return path
end

function M.remove(dir)
  if dir and dir:match("^/tmp/") then os.execute("rm -rf " .. shell_quote(dir)) end
end

local counter = 0
local function fresh(dir, stem)
  counter = counter + 1
  return dir .. "/" .. stem .. counter
end

-- keytype: "ec" (P-256, as Consul issues) or "rsa" (2048 bits).
function M.key(dir, keytype)
  local path = fresh(dir, "key") .. ".pem"
  if keytype == "rsa" then
    M.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. shell_quote(path))
  else
    M.run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " .. shell_quote(path))
  end
  return path
end

-- A self-signed CA; returns { cert = pem path, key = key path }.
function M.ca(dir, opts)
  opts = opts or {}
  local key = M.key(dir, opts.keytype)
  local cert = fresh(dir, "ca") .. ".pem"
  -- Debian's default openssl.cnf makes this a CA (basicConstraints=critical,CA:true).
  M.run("openssl req -x509 -new -key " .. shell_quote(key) .. " -subj " .. shell_quote("/CN=" .. (opts.cn or "Test CA"))
    .. " -days 2" .. (opts.uri and (" -addext " .. shell_quote("subjectAltName=URI:" .. opts.uri)) or "")
    .. " -out " .. shell_quote(cert))
  return { cert = cert, key = key }
end

-- Signs a leaf (or intermediate) with `issuer`. opts:
--   keytype = "ec" | "rsa"; extensions = text of an openssl [v3] section
--   (nil for none, which makes a v1 certificate); serial = "0x..."; cn = ...
-- Returns the DER bytes and the PEM path.
function M.leaf(dir, issuer, opts)
  opts = opts or {}
  local key = M.key(dir, opts.keytype)
  local csr = fresh(dir, "req") .. ".csr"
  local der = fresh(dir, "leaf") .. ".der"
  local pem = fresh(dir, "leaf") .. ".pem"
  M.run("openssl req -new -key " .. shell_quote(key) .. " -subj " .. shell_quote("/CN=" .. (opts.cn or "leaf")) .. " -out " .. shell_quote(csr))
  local command = "openssl x509 -req -in " .. shell_quote(csr) .. " -CA " .. shell_quote(issuer.cert) .. " -CAkey "
    .. shell_quote(issuer.key) .. " -set_serial " .. (opts.serial or "0x1234") .. " -days 1"
  if opts.extensions then
    local ext = fresh(dir, "ext") .. ".cnf"
    M.write(ext, "[v3]\n" .. opts.extensions .. "\n")
    command = command .. " -extfile " .. shell_quote(ext) .. " -extensions v3"
  end
  M.run(command .. " -out " .. shell_quote(pem))
  M.run("openssl x509 -in " .. shell_quote(pem) .. " -outform DER -out " .. shell_quote(der))
  return M.read(der), pem, key
end

-- DER of the first certificate in a PEM file.
function M.pem_to_der(dir, pem_path)
  local der = fresh(dir, "conv") .. ".der"
  M.run("openssl x509 -in " .. shell_quote(pem_path) .. " -outform DER -out " .. shell_quote(der))
  return M.read(der)
end

-- What openssl says the serial is, in Consul's colon-hex form, to compare with.
function M.openssl_serial(pem_path)
  local pipe = assert(io.popen("openssl x509 -in " .. shell_quote(pem_path) .. " -noout -serial"))
  local line = pipe:read("l")
  pipe:close()
  local hex = assert(line:match("serial=(%x+)")):lower()
  hex = hex:gsub("^0+", "")
  if #hex % 2 == 1 then hex = "0" .. hex end
  return (hex:gsub("(%x%x)", "%1:"):gsub(":$", ""))
end

return M
