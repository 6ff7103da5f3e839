-- A small stand-in for HAProxy's Lua API: core (clock, sleeps, logs,
-- registrations), TXN with fetches and variables, and a cosocket that talks
-- to a scripted fake agent with the receive semantics of HAProxy 2.6's
-- src/hlua.c ("*l" strips CR/LF; a short read or nil means the peer closed).
local M = {}

-- The fake agent. `handler(request)` returns status, body[, headers, mode]
-- where mode is "length" (default), "chunked" or "close".
function M.agent(handler)
  local agent = { handler = handler, requests = {}, connections = 0, closed = 0, down = false, yield_on_call = false }
  function agent.reply_bytes(request)
    agent.requests[#agent.requests + 1] = request
    if agent.yield_on_call and coroutine.isyieldable() then coroutine.yield("agent-io") end
    local status, body, headers, mode = agent.handler(request)
    if type(status) == "string" then return status end -- raw bytes
    body = body or ""
    local lines = { "HTTP/1.1 " .. status .. " Whatever" }
    for name, value in pairs(headers or {}) do lines[#lines + 1] = name .. ": " .. value end
    if mode == "chunked" then
      lines[#lines + 1] = "Transfer-Encoding: chunked"
      local chunks, i = {}, 1
      while i <= #body do
        local piece = body:sub(i, i + 6)
        chunks[#chunks + 1] = string.format("%x\r\n%s\r\n", #piece, piece)
        i = i + 7
      end
      return table.concat(lines, "\r\n") .. "\r\n\r\n" .. table.concat(chunks) .. "0\r\n\r\n"
    elseif mode == "close" then
      return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
    end
    lines[#lines + 1] = "Content-Length: " .. #body
    return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
  end
  return agent
end

function M.socket(agent)
  local socket = { reply = nil, pos = 1, timeouts = {} }
  function socket:settimeout(seconds)
    assert(type(seconds) == "number" and seconds > 0, "settimeout needs a positive number")
    self.timeouts[#self.timeouts + 1] = seconds
  end
  function socket:connect(address, port)
    assert(type(address) == "string" and math.type(port) == "integer", "connect(address, port)")
    agent.last_address, agent.last_port = address, port
    if agent.down then return nil, "Can't connect" end
    agent.connections = agent.connections + 1
    return 1
  end
  function socket:send(data)
    self.reply = agent.reply_bytes(data)
    return #data
  end
  function socket:receive(pattern)
    local reply = self.reply or ""
    if self.pos > #reply then return nil, "connection closed." end
    if pattern == "*l" then
      local newline = reply:find("\n", self.pos, true)
      local line
      if newline then
        line = reply:sub(self.pos, newline - 1)
        self.pos = newline + 1
      else
        line = reply:sub(self.pos)
        self.pos = #reply + 1
      end
      return (line:gsub("\r$", ""))
    end
    assert(math.type(pattern) == "integer" and pattern > 0, "receive(n) needs a positive integer")
    local piece = reply:sub(self.pos, self.pos + pattern - 1)
    self.pos = self.pos + #piece
    return piece
  end
  function socket:close()
    agent.closed = agent.closed + 1
  end
  return socket
end

function M.core(agent)
  local core = {
    emerg = 0, alert = 1, crit = 2, err = 3, warning = 4, notice = 5, info = 6, debug = 7,
    logs = {}, actions = {}, clis = {}, tasks = {}, clock_ms = 1000000, sleeps = 0,
    stopping = 0, -- set to 1 to play a soft stop or a reload
  }
  function core.get_info() return { Stopping = core.stopping, Pid = 4242 } end
  function core.register_action(name, where, fn, nargs)
    assert(core.actions[name] == nil, "action registered twice: " .. name)
    core.actions[name] = { fn = fn, where = where, nargs = nargs }
  end
  function core.register_cli(path, usage, fn)
    assert(type(usage) == "string")
    core.clis[table.concat(path, " ")] = fn
  end
  core.services = {}
  function core.register_service(name, mode, fn)
    assert(mode == "http", "only HTTP services are used")
    assert(core.services[name] == nil, "service registered twice: " .. name)
    core.services[name] = fn
  end
  function core.register_task(fn) core.tasks[#core.tasks + 1] = fn end
  core.inits = {}
  function core.register_init(fn) core.inits[#core.inits + 1] = fn end
  -- Maps as HAProxy keeps them: only files haproxy.cfg references exist (core.maps[file] = {} declares one).
  core.maps = {}
  -- core.int_maps[file] = true: haproxy.cfg also reads the map with map_str_int;
  -- HAProxy then drops an entry whose value is not an integer (without an error).
  core.int_maps = {}
  function core.set_map(file, key, value)
    local map = core.maps[file]
    if map == nil then error("'set_map': unknown map file '" .. tostring(file) .. "'") end
    assert(type(key) == "string" and type(value) == "string", "set_map takes strings")
    if core.int_maps[file] and not value:find("^%-?%d+$") then map[key] = nil return end
    map[key] = value
  end
  function core.del_map(file, key)
    local map = core.maps[file]
    if map == nil then error("'del_map': unknown map file '" .. tostring(file) .. "'") end
    map[key] = nil
  end
  function core.now()
    local ms = core.clock_ms
    return { sec = ms // 1000, usec = math.floor((ms % 1000) * 1000) }
  end
  function core.msleep(ms)
    assert(math.type(ms) == "integer", "core.msleep needs an integer, got " .. tostring(ms))
    core.sleeps = core.sleeps + 1
    core.clock_ms = core.clock_ms + ms
    if coroutine.isyieldable() then coroutine.yield("sleep") end
  end
  function core.yield() if coroutine.isyieldable() then coroutine.yield("yield") end end
  function core.tcp() return M.socket(agent) end
  for _, level in ipairs({ "Debug", "Info", "Warning", "Alert" }) do
    core[level] = function(message) core.logs[#core.logs + 1] = { level = level, message = message } end
  end
  function core.log(level, message) core.logs[#core.logs + 1] = { level = level, message = message } end
  return core
end

-- A transaction whose client presented `der` (nil: no certificate).
-- opts: used (default 1 when der is given), verify (default 0),
-- server_der (what ssl_s_der returns: the upstream server's certificate),
-- server_der_error (ssl_s_der raises it), src/src_port/fe_name (the client
-- address and the frontend), session (a table holding the connection's sess.*
-- variables), http = { method, path, headers = { name = { v1, ... } } }
-- for an HTTP stream (txn.http set; header names lowercased, values 0-based
-- as HAProxy's req_get_headers hands them).
-- SHA-1 of `data` (20 bytes), by `openssl dgst`.
function M.sha1(data)
  local path = os.tmpname()
  local file = assert(io.open(path, "wb"))
  file:write(data)
  file:close()
  local pipe = assert(io.popen("openssl dgst -sha1 -binary " .. path, "r"))
  local digest = pipe:read("a")
  pipe:close()
  os.remove(path)
  return digest
end

function M.txn(der, opts)
  opts = opts or {}
  local txn = { vars = {}, logs = {} }
  local used = opts.used
  if used == nil then used = der and 1 or 0 end
  txn.f = {
    ssl_c_used = function(self) assert(self == txn.f, "fetches are called with a colon"); return used end,
    ssl_c_verify = function(self) assert(self == txn.f); if opts.verify == nil then return 0 end return opts.verify end,
    ssl_c_der = function(self) assert(self == txn.f); if opts.der_error then error(opts.der_error) end return der end,
    ssl_s_der = function(self) assert(self == txn.f); if opts.server_der_error then error(opts.server_der_error) end return opts.server_der end,
    -- The SHA-1 of the server certificate, computed by openssl as HAProxy would.
    ssl_s_sha1 = function(self) assert(self == txn.f); return opts.server_der and M.sha1(opts.server_der) end,
    src = function(self) assert(self == txn.f); return opts.src or "127.0.0.1" end,
    src_port = function(self) assert(self == txn.f); return opts.src_port or 40000 end,
    fe_name = function(self) assert(self == txn.f); return opts.fe_name or "public" end,
  }
  if opts.http then
    local request = opts.http
    txn.header_reads = 0
    function txn.f.method(self) assert(self == txn.f); return request.method or "GET" end
    function txn.f.path(self) assert(self == txn.f); return request.path or "/" end
    txn.http = {}
    function txn.http.req_get_headers(self)
      assert(self == txn.http, "req_get_headers is called with a colon")
      txn.header_reads = txn.header_reads + 1
      local headers = {}
      for name, values in pairs(request.headers or {}) do
        local zero_based = {}
        if type(values) == "string" then values = { values } end
        for i, value in ipairs(values) do zero_based[i - 1] = value end
        headers[name:lower()] = zero_based
      end
      return headers
    end
  end
  -- sess.* variables live in opts.session when given: pass the same table to
  -- play several requests of one connection.
  local session = opts.session or {}
  function txn:set_var(name, value)
    assert(self == txn, "set_var is called with a colon")
    assert(value ~= nil, "set_var with nil")
    self.vars[name] = value
    if name:find("^sess%.") then session[name] = value end
  end
  function txn:get_var(name)
    assert(self == txn, "get_var is called with a colon")
    if name:find("^sess%.") then return session[name] end
    return self.vars[name]
  end
  for _, level in ipairs({ "Debug", "Info", "Warning", "Alert" }) do
    txn[level] = function(self, message)
      assert(self == txn, level .. " is called with a colon")
      self.logs[#self.logs + 1] = { level = level, message = message }
    end
  end
  return txn
end

-- The output of a CLI command.
function M.cli(core, command)
  local applet = { output = {} }
  function applet:send(text) self.output[#self.output + 1] = text end
  local words = {}
  for word in command:gmatch("%S+") do words[#words + 1] = word end
  -- As HAProxy does: the registered command is a prefix of the words; the handler gets them all.
  local handler
  for n = #words, 1, -1 do
    handler = core.clis[table.concat(words, " ", 1, n)]
    if handler then break end
  end
  assert(handler, "no CLI command " .. command)
  handler(applet, table.unpack(words))
  return table.concat(applet.output)
end

-- A request to the HTTP service `name` (lua.<name>): its status, headers and
-- body, checked as HAProxy would (status and headers before start_response,
-- the body after it).
function M.http_service(core, name, path, method)
  local handler = assert(core.services[name], "no service " .. name)
  local response = { status = 200, headers = {}, body = {}, started = false }
  local applet = { method = method or "GET", path = path }
  function applet:set_status(code) assert(not response.started) response.status = code end
  function applet:add_header(header, value) assert(not response.started) response.headers[header] = value end
  function applet:start_response() response.started = true end
  function applet:send(text) assert(response.started, "send before start_response") response.body[#response.body + 1] = text end
  handler(applet)
  response.body = table.concat(response.body)
  return response
end

-- HAProxy's global Regex class, on a real regex engine (PCRE2, as Debian's
-- HAProxy is built with: lua-rex-pcre2). Regex.new(pattern, case_sensitive)
-- returns true and an object whose exec searches, or false and why.
function M.regex_class()
  local rex = require("rex_pcre2")
  local Regex = {}
  function Regex.new(pattern, case_sensitive)
    assert(type(case_sensitive) == "boolean", "Regex.new needs a boolean")
    local ok, compiled = pcall(rex.new, pattern, case_sensitive and 0 or "i")
    if not ok then return false, tostring(compiled) end
    local object = {}
    function object.exec(self, subject)
      assert(self == object, "exec is called with a colon")
      return compiled:exec(subject) ~= nil
    end
    return true, object
  end
  return Regex
end

-- An environment for install().
function M.env(values)
  return function(name) return values[name] end
end

return M
