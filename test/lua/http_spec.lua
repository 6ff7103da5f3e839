-- The HTTP/1.1 reply parser and the socket exchange of the built bundle.
local ch = dofile("dist/connect-haproxy.lua")
local http = ch.http
local stub = require("test.lua.support.haproxy_stub")

-- Feeds `text` in pieces of `size` bytes (or through a list of split points).
local function parse_in_pieces(text, size, max_body)
  local parser = http.newReplyParser(max_body or 65536)
  local i = 1
  while i <= #text do
    parser:feed(text:sub(i, i + size - 1))
    i = i + size
  end
  return parser
end

local LENGTH_REPLY = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 34\r\nX-Consul-Index: 7\r\n\r\n"
  .. '{"Authorized":true,"Reason":"ok!"}'
local CHUNKED_REPLY = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
  .. "5\r\n{\"Aut\r\n1D;ext=1\r\nhorized\":false,\"Reason\":\"no\"}\r\n0\r\nTrailer: x\r\n\r\n"

describe("http.HttpReplyParser", function()
  it("parses a Content-Length reply fed in every split size", function()
    for size = 1, #LENGTH_REPLY do
      local parser = parse_in_pieces(LENGTH_REPLY, size)
      assert.is_true(parser:done(), "split " .. size)
      local reply = parser:reply()
      assert.are.equal(200, reply.status)
      assert.are.equal("7", reply.headers["x-consul-index"])
      assert.are.equal('{"Authorized":true,"Reason":"ok!"}', reply.body)
    end
  end)

  it("parses a chunked reply with extensions and trailers fed in every split size", function()
    for size = 1, #CHUNKED_REPLY do
      local parser = parse_in_pieces(CHUNKED_REPLY, size)
      assert.is_true(parser:done(), "split " .. size .. ": " .. tostring(parser.error))
      assert.are.equal('{"Authorized":false,"Reason":"no"}', parser:reply().body)
    end
  end)

  it("reads to the end of the connection when there is no length", function()
    local parser = parse_in_pieces("HTTP/1.0 200 OK\r\nServer: x\r\n\r\nhello world", 3)
    assert.is_false(parser:done())
    parser:finish()
    assert.is_true(parser:done())
    assert.are.equal("hello world", parser:reply().body)
  end)

  it("accepts bare LF line ends, an interim 100 reply, and 204 without a body", function()
    local parser = parse_in_pieces("HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\nContent-Length: 2\n\nok", 4)
    assert.is_true(parser:done())
    assert.are.equal("ok", parser:reply().body)
    parser = parse_in_pieces("HTTP/1.1 204 No Content\r\n\r\n", 5)
    assert.is_true(parser:done())
    assert.are.equal("", parser:reply().body)
  end)

  it("joins repeated headers and lowercases names", function()
    local parser = parse_in_pieces("HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n", 100)
    assert.are.equal("1, 2", parser:reply().headers["x-a"])
  end)

  it("tells the socket what to read next", function()
    local parser = http.newReplyParser(100)
    assert.are.equal("*l", parser:want())
    parser:feed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert.are.equal(10, parser:want())
    parser:feed("12345")
    assert.are.equal(5, parser:want())
    parser:feed("67890")
    assert.are.equal(0, parser:want())
    local chunked = http.newReplyParser(100)
    chunked:feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n")
    assert.are.equal(10, chunked:want())
  end)

  it("fails on garbage, truncation and oversize, and stays failed", function()
    local cases = {
      { "SSH-2.0-OpenSSH\r\n\r\n", "status line" },
      { "HTTP/2 200\r\n\r\n", "status line" },
      { "HTTP/1.1 2000 OK\r\n\r\n", "status line" },
      { "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header" },
      { "HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header" },
      { "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting" },
      { "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "Content%-Length" },
      { "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "both" },
      { "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer%-Encoding" },
      { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size" },
      { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n", "chunk size" },
      { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", "CRLF" },
      { "HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n", "larger than 100" },
      { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n", "larger than 100" },
      { "HTTP/1.1 200 OK\r\nX: " .. string.rep("a", 9000), "too long" },
    }
    for _, case in ipairs(cases) do
      local parser = parse_in_pieces(case[1], 7, 100)
      parser:finish()
      assert.is_false(parser:done(), case[1])
      assert.matches(case[2], parser.error, 1, false)
      parser:feed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
      assert.is_false(parser:done())
    end
    local until_close = parse_in_pieces("HTTP/1.1 200 OK\r\n\r\n" .. string.rep("x", 150), 10, 100)
    assert.matches("larger than 100", until_close.error)
    local truncated = parse_in_pieces(LENGTH_REPLY:sub(1, -3), 5)
    truncated:finish()
    assert.is_false(truncated:done())
    assert.matches("closed before", truncated.error)
  end)

  it("never raises on random bytes", function()
    math.randomseed(99)
    for _ = 1, 2000 do
      local bytes = {}
      for i = 1, math.random(0, 200) do bytes[i] = string.char(math.random(0, 255)) end
      local text = (math.random() < 0.5 and "HTTP/1.1 200 OK\r\n" or "") .. table.concat(bytes)
      local ok = pcall(function()
        local parser = parse_in_pieces(text, math.random(1, 20), 1000)
        parser:finish()
      end)
      assert.is_true(ok)
    end
  end)
end)

describe("http.socketConnectAttempts", function()
  it("counts the retries HAProxy's Lua socket proxy has from 2.9 on", function()
    assert.are.equal(1, http.socketConnectAttempts("2.6.12-1+deb12u4"))
    assert.are.equal(1, http.socketConnectAttempts("2.8.5"))
    assert.are.equal(4, http.socketConnectAttempts("2.9.0"))
    assert.are.equal(4, http.socketConnectAttempts("3.0.11-9e587df"))
    assert.are.equal(4, http.socketConnectAttempts("3.2.26"))
    assert.are.equal(4, http.socketConnectAttempts("10.1"))
    assert.are.equal(1, http.socketConnectAttempts("nil"))
  end)
end)

describe("http.buildRequest", function()
  it("writes a Connection: close request with the token and a length", function()
    local request = http.buildRequest("POST", "/v1/agent/connect/authorize", "127.0.0.1:8500", "secret-token", '{"a":1}')
    assert.matches("^POST /v1/agent/connect/authorize HTTP/1%.1\r\n", request)
    assert.matches("\r\nHost: 127%.0%.0%.1:8500\r\n", request)
    assert.matches("\r\nConnection: close\r\n", request)
    assert.matches("\r\nX%-Consul%-Token: secret%-token\r\n", request)
    assert.matches("\r\nContent%-Length: 7\r\n\r\n{\"a\":1}$", request)
    local bare = http.buildRequest("GET", "/x", "h:1", nil, nil)
    assert.is_nil(bare:find("X-Consul-Token", 1, true))
    assert.is_nil(bare:find("Content-Length", 1, true))
    assert.matches("\r\n\r\n$", bare)
  end)
end)

describe("http.exchange over a cosocket", function()
  local function options(overrides)
    local o = { address = "127.0.0.1", port = 8500, connectTimeoutMs = 1000, connectAttempts = 1, readTimeoutMs = 2000, maxBody = 65536, now = function() return 0 end }
    for k, v in pairs(overrides or {}) do o[k] = v end
    return o
  end

  for _, mode in ipairs({ "length", "chunked", "close" }) do
    it("reads a " .. mode .. " reply and closes the socket", function()
      local agent = stub.agent(function() return 200, '{"Authorized":true,"Reason":"fine"}', { ["X-Consul-Index"] = "3" }, mode end)
      local sockets = {}
      local reply, err = http.exchange(function()
        local s = stub.socket(agent)
        sockets[#sockets + 1] = s
        return s
      end, "GET / HTTP/1.1\r\n\r\n", options())
      assert.is_nil(err)
      assert.are.equal(200, reply.status)
      assert.are.equal('{"Authorized":true,"Reason":"fine"}', reply.body)
      assert.are.equal(1, agent.closed)
      assert.are.same({ 1, 2 }, sockets[1].timeouts, "connect timeout, then read timeout, in seconds")
    end)
  end

  it("splits the connect timeout over the attempts HAProxy makes, so it bounds them all", function()
    local agent = stub.agent(function() return 200, "{}", nil, "length" end)
    local socket
    local _, err = http.exchange(function() socket = stub.socket(agent); return socket end, "GET / HTTP/1.1\r\n\r\n", options({ connectAttempts = 4 }))
    assert.is_nil(err)
    assert.are.same({ 0.25, 2 }, socket.timeouts)
  end)

  it("reports a refused connection, and closes the socket", function()
    local agent = stub.agent(function() error("not reached") end)
    agent.down = true
    local reply, err = http.exchange(function() return stub.socket(agent) end, "GET / HTTP/1.1\r\n\r\n", options())
    assert.is_nil(reply)
    assert.matches("cannot connect to the agent at 127%.0%.0%.1:8500", err)
    assert.are.equal(1, agent.closed)
  end)

  it("reports a truncated reply, and a timeout when the clock says so", function()
    local agent = stub.agent(function() return "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort" end)
    local reply, err = http.exchange(function() return stub.socket(agent) end, "x", options())
    assert.is_nil(reply)
    assert.matches("bad reply from the agent: connection closed before", err)
    local clock = 0
    reply, err = http.exchange(function() return stub.socket(agent) end, "x", options({ now = function() clock = clock + 2500; return clock end }))
    assert.is_nil(reply)
    assert.matches("no complete reply from the agent within 2000 ms", err)
  end)

  it("turns a raising socket into an error value", function()
    local reply, err = http.exchange(function()
      local s = stub.socket(stub.agent(function() end))
      function s:connect() error("connect: cannot use socket on other thread") end
      return s
    end, "x", options())
    assert.is_nil(reply)
    assert.matches("agent request failed: .*other thread", err)
    reply, err = http.exchange(function() error("no sockets here") end, "x", options())
    assert.is_nil(reply)
    assert.matches("no sockets here", err)
  end)

  it("caps the reply size", function()
    local agent = stub.agent(function() return 200, string.rep("x", 5000), nil, "close" end)
    local reply, err = http.exchange(function() return stub.socket(agent) end, "x", options({ maxBody = 1000 }))
    assert.is_nil(reply)
    assert.matches("larger than 1000 bytes", err)
  end)
end)
