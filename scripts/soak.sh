#!/usr/bin/env bash
# npm run soak [-- --minutes N --out PATH]: installs what is missing, builds,
# and runs the soak (bench/soak.mjs): 10 minutes by default, about 11 with the
# set-up; writes bench/results/soak.{md,json}. Exit 1 if a promise broke.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/prepare.sh
prepare
exec node bench/soak.mjs "$@"
