//! NAT and the appliance firewall with real packets: a client on the public side, the router
//! running the real agent, guests behind it (see `nat_support`). Every command goes through
//! the agent's HTTP API.

mod common;
mod nat_support;

use common::mgmt::assert_fails;
use nat_support::*;
use serde_json::json;
use std::io::{Read, Write};

#[test]
fn snat_translates_guest_traffic_to_the_public_ip_and_only_when_set() {
    let net = Net::new();
    let _tcp = tcp_server(&net.client, "10.10.1.100:80");
    let _udp = udp_server(&net.client, "10.10.1.100:53");
    let n = &net;
    net.run(|mn, api| async move {
        // forward policy drop: nothing passes before SNAT is set
        assert_eq!(tcp_ask(&n.guest1, "10.10.1.100:80", None), None);
        ok(
            &mn,
            api,
            "/setsnat",
            json!({"snat": snat(G1_MAC, "172.20.0.1", "10.10.1.20")}),
        )
        .await;
        assert_eq!(
            tcp_ask(&n.guest1, "10.10.1.100:80", None).as_deref(),
            Some("10.10.1.20 80")
        );
        assert_eq!(
            udp_ask(&n.guest1, "10.10.1.100:53", None).as_deref(),
            Some("10.10.1.20 53")
        );
        // guest 2 has no SNAT
        assert_eq!(tcp_ask(&n.guest2, "10.10.1.100:80", None), None);
        // syncsnat adds guest 2 and keeps guest 1
        ok(
            &mn,
            api,
            "/syncsnat",
            json!({"snats": [snat(G2_MAC, "172.20.1.1", "10.10.1.20")]}),
        )
        .await;
        assert_eq!(
            tcp_ask(&n.guest2, "10.10.1.100:80", None).as_deref(),
            Some("10.10.1.20 80")
        );
        assert!(tcp_ask(&n.guest1, "10.10.1.100:80", None).is_some());
        // state: false removes guest 1's SNAT
        let mut off = snat(G1_MAC, "172.20.0.1", "10.10.1.20");
        off["state"] = json!(false);
        ok(&mn, api, "/syncsnat", json!({"snats": [off]})).await;
        assert_eq!(tcp_ask(&n.guest1, "10.10.1.100:80", None), None);
        ok(
            &mn,
            api,
            "/removesnat",
            json!({"natInfo": [snat(G2_MAC, "172.20.1.1", "10.10.1.20")]}),
        )
        .await;
        assert_eq!(tcp_ask(&n.guest2, "10.10.1.100:80", None), None);
    });
}

#[test]
fn eip_works_both_ways_ahead_of_subnet_snat_and_with_snat_inbound() {
    let net = Net::new();
    let _g1 = tcp_server(&net.guest1, "0.0.0.0:80");
    let _g1u = udp_server(&net.guest1, "0.0.0.0:53");
    let _g2 = tcp_server(&net.guest2, "0.0.0.0:80");
    let _c = tcp_server(&net.client, "10.10.1.100:80");
    let _cu = udp_server(&net.client, "10.10.1.100:53");
    let n = &net;
    net.run(|mn, api| async move {
        ok(
            &mn,
            api,
            "/setsnat",
            json!({"snat": snat(G1_MAC, "172.20.0.1", "10.10.1.20")}),
        )
        .await;
        assert_eq!(tcp_ask(&n.client, "10.10.1.55:80", None), None);
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip("10.10.1.55", G1_MAC, GUEST1, false)}),
        )
        .await;
        // inbound reaches the guest with the client's address
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.55:80", None).as_deref(),
            Some("10.10.1.100 80")
        );
        assert_eq!(
            udp_ask(&n.client, "10.10.1.55:53", None).as_deref(),
            Some("10.10.1.100 53")
        );
        // outbound appears as the VIP, not as the subnet's public IP
        assert_eq!(
            tcp_ask(&n.guest1, "10.10.1.100:80", None).as_deref(),
            Some("10.10.1.55 80")
        );
        assert_eq!(
            udp_ask(&n.guest1, "10.10.1.100:53", None).as_deref(),
            Some("10.10.1.55 53")
        );
        // guest 2: no subnet SNAT, EIP with snatInboundTraffic: the guest sees the router
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip("10.10.1.58", G2_MAC, GUEST2, true)}),
        )
        .await;
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.58:80", None).as_deref(),
            Some("172.20.1.1 80")
        );
        // and its own outbound goes out as the VIP through the EIP's accept rule
        assert_eq!(
            tcp_ask(&n.guest2, "10.10.1.100:80", None).as_deref(),
            Some("10.10.1.58 80")
        );
        // re-creating an identical EIP is a no-op that succeeds
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip("10.10.1.58", G2_MAC, GUEST2, true)}),
        )
        .await;
        // remapping the VIP to guest 1 takes effect for new connections
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip("10.10.1.58", G1_MAC, GUEST1, false)}),
        )
        .await;
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.58:80", None).as_deref(),
            Some("10.10.1.100 80")
        );
    });
    // single-entry EIP commands went over nfnetlink, without falling back to nft
    let log = net.agent.log();
    assert!(!log.contains("using nft"), "{log}");
}

