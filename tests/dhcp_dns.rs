//! DHCP and DNS end to end: the agent and its dnsmasq in a router namespace, real clients
//! (busybox udhcpc, UDP DNS queries) in a guest namespace, a real upstream resolver (another
//! dnsmasq) in a third namespace.
//!
//! Router namespace: `rg0` 172.20.0.1/24 (fa:7e:4b:ad:11:02) to the guest's `g0`
//! (fa:3c:91:5e:22:07); `rg1` 172.20.9.1/24 (fa:7e:4b:ad:11:04, a non-default network) to the
//! guest's `g1` (fa:3c:91:5e:22:08); `rup` 10.99.0.1/24 (fa:7e:4b:ad:11:01, the public side) to
//! the upstream's `u0` 10.99.0.2/24. The test sets the addresses with `ip -n`; the agent finds
//! its guest nics from the hosts' `vrNicMac` and gateways.

mod common;

use common::agent::AgentProc;
use common::mgmt::{MgmtNode, assert_ok};
use common::netns::{Netns, veth};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_MAC: &str = "fa:3c:91:5e:22:07";
const GUEST2_MAC: &str = "fa:3c:91:5e:22:08";

struct Lab {
    router: Netns,
    guest: Netns,
    upstream: Netns,
    dir: tempfile::TempDir,
    upstream_dns: Option<Child>,
}

