#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need, and only what is
# missing: Debian packages (HAProxy 2.6 with Lua 5.3, lua5.3, lua5.4, busted, tools),
# Prometheus (the metrics tests scrape with it), the npm packages, and the real Consul binary (scripts/install-consul.sh).
#   --build-haproxy  only what scripts/install-haproxy.sh needs to build HAProxy
#                    from source (gcc, make, OpenSSL, Lua 5.4, PCRE2 headers).
# Idempotent: a second run does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'install-deps: %s\n' "$*" >&2; }
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "${1:-}" = --build-haproxy ]; then
  build_packages=(gcc make libc6-dev libssl-dev liblua5.4-dev libpcre2-dev)
  missing=()
  for package in "${build_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  if ((${#missing[@]})); then say "installing Debian packages to build HAProxy: ${missing[*]}"; apt_install "${missing[@]}"; fi
  exit 0
fi

# command → Debian package that provides it
declare -A PACKAGE_OF=(
  [haproxy]=haproxy
  [lua5.3]=lua5.3
  [luac5.3]=lua5.3
  [lua5.4]=lua5.4
  [luac5.4]=lua5.4
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
  apt_install "${missing[@]}"
fi

# The busted specs run under Lua 5.3 and 5.4 (Debian's lua-busted serves both);
# they give the stub of HAProxy's Regex class a real PCRE2 engine.
for lua in lua5.3 lua5.4; do
  if ! $lua -e 'require("busted.runner"); require("rex_pcre2")' >/dev/null 2>&1; then
    say "installing Debian packages for $lua: lua-busted lua-rex-pcre2"
    apt_install lua-busted lua-rex-pcre2
  fi
done

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
