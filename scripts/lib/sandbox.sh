# A virtual router in network namespaces, laid out as the demo does (examples/demo.rs):
#
#   host: vrsb<pid> 198.18.X.1/30 ---- eth0 198.18.X.2 [router] eth1 10.10.1.20 ---- 10.10.1.1 [public]
#                                                       eth2 172.20.0.1
#                                                            |
#                                                     [guest] eth0 172.20.0.15
#
# The management side is the host itself, over a veth on a /30 of 198.18.0.0/15 (the
# benchmarking range: never routed, picked so that it overlaps nothing the host has), so the
# agent is reachable from the host while its firewall and NAT stay inside the router's
# namespace. Every name carries the pid; sandbox_cleanup removes all of it.
# Source after common.sh; it defines functions and SB_* variables only.

SB_MGMT_MAC=fa:7e:4b:ad:11:00
SB_PUB_MAC=fa:7e:4b:ad:11:01
SB_GUEST_NIC_MAC=fa:7e:4b:ad:11:02
SB_VM_MAC=fa:3c:91:5e:22:07

# Names of this sandbox (unique per process).
sandbox_names() {
  SB_ID=$$
  SB_ROUTER=vrsb-$SB_ID-r
  SB_PUBLIC=vrsb-$SB_ID-p
  SB_GUEST=vrsb-$SB_ID-g
  SB_HOST_IF=vrsb$SB_ID
  SB_DIR=""
  SB_AGENT_PID=""
}

# Picks a /30 of 198.18.0.0/15 that no address or route of the host overlaps; sets SB_HOST_IP
# and SB_ROUTER_IP.
sandbox_pick_subnet() {
  local n tries base net
  n=$((SB_ID % 32768))
  for tries in $(seq 0 63); do
    base=$(( ((n + tries * 257) % 32768) * 4 ))
    net=198.$((18 + base / 65536)).$(((base / 256) % 256)).$((base % 256))
    if [ -z "$(ip -4 -o addr show to "$net/30")" ] && [ -z "$(ip -4 route show "$net/30")" ] \
      && ! ip -4 route show | grep -q "^198\.1[89]\.$(((base / 256) % 256))\.$((base % 256))/"; then
      SB_HOST_IP=198.$((18 + base / 65536)).$(((base / 256) % 256)).$((base % 256 + 1))
      SB_ROUTER_IP=198.$((18 + base / 65536)).$(((base / 256) % 256)).$((base % 256 + 2))
      return
    fi
  done
  echo "no free /30 in 198.18.0.0/15" >&2
  return 1
}

# Namespaces, veth pairs and the peers' addresses. The router's nics get temporary names;
# bootstrap renames them by MAC.
sandbox_create() {
  ip netns add "$SB_ROUTER"
  ip netns add "$SB_PUBLIC"
  ip netns add "$SB_GUEST"
  local ns
  for ns in "$SB_ROUTER" "$SB_PUBLIC" "$SB_GUEST"; do ip -n "$ns" link set lo up; done
  ip link add "$SB_HOST_IF" address fa:00:00:00:00:10 type veth peer name m0 \
    address "$SB_MGMT_MAC" netns "$SB_ROUTER"
  ip addr add "$SB_HOST_IP/30" dev "$SB_HOST_IF"
  ip link set "$SB_HOST_IF" up
  ip -n "$SB_PUBLIC" link add out0 address fa:00:00:00:00:11 type veth peer name p0 \
    address "$SB_PUB_MAC" netns "$SB_ROUTER"
  ip -n "$SB_GUEST" link add eth0 address "$SB_VM_MAC" type veth peer name g0 \
    address "$SB_GUEST_NIC_MAC" netns "$SB_ROUTER"
  ip -n "$SB_PUBLIC" addr add 10.10.1.1/24 dev out0
  ip -n "$SB_PUBLIC" link set out0 up
  ip -n "$SB_GUEST" addr add 172.20.0.15/24 dev eth0
  ip -n "$SB_GUEST" link set eth0 up
  ip -n "$SB_GUEST" route add default via 172.20.0.1
}