impl Lab {
    fn new() -> Lab {
        let router = Netns::new("vrd");
        let guest = Netns::new("vrd");
        let upstream = Netns::new("vrd");
        veth(&router, "rg0", "fa:7e:4b:ad:11:02", &guest, "g0", GUEST_MAC);
        veth(
            &router,
            "rg1",
            "fa:7e:4b:ad:11:04",
            &guest,
            "g1",
            GUEST2_MAC,
        );
        veth(
            &router,
            "rup",
            "fa:7e:4b:ad:11:01",
            &upstream,
            "u0",
            "fa:7e:4b:ad:22:01",
        );
        router.ip(&["addr", "add", "172.20.0.1/24", "dev", "rg0"]);
        router.ip(&["addr", "add", "172.20.9.1/24", "dev", "rg1"]);
        router.ip(&["addr", "add", "10.99.0.1/24", "dev", "rup"]);
        upstream.ip(&["addr", "add", "10.99.0.2/24", "dev", "u0"]);
        // dnsmasq drops to `nobody`: its directory must be reachable by that user.
        let dir = tempfile::Builder::new()
            .prefix("vrd-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.path().join("udhcpc.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = bound ] || [ \"$1\" = renew ] || exit 0\n\
             printf 'ip=%s\\nsubnet=%s\\nrouter=%s\\ndns=%s\\ndomain=%s\\nmtu=%s\\nhostname=%s\\n' \
             \"$ip\" \"$subnet\" \"$router\" \"$dns\" \"$domain\" \"$mtu\" \"$hostname\" > \"$OUT\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The agent's dnsmasq, held down while the file `hold` exists (for the health check).
        let wrapper = dir.path().join("dnsmasq-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n[ -e {0}/hold ] && {{ echo 'dnsmasq: held down by the test' >&2; exit 1; }}\n\
                 exec dnsmasq \"$@\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Lab {
            router,
            guest,
            upstream,
            dir,
            upstream_dns: None,
        }
    }

    fn dnsmasq_dir(&self) -> PathBuf {
        self.dir.path().join("dnsmasq")
    }

    /// Starts the agent; call inside the router namespace.
    fn agent(&self) -> AgentProc {
        self.agent_with(&[])
    }

    /// Starts the agent with `extra` arguments; call inside the router namespace.
    fn agent_with(&self, extra: &[&str]) -> AgentProc {
        let mut args = vec![
            format!("--dnsmasq-dir={}", self.dnsmasq_dir().display()),
            format!(
                "--dnsmasq-bin={}",
                self.dir.path().join("dnsmasq-wrapper").display()
            ),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        AgentProc::start(&args)
    }

    /// Runs udhcpc on the guest's `nic` once; the options of the lease, or `None` without one.
    fn dhcp(&self, nic: &str) -> Option<BTreeMap<String, String>> {
        let out = self.dir.path().join(format!("lease-{nic}"));
        let _ = std::fs::remove_file(&out);
        let script = self.dir.path().join("udhcpc.sh");
        let result = self.guest.exec(&[
            "env",
            &format!("OUT={}", out.display()),
            "busybox",
            "udhcpc",
            "-i",
            nic,
            "-f",
            "-q",
            "-n",
            "-t",
            "3",
            "-T",
            "1",
            "-O",
            "mtu",
            "-s",
            &script.display().to_string(),
        ]);
        if !result.status.success() {
            return None;
        }
        let text = std::fs::read_to_string(&out).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// A real resolver upstream serving `outside.test` and `other.test`.
    fn start_upstream(&mut self) {
        let child = self
            .upstream
            .command("dnsmasq")
            .args([
                "--conf-file=/dev/null",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=10.99.0.2",
                "--host-record=outside.test,192.0.2.77",
                "--host-record=other.test,192.0.2.78",
            ])
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("upstream.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.upstream_dns = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while query_from(&self.upstream, "10.99.0.2:53", "outside.test").is_err() {
            assert!(Instant::now() < deadline, "upstream resolver did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.upstream_dns.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn entry(ip: &str, mac: &str, gateway: &str, vr_nic: &str, default: bool) -> Value {
    let mut e = json!({
        "ip": ip, "mac": mac, "netmask": "255.255.255.0", "gateway": gateway,
        "vrNicMac": vr_nic, "isDefaultL3Network": default,
    });
    if default {
        e["dns"] = json!([gateway]);
        e["dnsDomain"] = json!("zstack.local");
    }
    e
}

fn default_entry() -> Value {
    entry(
        "172.20.0.15",
        GUEST_MAC,
        "172.20.0.1",
        "fa:7e:4b:ad:11:02",
        true,
    )
}

/// Sends a DNS query for `name` (type A) to `server` from inside `ns`; the rcode and the A
/// records, or an error when nothing answers within a second.
fn query_from(ns: &Netns, server: &str, name: &str) -> std::io::Result<(u8, Vec<Ipv4Addr>)> {
    let server: SocketAddr = server.parse().unwrap();
    ns.enter(|| {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
        let id: u16 = 0x5a5a;
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, 1 question
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
        sock.send_to(&q, server)?;
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf)?;
        Ok(parse_answer(&buf[..n], id))
    })
}

fn skip_name(msg: &[u8], mut i: usize) -> usize {
    loop {
        let len = msg[i];
        if len == 0 {
            return i + 1;
        }
        if len & 0xc0 == 0xc0 {
            return i + 2;
        }
        i += 1 + len as usize;
    }
}

fn parse_answer(msg: &[u8], id: u16) -> (u8, Vec<Ipv4Addr>) {
    assert_eq!(u16::from_be_bytes([msg[0], msg[1]]), id);
    let rcode = msg[3] & 0x0f;
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i) + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(msg, i);
        let rtype = u16::from_be_bytes([msg[i], msg[i + 1]]);
        let rdlen = u16::from_be_bytes([msg[i + 8], msg[i + 9]]) as usize;
        i += 10;
        if rtype == 1 && rdlen == 4 {
            out.push(Ipv4Addr::new(msg[i], msg[i + 1], msg[i + 2], msg[i + 3]));
        }
        i += rdlen;
    }
    (rcode, out)
}

fn dnsmasq_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("dnsmasq.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

#[test]
fn guest_gets_ip_router_dns_domain_netmask_and_mtu() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        // A first host starts dnsmasq for the subnet; the guest's host then comes incrementally,
        // through new files dnsmasq reads by inotify (no reload).
        let first = entry(
            "172.20.0.50",
            "fa:3c:91:5e:22:50",
            "172.20.0.1",
            "fa:7e:4b:ad:11:02",
            true,
        );
        let r = mn
            .call(
                agent.vr,
                "/adddhcp",
                &json!({"dhcpEntries": [first], "rebuild": false}),
            )
            .await;
        assert_ok(&r);
        let mut e = default_entry();
        e["hostname"] = json!("web1.zstack.local");
        e["mtu"] = json!(1400);
        let r = mn
            .call(
                agent.vr,
                "/adddhcp",
                &json!({"dhcpEntries": [e], "rebuild": false}),
            )
            .await;
        assert_ok(&r);
        let lease = lab.dhcp("g0").expect("a lease on g0");
        assert_eq!(lease["ip"], "172.20.0.15");
        assert_eq!(lease["router"], "172.20.0.1");
        assert_eq!(lease["dns"], "172.20.0.1");
        assert_eq!(lease["domain"], "zstack.local");
        assert_eq!(lease["subnet"], "255.255.255.0");
        assert_eq!(lease["mtu"], "1400");
        assert_eq!(lease["hostname"], "web1");
        let host_file = lab.dnsmasq_dir().join("hosts.d/fa3c915e2207");
        assert!(host_file.exists(), "not added through the hosts directory");
    });
}

/// True while `pid` runs (an orphan that exited stays a zombie until init reaps it).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// How many times the agent's log says `what`.
fn times(agent: &AgentProc, what: &str) -> usize {
    agent.log().matches(what).count()
}

#[test]
fn dnsmasq_serves_across_agent_restarts_and_is_adopted_only_when_it_runs_todays_config() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        let mut agent = lab.agent();
        let mn = MgmtNode::start().await;
        // (another host keeps the first subnet when g0's host goes: the config stays)
        let body = json!({"dhcpEntries": [
            default_entry(),
            entry("172.20.0.50", "fa:3c:91:5e:22:50", "172.20.0.1", "fa:7e:4b:ad:11:02", true),
            entry("172.20.9.7", GUEST2_MAC, "172.20.9.1", "fa:7e:4b:ad:11:04", false),
        ], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        assert_eq!(lab.dhcp("g0").expect("a lease")["ip"], "172.20.0.15");
        let dir = lab.dnsmasq_dir();
        let pid = dnsmasq_pid(&dir).expect("dnsmasq running");
        const ADOPTED: &str = "adopted the engine an earlier agent started";

        // A stop (an upgrade's restart): guests keep getting addresses while no agent runs,
        // and the next agent adopts the same dnsmasq.
        agent.restart_after(|| {
            assert_eq!(
                lab.dhcp("g0").expect("served while the agent is down")["ip"],
                "172.20.0.15"
            );
        });
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");
        assert_eq!(dnsmasq_pid(&dir), Some(pid), "dnsmasq restarted");
        assert_eq!(times(&agent, ADOPTED), 1, "{}", agent.log());
        assert_eq!(lab.dhcp("g0").expect("a lease")["ip"], "172.20.0.15");

        // A crash: the same. A host removed just before the crash, whose reload was still
        // waiting, is not served by the adopted dnsmasq (it is reloaded after the adoption).
        let removal = json!({"dhcpEntries": [default_entry()]});
        assert_ok(&mn.call(agent.vr, "/removedhcp", &removal).await);
        // From here on the agent runs without CAP_SYS_PTRACE, as the appliance's unit has it:
        // it cannot read where dnsmasq (dropped to nobody) runs from.
        let no_ptrace = ["setpriv", "--bounding-set", "-sys_ptrace"].map(String::from);
        agent.restart_wrapped(&no_ptrace); // a SIGKILL: a crash
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");
        assert_eq!(
            dnsmasq_pid(&dir),
            Some(pid),
            "dnsmasq restarted after a crash"
        );
        assert_eq!(times(&agent, ADOPTED), 2, "{}", agent.log());
        assert_eq!(lab.dhcp("g1").expect("the other host")["ip"], "172.20.9.7");
        assert!(
            common::eventually(Duration::from_secs(2), || lab.dhcp("g0").is_none()),
            "the removed host still gets an address"
        );

        // The adopted dnsmasq is supervised like a child: killed, it is back within a second.
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(
            common::eventually(Duration::from_secs(2), || {
                dnsmasq_pid(&dir).is_some_and(|p| p != pid)
            }),
            "the adopted dnsmasq is not back within two seconds"
        );
        let pid = dnsmasq_pid(&dir).expect("dnsmasq back");
        assert_eq!(lab.dhcp("g1").expect("served again")["ip"], "172.20.9.7");

        // A start record that does not name today's config (what a crash between writing a
        // new config and the restart leaves): restarted, not adopted.
        let record = dir.join("dnsmasq.started");
        agent.restart_after(|| {
            let text = std::fs::read_to_string(&record).expect("start record");
            let text: Vec<&str> = text
                .lines()
                .map(|l| {
                    if l.starts_with("config-sha256 ") {
                        "config-sha256 00"
                    } else {
                        l
                    }
                })
                .collect();
            std::fs::write(&record, text.join("\n")).unwrap();
        });
        assert!(
            agent.log().contains("its config changed since it started"),
            "{}",
            agent.log()
        );
        assert_eq!(times(&agent, ADOPTED), 2, "{}", agent.log());
        assert!(!running(pid), "the old one runs on");
        let pid = dnsmasq_pid(&dir).expect("dnsmasq running");
        assert_eq!(lab.dhcp("g1").expect("served")["ip"], "172.20.9.7");

        // A config edited while no agent runs: the running dnsmasq did not start from what the
        // agent writes now, so it is restarted, not adopted.
        let conf = dir.join("dnsmasq.conf");
        agent.restart_after(|| {
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str("# edited by hand\n");
            std::fs::write(&conf, text).unwrap();
        });
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");
        let fresh = dnsmasq_pid(&dir).expect("dnsmasq running");
        assert_ne!(
            fresh, pid,
            "a dnsmasq started from another config was adopted"
        );
        assert!(!running(pid), "the old one runs on");
        assert_eq!(times(&agent, ADOPTED), 2, "{}", agent.log());
        assert!(!std::fs::read_to_string(&conf).unwrap().contains("by hand"));
        assert_eq!(lab.dhcp("g1").expect("served")["ip"], "172.20.9.7");

        // dnsmasq gone while no agent runs: the next agent starts one.
        agent.restart_after(|| {
            Command::new("kill")
                .args(["-9", &fresh.to_string()])
                .status()
                .unwrap();
        });
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");
        assert!(dnsmasq_pid(&dir).is_some_and(|p| p != fresh));
        assert_eq!(lab.dhcp("g1").expect("served")["ip"], "172.20.9.7");
    });
}

