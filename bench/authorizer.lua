-- Lua cost of one connect_authorize decision, under lua5.3 with a stub of
-- HAProxy's core/TXN (no network): the whole action body as HAProxy runs it
-- (fetches, DER walk, SPIFFE parse, trust-domain check, cache, set_var x4,
-- the log line), on a cache hit and on a cache miss (the miss answered at
-- once by an in-memory fake agent, so it counts our HTTP/JSON work, not the
-- agent's). The real round trip to a Consul agent is measured inside
-- HAProxy by bench/authorizer-haproxy.lua (bench/authorizer.sh runs both).
--
--   lua5.3 bench/authorizer.lua [batches] [calls-per-batch]
--
-- Each batch times `calls` decisions with os.clock(); the per-decision
-- figure of a batch is its time divided by `calls`. p50/p99 are over batches.
local BATCHES = tonumber(arg and arg[1]) or 200
local CALLS = tonumber(arg and arg[2]) or 2000

local ch = dofile("dist/connect-haproxy.lua")

local function read_der(pem_path)
  local pipe = assert(io.popen("openssl x509 -outform DER -in '" .. pem_path .. "'"))
  local der = pipe:read("a")
  pipe:close()
  assert(#der > 100, "could not read " .. pem_path)
  return der
end

-- A recorded Consul leaf (EC P-256, as the agent issues them).
local DER = read_der("test/fixtures/certs/consul-leaf-web.pem")
local URI = ch.der.onlyUri((ch.der.parseCertificate(DER)))
local TRUST_DOMAIN = URI:match("^spiffe://([^/]+)")

-- Minimal stubs: just what the action touches.
local REPLY = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n"
  .. string.format("%-80s", '{"Authorized":true,"Reason":"Matched L4 intention: default/web => default/db"}')
local clock_ms = 0
local core = {
  register_action = function(name, _, fn) _G["bench_" .. name] = fn end,
  register_cli = function() end,
  register_service = function() end,
  register_task = function() end,
  register_init = function() end,
  get_info = function() return { Version = "2.6.12", Stopping = 0 } end,
  now = function() return { sec = clock_ms // 1000, usec = 0 } end,
  msleep = function(ms) clock_ms = clock_ms + ms end,
  Info = function() end, Warning = function() end, Debug = function() end,
  tcp = function()
    local socket = { pos = 1 }
    function socket.settimeout() end
    function socket.connect() return 1 end
    function socket.send(_, data) return #data end
    function socket.receive(self, pattern)
      if self.pos > #REPLY then return nil, "connection closed." end
      if pattern == "*l" then
        local nl = REPLY:find("\n", self.pos, true)
        local line = REPLY:sub(self.pos, nl - 2)
        self.pos = nl + 1
        return line
      end
      local piece = REPLY:sub(self.pos, self.pos + pattern - 1)
      self.pos = self.pos + #piece
      return piece
    end
    function socket.close() end
    return socket
  end,
}
local env = { CONNECT_TRUST_DOMAIN = TRUST_DOMAIN, CONNECT_ALLOW_TTL = "1h" }
local installed = ch.install(core, function(name) return env[name] end)
local action = _G.bench_connect_authorize
local authorizer = installed.context.authorizer

local fetches = {}
function fetches.ssl_c_used() return 1 end
function fetches.ssl_c_verify() return 0 end
-- A fresh string each time, as HAProxy pushes one per connection (so the
-- identity cache pays for hashing and comparing the bytes, as it would there).
function fetches.ssl_c_der() return DER:sub(1) end
function fetches.src() return "127.0.0.1" end
function fetches.src_port() return 40000 end
function fetches.fe_name() return "db_mesh" end
local txn = { f = fetches }
-- The connection's sess.* variables (HTTP: later requests recall the verified identity from there).
local session = {}
function txn.set_var(_, name, value) if name:sub(1, 5) == "sess." then session[name] = value end end
function txn.get_var(_, name) return session[name] end
function txn.Debug() end
function txn.Info() end
function txn.Warning() end

local function percentile(sorted, p)
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

local function measure(label, before_each)
  local per_call = {}
  for b = 1, BATCHES do
    local started = os.clock()
    for _ = 1, CALLS do
      if before_each then before_each() end
      action(txn, "db")
    end
    per_call[b] = (os.clock() - started) / CALLS * 1e6
  end
  table.sort(per_call)
  print(string.format("%-42s p50 %7.2f us   p99 %7.2f us   (%d x %d decisions)", label, percentile(per_call, 0.5), percentile(per_call, 0.99), BATCHES, CALLS))
  return per_call
end

-- The verdict must really be "allow from the cache" for the hit figure to mean anything.
do
  local vars = {}
  local probe = { f = fetches, set_var = function(_, k, v) vars[k] = v end, Debug = txn.Debug, Info = txn.Info, Warning = txn.Warning }
  action(probe, "db")
  assert(vars["txn.connect_allowed"] == 1, "warm-up decision was not an allow: " .. tostring(vars["txn.connect_reason"]))
end

print(string.format("connect-haproxy %s, %s, certificate %d bytes", ch.version, _VERSION, #DER))
local calls_before = authorizer:stats().agentCalls
measure("decision, cache hit (whole action)")
assert(authorizer:stats().agentCalls == calls_before, "a hit must not call the agent")
measure("decision, cache miss (fake agent, Lua only)", function() authorizer:flush() end)

-- Components, for orientation.
local parse = ch.der.parseCertificate
local per_parse = {}
for b = 1, BATCHES do
  local started = os.clock()
  for _ = 1, CALLS do parse(DER) end
  per_parse[b] = (os.clock() - started) / CALLS * 1e6
end
table.sort(per_parse)
print(string.format("%-42s p50 %7.2f us   p99 %7.2f us", "  of which: DER walk", percentile(per_parse, 0.5), percentile(per_parse, 0.99)))

-- L7: one request decision on an HTTP stream for a 10-permission intention
-- (whole action: identity recalled from the session, path check, governing
-- intention, permissions, set_var x4).
-- The request matches the 10th permission (the worst case before the default).
do
  rawset(_G, "Regex", rawget(_G, "Regex") or require("test.lua.support.haproxy_stub").regex_class())
  local compile = function(pattern)
    local ok, regex = _G.Regex.new(pattern, true)
    if ok then return regex end
    return nil, regex
  end
  local permissions = {}
  for i = 1, 9 do
    permissions[i] = string.format('{"Action":"deny","HTTP":{"PathPrefix":"/p%d/","Methods":["POST"],"Header":[{"Name":"x-v","Regex":"v[0-9]+"}]}}', i)
  end
  permissions[10] = '{"Action":"allow","HTTP":{"PathPrefix":"/api/","Methods":["GET","HEAD"],"Header":[{"Name":"x-v","Regex":"v[0-9]+"}]}}'
  local body = '{"db":[{"SourceName":"web","SourceNS":"default","DestinationName":"db","Precedence":9,"SourceType":"consul","Permissions":['
    .. table.concat(permissions, ",") .. ']}]}'
  local rules = installed.context.intentions:watch("db")
  rules.list = assert(ch.intentions.compileIntentionList(assert(ch.json.decode(body)), "db", compile))
  rules.defaultAllow, rules.defaultReason = false, "Default intention policy (deny, from bench)"
  fetches.method = function() return "GET" end
  fetches.path = function() return "/api/items/42" end
  local headers = { ["x-v"] = { [0] = "v2" }, host = { [0] = "db" } }
  txn.http = { req_get_headers = function() return headers end }
  local vars = {}
  local probe = { f = fetches, http = txn.http, set_var = function(_, k, v) vars[k] = v; txn.set_var(txn, k, v) end, get_var = txn.get_var, Debug = txn.Debug, Info = txn.Info, Warning = txn.Warning }
  action(probe, "db")
  assert(vars["txn.connect_allowed"] == 1, "L7 warm-up decision was not an allow: " .. tostring(vars["txn.connect_reason"]))
  assert(session["sess.connect_reading"] ~= nil, "the first request did not keep the identity for the connection")
  measure("L7 request, 10 permissions (whole action, later request of a connection)")
  fetches.path = function() return "/other" end
  measure("L7 request, no permission matches (default)")
  txn.http = nil
end
