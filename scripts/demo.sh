#!/usr/bin/env bash
# One-command demo: builds the agent, lays out a virtual router with management, public and
# guest networks in namespaces, drives it as the management node would, shows DHCP, DNS, SNAT,
# EIP and port forwarding working with real packets, and cleans up. Run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
need_root "the demo creates network namespaces"
deps_and_build
cd "$(repo_root)"
cargo run --release --locked --example demo
