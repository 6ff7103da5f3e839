#!/usr/bin/env bash
# The one test command (npm test): installs what is missing, builds, runs every
# suite (vitest: unit + integration; busted: Lua specs on the built bundle under
# lua5.3), and ends with one line `N passed, N failed` summing them all.
# Exits non-zero if anything failed or a suite could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
results=.cache/test-results
rm -rf "$results"; mkdir -p "$results"

fail_setup() { echo "test: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

source scripts/prepare.sh
prepare || fail_setup "preparing failed (see above)"
echo "test: using $("$CONSUL_BIN" version | head -1) at $CONSUL_BIN"
echo "test: using $(haproxy -v | head -1)"

# Suites run one after another; each writes a machine-readable result.
npx vitest run --reporter=default --reporter=json --outputFile.json="$results/vitest.json" "$@"
echo "vitest exit: $?" > "$results/vitest.exit"

lua5.3 /usr/bin/busted --lua=lua5.3 -o TAP test/lua > "$results/busted.tap" 2>&1
echo "busted exit: $?" > "$results/busted.exit"
grep -vE '^ok ' "$results/busted.tap" || true

# The benchmark harness: its unit tests, then a quick run as a smoke test
# (it checks that every set-up runs end to end, not the figures).
node --test --test-reporter=tap bench/test/ > "$results/bench-unit.tap" 2>&1
echo "bench-unit exit: $?" > "$results/bench-unit.exit"
grep -E '^not ok ' "$results/bench-unit.tap" || true
node bench/run.mjs --quick > "$results/bench-smoke.log" 2>&1
echo "bench-smoke exit: $?" > "$results/bench-smoke.exit"
tail -n 3 "$results/bench-smoke.log"

node scripts/summarize-tests.mjs "$results"
