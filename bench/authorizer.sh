#!/usr/bin/env bash
# Benchmark of one authorization decision's cost. Not a test: prints figures.
#   bash bench/authorizer.sh            (after npm run build)
# 1. lua5.3 bench/authorizer.lua: the whole action body on a stub core
#    (cache hit; cache miss answered by an in-memory agent).
# 2. node bench/authorizer-round-trips.mjs: a real HAProxy 2.6 running
#    bench/authorizer-haproxy.lua against a real Consul dev agent on loopback
#    (both started by the test harness): miss = one authorize round trip.
# CONSUL_BIN picks the consul binary (default: the one npm test builds).
set -euo pipefail
cd "$(dirname "$0")/.."

CONSUL_BIN=${CONSUL_BIN:-$PWD/.cache/consul/1.22.3/consul}
ITERATIONS=${BENCH_ITERATIONS:-2000}
[ -f dist/connect-haproxy.lua ] && [ -f dist/test/harness/consul.js ] || { echo "bench: build first (npm run build)" >&2; exit 1; }

echo "== Lua cost under lua5.3 (stub core)"
lua5.3 bench/authorizer.lua

[ -x "$CONSUL_BIN" ] || { echo "bench: no consul binary at $CONSUL_BIN (set CONSUL_BIN)" >&2; exit 1; }
CONSUL_BIN=$CONSUL_BIN BENCH_ITERATIONS=$ITERATIONS exec node bench/authorizer-round-trips.mjs
