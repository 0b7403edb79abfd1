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
