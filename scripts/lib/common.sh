# Shared by the scripts in scripts/: root check, system packages, the release build.
# Source it; it defines functions only.

# The repository root (scripts/lib/..).
repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); }

# Exits unless running as root; $1 says why root is needed.
need_root() {
  [ "$(id -u)" = 0 ] || { echo "$1: run as root" >&2; exit 1; }
}

# Installs the system packages (scripts/deps.sh) and builds the release binary, unless
# VR_AGENT_BIN names a binary already built (then neither runs). Sets VR_AGENT_BIN.
deps_and_build() {
  local root
  root=$(repo_root)
  if [ -n "${VR_AGENT_BIN:-}" ]; then
    [ -x "$VR_AGENT_BIN" ] || { echo "VR_AGENT_BIN=$VR_AGENT_BIN is not an executable" >&2; exit 1; }
    VR_AGENT_BIN=$(cd "$(dirname "$VR_AGENT_BIN")" && pwd)/$(basename "$VR_AGENT_BIN")
    return
  fi
  bash "$root/scripts/deps.sh"
  (cd "$root" && cargo build --release --locked)
  VR_AGENT_BIN=$root/target/release/vr-agent
}
