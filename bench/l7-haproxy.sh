#!/usr/bin/env bash
# CPU per request of connect_authorize on an HTTP stream, measured inside a
# real HAProxy 2.6: one process, one thread; wrk → plain frontend → kept-alive
# mTLS hop (client leaf of `web`) → the public frontend of `db`, which answers
# 200 itself. Run twice, identical but for the action (and its deny rule); the
# difference in HAProxy's CPU time divided by the requests is the action's cost.
# The intention list (one intention, 10 permissions, the request matching the
# 10th) comes from a stub agent (node) on loopback.
#   bash bench/l7-haproxy.sh [seconds]      (after npm run build:lua)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-8}
[ -f dist/connect-haproxy.lua ] || { echo "bench: build first (npm run build:lua)" >&2; exit 1; }
work=$(mktemp -d /tmp/ch-l7-bench-XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

TD=11111111-2222-3333-4444-555555555555.consul
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca.key" 2>/dev/null
openssl req -x509 -new -key "$work/ca.key" -subj /CN=bench-ca -days 2 -out "$work/ca.pem" 2>/dev/null
leaf() { # name
  printf '[v3]\nsubjectAltName=critical,URI:spiffe://%s/ns/default/dc/dc1/svc/%s\n' "$TD" "$1" > "$work/$1.cnf"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$1.key" 2>/dev/null
  openssl req -new -key "$work/$1.key" -subj "/CN=$1" -out "$work/$1.csr" 2>/dev/null
  openssl x509 -req -in "$work/$1.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -set_serial 0x$RANDOM -days 1 \
    -extfile "$work/$1.cnf" -extensions v3 -out "$work/$1.crt" 2>/dev/null
  cat "$work/$1.crt" "$work/$1.key" > "$work/$1.pem"
}
leaf web
leaf db

read -r agent entry mesh < <(node -e '
  const net = require("net"); const ports = [];
  const next = () => { const s = net.createServer(); s.listen(0, "127.0.0.1", () => { ports.push(s.address().port); s.close(() => ports.length < 3 ? next() : console.log(ports.join(" "))); }); };
  next();')

node -e '
  const perms = [];
  for (let i = 1; i <= 9; i++) perms.push({ Action: "deny", HTTP: { PathPrefix: `/p${i}/`, Methods: ["POST"], Header: [{ Name: "x-v", Regex: "v[0-9]+" }] } });
  perms.push({ Action: "allow", HTTP: { PathPrefix: "/api/", Methods: ["GET", "HEAD"], Header: [{ Name: "x-v", Regex: "v[0-9]+" }] } });
  const list = JSON.stringify({ db: [{ SourceName: "web", SourceNS: "default", DestinationName: "db", Precedence: 9, SourceType: "consul", Permissions: perms }] });
  const self = JSON.stringify({ DebugConfig: { DefaultIntentionPolicy: "deny", ACLResolverSettings: { ACLsEnabled: false } } });
  require("http").createServer((req, res) => {
    if (req.url.startsWith("/v1/agent/self")) { res.end(self); return; }
    // A blocking query with an index: hold it for its wait, as Consul does when nothing changed.
    const delay = /[?&]index=/.test(req.url) ? 4000 : 0;
    setTimeout(() => { res.setHeader("X-Consul-Index", "7"); res.end(list); }, delay);
  }).listen(Number(process.argv[1]), "127.0.0.1");' "$agent" &
pids+=($!)

# The floor: a Lua action that does nothing (HAProxy's own cost of running one).
printf 'core.register_action("bench_noop", { "http-req" }, function(txn) end, 0)\n' > "$work/noop.lua"

config() { # with_action: 0 none, 1 connect_authorize, 2 an empty Lua action
  local authz=""
  if [ "$1" = 2 ]; then authz='    http-request lua.bench_noop'; fi
  if [ "$1" = 1 ]; then
    authz='    http-request lua.connect_authorize db
    http-request deny unless { var(txn.connect_allowed) -m bool }'
  fi
  cat <<EOF
global
    nbthread 1
    expose-experimental-directives
    setenv CONSUL_HTTP_ADDR 127.0.0.1:$agent
    setenv CONNECT_TRUST_DOMAIN $TD
    lua-load $PWD/dist/connect-haproxy.lua
    lua-load $work/noop.lua
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend entry
    bind 127.0.0.1:$entry
    default_backend hop
backend hop
    http-reuse always
    server db 127.0.0.1:$mesh ssl crt $work/web.pem ca-file $work/ca.pem verify required verifyhost db alpn http/1.1 sni str(db)
frontend db_mesh
    bind 127.0.0.1:$mesh ssl crt $work/db.pem ca-file $work/ca.pem verify required
    http-request normalize-uri percent-decode-unreserved strict
    http-request normalize-uri percent-to-uppercase strict
    http-request normalize-uri path-merge-slashes
    http-request normalize-uri path-strip-dot
    http-request normalize-uri path-strip-dotdot full
$authz
    http-request return status 200 content-type text/plain string ok
EOF
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # label with_action
  config "$2" > "$work/haproxy.cfg"
  haproxy -db -f "$work/haproxy.cfg" > "$work/haproxy.out" 2>&1 &
  local pid=$!
  sleep 1
  # Warm up (the first request waits for the intention list), then check the verdict.
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-v: v2' "http://127.0.0.1:$entry/api/items/42")
  [ "$code" = 200 ] || { echo "bench: warm-up answered $code" >&2; cat "$work/haproxy.out" >&2; exit 1; }
  wrk -t1 -c8 -d2s -H 'x-v: v2' "http://127.0.0.1:$entry/api/items/42" > /dev/null
  local before after
  before=$(cpu_ticks "$pid")
  wrk -t1 -c8 -d"${SECONDS_PER_RUN}s" -H 'x-v: v2' "http://127.0.0.1:$entry/api/items/42" > "$work/wrk.out"
  after=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local requests
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  local hz; hz=$(getconf CLK_TCK)
  awk -v l="$1" -v r="$requests" -v t=$((after - before)) -v hz="$hz" -v s="$SECONDS_PER_RUN" \
    'BEGIN { printf "%-34s %8d requests  %7.0f req/s  HAProxy CPU %6.2f us/request\n", l, r, r / s, t / hz / r * 1e6 }'
}

echo "== connect_authorize per HTTP request inside $(haproxy -v | head -1 | cut -d' ' -f1-3), $(nproc) CPUs, ${SECONDS_PER_RUN}s per run"
run "no action (same chain)" 0 | tee "$work/base"
run "an empty Lua action" 2 | tee "$work/noop"
run "connect_authorize, 10 permissions" 1 | tee "$work/l7"
cpu_of() { awk '{ for (i = 1; i <= NF; i++) if ($i == "CPU") print $(i + 1) }' "$1"; }
awk -v base="$(cpu_of "$work/base")" -v noop="$(cpu_of "$work/noop")" -v l7="$(cpu_of "$work/l7")" 'BEGIN {
  printf "action cost: %.2f us of HAProxy CPU per request, of which %.2f us running any Lua action, %.2f us the authorizer'"'"'s own work\n", l7 - base, noop - base, l7 - noop }'
