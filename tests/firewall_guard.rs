//! The agent installs its drop-policy firewall only when a nic is known to be the management
//! nic (cached bootstrap info, or a nic of the `--mgmt-nic` name); otherwise it says why in
//! `/ping` and in its log, and its filter chains accept. Real kernel, real nft, in namespaces.

mod common;

use common::agent::{AgentProc, binary, raw_ping};
use common::netns::Netns;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn ping(agent: &AgentProc) -> Value {
    serde_json::from_str(&raw_ping(agent.vr).expect("ping answered")).expect("ping json")
}

fn input_chain(ns: &Netns) -> String {
    ns.exec_ok(&["nft", "list", "chain", "inet", "vr_filter", "input"])
}

fn forward_chain(ns: &Netns) -> String {
    ns.exec_ok(&["nft", "list", "chain", "inet", "vr_filter", "forward"])
}

#[test]
fn no_management_nic_no_drop_policy_until_one_appears() {
    let ns = Netns::new("vrfg");
    // a machine whose nics are not named eth0 (a developer's laptop)
    ns.ip(&[
        "link",
        "add",
        "ens3",
        "address",
        "fa:7e:4b:ad:21:00",
        "type",
        "veth",
        "peer",
        "name",
        "ens3p",
    ]);
    ns.ip(&["link", "set", "ens3", "up"]);
    ns.ip(&["link", "set", "ens3p", "up"]);
    ns.enter(|| {
        let agent = AgentProc::start(&["--mgmt-nic=eth0", "--verify-secs=1"]);
        let p = ping(&agent);
        assert_eq!(p["healthy"], json!(false), "{p}");
        let detail = p["healthDetail"].as_str().expect("detail");
        let state_dir = agent.dir.join("state");
        assert!(
            detail.contains(&format!(
                "firewall: no management nic known: no bootstrap info at {}/bootstrap-info.json \
                 and no nic named \"eth0\" (--mgmt-nic)",
                state_dir.display()
            )),
            "{detail}"
        );
        assert!(
            agent.log().contains("firewall without drop policies"),
            "{}",
            agent.log()
        );
        // the table is ours and complete, but nothing in it drops
        let input = input_chain(&ns);
        assert!(input.contains("policy accept;"), "{input}");
        assert!(!input.contains("drop"), "{input}");
        let forward = forward_chain(&ns);
        assert!(forward.contains("policy accept;"), "{forward}");
        assert!(!forward.contains("drop"), "{forward}");

        // the management nic appears: the next verify installs the drop policies
        ns.ip(&["link", "set", "ens3", "down"]);
        ns.ip(&["link", "set", "ens3", "name", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !input_chain(&ns).contains("policy drop;") {
            assert!(Instant::now() < deadline, "{}", agent.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let input = input_chain(&ns);
        // ssh (the agent's ports are ephemeral here) only on the management nic
        assert!(
            input.contains("iifname \"eth0\" tcp dport 22 accept"),
            "{input}"
        );
        assert!(input.contains("tcp dport 22 drop"), "{input}");
        assert!(forward_chain(&ns).contains("policy drop;"));
        let p = ping(&agent);
        assert_eq!(p["healthy"], json!(true), "{p}");
        assert_eq!(p["healthDetail"], json!(""), "{p}");
    });
}

#[test]
fn bootstrap_info_names_the_management_nic() {
    let ns = Netns::new("vrfg");
    ns.ip(&[
        "link",
        "add",
        "ens4",
        "address",
        "fa:7e:4b:ad:22:00",
        "type",
        "veth",
        "peer",
        "name",
        "ens4p",
    ]);
    ns.ip(&["link", "set", "ens4p", "up"]);
    let tmp = tempfile::Builder::new()
        .prefix("vr-fg-")
        .tempdir()
        .expect("tempdir");
    let dir = tmp.path();
    let info = dir.join("info.json");
    std::fs::write(
        &info,
        json!({"managementNic": {"ip": "192.168.77.2", "netmask": "255.255.255.0",
            "gateway": "192.168.77.1", "mac": "fa:7e:4b:ad:22:00", "deviceName": "mgmt0",
            "isDefaultRoute": false}})
        .to_string(),
    )
    .expect("write info");
    let out = ns.exec(&[
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns.enter(|| {
        // --mgmt-nic stays eth0, which this namespace lacks: the bootstrap info is what is known
        let agent = AgentProc::start_in(dir, &["--mgmt-nic=eth0"]);
        let input = input_chain(&ns);
        assert!(input.contains("policy drop;"), "{input}");
        let p = ping(&agent);
        assert!(
            !p["healthDetail"]
                .as_str()
                .unwrap_or_default()
                .contains("firewall"),
            "{p}"
        );
        // Managed nics are verified without end: setting promote_secondaries is announced
        // with port id 0, and setting it again at each verify read as drift, forever (it
        // looped every 150 ms). Now the drift events stop. A change of another nic by
        // hand starts a verify of the interfaces.
        ns.ip(&["link", "set", "ens4p", "mtu", "1400"]);
        std::thread::sleep(Duration::from_secs(1));
        let first = drift_events(&agent);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(drift_events(&agent), first, "{}", agent.log());
    });
}

/// `vr_agent_drift_events_total` from a scrape.
fn drift_events(agent: &AgentProc) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(agent.vr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.lines()
        .find_map(|l| l.strip_prefix("vr_agent_drift_events_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drift events in:\n{text}"))
}
