//! Drift: the kernel changed behind the agent's back (nft by hand, addresses removed, a nic
//! re-created). The agent notices through netlink notifications, repairs within a couple of
//! seconds, and says so in `/ping` (`driftRepairs`, `lastDrift`). Real kernel, real nft, real
//! packets; the router runs the real agent (see `nat_support`).

mod common;
mod nat_support;

use nat_support::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms for up to `limit`; true once it holds.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const REPAIR: Duration = Duration::from_secs(2);

fn ping(net: &Net) -> Value {
    let body = common::agent::raw_ping(net.api()).expect("ping answered");
    serde_json::from_str(&body).expect("ping json")
}

fn repairs(net: &Net) -> u64 {
    net.router
        .enter(|| ping(net)["driftRepairs"].as_u64().unwrap_or(0))
}

/// `nft delete element` of the EIP 10.10.1.55 from `eip_dnat`, as an operator would.
fn delete_eip_element_by_hand(net: &Net) {
    net.router.exec_ok(&[
        "nft",
        "delete",
        "element",
        "ip",
        "vr_nat",
        "eip_dnat",
        "{ 10.10.1.55 }",
    ]);
}

#[test]
fn nft_changes_behind_the_agents_back_are_repaired_and_reported() {
    let net = Net::new();
    let _g1 = tcp_server(&net.guest1, "0.0.0.0:80");
    let n = &net;
    net.run(|mn, api| async move {
        ok(
            &mn,
            api,
            "/setsnat",
            json!({"snat": snat(G1_MAC, "172.20.0.1", "10.10.1.20")}),
        )
        .await;
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip("10.10.1.55", G1_MAC, GUEST1, false)}),
        )
        .await;
    });
    assert_eq!(
        tcp_ask(&net.client, "10.10.1.55:80", None).as_deref(),
        Some("10.10.1.100 80")
    );
    let p = net.router.enter(|| ping(&net));
    assert_eq!(p["driftRepairs"], json!(0), "{p}");
    assert_eq!(p["healthy"], json!(true), "{p}");

    // 1. the whole ruleset flushed: NAT and the firewall come back
    net.router.exec_ok(&["nft", "flush", "ruleset"]);
    assert!(
        within(REPAIR, || net
            .router
            .exec(&["nft", "list", "table", "ip", "vr_nat"])
            .status
            .success()
            && net
                .router
                .exec(&["nft", "list", "table", "inet", "vr_filter"])
                .status
                .success()),
        "tables not re-created:\n{}",
        net.agent.log()
    );
    assert!(within(REPAIR, || tcp_ask(
        &net.client,
        "10.10.1.55:80",
        None
    )
    .as_deref()
        == Some("10.10.1.100 80")));
    assert!(within(REPAIR, || repairs(&net) >= 1));
    let p = net.router.enter(|| ping(&net));
    let last = p["lastDrift"].as_str().unwrap_or_default().to_string();
    assert!(last.contains("nftables changed by nft"), "{p}");
    assert!(last.contains("repaired"), "{p}");
    assert_eq!(
        p["healthy"],
        json!(true),
        "healthy again once repaired: {p}"
    );

    // 2. one element deleted by hand
    let before = repairs(&net);
    delete_eip_element_by_hand(&net);
    assert!(
        within(REPAIR, || net
            .router
            .exec_ok(&["nft", "list", "map", "ip", "vr_nat", "eip_dnat"])
            .contains("10.10.1.55")),
        "element not restored:\n{}",
        net.agent.log()
    );
    assert!(within(REPAIR, || repairs(&net) > before));

    // 3. a rule inserted into one of our chains is taken out again
    let before = repairs(&net);
    net.router.exec_ok(&[
        "nft",
        "insert",
        "rule",
        "inet",
        "vr_filter",
        "input",
        "tcp",
        "dport",
        "9999",
        "accept",
    ]);
    assert!(
        within(REPAIR, || !net.tables().contains("9999")),
        "foreign rule still there:\n{}",
        net.tables()
    );

    assert!(within(REPAIR, || repairs(&net) > before));

    // 4. a table deleted
    let before = repairs(&net);
    net.router
        .exec_ok(&["nft", "delete", "table", "inet", "vr_filter"]);
    assert!(within(REPAIR, || net
        .router
        .exec(&["nft", "list", "table", "inet", "vr_filter"])
        .status
        .success()));
    // (the repair is counted once it is complete)
    assert!(within(REPAIR, || repairs(&net) > before));

    // our own commands are not drift
    let before = repairs(&net);
    net.run(|mn, api| async move {
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip("10.10.1.56", G1_MAC, GUEST1, false)}),
        )
        .await;
        ok(
            &mn,
            api,
            "/removeeip",
            json!({"eip": eip("10.10.1.56", G1_MAC, GUEST1, false)}),
        )
        .await;
        ok(
            &mn,
            api,
            "/syncsnat",
            json!({"snats": [snat(G1_MAC, "172.20.0.1", "10.10.1.20")]}),
        )
        .await;
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(repairs(&net), before, "{}", net.agent.log());

    // a transaction of 12,000 element changes runs with the drift reader muted (no message
    // per element): still no drift, and notifications are back afterwards
    let rules: Vec<Value> = (0..6_000u16)
        .map(|i| {
            pf(
                "TCP",
                "10.10.1.57",
                (20_000 + i, 20_000 + i),
                GUEST1,
                (80, 80),
                G1_MAC,
                None,
                false,
            )
        })
        .collect();
    net.run(|mn, api| async move {
        ok(&mn, api, "/syncportforwarding", json!({"rules": rules})).await;
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(repairs(&net), before, "{}", net.agent.log());
    assert!(
        net.agent
            .log()
            .contains("element batch sent with the drift reader muted")
            && !net.agent.log().contains("without notifications"),
        "{}",
        net.agent.log()
    );
    assert_eq!(
        tcp_ask(&net.client, "10.10.1.57:25999", None).as_deref(),
        Some("10.10.1.100 80")
    );
    delete_eip_element_by_hand(&net);
    assert!(
        within(REPAIR, || repairs(&net) > before),
        "a foreign change after the muted transaction went unnoticed:\n{}",
        net.agent.log()
    );
    let _ = n;
}

#[test]
fn removed_addresses_and_a_recreated_nic_get_their_configuration_back() {
    let net = Net::new();
    net.run(|mn, api| async move {
        ok(
            &mn,
            api,
            "/configurenic",
            json!({"nics": [{"mac": G1_MAC, "ip": "172.20.0.1", "netmask": "255.255.255.0"}]}),
        )
        .await;
        ok(
            &mn,
            api,
            "/createvip",
            json!({"vips": [{"ip": "172.20.0.200", "netmask": "255.255.255.0", "ownerEthernetMac": G1_MAC}]}),
        )
        .await;
        ok(&mn, api, "/setsnat", json!({"snat": snat(G1_MAC, "172.20.0.1", "10.10.1.20")})).await;
    });
    let _c = tcp_server(&net.client, "10.10.1.100:80");
    // the agent's own address changes come back as notifications of its own socket: no verify
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !net.agent.log().contains("address added on link"),
        "the agent's own address adds were taken for drift:\n{}",
        net.agent.log()
    );
    let addrs = || {
        String::from_utf8_lossy(
            &net.router
                .exec(&["ip", "-4", "addr", "show", "dev", "eth2"])
                .stdout,
        )
        .into_owned()
    };
    assert!(addrs().contains("172.20.0.200/24"), "{}", addrs());

    // an address removed by hand comes back
    net.router
        .ip(&["addr", "del", "172.20.0.200/24", "dev", "eth2"]);
    assert!(
        within(REPAIR, || addrs().contains("172.20.0.200/24")),
        "VIP not restored:\n{}",
        net.agent.log()
    );
    assert!(within(REPAIR, || repairs(&net) >= 1));

    // the nic deleted and re-created with the same MAC, left down and without addresses
    net.router.ip(&["link", "del", "eth2"]);
    net.router.ip(&[
        "link",
        "add",
        "eth2",
        "address",
        G1_MAC,
        "type",
        "veth",
        "peer",
        "name",
        "g0",
        "address",
        "fa:7e:4b:00:00:12",
        "netns",
        &net.guest1.name,
    ]);
    net.guest1.ip(&["link", "set", "g0", "up"]);
    net.guest1
        .ip(&["addr", "add", &format!("{GUEST1}/24"), "dev", "g0"]);
    net.guest1
        .ip(&["route", "add", "default", "via", "172.20.0.1"]);
    assert!(
        within(REPAIR, || {
            let a = addrs();
            a.contains("172.20.0.1/24") && a.contains("172.20.0.200/24") && a.contains("UP")
        }),
        "nic not restored: {}\n{}",
        addrs(),
        net.agent.log()
    );
    // and NAT works through it again
    assert!(within(REPAIR, || tcp_ask(
        &net.guest1,
        "10.10.1.100:80",
        None
    )
    .as_deref()
        == Some("10.10.1.20 80")));
    let p = net.router.enter(|| ping(&net));
    assert_eq!(p["healthy"], json!(true), "{p}");
    assert!(
        p["lastDrift"]
            .as_str()
            .unwrap_or_default()
            .contains("interfaces drifted"),
        "{p}"
    );
}
