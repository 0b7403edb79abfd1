//! Hostile and sloppy request bodies: missing or null required fields, addresses that cannot be
//! what they are used as, names dnsmasq would misread, huge values and lists, and the rails
//! that keep the agent reachable. Pure: no root, no namespace.

use std::collections::BTreeMap;
use vr_agent::protocol::{Request, Route, route};
use vr_agent::state::facts::SystemFacts;
use vr_agent::state::{Command, DesiredState};

fn ep(path: &str) -> &'static Route {
    route(path).unwrap_or_else(|| panic!("no route {path}"))
}

fn err(path: &str, body: &str) -> String {
    match ep(path).parse(body.as_bytes()) {
        Ok(r) => panic!("{path} {body}: accepted as {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn cmd(path: &str, body: &str) -> Command {
    match ep(path).parse(body.as_bytes()) {
        Ok(Request::Change(c)) => c,
        other => panic!("{path} {body}: {other:?}"),
    }
}

const EIP: &str =
    r#"{"vipIp":"10.10.1.55","privateMac":"fa:7e:4b:ad:11:02","guestIp":"172.20.0.15"}"#;

#[test]
fn a_missing_or_null_required_field_is_refused_by_name() {
    let required = [
        ("/configurenic", "nics"),
        ("/removenic", "nics"),
        ("/adddhcp", "dhcpEntries"),
        ("/removedhcp", "dhcpEntries"),
        ("/setsnat", "snat"),
        ("/syncsnat", "snats"),
        ("/removesnat", "natInfo"),
        ("/setdns", "dns"),
        ("/removedns", "dns"),
        ("/createvip", "vips"),
        ("/removevip", "vips"),
        ("/createeip", "eip"),
        ("/removeeip", "eip"),
        ("/synceip", "eips"),
        ("/createportforwarding", "rules"),
        ("/revokeportforwarding", "rules"),
        ("/syncportforwarding", "rules"),
        ("/appliancevm/refreshfirewall", "rules"),
        ("/lb/refresh", "lbs"),
        ("/lb/delete", "lbs"),
    ];
    for (path, field) in required {
        let missing = format!("{field}: missing");
        assert_eq!(err(path, "{}"), missing, "{path} {{}}");
        assert_eq!(
            err(path, &format!(r#"{{"{field}":null}}"#)),
            missing,
            "{path} null"
        );
        // Misspelled (case) and singular/plural slips are unknown keys: still missing.
        let upper = field.to_uppercase();
        assert_eq!(
            err(path, &format!(r#"{{"{upper}":[]}}"#)),
            missing,
            "{path} {upper}"
        );
        assert_eq!(
            err(path, ""),
            "malformed JSON body: the body is empty, not a JSON object",
            "{path} empty"
        );
        assert_eq!(
            err(path, r#""""#),
            "malformed JSON body: the body is a string, not a JSON object"
        );
    }
    assert_eq!(
        err("/synceip", &format!(r#"{{"EIPs":[{EIP}]}}"#)),
        "eips: missing"
    );
    assert_eq!(
        err("/synceip", &format!(r#"{{"eip":{EIP}}}"#)),
        "eips: missing"
    );
    assert_eq!(
        err("/adddhcp", r#"{"rebuild":true}"#),
        "dhcpEntries: missing"
    );
    // An explicit [] keeps its meaning.
    assert_eq!(cmd("/synceip", r#"{"eips":[]}"#), Command::SyncEips(vec![]));
    assert_eq!(
        cmd("/adddhcp", r#"{"dhcpEntries":[],"rebuild":true}"#),
        Command::AddDhcp {
            hosts: vec![],
            rebuild: true
        }
    );
    // These need no fields.
    assert_eq!(ep("/ping").parse(b"").unwrap(), Request::Ping);
    assert_eq!(
        ep("/appliancevm/init").parse(b"").unwrap(),
        Request::Change(Command::ApplianceInit)
    );
    assert_eq!(
        ep("/appliancevm/init").parse(b"{}").unwrap(),
        Request::Change(Command::ApplianceInit)
    );
}

#[test]
fn a_refused_sync_changes_nothing() {
    let mut s = DesiredState::default();
    s.apply(&cmd("/synceip", &format!(r#"{{"eips":[{EIP}]}}"#)))
        .unwrap();
    let before = s.clone();
    for body in ["", r#""""#, "{}", r#"{"eips":null}"#, r#"{"EIPs":[]}"#] {
        assert!(ep("/synceip").parse(body.as_bytes()).is_err(), "{body}");
    }
    assert_eq!(s, before);
    assert_eq!(s.eips.len(), 1);
}

fn vip_body(ip: &str, mask: &str) -> String {
    format!(
        r#"{{"vips":[{{"ip":"{ip}","netmask":"{mask}","gateway":"10.10.1.1","ownerEthernetMac":"fa:7e:4b:ad:11:01"}}]}}"#
    )
}

#[test]
fn addresses_are_checked_for_what_they_are_used_as() {
    let m24 = "255.255.255.0";
    for (ip, why) in [
        ("0.0.0.0", "the unspecified address"),
        ("127.0.0.2", "a loopback address"),
        ("224.0.0.5", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("240.0.0.1", "a reserved address (240.0.0.0/4)"),
        ("169.254.0.7", "a link-local address"),
    ] {
        for path in ["/createvip", "/removevip"] {
            assert_eq!(
                err(path, &vip_body(ip, m24)),
                format!(r#"vips[0].ip: "{ip}" is {why}"#)
            );
        }
    }
    assert_eq!(
        err("/createvip", &vip_body("10.10.1.0", m24)),
        r#"vips[0].ip: "10.10.1.0" is the network address of 10.10.1.0/24"#
    );
    assert_eq!(
        err("/createvip", &vip_body("10.10.1.255", m24)),
        r#"vips[0].ip: "10.10.1.255" is the broadcast address of 10.10.1.0/24"#
    );
    // A /31 and a /32 have no network or broadcast address.
    cmd("/createvip", &vip_body("10.10.1.0", "255.255.255.254"));
    cmd("/createvip", &vip_body("10.10.1.255", "255.255.255.255"));

    let eip = |vip: &str, mac: &str, guest: &str| {
        format!(r#"{{"eip":{{"vipIp":"{vip}","privateMac":"{mac}","guestIp":"{guest}"}}}}"#)
    };
    let mac = "fa:7e:4b:ad:11:02";
    assert_eq!(
        err("/createeip", &eip("127.0.0.1", mac, "172.20.0.15")),
        r#"eip.vipIp: "127.0.0.1" is a loopback address"#
    );
    assert_eq!(
        err("/createeip", &eip("10.10.1.55", mac, "0.0.0.0")),
        r#"eip.guestIp: "0.0.0.0" is the unspecified address"#
    );
    assert_eq!(
        err(
            "/createeip",
            &eip("10.10.1.55", "00:00:00:00:00:00", "172.20.0.15")
        ),
        r#"eip.privateMac: "00:00:00:00:00:00" is the all-zero MAC address"#
    );
    assert_eq!(
        err(
            "/createeip",
            &eip("10.10.1.55", "01:00:5e:00:00:05", "172.20.0.15")
        ),
        r#"eip.privateMac: "01:00:5e:00:00:05" is a multicast MAC address"#
    );
    let pf = r#"{"rules":[{"vipPortStart":80,"vipPortEnd":80,"privatePortStart":80,"privatePortEnd":80,"protocolType":"TCP","vipIp":"10.10.1.56","privateIp":"239.1.1.1","privateMac":"fa:7e:4b:ad:11:02"}]}"#;
    assert_eq!(
        err("/createportforwarding", pf),
        r#"rules[0].privateIp: "239.1.1.1" is a multicast address"#
    );

    let dhcp = |ip: &str, mac: &str, mask: &str, gw: &str| {
        format!(
            r#"{{"dhcpEntries":[{{"ip":"{ip}","mac":"{mac}","netmask":"{mask}","gateway":"{gw}","isDefaultL3Network":true}}]}}"#
        )
    };
    let guest = "fa:3c:91:5e:22:07";
    assert_eq!(
        err("/adddhcp", &dhcp("172.20.0.1", guest, m24, "172.20.0.1")),
        r#"dhcpEntries[0].ip: "172.20.0.1" is the gateway's (the router's) address"#
    );
    assert_eq!(
        err("/adddhcp", &dhcp("0.0.0.0", guest, m24, "172.20.0.1")),
        r#"dhcpEntries[0].ip: "0.0.0.0" is the unspecified address"#
    );
    assert_eq!(
        err(
            "/adddhcp",
            &dhcp("172.20.0.15", guest, "0.0.0.0", "172.20.0.1")
        ),
        r#"dhcpEntries[0].netmask: "0.0.0.0" is not a usable netmask for a host"#
    );
    assert_eq!(
        err("/adddhcp", &dhcp("172.20.0.255", guest, m24, "172.20.0.1")),
        r#"dhcpEntries[0].ip: "172.20.0.255" is the broadcast address of 172.20.0.0/24"#
    );
    assert_eq!(
        err(
            "/adddhcp",
            &dhcp("172.20.0.15", "ff:ff:ff:ff:ff:ff", m24, "172.20.0.1")
        ),
        r#"dhcpEntries[0].mac: "ff:ff:ff:ff:ff:ff" is a multicast MAC address"#
    );
    assert_eq!(
        err(
            "/adddhcp",
            &dhcp("172.20.0.15", "00:00:00:00:00:00", m24, "172.20.0.1")
        ),
        r#"dhcpEntries[0].mac: "00:00:00:00:00:00" is the all-zero MAC address"#
    );
    for (ip, why) in [
        ("127.0.0.1", "a loopback address"),
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.251", "a multicast address"),
    ] {
        assert_eq!(
            err(
                "/setdns",
                &format!(r#"{{"dns":[{{"dnsAddress":"{ip}"}}]}}"#)
            ),
            format!(r#"dns[0].dnsAddress: "{ip}" is {why}"#)
        );
        // Removing stays possible for whatever an older agent stored.
        cmd(
            "/removedns",
            &format!(r#"{{"dns":[{{"dnsAddress":"{ip}"}}]}}"#),
        );
    }
}

#[test]
fn dhcp_names_dnsmasq_would_misread_are_dropped_with_a_note() {
    let body = |name: &str| {
        format!(
            r#"{{"dhcpEntries":[{{"ip":"172.20.0.15","mac":"fa:3c:91:5e:22:07","netmask":"255.255.255.0","gateway":"172.20.0.1","hostname":"{name}","isDefaultL3Network":true}}]}}"#
        )
    };
    for (name, why) in [
        ("ignore", "a dnsmasq keyword"),
        ("IGNORE", "a dnsmasq keyword"),
        ("infinite", "a dnsmasq keyword"),
        ("172.20.0.99", "an IPv4 address to dnsmasq"),
        ("10.1", "an IPv4 address to dnsmasq"),
        ("12h", "a lease time to dnsmasq"),
        ("3600", "a lease time to dnsmasq"),
        ("fa-3c-91-5e-22-07", "a MAC address to dnsmasq"),
        (
            "-x",
            "a name dnsmasq refuses (a label starts with '-' or '_' or ends with '-')",
        ),
        (
            "_x.zstack.local",
            "a name dnsmasq refuses (a label starts with '-' or '_' or ends with '-')",
        ),
    ] {
        let (req, notes) = ep("/adddhcp").parse_noted(body(name).as_bytes()).unwrap();
        let Request::Change(Command::AddDhcp { hosts, .. }) = req else {
            panic!("{req:?}")
        };
        assert_eq!(hosts[0].hostname, None, "{name}");
        assert_eq!(hosts[0].ip.to_string(), "172.20.0.15");
        assert_eq!(
            notes,
            [format!(
                r#"dhcpEntries[0].hostname: "{name}" is {why}; not passed to dnsmasq as a name"#
            )]
        );
    }
    for name in ["web1.zstack.local", "ignore-me", "host-12h", "vm_1", "a1"] {
        let (req, notes) = ep("/adddhcp").parse_noted(body(name).as_bytes()).unwrap();
        let Request::Change(Command::AddDhcp { hosts, .. }) = req else {
            panic!("{req:?}")
        };
        assert_eq!(hosts[0].hostname.as_deref(), Some(name));
        assert!(notes.is_empty(), "{name}: {notes:?}");
    }
    // Comma and colon never get that far: refused as not a DNS name.
    assert_eq!(
        err("/adddhcp", &body("set:x")),
        r#"dhcpEntries[0].hostname: "set:x" is not a DNS name"#
    );
}

#[test]
fn refused_values_are_quoted_at_most_100_characters() {
    let huge = "x".repeat(1_000_000);
    let eip = |vip: &str| {
        format!(
            r#"{{"eip":{{"vipIp":"{vip}","privateMac":"fa:7e:4b:ad:11:02","guestIp":"172.20.0.15"}}}}"#
        )
    };
    // Longer than any real string: refused while parsing, before it is copied.
    assert_eq!(
        err("/createeip", &eip(&huge)),
        "eip.vipIp: a string of 1000000 bytes is too long (at most 65536)"
    );
    let long = "x".repeat(60_000);
    assert_eq!(
        err("/createeip", &eip(&long)),
        format!(
            r#"eip.vipIp: "{}"…(60000 bytes) is not an IPv4 address"#,
            "x".repeat(100)
        )
    );
    // A value of the wrong type is quoted by the parser: bounded too.
    let e = err("/init", &format!(r#"{{"uuid":["{huge}"]}}"#));
    assert!(e.starts_with("uuid: invalid type: sequence"), "{e}");
    let e = err(
        "/init",
        &format!(r#"{{"restartDnsmasqAfterNumberOfSIGUSER1":"{huge}"}}"#),
    );
    assert_eq!(
        e,
        format!(
            r#"restartDnsmasqAfterNumberOfSIGUSER1: invalid type: string "{}"…(1000000 bytes), expected i64"#,
            "x".repeat(100)
        )
    );
    // Multi-byte characters are cut on a character boundary.
    let wide = "é".repeat(300);
    let e = err(
        "/setdns",
        &format!(r#"{{"dns":[{{"dnsAddress":"{wide}"}}]}}"#),
    );
    assert_eq!(
        e,
        format!(
            r#"dns[0].dnsAddress: "{}"…(600 bytes) is not an IPv4 address"#,
            "é".repeat(100)
        )
    );
}

#[test]
fn lists_are_capped_while_parsing() {
    let mut body = String::from(r#"{"eips":["#);
    body.push_str(&"{},".repeat(200_000));
    body.push_str("{}]}");
    assert_eq!(err("/synceip", &body), "eips: more than 200000 entries");
    // Nested lists share one budget per request.
    let entry = format!(r#"{{"dns":[{}"x"]}},"#, r#""x","#.repeat(99_999));
    let body = format!(r#"{{"dhcpEntries":[{}{{}}]}}"#, entry.repeat(5));
    assert_eq!(
        err("/adddhcp", &body),
        "dhcpEntries[3].dns: the request holds more than 400000 list entries in all"
    );
    // Deep nesting in an ignored key is skipped without recursion; in a known one it is a
    // type error at the first level.
    let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(err("/synceip", &deep), "eips: missing");
    let deep = format!(
        r#"{{"eips":[{{"vipIp":{}{}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(
        err("/synceip", &deep),
        "eips[0].vipIp: invalid type: sequence, expected a string"
    );
}

fn facts() -> SystemFacts {
    let mut nic_addrs = BTreeMap::new();
    nic_addrs.insert(
        "fa:7e:4b:ad:11:00".parse().unwrap(),
        vec!["192.168.100.20/24".parse().unwrap()],
    );
    nic_addrs.insert(
        "fa:7e:4b:ad:11:01".parse().unwrap(),
        vec!["10.10.1.20/24".parse().unwrap()],
    );
    nic_addrs.insert(
        "fa:7e:4b:ad:11:02".parse().unwrap(),
        vec!["172.20.0.1/24".parse().unwrap()],
    );
    SystemFacts {
        mgmt_addrs: vec!["192.168.100.20/24".parse().unwrap()],
        mgmt_nodes: vec!["192.168.100.10".parse().unwrap()],
        protected_ports: vec![22, 7272, 7759],
        nic_addrs,
    }
}

fn check(path: &str, body: &str) -> Result<(), String> {
    DesiredState::default()
        .check_with(&cmd(path, body), &facts())
        .map_err(|e| e.to_string())
}

#[test]
fn rails_keep_the_agent_reachable() {
    let eip = |vip: &str, guest: &str| {
        format!(
            r#"{{"eip":{{"vipIp":"{vip}","privateMac":"fa:7e:4b:ad:11:02","guestIp":"{guest}"}}}}"#
        )
    };
    assert_eq!(
        check("/createeip", &eip("10.10.1.55", "172.20.0.15")),
        Ok(())
    );
    assert_eq!(
        check("/createeip", &eip("192.168.100.20", "172.20.0.15")),
        Err(r#"eip.vipIp: "192.168.100.20" is the management nic's address; the agent would be cut off"#.into())
    );
    // One L3 for public and management: another address of the management subnet is fine.
    assert_eq!(
        check("/createeip", &eip("192.168.100.55", "172.20.0.15")),
        Ok(())
    );
    assert_eq!(
        check("/createeip", &eip("10.10.1.55", "172.30.0.15")),
        Err(r#"eip.guestIp: "172.30.0.15" is not in the subnet of the nic fa:7e:4b:ad:11:02 (172.20.0.0/24)"#.into())
    );
    let sync = format!(
        r#"{{"eips":[{EIP},{{"vipIp":"10.10.1.56","privateMac":"fa:7e:4b:ad:11:00","guestIp":"192.168.100.10"}}]}}"#
    );
    assert_eq!(
        check("/synceip", &sync),
        Err(
            r#"eips[1].guestIp: "192.168.100.10" is the management node's address, not a guest's"#
                .into()
        )
    );
    let sync = format!(
        r#"{{"eips":[{EIP},{{"vipIp":"10.10.1.56","privateMac":"fa:7e:4b:ad:11:00","guestIp":"192.168.100.20"}}]}}"#
    );
    assert_eq!(
        check("/synceip", &sync),
        Err(
            r#"eips[1].guestIp: "192.168.100.20" is the management nic's address, not a guest's"#
                .into()
        )
    );
    let pf = |vip: &str, start: u16, end: u16, private: &str| {
        format!(
            r#"{{"rules":[{{"vipPortStart":{start},"vipPortEnd":{end},"privatePortStart":{start},"privatePortEnd":{end},"protocolType":"TCP","vipIp":"{vip}","privateIp":"{private}","privateMac":"fa:7e:4b:ad:11:02"}}]}}"#
        )
    };
    assert_eq!(
        check(
            "/createportforwarding",
            &pf("10.10.1.56", 7272, 7272, "172.20.0.15")
        ),
        Ok(())
    );
    assert_eq!(
        check(
            "/syncportforwarding",
            &pf("192.168.100.56", 22, 22, "172.20.0.15")
        ),
        Ok(())
    );
    assert_eq!(
        check("/createportforwarding", &pf("192.168.100.20", 7000, 8000, "172.20.0.15")),
        Err(r#"rules[0].vipIp: "192.168.100.20" is the management nic's address and the ports hold the agent's or ssh's port 7272, 7759; the agent would be cut off"#.into())
    );
    assert_eq!(
        check("/syncportforwarding", &pf("192.168.100.20", 8080, 8080, "172.20.0.15")),
        Err(r#"rules[0].vipIp: "192.168.100.20" is the management nic's address; the agent would be cut off"#.into())
    );
    assert_eq!(
        check("/createportforwarding", &pf("10.10.1.56", 80, 80, "10.10.1.7")),
        Err(r#"rules[0].privateIp: "10.10.1.7" is not in the subnet of the nic fa:7e:4b:ad:11:02 (172.20.0.0/24)"#.into())
    );
    let vip = r#"{"vips":[{"ip":"192.168.100.20","netmask":"255.255.255.0","ownerEthernetMac":"fa:7e:4b:ad:11:00"}]}"#;
    assert_eq!(
        check("/removevip", vip),
        Err(r#"vips[0].ip: "192.168.100.20" is the management nic's address; the agent would be cut off"#.into())
    );
    let dhcp = r#"{"dhcpEntries":[{"ip":"10.10.1.20","mac":"fa:3c:91:5e:22:07","netmask":"255.255.255.0","gateway":"10.10.1.1"}]}"#;
    assert_eq!(
        check("/adddhcp", dhcp),
        Err(r#"dhcpEntries[0].ip: "10.10.1.20" is the router's own address"#.into())
    );
    // Without facts (an unknown system) only the state's own checks apply.
    assert_eq!(
        DesiredState::default().check_with(
            &cmd("/createeip", &eip("192.168.100.20", "172.20.0.15")),
            &SystemFacts::default()
        ),
        Ok(())
    );
}
