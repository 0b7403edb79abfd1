#!/usr/bin/env bash
# Builds vr-agent in release mode and runs it in the foreground, as root.
# Extra arguments go to `vr-agent serve` (e.g. --vr-listen 127.0.0.1:7272).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --locked
exec ./target/release/vr-agent serve "$@"
