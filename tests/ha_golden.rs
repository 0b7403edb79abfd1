//! Golden files of the HA renderers (no root needed): each `fixtures/ha/<case>.input.json`
//! holds `/enableVyosha` requests as the management node sends them; they go through the real
//! parser and state, and the rendered keepalived.conf and conntrackd.conf must equal
//! `<case>.keepalived.conf` and `<case>.conntrackd.conf`; keepalived must accept its file
//! (`keepalived --config-test`). Rewrite with `UPDATE_GOLDEN=1 cargo test --test ha_golden`.

mod common;

use common::golden::{compare, state_from_requests};
use common::netns::{Netns, veth};
use std::path::PathBuf;
use vr_agent::ha::render::{self, Inputs, Paths};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ha")
}

/// (case, keepalived.conf, conntrackd.conf) with the files under /run/vr-agent/keepalived.
fn cases() -> Vec<(String, String, String)> {
    cases_in("/run/vr-agent/keepalived")
}

fn cases_in(dir: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (case, input) in common::golden::input_cases(&fixtures()) {
        let json = common::golden::read_json(&input);
        let state = state_from_requests(&json["requests"]);
        let ha = state.ha.as_ref().expect("the case configures HA");
        let inputs = Inputs {
            heartbeat_if: json["heartbeat_if"].as_str().unwrap().to_string(),
            ping: "/usr/bin/ping".into(),
        };
        let paths = Paths::new(dir.into());
        out.push((
            case,
            render::keepalived(ha, &inputs, &paths),
            render::conntrackd(ha, &inputs, &paths),
        ));
    }
    out.sort();
    assert!(out.len() >= 2, "only {} cases", out.len());
    out
}

#[test]
fn renderings_match_golden_files() {
    let mut diffs = Vec::new();
    for (case, k, c) in cases() {
        diffs.extend(compare(
            &fixtures().join(format!("{case}.keepalived.conf")),
            &k,
        ));
        diffs.extend(compare(
            &fixtures().join(format!("{case}.conntrackd.conf")),
            &c,
        ));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn a_vip_change_leaves_keepalived_conf_as_it_is() {
    // Reconfiguring the addresses only the master carries must not reload keepalived.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pair.input.json")).unwrap())
            .unwrap();
    let mut requests = json["requests"].clone();
    let state = state_from_requests(&requests);
    requests[0][1]["vips"][0]["nicVip"] = "10.10.1.9".into();
    let changed = state_from_requests(&requests);
    assert_ne!(state.ha, changed.ha);
    let inputs = Inputs {
        heartbeat_if: "eth3".into(),
        ping: "/usr/bin/ping".into(),
    };
    let paths = Paths::new("/run/x".into());
    assert_eq!(
        render::keepalived(state.ha.as_ref().unwrap(), &inputs, &paths),
        render::keepalived(changed.ha.as_ref().unwrap(), &inputs, &paths)
    );
}

#[test]
fn keepalived_accepts_every_golden_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(dir.path().to_path_buf());
    std::fs::write(
        paths.alive_script(),
        render::alive_script(std::process::id()),
    )
    .unwrap();
    std::fs::set_permissions(
        paths.alive_script(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // keepalived checks that the heartbeat nic exists: a namespace with every case's nic
    let ns = Netns::new("vrhag");
    veth(
        &ns,
        "eth0",
        "fa:7e:4b:ad:22:00",
        &ns,
        "peer0",
        "fa:7e:4b:00:22:00",
    );
    veth(
        &ns,
        "eth3",
        "fa:7e:4b:ad:22:03",
        &ns,
        "peer3",
        "fa:7e:4b:00:22:03",
    );
    for (case, k, _) in cases_in(dir.path().to_str().unwrap()) {
        let path = dir.path().join(format!("{case}.conf"));
        std::fs::write(&path, &k).unwrap();
        let out = ns.exec(&[
            "keepalived",
            "--config-test",
            "--use-file",
            path.to_str().unwrap(),
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // keepalived's config test fails on warnings too; the one expected is about the
        // instance having no address of its own (the agent adds the HA addresses itself).
        let unexpected: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("No VIP specified"))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{case}: keepalived refused it ({}): {text}",
            out.status
        );
    }
}
