#!/usr/bin/env bash
# Benchmark of one authorization decision's cost. Not a test: prints figures.
#   bash bench/authorizer.sh            (after npm run build:lua)
# 1. lua5.3 bench/authorizer.lua: the whole action body on a stub core
#    (cache hit; cache miss answered by an in-memory agent).
# 2. A real HAProxy 2.6 running bench/authorizer-haproxy.lua against a real
#    Consul dev agent on loopback: miss = one authorize round trip.
# CONSUL_BIN picks the consul binary (default: the one npm test builds).
set -euo pipefail
cd "$(dirname "$0")/.."

CONSUL_BIN=${CONSUL_BIN:-$PWD/.cache/consul/1.22.3/consul}
ITERATIONS=${BENCH_ITERATIONS:-2000}
[ -f dist/connect-haproxy.lua ] || { echo "bench: build first (npm run build:lua)" >&2; exit 1; }

echo "== Lua cost under lua5.3 (stub core)"
lua5.3 bench/authorizer.lua

[ -x "$CONSUL_BIN" ] || { echo "bench: no consul binary at $CONSUL_BIN (set CONSUL_BIN)" >&2; exit 1; }
work=$(mktemp -d /tmp/ch-authz-bench-XXXXXX)
consul_pid=""
haproxy_pid=""
cleanup() {
  [ -n "$haproxy_pid" ] && kill "$haproxy_pid" 2>/dev/null || true
  [ -n "$consul_pid" ] && kill "$consul_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Free loopback ports, chosen by the kernel.
read -r http serf_lan serf_wan server listener < <(node -e '
  const net = require("net");
  const ports = [];
  const next = () => { const s = net.createServer(); s.listen(0, "127.0.0.1", () => { ports.push(s.address().port); s.close(() => ports.length < 5 ? next() : console.log(ports.join(" "))); }); };
  next();')

cat > "$work/agent.json" <<EOF
{"node_name":"bench","bind_addr":"127.0.0.1","client_addr":"127.0.0.1","advertise_addr":"127.0.0.1","log_level":"warn",
 "ports":{"http":$http,"dns":-1,"serf_lan":$serf_lan,"serf_wan":$serf_wan,"server":$server,"grpc":-1,"grpc_tls":-1}}
EOF
"$CONSUL_BIN" agent -dev -config-file "$work/agent.json" > "$work/consul.log" 2>&1 &
consul_pid=$!
agent="http://127.0.0.1:$http"
for _ in $(seq 1 200); do
  if curl -fs "$agent/v1/agent/connect/ca/roots" 2>/dev/null | grep -q '"Roots":\[{'; then break; fi
  kill -0 "$consul_pid" 2>/dev/null || { cat "$work/consul.log" >&2; exit 1; }
  sleep 0.1
done
for name in web db; do
  curl -fs -X PUT -d "{\"Name\":\"$name\",\"Port\":9999,\"Connect\":{\"SidecarService\":{}}}" "$agent/v1/agent/service/register" > /dev/null
done
client_uri=$(curl -fs "$agent/v1/agent/connect/ca/leaf/web" | node -e 'let t="";process.stdin.on("data",d=>t+=d).on("end",()=>console.log(JSON.parse(t).ServiceURI))')

cat > "$work/haproxy.cfg" <<EOF
global
    setenv CONSUL_HTTP_ADDR 127.0.0.1:$http
    lua-load $PWD/bench/authorizer-haproxy.lua
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend idle
    bind 127.0.0.1:$listener
EOF
echo "== Real round trips: $(haproxy -v | head -1 | cut -d' ' -f1-3), $("$CONSUL_BIN" version | head -1), $(nproc) CPUs"
CH_BUNDLE=$PWD/dist/connect-haproxy.lua BENCH_CLIENT_URI=$client_uri BENCH_TARGET=db BENCH_ITERATIONS=$ITERATIONS \
  haproxy -db -f "$work/haproxy.cfg" > "$work/haproxy.out" 2>&1 &
haproxy_pid=$!
for _ in $(seq 1 ${BENCH_WAIT_TENTHS:-1200}); do
  if grep -q "^BENCH " "$work/haproxy.out"; then break; fi
  kill -0 "$haproxy_pid" 2>/dev/null || break
  sleep 0.1
done
grep -v "^BENCH DONE" "$work/haproxy.out" | grep -E "^(miss|hit|BENCH)" || { echo "bench: HAProxy said:" >&2; cat "$work/haproxy.out" >&2; exit 1; }
grep -q "^BENCH DONE" "$work/haproxy.out"