#[test]
fn non_default_network_nic_gets_no_router_and_no_dns() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        let body = json!({"dhcpEntries": [
            default_entry(),
            entry("172.20.9.7", GUEST2_MAC, "172.20.9.1", "fa:7e:4b:ad:11:04", false),
        ], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        let second = lab.dhcp("g1").expect("a lease on g1");
        assert_eq!(second["ip"], "172.20.9.7");
        assert_eq!(second["subnet"], "255.255.255.0");
        assert_eq!(second["router"], "", "{second:?}");
        assert_eq!(second["dns"], "", "{second:?}");
        // The default network's nic, served by the same dnsmasq, still gets both.
        let first = lab.dhcp("g0").expect("a lease on g0");
        assert_eq!(first["router"], "172.20.0.1");
        assert_eq!(first["dns"], "172.20.0.1");
    });
}

#[test]
fn removed_host_is_no_longer_served_and_its_lease_released() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        let body = json!({"dhcpEntries": [
            default_entry(),
            entry("172.20.0.98", "fa:3c:91:5e:22:97", "172.20.0.1", "fa:7e:4b:ad:11:02", true),
            entry("172.20.0.99", "fa:3c:91:5e:22:98", "172.20.0.1", "fa:7e:4b:ad:11:02", true),
            entry("172.20.9.99", "fa:3c:91:5e:22:99", "172.20.9.1", "fa:7e:4b:ad:11:04", false),
        ], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        // The second guest's host arrives incrementally (a file dnsmasq reads by inotify).
        let second = json!({"dhcpEntries": [
            entry("172.20.9.7", GUEST2_MAC, "172.20.9.1", "fa:7e:4b:ad:11:04", false),
        ], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &second).await);
        assert!(lab.dnsmasq_dir().join("hosts.d/fa3c915e2208").exists());
        assert_eq!(
            lab.dhcp("g1").expect("incremental host")["ip"],
            "172.20.9.7"
        );
        assert_eq!(
            lab.dhcp("g0").expect("lease before removal")["ip"],
            "172.20.0.15"
        );
        let leases = lab.dnsmasq_dir().join("leases");
        assert!(
            std::fs::read_to_string(&leases)
                .unwrap()
                .contains(GUEST_MAC)
        );
        let pid = dnsmasq_pid(&lab.dnsmasq_dir()).unwrap();

        let removal = json!({"dhcpEntries": [default_entry()]});
        assert_ok(&mn.call(agent.vr, "/removedhcp", &removal).await);
        // Within one second dnsmasq forgets the host and releases its lease.
        let released = common::eventually(Duration::from_secs(1), || {
            !std::fs::read_to_string(&leases)
                .unwrap_or_default()
                .contains(GUEST_MAC)
        });
        let text = std::fs::read_to_string(&leases).unwrap();
        assert!(released, "lease kept: {text}");
        assert_eq!(
            lab.dhcp("g0"),
            None,
            "the removed host still gets an address"
        );
        // The other host (added incrementally) is still served, by the same dnsmasq: reloaded,
        // not restarted.
        assert_eq!(lab.dhcp("g1").expect("the other host")["ip"], "172.20.9.7");
        assert_eq!(dnsmasq_pid(&lab.dnsmasq_dir()), Some(pid));

        // A host whose options differ from its subnet's sets tags, and dnsmasq 2.90 dies in a
        // reload while such a host holds a lease: then the agent restarts it instead.
        let mut own = default_entry();
        own["mtu"] = json!(1300);
        let body = json!({"dhcpEntries": [own], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        let lease = lab.dhcp("g0").expect("lease with its own options");
        assert_eq!(lease["mtu"], "1300");
        let removal = json!({"dhcpEntries": [
            entry("172.20.9.99", "fa:3c:91:5e:22:99", "172.20.9.1", "fa:7e:4b:ad:11:04", false),
        ]});
        assert_ok(&mn.call(agent.vr, "/removedhcp", &removal).await);
        // the restarted dnsmasq has written its pid file
        assert!(
            common::eventually(Duration::from_secs(2), || {
                dnsmasq_pid(&lab.dnsmasq_dir()).is_some_and(|p| p != pid)
            }),
            "dnsmasq not restarted"
        );
        assert!(!agent.log().contains("dnsmasq exited"), "dnsmasq died");
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");
        assert_eq!(lab.dhcp("g0").expect("tagged host")["mtu"], "1300");
        assert_eq!(lab.dhcp("g1").expect("the other host")["ip"], "172.20.9.7");
    });
}

#[test]
fn rebuild_serves_only_the_new_list() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        let body = json!({"dhcpEntries": [
            default_entry(),
            entry("172.20.9.7", GUEST2_MAC, "172.20.9.1", "fa:7e:4b:ad:11:04", false),
        ], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        assert!(lab.dhcp("g1").is_some());
        // 1.0's rebuild entries carry no vrNicMac: the nic is found by the gateway.
        let mut moved = entry("172.20.0.99", GUEST_MAC, "172.20.0.1", "", true);
        moved.as_object_mut().unwrap().remove("vrNicMac");
        let rebuild = json!({"dhcpEntries": [
            moved,
            entry("172.20.0.50", "fa:3c:91:5e:22:50", "172.20.0.1", "fa:7e:4b:ad:11:02", true),
        ], "rebuild": true});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &rebuild).await);
        // dnsmasq has re-read its hosts when it answers with the new address
        let mut got = None;
        assert!(
            common::eventually(Duration::from_secs(5), || {
                got = lab.dhcp("g0");
                got.as_ref().is_some_and(|l| l["ip"] == "172.20.0.99")
            }),
            "new address not given: {got:?}"
        );
        assert_eq!(
            lab.dhcp("g1"),
            None,
            "a host left out of the rebuild is served"
        );
    });
}

