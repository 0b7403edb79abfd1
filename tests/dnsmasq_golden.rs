//! Golden files of the dnsmasq renderer (no root needed). Each `fixtures/dnsmasq/<case>.input.json`
//! holds the router's interfaces and requests as the management node sends them; the requests
//! go through the real protocol parser and state transitions, and every rendered file must equal
//! `<case>.golden`. Rewrite the goldens with `UPDATE_GOLDEN=1 cargo test --test dnsmasq_golden`.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use vr_agent::dnsmasq::render::{self, Iface, Paths};
use vr_agent::protocol::{Request, route};
use vr_agent::state::DesiredState;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/dnsmasq")
}

fn load(path: &Path) -> (Vec<Iface>, DesiredState) {
    let input: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ifaces = input["ifaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Iface {
            name: i["name"].as_str().unwrap().to_string(),
            mac: i["mac"].as_str().map(|m| m.parse().unwrap()),
            addrs: i["addrs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().parse().unwrap())
                .collect(),
        })
        .collect();
    let mut state = DesiredState::default();
    for req in input["requests"].as_array().unwrap() {
        let path = req[0].as_str().unwrap();
        let body = serde_json::to_vec(&req[1]).unwrap();
        let Request::Change(cmd) = route(path).unwrap().parse(&body).unwrap() else {
            panic!("{path} is not a change");
        };
        state.apply(&cmd).unwrap();
    }
    (ifaces, state)
}

fn show(r: &render::Rendered) -> String {
    let mut out = String::new();
    for (name, text) in [
        ("dnsmasq.conf", &r.conf),
        ("hosts.dhcp", &r.hosts),
        ("hosts.option", &r.opts),
        ("hosts.dns", &r.addn_hosts),
        ("resolv.conf", &r.resolv),
    ] {
        out.push_str(&format!("==> {name} <==\n{text}"));
    }
    let unplaced: Vec<String> = r.unplaced.iter().map(|m| m.to_string()).collect();
    out.push_str(&format!("==> unplaced <==\n{}\n", unplaced.join("\n")));
    out
}

#[test]
fn renderings_match_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let paths = Paths::new("/run/vr-agent/dnsmasq");
    let mut cases = 0;
    let mut failures = Vec::new();
    for (case, input) in common::golden::input_cases(&fixtures()) {
        cases += 1;
        let (ifaces, state) = load(&input);
        let text = show(&render::render(&paths, &state, &ifaces));
        let golden = fixtures().join(format!("{case}.golden"));
        if update {
            std::fs::write(&golden, &text).unwrap();
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(text.as_str()) {
            failures.push(format!(
                "{case}: rendering differs from {}:\n{text}",
                golden.display()
            ));
        }
    }
    assert!(
        cases >= 3,
        "expected the golden cases in {}",
        fixtures().display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dnsmasq_never_serves_management_or_public_nics() {
    let (ifaces, state) = load(&fixtures().join("networks.input.json"));
    let r = render::render(&Paths::new("/x"), &state, &ifaces);
    let listen: Vec<&str> = r
        .conf
        .lines()
        .filter_map(|l| l.strip_prefix("interface="))
        .collect();
    assert_eq!(listen, ["eth2", "eth3"]);
    assert!(r.conf.contains("except-interface=lo\n"));
    assert!(!r.conf.contains("192.168.100.") && !r.conf.contains("10.10.1."));
}

#[test]
fn a_hosts_incremental_files_are_its_part_of_the_full_rendering() {
    let (ifaces, state) = load(&fixtures().join("networks.input.json"));
    let r = render::render(&Paths::new("/x"), &state, &ifaces);
    for host in state.dhcp_hosts.values() {
        let (tag, body) = render::profile(host);
        let subnet = render::subnet_of(host);
        let own = r.subnet_profiles.get(&subnet) != Some(&tag);
        let line = render::host_line(host, own.then_some(tag.as_str()));
        assert!(r.hosts.contains(&line), "{host:?}");
        let opts = if own {
            render::own_profile_lines(&tag, &body)
        } else {
            render::subnet_profile_lines(subnet, &body)
        };
        assert!(r.opts.contains(&opts), "{host:?}");
        assert_eq!(own, r.tagged.contains(&host.mac));
        if let Some(line) = render::dns_line(host) {
            assert!(r.addn_hosts.contains(&line));
        }
    }
    // Shared options are written once per subnet; only the one host that differs from its
    // subnet (MTU, DNS list) sets tags: 172.20.0.0/24 has 3 hosts, 2 alike.
    assert_eq!(r.opts.matches("option:netmask,255.255.255.0").count(), 3);
    assert_eq!(r.tagged.len(), 1);
    assert_eq!(r.profiles.len(), 1);
}

#[test]
fn memoized_rendering_equals_a_fresh_one() {
    let (ifaces, mut state) = load(&fixtures().join("networks.input.json"));
    let paths = Paths::new("/x");
    let mut memo = render::LineMemo::default();
    assert_eq!(
        render::render_with(&paths, &state, &ifaces, &mut memo),
        render::render(&paths, &state, &ifaces)
    );
    // One host removed, one changed, one added: the memo must not leak old lines.
    let macs: Vec<_> = state.dhcp_hosts.keys().copied().collect();
    state.dhcp_hosts.remove(&macs[0]);
    assert!(state.dhcp_hosts.remove(&macs[1]).is_some());
    let db1: vr_agent::state::types::MacAddr = "fa:3c:91:5e:22:09".parse().unwrap();
    let changed = state.dhcp_hosts.get_mut(&db1).unwrap();
    changed.mtu = Some(9000);
    changed.hostname = Some("renamed.zstack.local".into());
    let mut added = changed.clone();
    added.mac = "fa:3c:91:5e:22:ff".parse().unwrap();
    added.ip = "172.20.0.200".parse().unwrap();
    state.dhcp_hosts.insert(added.mac, added);
    let warm = render::render_with(&paths, &state, &ifaces, &mut memo);
    assert_eq!(warm, render::render(&paths, &state, &ifaces));
    assert!(warm.hosts.contains("renamed.zstack.local"));
}