#[test]
fn port_forwarding_keeps_offsets_honours_allowed_cidr_and_snat_inbound() {
    let net = Net::new();
    let _s: Vec<_> = (80..=82)
        .map(|p| tcp_server(&net.guest1, &format!("0.0.0.0:{p}")))
        .collect();
    let _u = udp_server(&net.guest2, "0.0.0.0:53");
    let _r = tcp_server(&net.guest1, "0.0.0.0:9000");
    let n = &net;
    net.run(|mn, api| async move {
        let rules = json!({"rules": [
            pf("TCP", "10.10.1.56", (8080, 8082), GUEST1, (80, 82), G1_MAC, None, false),
            pf("UDP", "10.10.1.56", (5353, 5353), GUEST2, (53, 53), G2_MAC, None, true),
            pf("TCP", "10.10.1.56", (9000, 9000), GUEST1, (9000, 9000), G1_MAC, Some("10.10.1.100/32"), false),
        ]});
        ok(&mn, api, "/createportforwarding", rules).await;
        // offsets preserved: vip port p -> 80 + (p - 8080)
        for (vip_port, guest_port) in [(8080, 80), (8081, 81), (8082, 82)] {
            assert_eq!(
                tcp_ask(&n.client, &format!("10.10.1.56:{vip_port}"), None),
                Some(format!("10.10.1.100 {guest_port}"))
            );
        }
        // UDP with snatInboundTraffic: guest 2 sees the router's guest address
        assert_eq!(
            udp_ask(&n.client, "10.10.1.56:5353", None).as_deref(),
            Some("172.20.1.1 53")
        );
        // allowedCidr: .100 gets through, .101 does not
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.56:9000", Some(CLIENT)).as_deref(),
            Some("10.10.1.100 9000")
        );
        assert_eq!(tcp_ask(&n.client, "10.10.1.56:9000", Some(CLIENT2)), None);
        // a port outside every rule is not forwarded
        assert_eq!(tcp_ask(&n.client, "10.10.1.56:8083", None), None);
        // an overlapping rule is refused naming the conflict, and changes nothing
        let clash = json!({"rules": [pf("TCP", "10.10.1.56", (8082, 8090), GUEST2, (8082, 8090), G2_MAC, None, false)]});
        let reply = mn.call_sync(api, "/createportforwarding", &clash).await;
        assert_fails(&reply, "conflicts");
        assert!(tcp_ask(&n.client, "10.10.1.56:8082", None).is_some());
        // ranges of different length are refused naming both fields
        let bad = json!({"rules": [pf("TCP", "10.10.1.56", (7000, 7002), GUEST1, (80, 81), G1_MAC, None, false)]});
        let reply = mn.call_sync(api, "/createportforwarding", &bad).await;
        assert_eq!(reply["success"], json!(false), "{reply}");
        let err = reply["error"].as_str().unwrap();
        assert!(err.contains("vipPort") && err.contains("privatePort"), "{err}");
    });
}

