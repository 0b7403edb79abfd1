//! A virtual router in network namespaces, driven exactly as the management node drives it.
//!
//! `bash scripts/demo.sh` builds the agent and runs this. Layout (all namespaces are made here
//! and deleted at the end, also on failure):
//!
//! ```text
//!   [mn] 192.168.100.10 ---- eth0 192.168.100.20 [router] eth1 10.10.1.20 ---- 10.10.1.1 [outside]
//!                                          eth2 172.20.0.1
//!                                               |
//!                                        [guest] eth0 fa:3c:91:5e:22:07 (DHCP)
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use common::agent::{AgentProc, binary};
use common::mgmt::MgmtNode;
use common::netns::{Netns, veth};
use serde_json::{Value, json};
use std::process::{Child, Stdio};
use std::time::Duration;

const MGMT_MAC: &str = "fa:7e:4b:ad:11:00";
const PUB_MAC: &str = "fa:7e:4b:ad:11:01";
const GUEST_NIC_MAC: &str = "fa:7e:4b:ad:11:02";
const VM_MAC: &str = "fa:3c:91:5e:22:07";

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn proved(what: &str) {
    println!("    PROVED: {what}");
}

fn fail(what: &str) -> ! {
    println!("    FAILED: {what}");
    panic!("demo failed: {what}");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP server in `ns` on `port` that answers each connection with `greeting` and the peer.
fn tcp_server(ns: &Netns, port: u16, greeting: &str) -> Killed {
    let child = ns
        .command("socat")
        .arg(format!("TCP-LISTEN:{port},reuseaddr,fork"))
        .arg(format!("SYSTEM:echo {greeting} you are $SOCAT_PEERADDR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat");
    std::thread::sleep(Duration::from_millis(300));
    Killed(child)
}

fn tcp_get(ns: &Netns, addr: &str) -> String {
    let out = ns.exec(&[
        "socat",
        "-T",
        "5",
        "-",
        &format!("TCP:{addr},connect-timeout=5"),
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn call(mn: &MgmtNode, agent: std::net::SocketAddr, path: &str, body: Value) -> Value {
    let reply = mn.call(agent, path, &body).await;
    let ok = reply["success"] == json!(true);
    println!(
        "    MN -> {path}: success={ok}{}",
        if ok {
            String::new()
        } else {
            format!(" error={}", reply["error"])
        }
    );
    if !ok {
        fail(&format!("{path} was refused"));
    }
    reply
}

fn main() {
    let tmp = tempfile::Builder::new()
        .prefix("vr-demo-")
        .tempdir()
        .expect("tempdir");
    let dir = tmp.path();
    println!(
        "vr-agent demo: a virtual router in network namespaces ({})",
        binary().display()
    );

    step(
        1,
        "lay out the networks: management, public (outside), guest",
    );
    let mn_ns = Netns::new("vrdm");
    let router = Netns::new("vrdr");
    let outside = Netns::new("vrdo");
    let guest = Netns::new("vrdg");
    veth(&mn_ns, "mn0", "fa:00:00:00:00:10", &router, "m0", MGMT_MAC);
    veth(
        &outside,
        "out0",
        "fa:00:00:00:00:11",
        &router,
        "p0",
        PUB_MAC,
    );
    veth(&guest, "eth0", VM_MAC, &router, "g0", GUEST_NIC_MAC);
    mn_ns.ip(&["addr", "add", "192.168.100.10/24", "dev", "mn0"]);
    outside.ip(&["addr", "add", "10.10.1.1/24", "dev", "out0"]);
    println!(
        "    namespaces {}, {}, {}, {}",
        mn_ns.name, router.name, outside.name, guest.name
    );

    step(
        2,
        "vr-agent bootstrap: the router's nics come up from the bootstrap info (names from MACs)",
    );
    let bootstrap = json!({
        "managementNic": {"ip":"192.168.100.20","netmask":"255.255.255.0","gateway":"192.168.100.1","mac":MGMT_MAC,"deviceName":"eth0","isDefaultRoute":false},
        "additionalNics": [
            {"ip":"10.10.1.20","netmask":"255.255.255.0","gateway":"10.10.1.1","mac":PUB_MAC,"deviceName":"eth1","isDefaultRoute":true},
            {"ip":"172.20.0.1","netmask":"255.255.255.0","gateway":"172.20.0.1","mac":GUEST_NIC_MAC,"deviceName":"eth2","isDefaultRoute":false}],
        "publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyOnlyForTheDemo demo@mn"
    });
    let info = dir.join("bootstrap-info.json");
    std::fs::write(&info, bootstrap.to_string()).expect("write");
    let out = router.exec(&[
        binary().to_str().expect("path"),
        "bootstrap",
        &format!("--from={}", info.display()),
        &format!("--state-dir={}", dir.join("state").display()),
        &format!(
            "--authorized-keys={}",
            dir.join("authorized_keys").display()
        ),
        &format!("--error-log={}", dir.join("error.log").display()),
    ]);
    if !out.status.success() {
        fail(&format!(
            "bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let addrs = router.exec_ok(&["ip", "-4", "-o", "addr", "show"]);
    for (dev, cidr) in [
        ("eth0", "192.168.100.20/24"),
        ("eth1", "10.10.1.20/24"),
        ("eth2", "172.20.0.1/24"),
    ] {
        if !addrs.lines().any(|l| l.contains(dev) && l.contains(cidr)) {
            fail(&format!("{dev} lacks {cidr}"));
        }
    }
    proved("eth0, eth1, eth2 renamed and addressed by MAC; default route via 10.10.1.1");

    step(
        3,
        "start the agent in the router (0.0.0.0:7272 and :7759) and an upstream DNS server outside",
    );
    let agent = router.enter(|| {
        AgentProc::start_in(
            dir,
            &[
                "--vr-listen=0.0.0.0:7272",
                "--appliance-listen=0.0.0.0:7759",
            ],
        )
    });
    let _dns = Killed(
        outside
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=10.10.1.1",
                "--bind-interfaces",
                "--address=/demo.example/203.0.113.80",
                &format!("--pid-file={}", dir.join("upstream.pid").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    let vr: std::net::SocketAddr = "192.168.100.20:7272".parse().expect("addr");
    let apv: std::net::SocketAddr = "192.168.100.20:7759".parse().expect("addr");

    mn_ns.block_on(|| async {
        let mn = MgmtNode::start_at("192.168.100.10").await;
        step(4, "the management node connects: echo, /appliancevm/init, /init, /ping");
        let echo = mn.post_raw(vr, "/echo", &[], Vec::new()).await;
        if echo.status != 200 {
            fail("echo");
        }
        call(&mn, apv, "/appliancevm/init", json!({})).await;
        call(&mn, vr, "/init", json!({"uuid":"8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f","restartDnsmasqAfterNumberOfSIGUSER1":0})).await;
        let ping = call(&mn, vr, "/ping", json!({"uuid":"8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f"})).await;
        println!("    ping: uuid={} version={} md5={} healthy={}", ping["uuid"], ping["version"], ping["md5"], ping["healthy"]);
        proved("async commands with callbacks over the management network; the agent knows its uuid");

        step(5, "firewall, DNS, DHCP and SNAT, as the management node sends them when a router starts");
        call(&mn, apv, "/appliancevm/refreshfirewall", json!({"rules":[
            {"protocol":"tcp","startPort":7272,"endPort":7272,"nicMac":MGMT_MAC},
            {"protocol":"udp","startPort":67,"endPort":68,"nicMac":GUEST_NIC_MAC},
            {"protocol":"udp","startPort":53,"endPort":53,"nicMac":GUEST_NIC_MAC},
            {"protocol":"tcp","startPort":0,"endPort":65535,"destIp":"10.10.1.55","nicMac":PUB_MAC},
            {"protocol":"udp","startPort":0,"endPort":65535,"destIp":"10.10.1.55","nicMac":PUB_MAC}]})).await;
        call(&mn, vr, "/setdns", json!({"dns":[{"dnsAddress":"10.10.1.1"}]})).await;
        call(&mn, vr, "/adddhcp", json!({"dhcpEntries":[{"ip":"172.20.0.15","mac":VM_MAC,"netmask":"255.255.255.0",
            "gateway":"172.20.0.1","dns":["172.20.0.1"],"hostname":"web1.zstack.local","vrNicMac":GUEST_NIC_MAC,
            "dnsDomain":"zstack.local","isDefaultL3Network":true}],"rebuild":true})).await;
        call(&mn, vr, "/syncsnat", json!({"snats":[{"publicNicMac":PUB_MAC,"publicIp":"10.10.1.20",
            "privateNicMac":GUEST_NIC_MAC,"privateNicIp":"172.20.0.1","snatNetmask":"255.255.255.0"}]})).await;

        step(6, "the guest asks for an address with a real DHCP client (busybox udhcpc)");
        let script = dir.join("udhcpc.sh");
        std::fs::write(&script, "#!/bin/sh\ncase \"$1\" in bound|renew)\n  ip addr flush dev \"$interface\"\n  ip addr add \"$ip/$mask\" dev \"$interface\"\n  for r in $router; do ip route replace default via \"$r\" dev \"$interface\"; done\n  echo \"ip=$ip mask=$mask router=$router dns=$dns domain=$domain hostname=$hostname\";;\nesac\n").expect("script");
        std::process::Command::new("chmod").args(["755", script.to_str().expect("path")]).status().expect("chmod");
        let out = guest.exec(&["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-T", "1", "-s", script.to_str().expect("path")]);
        let lease = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("ip=")).unwrap_or_default().to_string();
        println!("    lease: {lease}");
        if !lease.contains("ip=172.20.0.15") || !lease.contains("router=172.20.0.1") {
            fail("the guest did not get 172.20.0.15 with router 172.20.0.1");
        }
        proved("dnsmasq, configured by the agent, leased the static address with router, DNS and domain");

        step(7, "the guest resolves a name through the router's DNS forwarder");
        let out = guest.exec(&["busybox", "nslookup", "demo.example", "172.20.0.1"]);
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("203.0.113.80") {
            fail(&format!("demo.example did not resolve through the router: {text}"));
        }
        proved("demo.example -> 203.0.113.80, forwarded to the upstream server set by /setdns");

        step(8, "the guest reaches an outside server through SNAT");
        let _outside_server = tcp_server(&outside, 9000, "hello-from-outside");
        let answer = tcp_get(&guest, "10.10.1.1:9000");
        println!("    outside answered: {answer}");
        if !answer.contains("10.10.1.20") {
            fail("the outside server did not see the router's public address");
        }
        proved("the outside server saw the guest as 10.10.1.20 (the router's public IP)");

        step(9, "an elastic IP: VIP 10.10.1.55 <-> guest 172.20.0.15");
        call(&mn, vr, "/createvip", json!({"vips":[{"ip":"10.10.1.55","netmask":"255.255.255.0","gateway":"10.10.1.1","ownerEthernetMac":PUB_MAC},
            {"ip":"10.10.1.56","netmask":"255.255.255.0","gateway":"10.10.1.1","ownerEthernetMac":PUB_MAC}]})).await;
        call(&mn, vr, "/createeip", json!({"eip":{"vipIp":"10.10.1.55","privateMac":GUEST_NIC_MAC,"guestIp":"172.20.0.15","snatInboundTraffic":false}})).await;
        let _guest_server = tcp_server(&guest, 80, "hello-from-guest");
        let answer = tcp_get(&outside, "10.10.1.55:80");
        println!("    guest answered: {answer}");
        if !answer.contains("hello-from-guest") || !answer.contains("10.10.1.1") {
            fail("the outside could not reach the guest through its EIP");
        }
        proved("the outside reached the guest's port 80 at 10.10.1.55, and the guest saw the real client");
        let answer = tcp_get(&guest, "10.10.1.1:9000");
        println!("    outside answered: {answer}");
        if !answer.contains("10.10.1.55") {
            fail("the guest's outbound traffic did not leave as its EIP");
        }
        proved("the guest's own connections now leave as 10.10.1.55");

        step(10, "a port forward: 10.10.1.56:8080 -> 172.20.0.15:80");
        call(&mn, vr, "/createportforwarding", json!({"rules":[{"vipPortStart":8080,"vipPortEnd":8080,"privatePortStart":80,
            "privatePortEnd":80,"protocolType":"TCP","vipIp":"10.10.1.56","privateIp":"172.20.0.15","privateMac":GUEST_NIC_MAC,
            "snatInboundTraffic":false}]})).await;
        let answer = tcp_get(&outside, "10.10.1.56:8080");
        println!("    guest answered: {answer}");
        if !answer.contains("hello-from-guest") {
            fail("the port forward did not reach the guest");
        }
        proved("10.10.1.56:8080 reached the guest's port 80");

        step(11, "the agent's port is closed to the public side");
        let out = outside.exec(&["socat", "-T", "2", "-", "TCP:10.10.1.20:7272,connect-timeout=2"]);
        if out.status.success() {
            fail("the agent port answered on the public nic");
        }
        proved("7272 is unreachable from the outside; it answers only on the management nic");
    });
    drop(agent);
    println!("\ndemo: every step passed; cleaning up the namespaces");
}
