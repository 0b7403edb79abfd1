//! Golden files of the haproxy renderer (no root needed): each `fixtures/lb/<case>.input.json`
//! holds requests as the management node sends them; they go through the real parser and state
//! transitions, and the rendered haproxy.cfg must equal `<case>.golden` and be accepted by
//! `haproxy -c`. Rewrite the goldens with `UPDATE_GOLDEN=1 cargo test --test lb_golden`.

mod common;

use common::golden::{compare, state_from_requests};
use std::path::PathBuf;
use vr_agent::lb::render::{Paths, render};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/lb")
}

fn cases() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (case, input) in common::golden::input_cases(&fixtures()) {
        let json = common::golden::read_json(&input);
        let state = state_from_requests(&json["requests"]);
        let text = render(
            &Paths::new("/run/vr-agent/haproxy"),
            1 << 20,
            state.lb_listeners.values(),
        );
        out.push((case, text));
    }
    out.sort();
    out
}

#[test]
fn renderings_match_golden_files() {
    let cases = cases();
    assert!(
        cases.len() >= 2,
        "expected golden cases in {}",
        fixtures().display()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(case, text)| compare(&fixtures().join(format!("{case}.golden")), text))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn haproxy_accepts_every_golden() {
    let dir = tempfile::tempdir().unwrap();
    for (case, text) in cases() {
        let path = dir.path().join(format!("{case}.cfg"));
        std::fs::write(&path, &text).unwrap();
        let out = std::process::Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy is installed (scripts/deps.sh)");
        assert!(
            out.status.success(),
            "{case}: haproxy -c refused it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn listeners_without_backends_are_not_served_and_http_carries_the_client() {
    let (_, mixed) = cases().into_iter().find(|(c, _)| c == "mixed").unwrap();
    assert!(!mixed.contains("frontend l:lb-a:empty"));
    let web = mixed.split("frontend l:lb-a:web").nth(1).unwrap();
    assert!(web.contains("option forwardfor"));
    assert!(web.contains(
        "server s-172.20.0.15 172.20.0.15:8080 weight 20 check port 8081 inter 2s fall 3 rise 1"
    ));
    assert!(web.contains("timeout check 1s"));
    let db = mixed.split("frontend l:lb-a:db").nth(1).unwrap();
    assert!(!db.split("frontend").next().unwrap().contains("forwardfor"));
}
