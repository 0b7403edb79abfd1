//! Every request body in fixtures/requests/ (spelled as the management node sends it) parses
//! and validates on its path. Needs no root.

use std::path::PathBuf;
use vr_agent::protocol::{Kind, Request, route, routes};

#[test]
fn every_request_fixture_is_accepted_on_its_path() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/requests");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let route_path = match name.as_str() {
            "adddhcp-nondefault" => "/adddhcp".to_string(),
            "lb-refresh" | "lb-refresh-later" => "/lb/refresh".to_string(),
            "lb-delete" => "/lb/delete".to_string(),
            "appliancevm-init" => "/appliancevm/init".to_string(),
            "refreshfirewall" => "/appliancevm/refreshfirewall".to_string(),
            other => format!("/{other}"),
        };
        let found = route(&route_path).unwrap_or_else(|| panic!("no route {route_path}"));
        let body = std::fs::read(&path).unwrap();
        let parsed = found
            .parse(&body)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if name == "ping" {
            assert_eq!(parsed, Request::Ping);
        } else if name == "syncVpcRouterHa" {
            assert_eq!(parsed, Request::HaStatus);
        } else if name == "restartKeepalived" {
            assert_eq!(parsed, Request::RestartKeepalived);
        } else {
            assert!(matches!(parsed, Request::Change(_)), "{name}");
        }
        n += 1;
    }
    assert!(n >= 20, "only {n} fixtures");
}

#[test]
fn every_routed_path_has_a_fixture_or_is_echo() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/requests");
    for path in routes().filter(|r| r.kind != Kind::Echo).map(|r| r.path) {
        let name = path
            .trim_start_matches('/')
            .replace("appliancevm/refreshfirewall", "refreshfirewall")
            .replace('/', "-");
        assert!(
            dir.join(format!("{name}.json")).exists(),
            "no fixture for {path}"
        );
    }
}
