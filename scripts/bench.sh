#!/usr/bin/env bash
# npm run bench [-- --quick]: installs what is missing, builds, and runs the
# side-by-side benchmark (bench/run.mjs; options: node bench/run.mjs --help).
# Full run: about 20 minutes, writes bench/results/latest.{md,json,svg}.
# --quick: about a minute, writes bench/results/quick.* (a smoke test of the
# harness: its figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/prepare.sh
prepare
# The harness's pure parts (parsers, medians, ratios, chart) first: a second.
node --test --test-reporter=dot bench/test/
exec node bench/run.mjs "$@"
