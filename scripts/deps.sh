#!/usr/bin/env bash
# Installs every system package vr-agent builds, runs and tests with (Debian, as root).
# Idempotent: packages already present are left alone.
set -euo pipefail
packages=(
  nftables        # nft: the NAT and firewall backend
  dnsmasq-base    # dnsmasq: DHCP and DNS
  haproxy         # load balancer listeners (2.6, master-worker)
  keepalived      # router HA: VRRP (2.2)
  conntrackd      # router HA: connection table sync (1.4, FTFW)
  iproute2        # ip: namespaces and veth pairs in tests
  conntrack       # conntrack: deleting stale NAT flows
  busybox         # udhcpc: the DHCP client of the tests
  isc-dhcp-client # dhclient
  iputils-ping    # ping in tests
  iputils-arping  # gratuitous ARP checks in tests
  socat           # TCP/UDP peers in tests
  curl            # run-agent.sh: readiness and the curl lines it prints
  tcpdump         # captures in tests
  dnsutils        # dig in tests
  procps          # ps, pkill
  ca-certificates
  gcc
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
