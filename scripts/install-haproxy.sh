#!/usr/bin/env bash
# Prints the path of a HAProxy binary of the given upstream version, building it
# first if needed. Usage: scripts/install-haproxy.sh <version> (e.g. 3.0.11).
#   HAPROXY_BIN set  → that binary is used as it is (whatever the version asked).
#   otherwise        → .cache/haproxy/<version>/haproxy in this checkout, else the
#                      per-user cache ($XDG_CACHE_HOME/connect-haproxy), else built
#                      from the upstream source Debian's archive serves as the
#                      source package's orig.tar.gz (apt's own signed indexes
#                      check it), with this machine's gcc against Debian 12's
#                      OpenSSL, Lua 5.4 and PCRE2.
# Build dependencies come from scripts/install-deps.sh. Exit 1 with one line
# when the version is unknown or its source cannot be had.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-}

# upstream version → the Debian source package version that ships it, and the suite serving it
declare -A DEBIAN_VERSION=([3.0.11]=3.0.11-1+deb13u4 [3.2.26]=3.2.26-1)
declare -A DEBIAN_SUITE=([3.0.11]=trixie [3.2.26]=sid)

say() { printf 'install-haproxy: %s\n' "$*" >&2; }

if [ -n "${HAPROXY_BIN:-}" ]; then
  command -v "$HAPROXY_BIN" >/dev/null || { say "HAPROXY_BIN=$HAPROXY_BIN is not an executable"; exit 1; }
  echo "$HAPROXY_BIN"; exit 0
fi
[ -n "$version" ] || { say "usage: install-haproxy.sh <version> (one of: ${!DEBIAN_VERSION[*]})"; exit 1; }
[ -n "${DEBIAN_VERSION[$version]:-}" ] || { say "no source known for HAProxy $version (known: ${!DEBIAN_VERSION[*]})"; exit 1; }

local_bin="$root/.cache/haproxy/$version/haproxy"
user_dir="${XDG_CACHE_HOME:-$HOME/.cache}/connect-haproxy/haproxy/$version"
user_bin="$user_dir/haproxy"
usable() { [ -x "$1" ] && "$1" -v 2>/dev/null | head -1 | grep -qE "version ${version//./\\.}[- ]"; }
for bin in "$local_bin" "$user_bin"; do
  if usable "$bin"; then
    if [ "$bin" != "$local_bin" ]; then mkdir -p "$(dirname "$local_bin")"; cp "$bin" "$local_bin"; fi
    echo "$local_bin"; exit 0
  fi
done

# The source: apt with a private list of deb-src lines (the system's sources stay as they are).
apt_dir="${XDG_CACHE_HOME:-$HOME/.cache}/connect-haproxy/apt"
tarball="$apt_dir/haproxy_$version.orig.tar.gz"
if [ ! -s "$tarball" ]; then
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  printf 'deb-src [signed-by=%s] http://deb.debian.org/debian %s main\n' "$keyring" trixie "$keyring" sid > "$apt_dir/sources.list"
  apt_options=(-o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
               -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  say "fetching HAProxy $version's source (Debian ${DEBIAN_SUITE[$version]}, haproxy ${DEBIAN_VERSION[$version]})"
  apt-get "${apt_options[@]}" -qq update >&2 || { say "apt-get update failed for the deb-src lines in $apt_dir/sources.list"; exit 1; }
  # Only the orig.tar.gz is needed; the .dsc and Debian's patches are not.
  ( cd "$apt_dir" && apt-get "${apt_options[@]}" -qq source --download-only "haproxy=${DEBIAN_VERSION[$version]}" ) >"$apt_dir/source.log" 2>&1 || true
  [ -s "$tarball" ] || { cat "$apt_dir/source.log" >&2; say "Debian's archive did not serve haproxy_$version.orig.tar.gz (source package haproxy=${DEBIAN_VERSION[$version]} in ${DEBIAN_SUITE[$version]}); set HAPROXY_BIN to use an existing binary"; exit 1; }
fi

bash "$root/scripts/install-deps.sh" --build-haproxy
build_dir=$(mktemp -d "${TMPDIR:-/tmp}/haproxy-build.XXXXXX")
trap 'rm -rf "$build_dir"' EXIT
tar -xzf "$tarball" -C "$build_dir"
src="$build_dir/haproxy-$version"
# Debian's own build uses these options too (less systemd, QUIC and OpenTracing).
make_options=(TARGET=linux-glibc USE_OPENSSL=1 USE_LUA=1 LUA_INC=/usr/include/lua5.4 LUA_LIB_NAME=lua5.4
              USE_PCRE2=1 USE_PCRE2_JIT=1 USE_PROMEX=1 USE_SLZ=1)
say "building HAProxy $version (make -j2 ${make_options[*]}; about a minute, once)"
# One heavy job at a time on the machine: take the shared lock unless an ancestor (npm test under flock) holds it.
heavy_lock=/tmp/ch-heavy.lock
lock_held_above() {
  local inode holders pid
  inode=$(stat -c %i "$heavy_lock" 2>/dev/null) || return 1
  holders=$(awk -v inode="$inode" '{ split($6, id, ":"); if (id[3] == inode) print $5 }' /proc/locks)
  for pid in $holders; do
    local p=$$
    while [ "${p:-1}" -gt 1 ]; do [ "$p" = "$pid" ] && return 0; p=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null); done
  done
  return 1
}
locked=(flock "$heavy_lock"); lock_held_above && locked=()
started=$(date +%s)
"${locked[@]}" make -C "$src" -j2 "${make_options[@]}" >"$build_dir/make.log" 2>&1 || { tail -n 20 "$build_dir/make.log" >&2; say "building HAProxy $version failed"; exit 1; }
say "built HAProxy $version in $(( $(date +%s) - started )) s"
mkdir -p "$user_dir"; cp "$src/haproxy" "$user_bin.tmp.$$"; mv "$user_bin.tmp.$$" "$user_bin"
usable "$user_bin" || { say "the built $user_bin does not report version $version"; exit 1; }
mkdir -p "$(dirname "$local_bin")"; cp "$user_bin" "$local_bin"
echo "$local_bin"
