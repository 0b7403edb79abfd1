//! Hostile commands against the real agent in network namespaces: a multicast /removevip keeps
//! the management address, the rails refuse what would cut the agent off, and a sync with a
//! missing list removes nothing.

mod common;
mod nat_support;

use common::agent::AgentProc;
use common::mgmt::{MgmtNode, assert_fails, assert_ok};
use common::netns::{Netns, veth};
use nat_support::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const MAC0: &str = "fa:7e:4b:ad:11:00";

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

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn vip(ip: &str, mac: &str) -> Value {
    json!({"ip": ip, "netmask": "255.255.255.0", "gateway": "192.168.100.1", "ownerEthernetMac": mac})
}

#[test]
fn removevip_of_a_multicast_address_keeps_the_management_address() {
    let router = Netns::new("vrir");
    let peer = Netns::new("vrip");
    veth(&router, "eth0", MAC0, &peer, "p0", "02:00:00:00:00:01");
    router.ip(&["addr", "add", "192.168.100.20/24", "dev", "eth0"]);
    router.block_on(|| async {
        let agent = AgentProc::start(&["--mgmt-nic=eth0"]);
        let mn = MgmtNode::start().await;
        assert_ok(
            &mn.call(
                agent.vr,
                "/createvip",
                &json!({"vips": [vip("192.168.100.55", MAC0), vip("192.168.100.56", MAC0)]}),
            )
            .await,
        );
        let all = set(&[
            "192.168.100.20/24",
            "192.168.100.55/24",
            "192.168.100.56/24",
        ]);
        assert_eq!(addrs(&router, "eth0"), all);

        let reply = mn
            .call(
                agent.vr,
                "/removevip",
                &json!({"vips": [vip("224.0.0.5", MAC0)]}),
            )
            .await;
        assert_eq!(
            reply["error"],
            json!(r#"vips[0].ip: "224.0.0.5" is a multicast address"#)
        );
        assert_eq!(addrs(&router, "eth0"), all);

        // The management address itself is not a VIP to remove.
        let reply = mn
            .call(
                agent.vr,
                "/removevip",
                &json!({"vips": [vip("192.168.100.20", MAC0)]}),
            )
            .await;
        assert_eq!(
            reply["error"],
            json!(
                r#"vips[0].ip: "192.168.100.20" is the management nic's address; the agent would be cut off"#
            )
        );
        assert_eq!(addrs(&router, "eth0"), all);

        // A valid removal removes exactly that address.
        assert_ok(
            &mn.call(
                agent.vr,
                "/removevip",
                &json!({"vips": [vip("192.168.100.55", MAC0)]}),
            )
            .await,
        );
        assert_eq!(
            addrs(&router, "eth0"),
            set(&["192.168.100.20/24", "192.168.100.56/24"])
        );
    });
}

#[test]
fn rails_and_required_lists_hold_against_the_real_agent() {
    let net = Net::new();
    let n = &net;
    net.run(|mn, api| async move {
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip("10.10.1.55", G1_MAC, GUEST1, false)}),
        )
        .await;
        ok(
            &mn,
            api,
            "/createportforwarding",
            json!({"rules": [pf("TCP", "10.10.1.56", (8080, 8080), GUEST1, (80, 80), G1_MAC, None, false)]}),
        )
        .await;
        let before = n.tables();
        // Destructive syncs with a missing, null or misspelled list are refused.
        for (path, body, field) in [
            ("/synceip", json!({}), "eips"),
            ("/synceip", json!({"eips": null}), "eips"),
            ("/synceip", json!({"EIPs": []}), "eips"),
            ("/synceip", json!({"eip": eip("10.10.1.57", G1_MAC, GUEST1, false)}), "eips"),
            ("/syncportforwarding", json!({}), "rules"),
            ("/appliancevm/refreshfirewall", json!({"rules": null}), "rules"),
            ("/adddhcp", json!({"rebuild": true}), "dhcpEntries"),
        ] {
            let reply = mn.call_sync(api, path, &body).await;
            assert_eq!(reply["error"], json!(format!("{field}: missing")), "{path} {body}");
        }
        let reply = mn.post_raw(api, "/synceip", &[], Vec::new()).await;
        assert_fails(&reply.json(), "the body is empty");
        assert_eq!(n.tables(), before);

        // The management address and the agent's ports on it stay the agent's.
        let reply = mn
            .call_sync(api, "/createeip", &json!({"eip": eip("192.168.100.20", G1_MAC, GUEST1, false)}))
            .await;
        assert_eq!(
            reply["error"],
            json!(r#"eip.vipIp: "192.168.100.20" is the management nic's address; the agent would be cut off"#)
        );
        let reply = mn
            .call_sync(
                api,
                "/createportforwarding",
                &json!({"rules": [pf("TCP", "192.168.100.20", (7272, 7272), GUEST1, (7272, 7272), G1_MAC, None, false)]}),
            )
            .await;
        assert_eq!(
            reply["error"],
            json!(r#"rules[0].vipIp: "192.168.100.20" is the management nic's address and the ports hold the agent's or ssh's port 7272; the agent would be cut off"#)
        );
        // A guest outside the subnet of its router nic, or the management nic as a guest.
        let reply = mn
            .call_sync(api, "/createeip", &json!({"eip": eip("10.10.1.57", G1_MAC, GUEST2, false)}))
            .await;
        assert_eq!(
            reply["error"],
            json!(r#"eip.guestIp: "172.20.1.20" is not in the subnet of the nic fa:7e:4b:ad:11:02 (172.20.0.0/24)"#)
        );
        let reply = mn
            .call_sync(api, "/createeip", &json!({"eip": eip("10.10.1.57", MGMT_MAC, "192.168.100.20", false)}))
            .await;
        assert_eq!(
            reply["error"],
            json!(r#"eip.guestIp: "192.168.100.20" is the management nic's address, not a guest's"#)
        );
        assert_eq!(n.tables(), before);
        // The agent still answers on its management address.
        let reply = mn
            .call_sync("192.168.100.20:7272".parse().unwrap(), "/ping", &json!({}))
            .await;
        assert_ok(&reply);
        // An explicit [] keeps its meaning.
        ok(&mn, api, "/synceip", json!({"eips": []})).await;
        assert!(!n.tables().contains("10.10.1.55"));
    });
}

/// The agent's peak resident set (VmHWM) in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// Resets the peak resident set of `pid` to its current one.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// A body of `prefix`, then `item` repeated to fill the default 32 MiB limit, then `suffix`.
fn fill(prefix: &str, item: &str, last: &str, suffix: &str) -> Vec<u8> {
    let limit = 32 * 1024 * 1024;
    let n = (limit - prefix.len() - last.len() - suffix.len()) / item.len();
    let mut body = Vec::with_capacity(limit);
    body.extend_from_slice(prefix.as_bytes());
    for _ in 0..n {
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(last.as_bytes());
    body.extend_from_slice(suffix.as_bytes());
    assert!(body.len() <= limit);
    body
}

#[test]
fn peak_memory_of_one_request_at_the_body_limit_stays_under_128_mib() {
    let ns = Netns::new("vrim");
    ns.block_on(|| async {
        let mn = MgmtNode::start().await;
        let mut report = Vec::new();
        for (what, path, body) in worst_bodies() {
            // A fresh agent each: the figure is that one request's.
            let agent = AgentProc::start(&[]);
            let pid = agent.pid();
            assert_ok(&mn.call(agent.vr, "/ping", &json!({})).await);
            let idle = peak_kib(pid);
            reset_peak(pid);
            let len = body.len();
            let raw = mn.post_raw(agent.vr, path, &[], body).await;
            assert_eq!(raw.status, 200, "{what}");
            let reply = raw.json();
            assert_eq!(reply["success"], json!(false), "{what}: {reply}");
            let error = reply["error"].as_str().unwrap().to_string();
            assert!(error.len() < 600, "{what}: {} bytes of error", error.len());
            let peak = peak_kib(pid);
            report.push(format!(
                "{what} ({len} bytes): peak {} MiB (idle {} MiB); {error}",
                peak / 1024,
                idle / 1024
            ));
            assert!(peak <= 128 * 1024, "{what}: peak {peak} KiB\n{report:#?}");
            // Still answering, and no log line quotes the body.
            assert_ok(&mn.call(agent.vr, "/ping", &json!({})).await);
            let log = agent.log();
            let longest = log.lines().map(str::len).max().unwrap_or(0);
            assert!(longest < 2000, "{what}: a log line of {longest} bytes");
        }
        eprintln!("peak RSS per request:\n{}", report.join("\n"));
    });
}

fn worst_bodies() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        (
            "32 MiB of {} in eips",
            "/synceip",
            fill(r#"{"eips":["#, "{},", "{}", "]}"),
        ),
        (
            "32 MiB of \"x\" in one entry's dns",
            "/adddhcp",
            fill(r#"{"dhcpEntries":[{"dns":["#, r#""x","#, r#""x""#, "]}]}"),
        ),
        (
            "entries of 1000 \"x\" each in dns",
            "/adddhcp",
            fill(
                r#"{"dhcpEntries":["#,
                &format!(r#"{{"dns":[{}"x"]}},"#, r#""x","#.repeat(999)),
                "{}",
                "]}",
            ),
        ),
        (
            "32 MiB of \"x\" in dns of /setdns",
            "/setdns",
            fill(r#"{"dns":["#, r#""x","#, r#""x""#, "]}"),
        ),
        (
            "32 MiB of {\"dnsAddress\":\"x\"} in /setdns",
            "/setdns",
            fill(r#"{"dns":["#, r#"{"dnsAddress":"x"},"#, "{}", "]}"),
        ),
        ("32 MiB of nesting in an unknown key", "/synceip", {
            let half = (32 * 1024 * 1024 - 16) / 2;
            let mut b = br#"{"x":"#.to_vec();
            b.extend(std::iter::repeat_n(b'[', half));
            b.extend(std::iter::repeat_n(b']', half));
            b.push(b'}');
            b
        }),
        (
            "one 32 MiB string",
            "/createeip",
            fill(r#"{"eip":{"vipIp":""#, "x", "", r#""}}"#),
        ),
        (
            "one 32 MiB string of escapes",
            "/createeip",
            fill(r#"{"eip":{"vipIp":""#, r"\u00e9", "", r#""}}"#),
        ),
        (
            "32 MiB of small EIPs",
            "/synceip",
            fill(
                r#"{"eips":["#,
                r#"{"vipIp":"1.2.3.4","guestIp":"a"},"#,
                "{}",
                "]}",
            ),
        ),
        (
            "32 MiB of 64 KiB hostnames",
            "/adddhcp",
            fill(
                r#"{"dhcpEntries":["#,
                &format!(r#"{{"hostname":"{}"}},"#, "h".repeat(65_000)),
                "{}",
                "]}",
            ),
        ),
    ]
}

#[test]
fn the_netlink_address_delete_names_the_address_even_for_a_multicast_one() {
    use vr_agent::link::netlink::Netlink;
    let router = Netns::new("vrin");
    let peer = Netns::new("vrinp");
    veth(&router, "eth0", MAC0, &peer, "p0", "02:00:00:00:00:01");
    router.ip(&["addr", "add", "192.168.100.20/24", "dev", "eth0"]);
    router.ip(&["addr", "add", "192.168.100.55/24", "dev", "eth0"]);
    router.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let links = nl.links().await.unwrap();
        let link = links.iter().find(|l| l.name == "eth0").unwrap();
        // Straight to netlink, past the request validation: nothing of that name is there.
        let removed = nl
            .del_addr(link, "224.0.0.5".parse().unwrap(), 24)
            .await
            .unwrap();
        assert!(!removed);
        assert_eq!(
            addrs(&router, "eth0"),
            set(&["192.168.100.20/24", "192.168.100.55/24"])
        );
        let removed = nl
            .del_addr(link, "192.168.100.55".parse().unwrap(), 24)
            .await
            .unwrap();
        assert!(removed);
        assert_eq!(addrs(&router, "eth0"), set(&["192.168.100.20/24"]));
    });
}