# Writes the bootstrap info, as the management node hands it over, and runs
# `vr-agent bootstrap --from` in the router: nics renamed, addressed, up; sysctls; key.
sandbox_bootstrap() {
  cat > "$SB_DIR/bootstrap-info.json" <<JSON
{"managementNic": {"ip": "$SB_ROUTER_IP", "netmask": "255.255.255.252", "gateway": "$SB_HOST_IP",
  "mac": "$SB_MGMT_MAC", "deviceName": "eth0", "isDefaultRoute": false},
 "additionalNics": [
  {"ip": "10.10.1.20", "netmask": "255.255.255.0", "gateway": "10.10.1.1", "mac": "$SB_PUB_MAC",
   "deviceName": "eth1", "isDefaultRoute": true},
  {"ip": "172.20.0.1", "netmask": "255.255.255.0", "gateway": "172.20.0.1",
   "mac": "$SB_GUEST_NIC_MAC", "deviceName": "eth2", "isDefaultRoute": false}],
 "publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISandboxKeyOnlyForTheSandbox sandbox@host"}
JSON
  ip netns exec "$SB_ROUTER" "$VR_AGENT_BIN" bootstrap --from="$SB_DIR/bootstrap-info.json" \
    --state-dir="$SB_DIR/state" --authorized-keys="$SB_DIR/authorized_keys" \
    --error-log="$SB_DIR/error.log"
}

# Starts the agent in the router (both listeners on all its addresses); its log goes to
# $SB_DIR/agent.log. Extra arguments go to `serve`.
sandbox_start_agent() {
  ip netns exec "$SB_ROUTER" "$VR_AGENT_BIN" serve --vr-listen=0.0.0.0:7272 \
    --appliance-listen=0.0.0.0:7759 --state-dir="$SB_DIR/state" --run-dir="$SB_DIR/run" \
    --mgmt-nic=eth0 "$@" >>"$SB_DIR/agent.log" 2>&1 &
  SB_AGENT_PID=$!
}

# Waits (up to 60 s) until the agent answers /ping from the host and has re-applied its
# stored state (the agent serves first; /ping says "startup:" until then).
sandbox_wait_ready() {
  local i ping
  for i in $(seq 1 600); do
    ping=$(curl -fsS -m 1 -X POST "http://$SB_ROUTER_IP:7272/ping" -d '{}' 2>/dev/null || true)
    if [ -n "$ping" ] && [[ "$ping" != *'startup:'* ]]; then
      return 0
    fi
    if ! kill -0 "$SB_AGENT_PID" 2>/dev/null; then
      echo "the agent exited; its log:" >&2
      cat "$SB_DIR/agent.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "the agent did not get ready within 60 s; its log: $SB_DIR/agent.log" >&2
  return 1
}

# Stops the agent and removes the namespaces (with whatever still runs in them), the host
# veth and the directory. Safe to call twice and after a partial setup.
sandbox_cleanup() {
  local ns pid i
  if [ -n "${SB_AGENT_PID:-}" ] && kill -0 "$SB_AGENT_PID" 2>/dev/null; then
    kill -TERM "$SB_AGENT_PID" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$SB_AGENT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SB_AGENT_PID" 2>/dev/null || true
  fi
  SB_AGENT_PID=""
  for ns in "${SB_ROUTER:-}" "${SB_PUBLIC:-}" "${SB_GUEST:-}"; do
    [ -n "$ns" ] || continue
    if ip netns list | grep -qw "^$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  # the host end goes with the router's namespace; remove it if it was left alone
  if [ -n "${SB_HOST_IF:-}" ] && ip link show "$SB_HOST_IF" >/dev/null 2>&1; then
    ip link del "$SB_HOST_IF" 2>/dev/null || true
  fi
  if [ -n "${SB_DIR:-}" ] && [ -d "$SB_DIR" ]; then
    rm -rf "$SB_DIR"
  fi
  SB_DIR=""
}
