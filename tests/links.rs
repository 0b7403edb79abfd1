//! Interfaces end to end: the real binary in network namespaces with veth pairs of fixed MACs,
//! checked with `ip` from outside. Bootstrap, /configurenic, VIPs, gratuitous ARP, restart.

mod common;

use common::agent::{AgentProc, binary};
use common::mgmt::{MgmtNode, assert_fails, assert_ok};
use common::netns::{Netns, veth};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAC0: &str = "fa:7e:4b:ad:11:00";
const MAC1: &str = "fa:7e:4b:ad:11:01";
const MAC2: &str = "fa:7e:4b:ad:11:02";

/// A router namespace and a peer namespace joined by veth pairs.
struct Lab {
    router: Netns,
    peer: Netns,
}

impl Lab {
    /// One veth pair per `(router name, router MAC)`; the peer ends are `p0`, `p1`, ...
    /// with MACs `02:00:00:00:00:0N`.
    fn new(nics: &[(&str, &str)]) -> Lab {
        let router = Netns::new("vrl");
        let peer = Netns::new("vrlp");
        for (i, (name, mac)) in nics.iter().enumerate() {
            veth(
                &router,
                name,
                mac,
                &peer,
                &format!("p{i}"),
                &format!("02:00:00:00:00:{i:02x}"),
            );
        }
        Lab { router, peer }
    }
}

