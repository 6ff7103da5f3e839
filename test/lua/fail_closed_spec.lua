-- The fail-closed frame both actions run in: nothing raises into HAProxy and
-- the verdict variable always ends up 1 or 0.
local ch = dofile("dist/connect-haproxy.lua")
local run = ch.failClosed.runFailClosed

local IDENTITY = { uri = "spiffe://td.consul/ns/default/dc/dc1/svc/web", service = "web" }

local function txn()
  local t = { vars = {}, set_var_calls = 0 }
  function t:set_var(name, value)
    self.set_var_calls = self.set_var_calls + 1
    self.vars[name] = value
  end
  return t
end

-- Publishes like the actions: the verdict variable last.
local function publish(t, allowed, reason, identity)
  t:set_var("txn.verdict_reason", reason)
  if identity ~= nil then t:set_var("txn.verdict_spiffe", identity.uri) end
  t:set_var("txn.verdict", allowed and 1 or 0)
end

describe("runFailClosed", function()
  it("publishes and returns what evaluate decided, handing it the context, the txn and the argument", function()
    local seen
    local function evaluate(context, t, argument)
      seen = { context, t, argument }
      return true, "fine", "cache", IDENTITY
    end
    local t, context = txn(), {}
    local allowed, reason, origin, identity = run(evaluate, publish, "txn.verdict", context, t, "db")
    assert.are.same({ true, "fine", "cache", IDENTITY }, { allowed, reason, origin, identity })
    assert.are.equal(context, seen[1])
    assert.are.equal(t, seen[2])
    assert.are.equal("db", seen[3])
    assert.are.equal(1, t.vars["txn.verdict"])
    assert.are.equal(IDENTITY.uri, t.vars["txn.verdict_spiffe"])
  end)

  it("allows only on a real true, and fills in a missing reason and origin", function()
    for _, value in ipairs({ 1, 0, "true", false }) do
      local t = txn()
      local allowed, reason, origin = run(function() return value, nil, 42, nil end, publish, "txn.verdict", {}, t, "db")
      assert.is_false(allowed)
      assert.are.equal("no reason given", reason)
      assert.are.equal("internal", origin)
      assert.are.equal(0, t.vars["txn.verdict"])
    end
  end)

  it("turns an error in evaluate into a published deny", function()
    local t = txn()
    local allowed, reason, origin, identity = run(function() error("fetch exploded") end, publish, "txn.verdict", {}, t, "db")
    assert.is_false(allowed)
    assert.matches("^internal error: .*fetch exploded", reason)
    assert.are.equal("internal", origin)
    assert.is_nil(identity)
    assert.are.equal(0, t.vars["txn.verdict"])
    assert.matches("fetch exploded", t.vars["txn.verdict_reason"])
  end)

  it("sets the verdict variable to 0 when publishing fails, leaving no allow behind", function()
    local t = txn()
    local function failing_publish(p)
      p:set_var("txn.verdict", 1)
      error("no room")
    end
    local allowed, reason, origin = run(function() return true, "fine", "agent", IDENTITY end, failing_publish, "txn.verdict", {}, t, "db")
    assert.is_false(allowed)
    assert.matches("^internal error while setting variables: .*no room", reason)
    assert.are.equal("internal", origin)
    assert.are.equal(0, t.vars["txn.verdict"])
  end)

  it("does not raise even when no variable can be set", function()
    local t = txn()
    function t.set_var() error("nothing works") end
    local allowed = run(function() error("first") end, publish, "txn.verdict", {}, t, "db")
    assert.is_false(allowed)
  end)
end)
