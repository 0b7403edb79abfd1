//! `/lb/refresh` and `/lb/delete` bodies of both management node generations parse into typed
//! listeners; every bad value is refused naming the listener and the field. Needs no root.

use std::path::PathBuf;
use vr_agent::protocol::{Request, Route, route};
use vr_agent::state::Command;
use vr_agent::state::lb::{
    Algorithm, BackendServer, HealthTarget, LbDelete, LbListener, ListenerConfig, Mode,
};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/requests")
            .join(name),
    )
    .unwrap()
}

fn lb(path: &str) -> &'static Route {
    route(path).unwrap_or_else(|| panic!("no route {path}"))
}

fn refresh(body: &[u8]) -> Vec<LbListener> {
    match lb("/lb/refresh").parse(body).unwrap() {
        Request::Change(Command::RefreshLb(lbs)) => lbs,
        other => panic!("{other:?}"),
    }
}

fn refused(body: &str) -> String {
    lb("/lb/refresh")
        .parse(body.as_bytes())
        .unwrap_err()
        .to_string()
}

#[test]
fn the_1_0_shape_parses() {
    let lbs = refresh(&fixture("lb-refresh.json"));
    assert_eq!(
        lbs,
        vec![LbListener {
            lb_uuid: "0c9e6a0b5b7e4f2a8d1c3b5a7e9f1d2c".into(),
            listener_uuid: "4e5f6a7b8c9d4e0f1a2b3c4d5e6f7a8b".into(),
            vip: "10.10.1.57".parse().unwrap(),
            load_balancer_port: 80,
            instance_port: 80,
            mode: Mode::Tcp,
            backends: vec![
                BackendServer {
                    ip: "172.20.0.15".parse().unwrap(),
                    weight: 100
                },
                BackendServer {
                    ip: "172.20.0.16".parse().unwrap(),
                    weight: 100
                },
            ],
            config: ListenerConfig {
                max_connections: 2000,
                ..ListenerConfig::default()
            },
        }]
    );
}

#[test]
fn the_later_shape_parses_and_ignores_what_is_not_implemented() {
    let lbs = refresh(&fixture("lb-refresh-later.json"));
    let l = &lbs[0];
    assert_eq!(l.mode, Mode::Http);
    assert_eq!((l.load_balancer_port, l.instance_port), (80, 8080));
    assert_eq!(
        l.backends,
        vec![
            BackendServer {
                ip: "172.20.0.15".parse().unwrap(),
                weight: 30
            },
            BackendServer {
                ip: "172.20.0.16".parse().unwrap(),
                weight: 70
            },
        ]
    );
    assert_eq!(l.config.algorithm, Algorithm::WeightRoundRobin);
    assert_eq!(
        l.config.health_target,
        HealthTarget::Http {
            port: None,
            method: "GET".into(),
            uri: "/healthz".into()
        }
    );
}

#[test]
fn delete_names_listeners_and_ignores_the_rest() {
    let r = lb("/lb/delete")
        .parse(br#"{"lbs":[{"lbUuid":"a1","listenerUuid":"b2","parameters":["healthCheckInterval::x"]},{"lbUuid":"a2"}]}"#)
        .unwrap();
    assert_eq!(
        r,
        Request::Change(Command::DeleteLb(vec![
            LbDelete {
                lb_uuid: "a1".into(),
                listener_uuid: Some("b2".into())
            },
            LbDelete {
                lb_uuid: "a2".into(),
                listener_uuid: None
            },
        ]))
    );
    assert_eq!(
        lb("/lb/delete")
            .parse(br#"{"lbs":[{"listenerUuid":"b2"}]}"#)
            .unwrap_err()
            .to_string(),
        "lbs[0].lbUuid: missing"
    );
}

#[test]
fn bad_values_name_the_listener_and_the_field() {
    let body = String::from_utf8(fixture("lb-refresh.json")).unwrap();
    let with = |from: &str, to: &str| {
        assert!(body.contains(from), "{from}");
        refused(&body.replace(from, to))
    };
    assert_eq!(
        with("healthCheckInterval::5", "healthCheckInterval::five"),
        r#"lbs[0].parameters[2]: listener 4e5f6a7b8c9d4e0f1a2b3c4d5e6f7a8b: healthCheckInterval "five" is not a number"#
    );
    assert_eq!(
        with("\"mode\":\"tcp\"", "\"mode\":\"udp\""),
        r#"lbs[0].mode: listener 4e5f6a7b8c9d4e0f1a2b3c4d5e6f7a8b: "udp" is not tcp or http"#
    );
    assert_eq!(
        with("\"instancePort\":80", "\"instancePort\":70000"),
        "lbs[0].instancePort: 70000 is not a port (0-65535)"
    );
    assert_eq!(
        with("\"listenerUuid\":\"4e5f", "\"listenerUuid\":\"4e 5f"),
        r#"lbs[0].listenerUuid: "4e 5f6a7b8c9d4e0f1a2b3c4d5e6f7a8b" is not an identifier"#
    );
    assert_eq!(
        with("172.20.0.16", "172.20.0.256"),
        r#"lbs[0].nicIps[1]: "172.20.0.256" is not an IPv4 address"#
    );
    assert!(with("maxConnection::2000", "maxConnection::0").contains("out of range"));
    assert!(with("roundrobin", "roundrobin\\nglobal").contains("control character"));
    assert!(with("roundrobin", "fastest").contains("balancerAlgorithm \"fastest\""));
}