#[test]
fn removal_cuts_established_flows_of_the_removed_entry_only() {
    let net = Net::new();
    let _g1 = tcp_server(&net.guest1, "0.0.0.0:80");
    let _g2 = tcp_server(&net.guest2, "0.0.0.0:80");
    let _g1r: Vec<_> = (7000..=7002)
        .map(|p| tcp_server(&net.guest1, &format!("0.0.0.0:{p}")))
        .collect();
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
            "/createeip",
            json!({"eip": eip("10.10.1.57", G2_MAC, GUEST2, false)}),
        )
        .await;
        let rules = json!({"rules": [
            pf("TCP", "10.10.1.56", (6000, 6002), GUEST1, (7000, 7002), G1_MAC, None, false),
        ]});
        ok(&mn, api, "/createportforwarding", rules.clone()).await;

        let mut a = tcp_connect(&n.client, "10.10.1.55:80", None).unwrap();
        assert_eq!(read_line(&a).as_deref(), Some("10.10.1.100 80"));
        let mut b = tcp_connect(&n.client, "10.10.1.57:80", None).unwrap();
        assert_eq!(read_line(&b).as_deref(), Some("10.10.1.100 80"));
        let mut c = tcp_connect(&n.client, "10.10.1.56:6001", None).unwrap();
        assert_eq!(read_line(&c).as_deref(), Some("10.10.1.100 7001"));
        assert!(echoes(&mut a, "a1") && echoes(&mut b, "b1") && echoes(&mut c, "c1"));

        ok(
            &mn,
            api,
            "/removeeip",
            json!({"eip": eip("10.10.1.55", G1_MAC, GUEST1, false)}),
        )
        .await;
        assert!(
            !echoes(&mut a, "a2"),
            "the flow through the removed EIP survived"
        );
        assert!(
            echoes(&mut b, "b2"),
            "the flow through the other EIP was cut"
        );
        assert!(echoes(&mut c, "c2"), "the port forward's flow was cut");
        assert_eq!(tcp_ask(&n.client, "10.10.1.55:80", None), None);

        ok(&mn, api, "/revokeportforwarding", rules).await;
        assert!(
            !echoes(&mut c, "c3"),
            "the flow through the revoked forward survived"
        );
        assert!(echoes(&mut b, "b3"));
        assert_eq!(tcp_ask(&n.client, "10.10.1.56:6001", None), None);
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
    });
}

#[test]
fn sync_commands_replace_everything() {
    let net = Net::new();
    let _g1 = tcp_server(&net.guest1, "0.0.0.0:80");
    let _g2 = tcp_server(&net.guest2, "0.0.0.0:80");
    let n = &net;
    net.run(|mn, api| async move {
        ok(&mn, api, "/createeip", json!({"eip": eip("10.10.1.55", G1_MAC, GUEST1, false)})).await;
        ok(
            &mn,
            api,
            "/createportforwarding",
            json!({"rules": [pf("TCP", "10.10.1.56", (8080, 8080), GUEST1, (80, 80), G1_MAC, None, false)]}),
        )
        .await;
        let mut held = tcp_connect(&n.client, "10.10.1.55:80", None).unwrap();
        assert!(read_line(&held).is_some());
        assert!(tcp_ask(&n.client, "10.10.1.56:8080", None).is_some());

        ok(&mn, api, "/synceip", json!({"eips": [eip("10.10.1.57", G2_MAC, GUEST2, false)]})).await;
        assert_eq!(tcp_ask(&n.client, "10.10.1.55:80", None), None);
        assert!(!echoes(&mut held, "x"), "a flow through a synced-away EIP survived");
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.57:80", None).as_deref(),
            Some("10.10.1.100 80")
        );
        ok(
            &mn,
            api,
            "/syncportforwarding",
            json!({"rules": [pf("TCP", "10.10.1.60", (8081, 8081), GUEST2, (80, 80), G2_MAC, None, false)]}),
        )
        .await;
        assert_eq!(tcp_ask(&n.client, "10.10.1.56:8080", None), None);
        assert!(tcp_ask(&n.client, "10.10.1.60:8081", None).is_some());
        // the EIPs were left alone by the port forwarding sync
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
        // a large sync is one transaction over nfnetlink too
        n.router.ip(&["addr", "add", "198.18.0.1/15", "dev", "eth1"]);
        // The guests' network: an EIP's guest lies in the subnet of its router nic.
        n.router.ip(&["addr", "add", "172.21.0.1/20", "dev", "eth2"]);
        let mut many: Vec<serde_json::Value> = (0..3000)
            .map(|i| eip(&format!("198.18.{}.{}", i / 250, i % 250 + 1), G1_MAC, &format!("172.21.{}.{}", i / 250, i % 250 + 1), false))
            .collect();
        many.push(eip("10.10.1.57", G2_MAC, GUEST2, false));
        ok(&mn, api, "/synceip", json!({ "eips": many })).await;
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
        let dnat = n.router.exec_ok(&["nft", "list", "map", "ip", "vr_nat", "eip_dnat"]);
        assert_eq!(dnat.matches(" : 172.").count(), 3001, "{dnat}");
        // an empty sync clears
        ok(&mn, api, "/synceip", json!({"eips": []})).await;
        assert_eq!(tcp_ask(&n.client, "10.10.1.57:80", None), None);
        let tables = n.tables();
        assert!(!tables.contains("10.10.1.57"), "{tables}");
        // nothing was left out along the way
        let ping = mn.call_sync(api, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");
    });
    let log = net.agent.log();
    assert!(!log.contains("using nft"), "{log}");
}

