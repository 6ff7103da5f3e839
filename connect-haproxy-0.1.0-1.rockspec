-- LuaRocks package of the authorizer: one pure-Lua module, the file that
-- `npm run build:lua` writes. Install from a checkout after the build:
--   npm run build:lua && luarocks make connect-haproxy-0.1.0-1.rockspec
-- then `lua-load` the installed file (luarocks show connect-haproxy).
-- A source rock for a registry must be packed from a tree that contains
-- dist/connect-haproxy.lua (it is build output, not in git). The source URL
-- is a placeholder until the project has a public home.
rockspec_format = "3.0"
package = "connect-haproxy"
version = "0.1.0-1"
source = {
   url = "git+https://example.invalid/connect-haproxy.git",
   tag = "v0.1.0",
}
description = {
   summary = "Consul Connect intentions for HAProxy 2.6+: a Lua action that authorizes mTLS clients by SPIFFE ID",
   detailed = [[
lua-load it into HAProxy and add `tcp-request content lua.connect_authorize <service>`
(or `http-request lua.connect_authorize <service>`) to an mTLS listener: the client
certificate's SPIFFE ID is checked against the trust domain and authorized by the
local Consul agent, with a bounded verdict cache. The verdict lands in
txn.connect_allowed for the configuration to enforce. See docs/standalone.md.
]],
   license = "MPL-2.0",
   labels = { "haproxy", "consul", "service-mesh", "mtls", "spiffe" },
}
dependencies = {
   "lua >= 5.3",
}
build = {
   type = "builtin",
   modules = {
      ["connect-haproxy"] = "dist/connect-haproxy.lua",
   },
   copy_directories = { "docs" },
}
