#!/usr/bin/env bash
# Runs vr-agent, as root.
#
#   scripts/run-agent.sh [SERVE ARGS...]          a sandboxed router (the default; safe anywhere)
#   scripts/run-agent.sh --host [SERVE ARGS...]   in this machine's own network namespace, as the
#                                                 appliance runs it (installs its firewall here!)
#
# The sandbox: network namespaces with a management, a public and a guest side (see
# scripts/lib/sandbox.sh), the agent bootstrapped from a bootstrap-info file and reachable
# from this host over a private /30. It prints the URL and curl lines to try, and removes
# everything on Ctrl-C or exit.
#
# Installs the system packages and builds in release mode first; VR_AGENT_BIN=PATH uses an
# already built binary instead (and skips both).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/sandbox.sh"

if [ "${1:-}" = --host ]; then
  shift
  need_root "run-agent.sh --host"
  deps_and_build
  cat >&2 <<'WARN'
WARNING: --host runs the agent in this machine's own network namespace, as the appliance does.
At start it installs its nftables tables (ip vr_nat, inet vr_filter): with a management nic
known (--mgmt-nic, default eth0, or cached bootstrap info), input and forward policy DROP,
ssh and the agent's ports accepted on that nic only. On a machine that is not a virtual
router this can cut ssh and forwarded traffic (containers, VMs). Starting in 5 s; Ctrl-C aborts.
WARN
  sleep 5
  exec "$VR_AGENT_BIN" serve "$@"
fi

need_root "run-agent.sh (the sandbox creates network namespaces)"
deps_and_build
sandbox_names
trap sandbox_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
sandbox_pick_subnet
SB_DIR=$(mktemp -d /tmp/vr-sandbox.XXXXXX)
# dnsmasq drops to nobody: its directory and every one above it must be searchable
chmod 755 "$SB_DIR"
sandbox_create
sandbox_bootstrap >/dev/null
sandbox_start_agent "$@"
sandbox_wait_ready

url=http://$SB_ROUTER_IP:7272
cat <<MSG

vr-agent is running in a sandbox: namespaces $SB_ROUTER (router), $SB_PUBLIC (public side),
$SB_GUEST (guest 172.20.0.15); host veth $SB_HOST_IF ($SB_HOST_IP/30).
Agent: $url (and :7759), log $SB_DIR/agent.log, state $SB_DIR/state

Try (sync mode: no taskuuid/callbackurl headers, the reply comes in the response):

  curl -s -X POST $url/ping -d '{}'
  curl -s -X POST $url/createvip -d '{"vips":[{"ip":"10.10.1.55","netmask":"255.255.255.0","gateway":"10.10.1.1","ownerEthernetMac":"$SB_PUB_MAC"}]}'
  curl -s -X POST $url/createeip -d '{"eip":{"vipIp":"10.10.1.55","privateMac":"$SB_GUEST_NIC_MAC","guestIp":"172.20.0.15","snatInboundTraffic":false}}'
  curl -s $url/metrics
  $VR_AGENT_BIN status --url $url
  ip netns exec $SB_ROUTER nft list ruleset

Ctrl-C stops the agent and removes the sandbox.
MSG
wait "$SB_AGENT_PID" || true
echo "the agent exited; its log: $SB_DIR/agent.log" >&2
tail -n 20 "$SB_DIR/agent.log" >&2 || true
