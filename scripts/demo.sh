#!/usr/bin/env bash
# npm run demo: installs what is missing, builds, and runs the walk-through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
CONSUL_BIN=$(bash scripts/install-consul.sh)
export CONSUL_BIN
npm run --silent build
exec node scripts/demo/demo.mjs
