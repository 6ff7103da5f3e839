# Sourced by scripts/test.sh, demo.sh and bench.sh (from the checkout's root):
# installs what is missing (scripts/install-deps.sh), finds or builds Consul
# and exports CONSUL_BIN (scripts/install-consul.sh), then builds (npm run build).
# Returns non-zero at the first step that fails, after saying which.
prepare() {
  bash scripts/install-deps.sh || { echo "prepare: installing dependencies failed (see above)" >&2; return 1; }
  CONSUL_BIN=$(bash scripts/install-consul.sh) || { echo "prepare: no Consul binary: the build failed (see above); set CONSUL_BIN to use an existing one" >&2; return 1; }
  export CONSUL_BIN
  npm run --silent build || { echo "prepare: the build failed (see above)" >&2; return 1; }
}