/// Waits until the guest's query for the upstream's test record is answered through the
/// router, then checks nothing answers on the public side.
fn assert_forwarded_on_the_guest_side_only(lab: &Lab, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = query_from(&lab.guest, "172.20.0.1:53", "outside.test");
        if matches!(&got, Ok((0, a)) if a == &[Ipv4Addr::new(192, 0, 2, 77)]) {
            break;
        }
        assert!(Instant::now() < deadline, "not forwarded: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // dnsmasq does not listen on the public side.
    assert!(
        query_from(&lab.upstream, "10.99.0.1:53", "outside.test").is_err(),
        "dnsmasq answers on the public nic"
    );
}

#[test]
fn dns_is_forwarded_upstream_until_removedns() {
    let mut lab = Lab::new();
    lab.start_upstream();
    let lab = &lab;
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        let body = json!({"dhcpEntries": [default_entry()], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        lab.guest
            .ip(&["addr", "add", "172.20.0.15/24", "dev", "g0"]);
        let setdns = json!({"dns": [{"dnsAddress": "10.99.0.2"}]});
        assert_ok(&mn.call(agent.vr, "/setdns", &setdns).await);
        assert_forwarded_on_the_guest_side_only(lab, Duration::from_secs(2));

        // A removal matching no server exactly changes nothing.
        let other = json!({"dns": [{"dnsAddress": "10.99.0.22"}]});
        assert_ok(&mn.call(agent.vr, "/removedns", &other).await);
        let resolv = std::fs::read_to_string(lab.dnsmasq_dir().join("resolv.conf")).unwrap();
        assert_eq!(resolv, "nameserver 10.99.0.2\n");

        assert_ok(&mn.call(agent.vr, "/removedns", &setdns).await);
        // A name the router never saw: it can only come from the upstream (dnsmasq re-reads
        // its resolv file when it sees it changed)
        let mut got = query_from(&lab.guest, "172.20.0.1:53", "other.test");
        common::eventually(Duration::from_secs(2), || {
            got = query_from(&lab.guest, "172.20.0.1:53", "other.test");
            !matches!(&got, Ok((_, a)) if !a.is_empty())
        });
        assert!(
            !matches!(&got, Ok((_, a)) if !a.is_empty()),
            "still forwarded after /removedns: {got:?}"
        );
    });
}

#[test]
fn default_network_hostname_is_answered_locally() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        let mut named = default_entry();
        named["hostname"] = json!("web1.zstack.local");
        let body = json!({"dhcpEntries": [
            named,
            entry("172.20.0.16", "fa:3c:91:5e:22:16", "172.20.0.1", "fa:7e:4b:ad:11:02", true),
            entry("172.20.9.7", GUEST2_MAC, "172.20.9.1", "fa:7e:4b:ad:11:04", false),
        ], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        lab.guest
            .ip(&["addr", "add", "172.20.0.15/24", "dev", "g0"]);
        // No upstream at all: these answers are local.
        let web1 = query_from(&lab.guest, "172.20.0.1:53", "web1.zstack.local").unwrap();
        assert_eq!(web1, (0, vec![Ipv4Addr::new(172, 20, 0, 15)]));
        let dashed = query_from(&lab.guest, "172.20.0.1:53", "172-20-0-16.zstack.local").unwrap();
        assert_eq!(dashed, (0, vec![Ipv4Addr::new(172, 20, 0, 16)]));
        // A non-default network's host has no name here.
        let none = query_from(&lab.guest, "172.20.0.1:53", "172-20-9-7").unwrap();
        assert!(none.1.is_empty(), "{none:?}");
        // A host added incrementally (no reload) answers once its guest holds the lease.
        lab.guest.ip(&["addr", "flush", "dev", "g0"]);
        lab.guest
            .ip(&["link", "set", "g0", "address", "fa:3c:91:5e:22:30"]);
        let mut late = entry(
            "172.20.0.30",
            "fa:3c:91:5e:22:30",
            "172.20.0.1",
            "fa:7e:4b:ad:11:02",
            true,
        );
        late["hostname"] = json!("late.zstack.local");
        let body = json!({"dhcpEntries": [late], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        assert!(lab.dnsmasq_dir().join("hosts.d/fa3c915e2230").exists());
        assert_eq!(lab.dhcp("g0").expect("lease")["ip"], "172.20.0.30");
        lab.guest
            .ip(&["addr", "add", "172.20.0.30/24", "dev", "g0"]);
        let late = query_from(&lab.guest, "172.20.0.1:53", "late.zstack.local").unwrap();
        assert_eq!(late, (0, vec![Ipv4Addr::new(172, 20, 0, 30)]));
    });
}

#[test]
fn killed_dnsmasq_is_back_within_a_second_with_the_same_leases() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        let body = json!({"dhcpEntries": [default_entry()], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        assert_eq!(lab.dhcp("g0").unwrap()["ip"], "172.20.0.15");
        let dir = lab.dnsmasq_dir();
        let leases_before = std::fs::read_to_string(dir.join("leases")).unwrap();
        assert!(leases_before.contains(GUEST_MAC));

        let old = dnsmasq_pid(&dir).expect("dnsmasq running");
        let killed = Instant::now();
        Command::new("kill")
            .args(["-9", &old.to_string()])
            .status()
            .unwrap();
        let new = loop {
            if let Some(pid) = dnsmasq_pid(&dir).filter(|p| *p != old) {
                break pid;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "dnsmasq not back within a second"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_ne!(new, old);
        let leases_after = std::fs::read_to_string(dir.join("leases")).unwrap();
        assert!(leases_after.contains(GUEST_MAC), "{leases_after}");
        assert_eq!(lab.dhcp("g0").expect("served again")["ip"], "172.20.0.15");

        // While it cannot come back, /ping says so; once it can, it is back and health clears.
        std::fs::write(lab.dir.path().join("hold"), "").unwrap();
        Command::new("kill")
            .args(["-9", &new.to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ping = mn.call(agent.vr, "/ping", &json!({})).await;
            if ping["healthy"] == json!(false) {
                let detail = ping["healthDetail"].as_str().unwrap();
                assert!(detail.contains("dnsmasq"), "{detail}");
                break;
            }
            assert!(Instant::now() < deadline, "no health report: {ping}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_file(lab.dir.path().join("hold")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ping = mn.call(agent.vr, "/ping", &json!({})).await;
            if ping["healthy"] == json!(true) {
                assert_eq!(ping["healthDetail"], json!(""));
                break;
            }
            assert!(Instant::now() < deadline, "still unhealthy: {ping}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(dnsmasq_pid(&dir).is_some());
        assert_eq!(lab.dhcp("g0").expect("served again")["ip"], "172.20.0.15");
    });
}

#[test]
fn dns_is_forwarded_on_a_snat_guest_network_without_dhcp_hosts() {
    let mut lab = Lab::new();
    lab.start_upstream();
    let lab = &lab;
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        lab.guest
            .ip(&["addr", "add", "172.20.0.15/24", "dev", "g0"]);
        // The management node's order: DNS first, then SNAT; no DHCP host at all.
        let setdns = json!({"dns": [{"dnsAddress": "10.99.0.2"}]});
        assert_ok(&mn.call(agent.vr, "/setdns", &setdns).await);
        let snat = json!({"snats": [{"publicNicMac": "fa:7e:4b:ad:11:01", "publicIp": "10.99.0.1",
            "privateNicMac": "fa:7e:4b:ad:11:02", "privateNicIp": "172.20.0.1",
            "snatNetmask": "255.255.255.0"}]});
        assert_ok(&mn.call(agent.vr, "/syncsnat", &snat).await);
        assert_forwarded_on_the_guest_side_only(lab, Duration::from_secs(3));
        let conf = std::fs::read_to_string(lab.dnsmasq_dir().join("dnsmasq.conf")).unwrap();
        assert!(conf.contains("interface=rg0"), "{conf}");
        assert!(!conf.contains("interface=rup"), "{conf}");
        assert!(!conf.contains("dhcp-range"), "{conf}");
    });
}

/// The first `/ping` that counts more than `repairs` drift repairs (within 2 s).
async fn ping_after_repairs(mn: &MgmtNode, agent: &AgentProc, repairs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        if ping["driftRepairs"].as_u64().unwrap_or(0) > repairs {
            return ping;
        }
        assert!(
            Instant::now() < deadline,
            "no drift repair past {repairs} within 2 s: {ping}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_hand_edited_dnsmasq_file_is_noticed_and_rewritten() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        // the periodic verify stays at its default (10 s): file notifications must be enough
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        let body = json!({"dhcpEntries": [default_entry()], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        assert_eq!(lab.dhcp("g0").expect("lease")["ip"], "172.20.0.15");
        let hosts = lab.dnsmasq_dir().join("hosts.dhcp");
        let written = std::fs::read_to_string(&hosts).unwrap();
        assert!(written.contains(GUEST_MAC), "{written}");
        let edited = Instant::now();
        std::fs::write(&hosts, "# emptied by hand\n").unwrap();
        let deadline = edited + Duration::from_secs(2);
        while std::fs::read_to_string(&hosts).unwrap_or_default() != written {
            assert!(
                Instant::now() < deadline,
                "hosts file not rewritten within 2 s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("hand edit repaired in {:?}", edited.elapsed());
        // the file is back a moment before the repair is counted: wait for the count
        let ping = ping_after_repairs(&mn, &agent, 0).await;
        let last = ping["lastDrift"].as_str().unwrap_or_default();
        assert!(
            last.contains("dnsmasq files changed outside the agent (hosts.dhcp)"),
            "{ping}"
        );
        assert_eq!(ping["healthy"], json!(true), "{ping}");
        assert_eq!(
            lab.dhcp("g0").expect("lease after the repair")["ip"],
            "172.20.0.15"
        );
        // a host added since goes through its own file in hosts.d; removing that file by
        // hand is noticed too, and the host is written back
        let second = entry(
            "172.20.0.16",
            "fa:3c:91:5e:22:08",
            "172.20.0.1",
            "fa:7e:4b:ad:11:02",
            true,
        );
        let body = json!({"dhcpEntries": [second], "rebuild": false});
        assert_ok(&mn.call(agent.vr, "/adddhcp", &body).await);
        let per_host: Vec<_> = std::fs::read_dir(lab.dnsmasq_dir().join("hosts.d"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(per_host.len(), 1, "{per_host:?}");
        let before = ping["driftRepairs"].as_u64().unwrap_or(0);
        std::fs::remove_file(&per_host[0]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !std::fs::read_to_string(&hosts)
            .unwrap_or_default()
            .contains("fa:3c:91:5e:22:08")
        {
            assert!(
                Instant::now() < deadline,
                "removed host file not repaired within 2 s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let ping = ping_after_repairs(&mn, &agent, before).await;
        // the agent's own writes are no drift
        let quiet = ping["driftRepairs"].as_u64().unwrap_or(0);
        let third = entry(
            "172.20.0.17",
            "fa:3c:91:5e:22:09",
            "172.20.0.1",
            "fa:7e:4b:ad:11:02",
            true,
        );
        assert_ok(
            &mn.call(
                agent.vr,
                "/adddhcp",
                &json!({"dhcpEntries": [third], "rebuild": false}),
            )
            .await,
        );
        assert_ok(
            &mn.call(
                agent.vr,
                "/setdns",
                &json!({"dns": [{"dnsAddress": "8.8.8.8"}]}),
            )
            .await,
        );
        // a barrier: a hand edit of another file, repaired after the notifications of our
        // own writes; the repair names only that file (had our own writes counted, they
        // would be named too, or repaired on their own)
        std::fs::write(&hosts, "# by hand\n").unwrap();
        let ping = ping_after_repairs(&mn, &agent, quiet).await;
        assert_eq!(
            ping["driftRepairs"].as_u64().unwrap_or(0),
            quiet + 1,
            "{ping}"
        );
        assert!(
            ping["lastDrift"]
                .as_str()
                .unwrap_or_default()
                .contains("dnsmasq files changed outside the agent (hosts.dhcp);"),
            "{ping}"
        );
    });
}

#[test]
fn hosts_named_like_dnsmasq_keywords_or_addresses_still_get_their_address() {
    let lab = Lab::new();
    lab.router.block_on(|| async {
        let agent = lab.agent();
        let mn = MgmtNode::start().await;
        for (name, why) in [
            ("ignore", "a dnsmasq keyword"),
            ("172.20.0.99", "an IPv4 address to dnsmasq"),
            ("12h", "a lease time to dnsmasq"),
            (
                "-x",
                "a name dnsmasq refuses (a label starts with '-' or '_' or ends with '-')",
            ),
            (
                "_x",
                "a name dnsmasq refuses (a label starts with '-' or '_' or ends with '-')",
            ),
        ] {
            let mut e = default_entry();
            e["hostname"] = json!(name);
            let r = mn
                .call(
                    agent.vr,
                    "/adddhcp",
                    &json!({"dhcpEntries": [e], "rebuild": true}),
                )
                .await;
            assert_ok(&r);
            assert_eq!(
                r["notes"],
                json!(format!(
                    r#"dhcpEntries[0].hostname: "{name}" is {why}; not passed to dnsmasq as a name"#
                )),
                "{r}"
            );
            let lease = lab
                .dhcp("g0")
                .unwrap_or_else(|| panic!("no lease for the host named {name:?}"));
            assert_eq!(lease["ip"], "172.20.0.15", "{name}: {lease:?}");
            // The default name (dnsmasq sends the part before the domain).
            assert_eq!(lease["hostname"], "172-20-0-15", "{name}: {lease:?}");
        }
        assert!(agent.log().contains("not passed to dnsmasq as a name"));
    });
}
