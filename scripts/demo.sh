#!/usr/bin/env bash
# One-command demo: builds the agent, lays out a virtual router with management, public and
# guest networks in namespaces, drives it as the management node would, shows DHCP, DNS, SNAT,
# EIP and port forwarding working with real packets, and cleans up. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the demo creates network namespaces: run as root" >&2; exit 1; }
bash scripts/deps.sh
cargo build --release --locked
cargo run --release --locked --example demo
