#!/usr/bin/env python3
"""Boot test of the appliance image: boots it under QEMU (software emulation) with three nics
and the bootstrap virtio-serial channel, then drives the agent exactly as the management node
would and checks the result inside the VM over ssh with the bootstrap key; reboots and checks
the data plane comes back before any new command.

    image-build/boot-test.py IMAGE AGENT_BINARY

Bounded in time; every process it starts is stopped by PID. Prints a line per check and a
closing 'N passed, N failed' line; exits non-zero on any failure.
"""
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "requests")
BOOT_TIMEOUT = 300
COMMAND_TIMEOUT = 120

MGMT_MAC, PUB_MAC, GUEST_MAC = "fa:7e:4b:ad:11:00", "fa:7e:4b:ad:11:01", "fa:7e:4b:ad:11:02"
SLIRP_HOST = "192.168.100.2"

passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name} {detail}", flush=True)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixture(name):
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        return json.load(f)


class Callbacks(http.server.BaseHTTPRequestHandler):
    """The management node's callback receiver."""
    replies = {}
    cond = threading.Condition()

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        uuid = self.headers.get("taskuuid", "")
        with Callbacks.cond:
            Callbacks.replies[uuid] = json.loads(body or b"null")
            Callbacks.cond.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class ManagementNode:
    def __init__(self, agent_port, appliance_port):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Callbacks)
        self.cb_port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.ports = {"vr": agent_port, "appliance": appliance_port}
        self.n = 0

    def echo(self, which="vr"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports[which]}/echo", data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=3) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def call(self, path, body, which="vr"):
        self.n += 1
        uuid = f"{os.getpid():08x}{self.n:024x}"
        # the VM reaches the host's loopback through QEMU's user network gateway
        cb = f"http://{SLIRP_HOST}:{self.cb_port}/zstack/asyncrest/callback"
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports[which]}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", "taskuuid": uuid, "callbackurl": cb})
        with urllib.request.urlopen(req, timeout=30) as r:
            if r.status != 200:
                raise RuntimeError(f"{path}: ack {r.status}")
        deadline = time.time() + COMMAND_TIMEOUT
        with Callbacks.cond:
            while uuid not in Callbacks.replies:
                left = deadline - time.time()
                if left <= 0:
                    raise RuntimeError(f"{path}: no callback within {COMMAND_TIMEOUT} s")
                Callbacks.cond.wait(left)
            return Callbacks.replies.pop(uuid)


# One load balancer listener on the router's public address whose backend is the agent itself
# (its /echo on the management address): real TCP through haproxy inside the image.
LB_REFRESH = {"lbs": [{"lbUuid": "bootlb", "listenerUuid": "bootlistener", "vip": "10.10.1.20",
                       "nicIps": ["192.168.100.20"], "instancePort": 7272, "loadBalancerPort": 8080,
                       "mode": "tcp", "parameters": ["healthCheckInterval::2", "unhealthyThreshold::2"]}]}
