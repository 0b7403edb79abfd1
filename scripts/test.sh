#!/usr/bin/env bash
# Runs every test of vr-agent: unit, golden-file and network-namespace integration tests.
# Needs root (namespace tests); installs the system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "the tests create network namespaces: run as root" >&2
  exit 1
fi
bash scripts/deps.sh
cargo test --locked --all-targets
