#!/usr/bin/env bash
# Prints the path of a real Consul binary, building it first if needed.
#   CONSUL_BIN set       → that binary is used as it is.
#   otherwise            → .cache/consul/<version>/consul in this checkout, else
#                          the per-user cache ($XDG_CACHE_HOME/connect-haproxy),
#                          else built from the Go module proxy with this machine's
#                          Go through the wrapper module in scripts/consul/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk '$1 == "github.com/hashicorp/consul" { sub(/^v/, "", $2); print $2 }' "$root/scripts/consul/go.mod")
[ -n "$version" ] || { echo "install-consul: no Consul version in scripts/consul/go.mod" >&2; exit 1; }

if [ -n "${CONSUL_BIN:-}" ]; then
  [ -x "$CONSUL_BIN" ] || { echo "install-consul: CONSUL_BIN=$CONSUL_BIN is not an executable" >&2; exit 1; }
  echo "$CONSUL_BIN"; exit 0
fi

local_bin="$root/.cache/consul/$version/consul"
user_bin="${XDG_CACHE_HOME:-$HOME/.cache}/connect-haproxy/consul/$version/consul"
for bin in "$local_bin" "$user_bin"; do
  if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
    if [ "$bin" != "$local_bin" ]; then
      mkdir -p "$(dirname "$local_bin")"; cp "$bin" "$local_bin"
    fi
    echo "$local_bin"; exit 0
  fi
done

command -v go >/dev/null || { echo "install-consul: no Go toolchain to build Consul $version (set CONSUL_BIN to a consul binary)" >&2; exit 1; }
echo "install-consul: building Consul $version from the Go module proxy (a few minutes, once)" >&2
tmp="$user_bin.tmp.$$"
mkdir -p "$(dirname "$user_bin")"
( cd "$root/scripts/consul" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$tmp" github.com/hashicorp/consul ) >&2
mv "$tmp" "$user_bin"
mkdir -p "$(dirname "$local_bin")"; cp "$user_bin" "$local_bin"
echo "$local_bin"