LB_ASK = ("bash -c 'exec 3<>/dev/tcp/10.10.1.20/8080 && printf \"POST /echo HTTP/1.1\\r\\nHost: x\\r\\n"
          "Content-Length: 0\\r\\nConnection: close\\r\\n\\r\\n\" >&3 && timeout 5 cat <&3'")


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    image, agent_bin = sys.argv[1], sys.argv[2]
    agent_md5 = hashlib.md5(open(agent_bin, "rb").read()).hexdigest()
    tmp = tempfile.mkdtemp(prefix="vr-boot-test-")
    qemu = None
    try:
        key = os.path.join(tmp, "id")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        pubkey = open(key + ".pub").read().strip()
        bootstrap = {
            "managementNic": {"ip": "192.168.100.20", "netmask": "255.255.255.0", "gateway": SLIRP_HOST,
                              "mac": MGMT_MAC, "deviceName": "eth0", "isDefaultRoute": False},
            "additionalNics": [
                {"ip": "10.10.1.20", "netmask": "255.255.255.0", "gateway": "10.10.1.1", "mac": PUB_MAC,
                 "deviceName": "eth1", "isDefaultRoute": True},
                {"ip": "172.20.0.1", "netmask": "255.255.255.0", "gateway": "172.20.0.1", "mac": GUEST_MAC,
                 "deviceName": "eth2", "isDefaultRoute": False}],
            "publicKey": pubkey}
        vr_port, apv_port, ssh_port = free_port(), free_port(), free_port()
        udp = [free_port() for _ in range(4)]
        sock = os.path.join(tmp, "bootstrap.sock")
        serial = os.path.join(tmp, "serial.log")
        cmd = [
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-smp", "2", "-m", "1024",
            "-nographic", "-no-user-config", "-nodefaults", "-monitor", "none",
            "-serial", f"file:{serial}",
            "-drive", f"file={image},if=virtio,snapshot=on",
            "-netdev", "user,id=mgmt,net=192.168.100.0/24,host=" + SLIRP_HOST
            + f",hostfwd=tcp:127.0.0.1:{vr_port}-192.168.100.20:7272"
            + f",hostfwd=tcp:127.0.0.1:{apv_port}-192.168.100.20:7759"
            + f",hostfwd=tcp:127.0.0.1:{ssh_port}-192.168.100.20:22",
            "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC}",
            "-netdev", f"socket,id=pub,udp=127.0.0.1:{udp[0]},localaddr=127.0.0.1:{udp[1]}",
            "-device", f"virtio-net-pci,netdev=pub,mac={PUB_MAC}",
            "-netdev", f"socket,id=guest,udp=127.0.0.1:{udp[2]},localaddr=127.0.0.1:{udp[3]}",
            "-device", f"virtio-net-pci,netdev=guest,mac={GUEST_MAC}",
            "-chardev", f"socket,id=bs,path={sock},server=on,wait=off",
            "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=bs,name=applianceVm.vport",
        ]
        powered_on = time.time()
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # the host side of the channel: hand the bootstrap info over, as kvmagent does
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        chan = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        chan.connect(sock)
        chan.sendall(json.dumps(bootstrap).encode())

        mn = ManagementNode(vr_port, apv_port)

        def wait_echo(since):
            deadline = time.time() + BOOT_TIMEOUT
            while time.time() < deadline:
                if qemu.poll() is not None:
                    raise RuntimeError("qemu exited: " + qemu.stderr.read().decode(errors="replace"))
                if mn.echo() and mn.echo("appliance"):
                    return time.time() - since
                time.sleep(1)
            return None

        def wait_reapplied(since):
            # The agent serves first and re-applies its stored state behind the listeners;
            # /ping says `startup: ...` until that is done.
            deadline = time.time() + BOOT_TIMEOUT
            while time.time() < deadline:
                r = mn.call("/ping", fixture("ping"))
                if "startup:" not in str(r.get("healthDetail", "")):
                    return time.time() - since
                time.sleep(0.5)
            return None

        def ssh(command, tries=1):
            for _ in range(tries - 1):
                rc, out = ssh(command)
                if rc == 0:
                    return rc, out
                time.sleep(2)
            r = subprocess.run(
                ["ssh", "-i", key, "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
                 "-o", "BatchMode=yes", "root@127.0.0.1", command],
                capture_output=True, text=True, timeout=60)
            return r.returncode, r.stdout + r.stderr

        up = wait_echo(powered_on)
        if not check("agent answers /echo on 7272 and 7759 after power-on", up is not None):
            raise RuntimeError("the agent never answered")
        print(f"     power-on to /echo: {up:.1f} s")

        r = mn.call("/appliancevm/init", {}, "appliance")
        check("/appliancevm/init", r.get("success") is True, r)
        r = mn.call("/init", fixture("init"))
        check("/init", r.get("success") is True, r)
        r = mn.call("/ping", fixture("ping"))
        check("/ping uuid", r.get("uuid") == fixture("init")["uuid"], r)
        check("/ping md5 equals the binary put into the image", r.get("md5") == agent_md5,
              f"{r.get('md5')} != {agent_md5}")
        for path, body, which in [
            ("/appliancevm/refreshfirewall", fixture("refreshfirewall"), "appliance"),
            ("/setdns", fixture("setdns"), "vr"),
            ("/adddhcp", fixture("adddhcp"), "vr"),
            ("/syncsnat", fixture("syncsnat"), "vr"),
            ("/createvip", fixture("createvip"), "vr"),
            ("/createeip", fixture("createeip"), "vr"),
        ]:
            r = mn.call(path, body, which)
            check(path, r.get("success") is True, r)

        r = mn.call("/lb/refresh", LB_REFRESH)
        check("/lb/refresh", r.get("success") is True, r)

        r = mn.call("/ping", fixture("ping"))
        check("/ping healthy after the commands", r.get("healthy") is True and r.get("healthDetail") == "", r)
        rc, out = ssh("ip -4 -o addr show", tries=30)
        check("ssh with the bootstrap key", rc == 0, out)
        for dev, cidr in [("eth0", "192.168.100.20/24"), ("eth1", "10.10.1.20/24"),
                          ("eth2", "172.20.0.1/24"), ("eth1", "10.10.1.55/24")]:
            check(f"{dev} carries {cidr}", any(dev in l.split() and cidr in l for l in out.splitlines()), out)
        rc, out = ssh("nft list ruleset")
        check("nftables holds the EIP 10.10.1.55 -> 172.20.0.15", "10.10.1.55" in out and "172.20.0.15" in out, out[-2000:])
        check("nftables accepts the listener's port", "10.10.1.20 . tcp . 8080" in out, out[-2000:])
        rc, out = ssh(LB_ASK, tries=10)
        check("the listener answers through haproxy (10.10.1.20:8080 -> the agent's /echo)",
              out.startswith("HTTP/1.1 200"), out)
        if failed:
            rc, out = ssh("journalctl -b --no-pager -u vr-agent -u vr-agent-bootstrap | tail -60")
            print("---- agent journal (tail) ----\n" + out)
        rc, out = ssh("ps -o rss= -C vr-agent")
        rss = out.split()[0] if rc == 0 and out.split() else "?"
        print(f"     agent RSS inside the VM: {rss} KiB")
        rc, out = ssh("systemctl is-active vr-agent.service vr-agent-bootstrap.service")
        check("units active", rc == 0, out)

        # an agent restart (an upgrade's): dnsmasq serves on and the new agent adopts it
        pid_file = "/run/vr-agent/dnsmasq/dnsmasq.pid"
        rc, before = ssh(f"cat {pid_file}")
        restarted = time.time()
        rc, out = ssh("systemctl restart vr-agent.service")
        up = wait_echo(restarted) is not None and wait_reapplied(restarted) is not None
        rc, after = ssh(f"cat {pid_file}")
        check("dnsmasq keeps its pid across an agent restart (adopted)",
              up and before.strip() != "" and before.strip() == after.strip(),
              f"{before.strip()!r} -> {after.strip()!r} {out}")
        r = mn.call("/ping", fixture("ping"))
        check("/ping healthy after the agent restart", r.get("healthy") is True, r)

        # reboot: the data plane must come back from the agent's own state
        ssh("systemctl reboot")
        rebooted = time.time()
        went_down = False
        while time.time() - rebooted < 120:
            if not mn.echo():
                went_down = True
                break
            time.sleep(0.5)
        check("the agent went down for the reboot", went_down)
        chan.sendall(json.dumps(bootstrap).encode())
        up = wait_echo(rebooted)
        check("agent answers /echo after a reboot", up is not None)
        if up is not None:
            print(f"     reboot to /echo: {up:.1f} s")
        done = wait_reapplied(rebooted)
        check("the stored state re-applied after the reboot", done is not None)
        if done is not None:
            print(f"     reboot to re-applied: {done:.1f} s")
        rc, out = ssh("nft list ruleset", tries=30)
        check("EIP restored after reboot before any command", "10.10.1.55" in out and "172.20.0.15" in out, out[-2000:])
        rc, out = ssh("ip -4 -o addr show dev eth1")
        check("VIP restored after reboot", "10.10.1.55/24" in out, out)
        rc, out = ssh(LB_ASK, tries=10)
        check("the listener serves again after reboot before any command", out.startswith("HTTP/1.1 200"), out)
        r = mn.call("/ping", fixture("ping"))
        check("/ping after reboot keeps the uuid", r.get("uuid") == fixture("init")["uuid"], r)
        check("/ping healthy after reboot", r.get("healthy") is True, r)
    except Exception as e:  # noqa: BLE001 - report and fail
        check("boot test ran to the end", False, repr(e))
        if os.path.exists(os.path.join(tmp, "serial.log")):
            print("---- serial console (tail) ----")
            print(open(os.path.join(tmp, "serial.log"), errors="replace").read()[-6000:])
    finally:
        if qemu is not None:
            qemu.terminate()
            try:
                qemu.wait(10)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"boot-test: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
