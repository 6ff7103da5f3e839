#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need, and only what is
# missing: Debian packages (HAProxy 2.6 with Lua 5.3, lua5.3, busted, tools),
# Prometheus (the metrics tests scrape with it), the npm packages, and the real Consul binary (scripts/install-consul.sh).
# Idempotent: a second run does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'install-deps: %s\n' "$*" >&2; }

# command → Debian package that provides it
declare -A PACKAGE_OF=(
  [haproxy]=haproxy
  [lua5.3]=lua5.3
  [luac5.3]=lua5.3
  [busted]=lua-busted
  [socat]=socat
  [openssl]=openssl
  [wrk]=wrk
  [iperf3]=iperf3
  [ip]=iproute2
  [curl]=curl
  [taskset]=util-linux
  [prometheus]=prometheus
  [promtool]=prometheus
)
missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$cmd]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The busted specs give the stub of HAProxy's Regex class a real PCRE2 engine.
if ! lua5.3 -e 'require("rex_pcre2")' >/dev/null 2>&1; then
  say "installing Debian package: lua-rex-pcre2"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends lua-rex-pcre2 >/dev/null
fi

# HAProxy must be 2.6+ and built with Lua.
haproxy_build=$(haproxy -vv 2>&1)
if ! grep -q 'Built with Lua version' <<<"$haproxy_build"; then
  say "error: $(command -v haproxy) is not built with Lua; install Debian's haproxy package"
  exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

bash scripts/install-consul.sh >/dev/null
