-- CONSUL_HTTP_TOKEN_FILE: a rotated token is used without a reload (the
-- periodic task, or a 403 "ACL not found" that re-reads the file and retries
-- once); a revoked one gives one warning and denies, never the token in a log.
local stub = require("test.lua.support.haproxy_stub")
local bundle = require("test.lua.support.installed_bundle")

local TD = bundle.TD
local web = bundle.web_certificate_fixture(setup, teardown)

local function write(path, text)
  local file = assert(io.open(path, "w"))
  file:write(text)
  file:close()
end

-- The agent knows only the tokens in `valid`; any other gets Consul's 403 for an unknown token.
local function agent_knowing(valid)
  return function(_, request)
    local token = request:match("\r\nX%-Consul%-Token: ([^\r]+)\r\n")
    if token ~= nil and valid[token] then return 200, '{"Authorized":true,"Reason":"Matched L4 intention: web => db (allow)"}' end
    return 403, "ACL not found"
  end
end

local function messages(world, pattern)
  local found = {}
  for _, entry in ipairs(world.core.logs) do
    if entry.message:find(pattern) then found[#found + 1] = entry end
  end
  return found
end

local function no_secrets(world)
  for _, entry in ipairs(world.core.logs) do
    assert.is_nil(entry.message:find("token-A", 1, true))
    assert.is_nil(entry.message:find("token-B", 1, true))
  end
end

describe("CONSUL_HTTP_TOKEN_FILE", function()
  it("is re-read on a 403 ACL not found, and the call retried once with the new token", function()
    local path = web.dir .. "/rotated.token"
    write(path, "token-A\n")
    local valid = { ["token-A"] = true }
    local world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD, CONSUL_HTTP_TOKEN_FILE = path }, agent_knowing(valid))
    assert.are.equal(1, world.run(web.der, { src_port = 1 }, "db").vars["txn.connect_allowed"])
    -- Rotated (B written, A deleted) before the task's next read.
    write(path, "token-B\n")
    valid["token-A"], valid["token-B"] = nil, true
    stub.cli(world.core, "connect cache flush")
    local txn = world.run(web.der, { src_port = 2 }, "db")
    assert.are.equal(1, txn.vars["txn.connect_allowed"])
    assert.are.equal(3, #world.authorize_bodies, "one call with A, one refused with A, its retry with B")
    assert.matches("X%-Consul%-Token: token%-B\r\n", world.agent.requests[#world.agent.requests])
    assert.are.equal(1, #messages(world, "CONSUL_HTTP_TOKEN_FILE .* changed: the next calls to the agent use the new token"))
    assert.are.equal(0, #messages(world, "ACL token rejected"))
    assert.matches("token: set %(from CONSUL_HTTP_TOKEN_FILE, re%-read as it changes%)", stub.cli(world.core, "connect show config"))
    no_secrets(world)
  end)

  it("is re-read by its task every 2 s, before the agent refuses the old token", function()
    local path = web.dir .. "/task.token"
    write(path, "token-A")
    local world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD, CONSUL_HTTP_TOKEN_FILE = path }, agent_knowing({ ["token-A"] = true, ["token-B"] = true }))
    -- The token task is the first one registered.
    local task = coroutine.create(world.core.tasks[1])
    assert(coroutine.resume(task))
    write(path, "token-B")
    for _ = 1, 8 do assert(coroutine.resume(task)) end
    world.run(web.der, nil, "db")
    assert.matches("X%-Consul%-Token: token%-B\r\n", world.agent.requests[#world.agent.requests])
    assert.are.equal(1, #world.authorize_bodies)
    -- It ends on a soft stop.
    world.core.stopping = 1
    assert(coroutine.resume(task))
    assert.are.equal("dead", coroutine.status(task))
    no_secrets(world)
  end)

  it("denies once the token is revoked, with one warning however many connections, and recovers when the file changes", function()
    local path = web.dir .. "/revoked.token"
    write(path, "token-A")
    local valid = { ["token-A"] = true }
    local world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD, CONSUL_HTTP_TOKEN_FILE = path, CONNECT_AGENT_DOWN_GRACE = "1m" }, agent_knowing(valid))
    assert.are.equal(1, world.run(web.der, { src_port = 1 }, "db").vars["txn.connect_allowed"])
    valid["token-A"] = nil
    -- Past the allow's 10 s: the grace period (for an agent that does not answer) does not cover a refused token.
    world.core.clock_ms = world.core.clock_ms + 11000
    for port = 2, 6 do
      local txn = world.run(web.der, { src_port = port }, "db")
      assert.are.equal(0, txn.vars["txn.connect_allowed"])
      assert.are.equal("cannot ask the Consul agent: ACL token rejected by the agent (403 ACL not found)", txn.vars["txn.connect_reason"])
      world.core.clock_ms = world.core.clock_ms + 1500
    end
    local warnings = messages(world, "ACL token rejected by the Consul agent %(403 ACL not found%): it was deleted")
    assert.are.equal(1, #warnings)
    assert.are.equal("Warning", warnings[1].level)
    assert.matches("CONSUL_HTTP_TOKEN_FILE " .. path:gsub("%p", "%%%0") .. " holds a valid one", warnings[1].message)

    write(path, "token-B")
    valid["token-B"] = true
    world.core.clock_ms = world.core.clock_ms + 1500
    assert.are.equal(1, world.run(web.der, { src_port = 7 }, "db").vars["txn.connect_allowed"])
    assert.are.equal(1, #messages(world, "changed: the next calls to the agent use the new token"))
    assert.are.equal(1, #messages(world, "the Consul agent accepts the ACL token again"))
    no_secrets(world)
  end)

  it("keeps the token when the file is missing or empty, saying so once", function()
    local path = web.dir .. "/gone.token"
    write(path, "token-A")
    local world = bundle.haproxy({ CONNECT_TRUST_DOMAIN = TD, CONSUL_HTTP_TOKEN_FILE = path }, agent_knowing({ ["token-A"] = true }))
    local token = world.installed.context.agentToken
    os.remove(path)
    assert.is_false(token:reload())
    assert.is_false(token:reload())
    assert.are.equal(1, #messages(world, "cannot read " .. path:gsub("%p", "%%%0") .. ".*keeping the token read before"))
    write(path, "")
    assert.is_false(token:reload())
    assert.are.equal("token-A", token:current())
    assert.are.equal(1, world.run(web.der, nil, "db").vars["txn.connect_allowed"])
    no_secrets(world)
  end)
end)