fn http_echo(ns: &common::netns::Netns, addr: &str) -> Option<String> {
    let mut s = tcp_connect(ns, addr, None)?;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_string)
}

#[test]
fn firewall_keeps_the_agent_on_the_management_nic_and_follows_refreshfirewall() {
    let net = Net::new();
    let _web = tcp_server(&net.router, "0.0.0.0:8443");
    let _other = tcp_server(&net.router, "0.0.0.0:8444");
    let _dns = udp_server(&net.router, "0.0.0.0:53");
    let n = &net;
    net.run(|mn, api| async move {
        // the agent: reachable from management only, on both ports
        for port in [7272, 7759] {
            assert_eq!(
                http_echo(&n.mgmt, &format!("192.168.100.20:{port}")).as_deref(),
                Some("HTTP/1.1 200 OK")
            );
            assert_eq!(tcp_connect(&n.client, &format!("10.10.1.20:{port}"), None).map(|_| ()), None);
            assert_eq!(tcp_connect(&n.guest1, &format!("172.20.0.1:{port}"), None).map(|_| ()), None);
        }
        // DNS is served on guest nics only once the router knows them (here: a SNAT entry)
        assert_eq!(udp_ask(&n.guest1, "172.20.0.1:53", None), None);
        ok(&mn, api, "/setsnat", json!({"snat": snat(G1_MAC, "172.20.0.1", "10.10.1.20")})).await;
        assert_eq!(
            udp_ask(&n.guest1, "172.20.0.1:53", None).as_deref(),
            Some("172.20.0.15 53")
        );
        assert_eq!(udp_ask(&n.client, "10.10.1.20:53", None), None);

        assert_eq!(tcp_ask(&n.client, "10.10.1.20:8443", None), None);
        let rules = json!({"rules": [
            {"protocol": "tcp", "startPort": 8443, "endPort": 8443, "nicMac": PUB_MAC},
            // opening the agent's port on the public nic is not honoured
            {"protocol": "tcp", "startPort": 7272, "endPort": 7272, "nicMac": PUB_MAC},
            {"protocol": "all", "startPort": 8444, "endPort": 8444, "nicMac": PUB_MAC, "allowCidr": "10.10.1.101/32"}
        ]});
        ok(&mn, api, "/appliancevm/refreshfirewall", rules).await;
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.20:8443", None).as_deref(),
            Some("10.10.1.100 8443")
        );
        assert_eq!(tcp_connect(&n.client, "10.10.1.20:7272", None).map(|_| ()), None);
        assert_eq!(tcp_ask(&n.client, "10.10.1.20:8444", Some(CLIENT)), None);
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.20:8444", Some(CLIENT2)).as_deref(),
            Some("10.10.1.101 8444")
        );
        // the list replaces the previous one
        ok(&mn, api, "/appliancevm/refreshfirewall", json!({"rules": []})).await;
        assert_eq!(tcp_ask(&n.client, "10.10.1.20:8443", None), None);
        assert!(http_echo(&n.mgmt, "192.168.100.20:7272").is_some());
    });
}

