#!/usr/bin/env bash
# The one test command (npm test): installs what is missing, builds, runs every
# suite (vitest: unit + integration + the soak's 2-minute run, test/soak/, on
# the default HAProxy, then the integration suites again on each other HAProxy
# of the matrix; busted: Lua specs on the
# built bundle under lua5.3 and lua5.4), and ends with one line
# `N passed, N failed` summing them all.
# The HAProxy the tests run comes from one place: HAPROXY_BIN (the harness and
# the controller read it). With HAPROXY_BIN set, only that binary is tested;
# otherwise Debian's haproxy (2.6) and the versions in HAPROXY_MATRIX, built by
# scripts/install-haproxy.sh.
# Exits non-zero if anything failed or a suite could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
results=.cache/test-results
rm -rf "$results"; mkdir -p "$results"

fail_setup() { echo "test: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

source scripts/prepare.sh
prepare || fail_setup "preparing failed (see above)"
echo "test: using $("$CONSUL_BIN" version | head -1) at $CONSUL_BIN"

default_haproxy=${HAPROXY_BIN:-$(command -v haproxy)} || fail_setup "no haproxy on PATH"
matrix=()
if [ -z "${HAPROXY_BIN:-}" ]; then
  for version in ${HAPROXY_MATRIX-3.0.11 3.2.26}; do
    if bin=$(bash scripts/install-haproxy.sh "$version"); then
      matrix+=("$bin")
    else
      # Named in the summary too: a version we could not get is not silently dropped.
      echo "HAProxy $version: not installed (see install-haproxy above); its suites did not run" > "$results/haproxy-missing-$version.txt"
    fi
  done
fi
for bin in "$default_haproxy" "${matrix[@]}"; do
  echo "test: HAProxy $bin:"; "$bin" -vv 2>&1 | sed -n '1p;/^Built with OpenSSL version/p;/^Running on OpenSSL version/p;/^Built with Lua version/p' | sed 's/^/test:   /'
done

# Suites run one after another; each writes a machine-readable result.
# vitest-<label>.json: the label names the HAProxy (its -v line is in <label>.haproxy).
run_vitest() {
  local label=$1 bin=$2; shift 2
  "$bin" -v | head -1 > "$results/vitest-$label.haproxy"
  HAPROXY_BIN=$bin npx vitest run --reporter=default --reporter=json --outputFile.json="$results/vitest-$label.json" "$@"
  echo "vitest exit: $?" > "$results/vitest-$label.exit"
}
run_vitest default "$default_haproxy" "$@"
for bin in "${matrix[@]}"; do
  run_vitest "haproxy-$(basename "$(dirname "$bin")")" "$bin" "${@:-test/integration}"
done

for lua in lua5.3 lua5.4; do
  $lua /usr/bin/busted --lua=$lua -o TAP test/lua > "$results/busted-$lua.tap" 2>&1
  echo "busted exit: $?" > "$results/busted-$lua.exit"
  grep -vE '^ok ' "$results/busted-$lua.tap" || true
done

# The benchmark harness: its unit tests, then a quick run as a smoke test
# (it checks that every set-up runs end to end, not the figures), and the
# authorizer micro-benchmark's stub core for a few decisions (it runs the
# bundle's install(), so a core function the bundle newly needs shows here).
node --test --test-reporter=tap bench/test/ > "$results/bench-unit.tap" 2>&1
echo "bench-unit exit: $?" > "$results/bench-unit.exit"
grep -E '^not ok ' "$results/bench-unit.tap" || true
{ node bench/run.mjs --quick && lua5.3 bench/authorizer.lua 2 20; } > "$results/bench-smoke.log" 2>&1
echo "bench-smoke exit: $?" > "$results/bench-smoke.exit"
tail -n 3 "$results/bench-smoke.log"

node scripts/summarize-tests.mjs "$results"