/// `ip/prefix` of every IPv4 address on `dev` in `ns`.
fn addrs(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let out = ns.ip(&["-j", "-4", "addr", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The link named `dev` in `ns` as `ip -j link` shows it.
fn link(ns: &Netns, dev: &str) -> Value {
    let out = ns.ip(&["-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

fn default_route(ns: &Netns) -> String {
    String::from_utf8(ns.ip(&["-4", "route", "show", "default"]).stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn nic(mac: &str, ip: &str, default: bool) -> Value {
    let gw = format!("{}.1", ip.rsplit_once('.').unwrap().0);
    json!({"ip": ip, "mac": mac, "gateway": gw, "netmask": "255.255.255.0", "isDefaultRoute": default})
}

fn vip(ip: &str, prefix_mask: &str, mac: &str) -> Value {
    json!({"ip": ip, "netmask": prefix_mask, "gateway": "10.10.1.1", "ownerEthernetMac": mac})
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Flags that keep every file `bootstrap` writes inside `dir` (sysctls: the namespace's own
/// /proc/sys, which holds per-namespace net.* settings).
fn bootstrap_args(dir: &Path, state: &Path) -> Vec<String> {
    vec![
        "bootstrap".into(),
        format!("--state-dir={}", state.display()),
        format!(
            "--authorized-keys={}",
            dir.join("root-ssh/authorized_keys").display()
        ),
        "--sysctl-root=/proc/sys".into(),
        format!("--error-log={}", dir.join("zstack/error.log").display()),
    ]
}

fn run_bootstrap(ns: &Netns, args: &[String], from: &Path) -> std::process::Output {
    let bin = binary();
    let mut cmd = ns.command(bin.to_str().unwrap());
    cmd.args(args).arg(format!("--from={}", from.display()));
    cmd.output().unwrap()
}

/// Everything bootstrap sets, as text, to compare two runs.
fn snapshot(ns: &Netns) -> String {
    let a = String::from_utf8(ns.ip(&["-d", "addr"]).stdout).unwrap();
    let r = String::from_utf8(ns.ip(&["route"]).stdout).unwrap();
    format!("{a}\n{r}")
}

#[test]
fn bootstrap_from_a_file_sets_names_addresses_route_key_and_sysctls() {
    // Names deliberately differ from the bootstrap info, and two are swapped.
    let lab = Lab::new(&[("eth1", MAC0), ("eth0", MAC1), ("r2", MAC2)]);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let args = bootstrap_args(tmp.path(), &state);
    let error_log = tmp.path().join("zstack/error.log");
    std::fs::create_dir_all(error_log.parent().unwrap()).unwrap();
    std::fs::write(&error_log, "old failure\n").unwrap();
    let info = fixture_path("bootstrap-info.json");

    let out = run_bootstrap(&lab.router, &args, &info);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (dev, mac, addr) in [
        ("eth0", MAC0, "192.168.100.20/24"),
        ("eth1", MAC1, "10.10.1.20/24"),
        ("eth2", MAC2, "172.20.0.1/24"),
    ] {
        let l = link(&lab.router, dev);
        assert_eq!(l["address"], json!(mac), "{dev}: {l}");
        assert!(
            l["flags"].as_array().unwrap().contains(&json!("UP")),
            "{dev} is not up: {l}"
        );
        assert_eq!(addrs(&lab.router, dev), set(&[addr]), "{dev}");
    }
    assert_eq!(
        default_route(&lab.router),
        "default via 10.10.1.1 dev eth1 proto static"
    );
    let key = tmp.path().join("root-ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        "ssh-rsa AAAA... root@mn\n"
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
        ("net/ipv4/conf/all/arp_announce", "2"),
        ("net/ipv4/conf/default/arp_ignore", "2"),
        ("net/ipv4/conf/all/accept_source_route", "0"),
        ("net/ipv6/conf/all/forwarding", "1"),
    ] {
        let got = lab.router.exec_ok(&["cat", &format!("/proc/sys/{key}")]);
        assert_eq!(got.trim(), value, "{key}");
    }
    assert_eq!(
        std::fs::read(state.join("bootstrap-info.json")).unwrap(),
        std::fs::read(&info).unwrap()
    );
    assert!(!error_log.exists(), "success removes the error log");

    // A second run changes nothing.
    let before = snapshot(&lab.router);
    let key_mtime = std::fs::metadata(&key).unwrap().modified().unwrap();
    let out = run_bootstrap(&lab.router, &args, &info);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(&lab.router), before);
    assert_eq!(
        std::fs::metadata(&key).unwrap().modified().unwrap(),
        key_mtime
    );
}

#[test]
fn bootstrap_with_a_missing_nic_writes_the_error_log_and_fails() {
    let lab = Lab::new(&[("r0", MAC0), ("r1", MAC1)]);
    let tmp = tempfile::tempdir().unwrap();
    let args = bootstrap_args(tmp.path(), &tmp.path().join("state"));
    let out = run_bootstrap(&lab.router, &args, &fixture_path("bootstrap-info.json"));
    assert!(!out.status.success());
    let log = std::fs::read_to_string(tmp.path().join("zstack/error.log")).unwrap();
    assert!(
        log.contains(&format!("unable to find nic with mac[{MAC2}]")),
        "{log}"
    );
    // What could be configured was, so the management node can ssh in and read the log.
    assert_eq!(addrs(&lab.router, "eth0"), set(&["192.168.100.20/24"]));
    assert!(tmp.path().join("root-ssh/authorized_keys").exists());

    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"managementNic":{"ip":"1.2.3.4"}}"#).unwrap();
    let out = run_bootstrap(&lab.router, &args, &bad);
    assert!(!out.status.success());
    let log = std::fs::read_to_string(tmp.path().join("zstack/error.log")).unwrap();
    assert_eq!(log, "bootstrap info: managementNic.mac: missing\n");
}

#[test]
fn serve_reapplies_the_cached_bootstrap_info_at_start() {
    let lab = Lab::new(&[("r0", MAC0), ("r1", MAC1), ("r2", MAC2)]);
    lab.router.block_on(|| async {
        let mut agent = AgentProc::start(&[]);
        let args = bootstrap_args(&agent.dir, &agent.dir.join("state"));
        let out = run_bootstrap(&lab.router, &args, &fixture_path("bootstrap-info.json"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Changed while the agent is down (a running agent repairs such drift at once).
        agent.restart_after(|| {
            lab.router.ip(&["addr", "flush", "dev", "eth1"]);
            lab.router.ip(&["link", "set", "eth2", "down"]);
            assert!(addrs(&lab.router, "eth1").is_empty());
        });
        assert_eq!(addrs(&lab.router, "eth1"), set(&["10.10.1.20/24"]));
        assert!(
            link(&lab.router, "eth2")["flags"]
                .as_array()
                .unwrap()
                .contains(&json!("UP"))
        );
        assert_eq!(
            default_route(&lab.router),
            "default via 10.10.1.1 dev eth1 proto static"
        );
    });
}

#[test]
fn configurenic_with_a_missing_or_shared_mac_changes_nothing() {
    let lab = Lab::new(&[("r1", MAC1), ("r2", MAC2)]);
    lab.router.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        let reply = mn
            .call(agent.vr, "/configurenic", &json!({"nics": [nic(MAC1, "10.10.1.20", false)]}))
            .await;
        assert_ok(&reply);
        assert_eq!(addrs(&lab.router, "r1"), set(&["10.10.1.20/24"]));
        let before = snapshot(&lab.router);

        // A missing MAC after a valid nic: refused, the valid nic is untouched.
        let missing = "fa:7e:4b:ad:11:09";
        let reply = mn
            .call(
                agent.vr,
                "/configurenic",
                &json!({"nics": [nic(MAC1, "10.10.1.30", true), nic(MAC2, "172.20.0.1", false), nic(missing, "10.9.0.1", false)]}),
            )
            .await;
        assert_fails(&reply, &format!("unable to find nic with mac[{missing}]"));
        assert_eq!(snapshot(&lab.router), before);

        // Two devices sharing a MAC: refused, naming the MAC.
        let shared = "fa:7e:4b:ad:11:05";
        lab.router.ip(&[
            "link", "add", "s1", "address", shared, "type", "veth", "peer", "name", "s2",
            "address", shared,
        ]);
        let before = snapshot(&lab.router);
        let reply = mn
            .call(
                agent.vr,
                "/configurenic",
                &json!({"nics": [nic(MAC1, "10.10.1.30", true), nic(shared, "10.5.0.1", false)]}),
            )
            .await;
        assert_fails(&reply, &format!("mac address[{shared}]"));
        assert_fails(&reply, "s1");
        assert_eq!(snapshot(&lab.router), before);

        // The kernel refusing a step half-way (a gateway it cannot reach): the error carries
        // the kernel's reason and the address change already made is undone.
        let mut unreachable = nic(MAC1, "10.10.1.30", true);
        unreachable["gateway"] = json!("192.0.2.1");
        let reply = mn
            .call(agent.vr, "/configurenic", &json!({"nics": [unreachable]}))
            .await;
        assert_fails(&reply, "default route via 192.0.2.1 on r1: Network is unreachable");
        assert_eq!(snapshot(&lab.router), before);

        // A valid change replaces the old primary, sets MTU and the default route.
        let mut n1 = nic(MAC1, "10.10.1.30", true);
        n1["mtu"] = json!(1400);
        let body = json!({"nics": [n1, nic(MAC2, "172.20.0.1", false)]});
        assert_ok(&mn.call(agent.vr, "/configurenic", &body).await);
        assert_eq!(addrs(&lab.router, "r1"), set(&["10.10.1.30/24"]));
        assert_eq!(addrs(&lab.router, "r2"), set(&["172.20.0.1/24"]));
        assert_eq!(link(&lab.router, "r1")["mtu"], json!(1400));
        assert_eq!(default_route(&lab.router), "default via 10.10.1.1 dev r1 proto static");
        // Idempotent.
        let before = snapshot(&lab.router);
        assert_ok(&mn.call(agent.vr, "/configurenic", &body).await);
        assert_eq!(snapshot(&lab.router), before);

        // /removenic takes the nic's address away; a nic that is gone is fine.
        let reply = mn
            .call(agent.vr, "/removenic", &json!({"nics": [{"mac": MAC2}, {"mac": missing}]}))
            .await;
        assert_ok(&reply);
        assert!(addrs(&lab.router, "r2").is_empty());
        assert_eq!(addrs(&lab.router, "r1"), set(&["10.10.1.30/24"]));
    });
}

#[test]
fn three_hundred_vips_on_one_nic_add_and_remove_with_the_primary_intact() {
    let lab = Lab::new(&[("r1", MAC1)]);
    lab.router.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        assert_ok(
            &mn.call(
                agent.vr,
                "/configurenic",
                &json!({"nics": [nic(MAC1, "10.10.1.20", true)]}),
            )
            .await,
        );
        // 100 in the primary's subnet, 100 /24s of another subnet (the first of them is
        // the kernel's primary for that subnet), 100 host routes /32.
        let mut all: Vec<(String, String)> = Vec::new();
        for i in 0..100 {
            all.push((format!("10.10.1.{}", 100 + i), "255.255.255.0".into()));
            all.push((format!("10.20.0.{}", 10 + i), "255.255.255.0".into()));
            all.push((
                format!("198.18.{}.{}", i / 50, i % 50 + 1),
                "255.255.255.255".into(),
            ));
        }
        let prefix = |m: &str| if m == "255.255.255.0" { 24 } else { 32 };
        let expect = |vips: &[(String, String)]| -> BTreeSet<String> {
            let mut s: BTreeSet<String> = vips
                .iter()
                .map(|(ip, m)| format!("{ip}/{}", prefix(m)))
                .collect();
            s.insert("10.10.1.20/24".into());
            s
        };
        // Half in one command, half one command each.
        let (bulk, single) = all.split_at(150);
        let body = json!({"vips": bulk.iter().map(|(ip, m)| vip(ip, m, MAC1)).collect::<Vec<_>>()});
        assert_ok(&mn.call(agent.vr, "/createvip", &body).await);
        for (ip, m) in single {
            assert_ok(
                &mn.call(agent.vr, "/createvip", &json!({"vips": [vip(ip, m, MAC1)]}))
                    .await,
            );
        }
        assert_eq!(addrs(&lab.router, "r1"), expect(&all));
        // Adding one that exists is a no-op.
        assert_ok(
            &mn.call(
                agent.vr,
                "/createvip",
                &json!({"vips": [vip(&all[0].0, &all[0].1, MAC1)]}),
            )
            .await,
        );
        assert_eq!(addrs(&lab.router, "r1"), expect(&all));

        // Remove every other one, one command each: exactly those go.
        let (gone, kept): (Vec<_>, Vec<_>) = all
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 2 == 1);
        let kept: Vec<(String, String)> = kept.into_iter().map(|(_, v)| v).collect();
        for (_, (ip, m)) in &gone {
            assert_ok(
                &mn.call(agent.vr, "/removevip", &json!({"vips": [vip(ip, m, MAC1)]}))
                    .await,
            );
        }
        assert_eq!(addrs(&lab.router, "r1"), expect(&kept));
        // Removing the primary's address as a VIP leaves the primary.
        assert_ok(
            &mn.call(
                agent.vr,
                "/removevip",
                &json!({"vips": [vip("10.10.1.20", "255.255.255.0", MAC1)]}),
            )
            .await,
        );
        // The rest in one command.
        let body = json!({"vips": kept.iter().map(|(ip, m)| vip(ip, m, MAC1)).collect::<Vec<_>>()});
        assert_ok(&mn.call(agent.vr, "/removevip", &body).await);
        assert_eq!(addrs(&lab.router, "r1"), set(&["10.10.1.20/24"]));
        assert_eq!(
            default_route(&lab.router),
            "default via 10.10.1.1 dev r1 proto static"
        );
    });
}

/// Waits up to 5 s for `ip neigh show <ip>` in `ns` to mention `mac`.
fn wait_neigh(ns: &Netns, ip: &str, mac: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = String::from_utf8(ns.ip(&["neigh", "show", ip]).stdout).unwrap();
        if out.contains(mac) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_peer_sees_the_gratuitous_arp_of_a_new_vip() {
    let lab = Lab::new(&[("r1", MAC1)]);
    lab.peer.ip(&["addr", "add", "10.10.1.2/24", "dev", "p0"]);
    // The peer believes the VIP lives elsewhere (a failover's old owner) ...
    lab.peer.ip(&[
        "neigh",
        "replace",
        "10.10.1.55",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "p0",
        "nud",
        "stale",
    ]);
    // ... and accepts unsolicited ARP for addresses it has never seen.
    lab.peer
        .exec_ok(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/p0/arp_accept"]);
    lab.router.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        assert_ok(
            &mn.call(agent.vr, "/configurenic", &json!({"nics": [nic(MAC1, "10.10.1.20", false)]}))
                .await,
        );
        let body = json!({"vips": [vip("10.10.1.55", "255.255.255.0", MAC1), vip("10.10.1.56", "255.255.255.0", MAC1)]});
        assert_ok(&mn.call(agent.vr, "/createvip", &body).await);
    });
    let n = wait_neigh(&lab.peer, "10.10.1.55", MAC1);
    assert!(n.contains(MAC1), "stale entry not updated: {n:?}");
    let n = wait_neigh(&lab.peer, "10.10.1.56", MAC1);
    assert!(n.contains(MAC1), "no entry learnt: {n:?}");
}

#[test]
fn restart_restores_vips_flushed_by_hand() {
    let lab = Lab::new(&[("r1", MAC1), ("r2", MAC2)]);
    lab.router.block_on(|| async {
        let mut agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        let body = json!({"nics": [nic(MAC1, "10.10.1.20", true), nic(MAC2, "172.20.0.1", false)]});
        assert_ok(&mn.call(agent.vr, "/configurenic", &body).await);
        let vips = json!({"vips": [
            vip("10.10.1.55", "255.255.255.0", MAC1),
            vip("10.30.0.5", "255.255.255.0", MAC1),
            vip("10.30.0.6", "255.255.255.0", MAC1),
            vip("198.18.0.1", "255.255.255.255", MAC1),
        ]});
        assert_ok(&mn.call(agent.vr, "/createvip", &vips).await);
        let want = set(&[
            "10.10.1.20/24",
            "10.10.1.55/24",
            "10.30.0.5/24",
            "10.30.0.6/24",
            "198.18.0.1/32",
        ]);
        assert_eq!(addrs(&lab.router, "r1"), want);

        agent.stop();
        lab.router.ip(&["addr", "flush", "dev", "r1"]);
        lab.router.ip(&["addr", "add", "10.99.0.1/24", "dev", "r1"]);
        assert_eq!(addrs(&lab.router, "r1"), set(&["10.99.0.1/24"]));
        agent.crash_and_restart();
        assert_eq!(
            addrs(&lab.router, "r1"),
            want,
            "stray address pruned, VIPs back"
        );
        let primary =
            String::from_utf8(lab.router.ip(&["-4", "addr", "show", "dev", "r1"]).stdout).unwrap();
        let line = primary
            .lines()
            .find(|l| l.contains("10.10.1.20/24"))
            .unwrap();
        assert!(
            !line.contains("secondary"),
            "the nic's own address is primary: {primary}"
        );
        assert_eq!(
            default_route(&lab.router),
            "default via 10.10.1.1 dev r1 proto static"
        );
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");

        // A nic missing at start is reported, not fatal.
        agent.stop();
        lab.router.ip(&["link", "del", "r2"]);
        agent.crash_and_restart();
        assert_eq!(addrs(&lab.router, "r1"), want);
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_ok(&ping);
        assert_eq!(ping["healthy"], json!(false), "{ping}");
        let detail = ping["healthDetail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("unable to find nic with mac[{MAC2}]")),
            "{detail}"
        );
    });
}