#[test]
fn a_failed_command_leaves_the_previous_state_and_a_restart_restores_it() {
    let mut net = Net::new();
    let _g1 = tcp_server(&net.guest1, "0.0.0.0:80");
    let n = &net;
    net.run(|mn, api| async move {
        ok(&mn, api, "/createeip", json!({"eip": eip("10.10.1.55", G1_MAC, GUEST1, false)})).await;
        let before = n.tables();
        let missing = "fa:7e:4b:ad:11:77";
        let reply = mn
            .call_sync(api, "/createeip", &json!({"eip": eip("10.10.1.57", missing, GUEST1, false)}))
            .await;
        assert_fails(&reply, missing);
        let reply = mn
            .call_sync(
                api,
                "/synceip",
                &json!({"eips": [eip("10.10.1.57", G1_MAC, GUEST1, false), eip("10.10.1.58", missing, GUEST2, false)]}),
            )
            .await;
        assert_fails(&reply, missing);
        let reply = mn
            .call_sync(
                api,
                "/appliancevm/refreshfirewall",
                &json!({"rules": [{"protocol": "tcp", "startPort": 1, "endPort": 2, "nicMac": missing}]}),
            )
            .await;
        assert_fails(&reply, missing);
        assert_eq!(n.tables(), before, "a refused command changed our tables");
        assert!(tcp_ask(&n.client, "10.10.1.55:80", None).is_some());
        assert_eq!(tcp_ask(&n.client, "10.10.1.57:80", None), None);
        // the desired state did not take the refused commands either
        let ping = mn.call_sync(api, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");
    });
    // our tables are gone while the agent is down (e.g. a reboot): it re-applies its state
    // at start (a running agent repairs such drift at once: tests/drift.rs)
    let router = &net.router;
    let client = &net.client;
    let agent = &mut net.agent;
    router.enter(|| {
        agent.restart_after(|| {
            router.exec_ok(&["nft", "delete", "table", "ip", "vr_nat"]);
            assert_eq!(tcp_ask(client, "10.10.1.55:80", None), None);
        });
    });
    assert!(tcp_ask(&net.client, "10.10.1.55:80", None).is_some());
}

#[test]
fn a_vanished_nic_at_start_up_leaves_its_entries_out_reports_them_and_keeps_the_rest() {
    let mut net = Net::new();
    let _g1 = tcp_server(&net.guest1, "0.0.0.0:80");
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
            "/createeip",
            json!({"eip": eip("10.10.1.58", G2_MAC, GUEST2, false)}),
        )
        .await;
        assert!(tcp_ask(&n.client, "10.10.1.55:80", None).is_some());
    });
    // guest 2's nic disappears, then the agent restarts and re-applies its state
    net.router.ip(&["link", "del", "eth3"]);
    net.router.enter(|| net.agent.restart());
    let n = &net;
    net.run(|mn, api| async move {
        let ping = mn.call_sync(api, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(false), "{ping}");
        let detail = ping["healthDetail"].as_str().unwrap();
        assert!(
            detail.contains(G2_MAC) && detail.contains("10.10.1.58"),
            "{detail}"
        );
        // the rest is applied
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.55:80", None).as_deref(),
            Some("10.10.1.100 80")
        );
        // a new command on the surviving nic works; the report stays until the nic is back
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip("10.10.1.57", G1_MAC, GUEST1, false)}),
        )
        .await;
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
        // removing the entry of the missing nic clears the report
        ok(
            &mn,
            api,
            "/removeeip",
            json!({"eip": eip("10.10.1.58", G2_MAC, GUEST2, false)}),
        )
        .await;
        let ping = mn.call_sync(api, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true), "{ping}");
    });
}

#[test]
fn dhcp_hosts_added_through_another_backend_open_dhcp_and_dns_on_their_nic() {
    use vr_agent::backend::Backend;
    use vr_agent::state::{Command, DesiredState};
    let router = common::netns::Netns::new("vrnr");
    let guest = common::netns::Netns::new("vrng");
    common::netns::veth(&router, "eth2", G1_MAC, &guest, "g0", "fa:7e:4b:00:00:12");
    router.ip(&["addr", "add", "172.20.0.1/24", "dev", "eth2"]);
    guest.ip(&["addr", "add", &format!("{GUEST1}/24"), "dev", "g0"]);
    let _dns = udp_server(&router, "0.0.0.0:53");
    let health = std::sync::Arc::new(vr_agent::health::Health::default());
    // a management nic that exists (lo), so the firewall goes in with its drop policies
    let mut backend = vr_agent::nat::NatBackend::with("lo".into(), vec![7272], health.clone());
    let mut state = DesiredState::default();
    router.block_on(|| async {
        backend.reconcile(&state).await.unwrap();
    });
    assert_eq!(udp_ask(&guest, "172.20.0.1:53", None), None);
    // a DHCP host naming the router's nic, as /adddhcp (the DHCP backend's command) sets it
    let host: Command = serde_json::from_value(json!({"cmd": "add_dhcp", "args": {"rebuild": false, "hosts": [
        {"mac": "fa:3c:91:5e:22:07", "ip": GUEST1, "prefix": 24, "gateway": "172.20.0.1", "dns": [],
         "hostname": null, "vr_nic_mac": G1_MAC, "dns_domain": null, "is_default_l3": true, "mtu": null}
    ]}}))
    .unwrap();
    let before = state.clone();
    let parts = state.apply(&host).unwrap();
    let change = vr_agent::state::Change::new(&before, &state, &host, parts);
    assert!(backend.concerns(parts));
    router.block_on(|| async { backend.apply(&change).await.unwrap() });
    assert_eq!(
        udp_ask(&guest, "172.20.0.1:53", None).as_deref(),
        Some("172.20.0.15 53")
    );
    let set = router.exec_ok(&["nft", "list", "set", "inet", "vr_filter", "guest_ifs"]);
    assert!(set.contains("\"eth2\""), "{set}");
    assert!(health.report().0);
}
