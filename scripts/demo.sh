#!/usr/bin/env bash
# npm run demo: installs what is missing, builds, and runs the walk-through.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prepare.sh
prepare
exec node scripts/demo/demo.mjs
