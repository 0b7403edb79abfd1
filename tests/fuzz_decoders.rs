//! Property test of every request decoder: the real management-node bodies of
//! fixtures/requests, mutated (fields dropped, nulled, retyped, replaced by hostile values,
//! truncated) and sent to their own path or another one, plus random bytes. For each: no panic;
//! a refusal names a field (or says the JSON is malformed); a command refused by the decoder,
//! the state's checks or the rails leaves the desired state as it was. Pure: no root.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::OnceLock;
use vr_agent::protocol::{Kind, Request, RequestError, Route, route, routes};
use vr_agent::state::DesiredState;
use vr_agent::state::facts::SystemFacts;

/// Mutated fixture bodies tried.
const MUTATED_CASES: u32 = 20_000;
/// Random byte strings tried.
const RAW_CASES: u32 = 5_000;

struct Fixture {
    endpoint: &'static Route,
    body: Value,
}

fn fixtures() -> &'static [Fixture] {
    static F: OnceLock<Vec<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/requests");
        let mut out: Vec<Fixture> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|path| {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                let route_path = match name.as_str() {
                    "adddhcp-nondefault" => "/adddhcp".to_string(),
                    "lb-refresh" | "lb-refresh-later" => "/lb/refresh".to_string(),
                    "lb-delete" => "/lb/delete".to_string(),
                    "appliancevm-init" => "/appliancevm/init".to_string(),
                    "refreshfirewall" => "/appliancevm/refreshfirewall".to_string(),
                    other => format!("/{other}"),
                };
                Fixture {
                    endpoint: route(&route_path).unwrap(),
                    body: serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap(),
                }
            })
            .collect();
        out.sort_by_key(|f| f.endpoint.path);
        out
    })
}

/// Every path except the sync-only echo.
fn endpoints() -> Vec<&'static Route> {
    routes().filter(|r| r.kind != Kind::Echo).collect()
}

/// A state holding every fixture's command, so refusals have something to leave alone.
fn populated() -> DesiredState {
    let mut s = DesiredState::default();
    for f in fixtures() {
        if let Ok(Request::Change(cmd)) = f.endpoint.parse(f.body.to_string().as_bytes()) {
            let _ = s.apply(&cmd);
        }
    }
    s
}

fn facts() -> SystemFacts {
    SystemFacts {
        mgmt_addrs: vec!["192.168.100.20/24".parse().unwrap()],
        mgmt_nodes: vec!["192.168.100.10".parse().unwrap()],
        protected_ports: vec![22, 7272, 7759],
        nic_addrs: [
            ("fa:7e:4b:ad:11:00", "192.168.100.20/24"),
            ("fa:7e:4b:ad:11:01", "10.10.1.20/24"),
            ("fa:7e:4b:ad:11:02", "172.20.0.1/24"),
        ]
        .into_iter()
        .map(|(m, c)| (m.parse().unwrap(), vec![c.parse().unwrap()]))
        .collect(),
    }
}

fn hostile() -> Vec<Value> {
    vec![
        json!(null),
        json!(""),
        json!(" "),
        json!("ignore"),
        json!("172.20.0.99"),
        json!("12h"),
        json!("-x"),
        json!("set:x"),
        json!("a,b"),
        json!("\n"),
        json!("\u{0}"),
        json!("é"),
        json!("x".repeat(300)),
        json!("0.0.0.0"),
        json!("127.0.0.1"),
        json!("224.0.0.5"),
        json!("255.255.255.255"),
        json!("240.0.0.1"),
        json!("169.254.1.1"),
        json!("192.168.100.20"),
        json!("192.168.100.10"),
        json!("172.20.0.1"),
        json!("172.20.0.0"),
        json!("10.10.1.255"),
        json!("0.0.0.0/0"),
        json!("255.0.255.0"),
        json!("fa:7e:4b:ad:11:00"),
        json!("00:00:00:00:00:00"),
        json!("ff:ff:ff:ff:ff:ff"),
        json!("01:00:5e:00:00:05"),
        json!("TCP"),
        json!("all"),
        json!(-1),
        json!(0),
        json!(22),
        json!(7272),
        json!(65535),
        json!(70000),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1.5),
        json!(true),
        json!([]),
        json!([null]),
        json!({}),
        json!([{}]),
    ]
}

/// Paths to every value inside `v` (object keys and array indices), the root excluded.
fn paths(v: &Value, at: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(PathStep::Key(k.clone()));
                out.push(at.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(PathStep::Index(i));
                out.push(at.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug)]
enum Mutation {
    Drop,
    Replace(usize),
    Rename,
    Duplicate,
}

/// Applies `m` at the `pick`-th path of `v` (modulo their number).
fn mutate(v: &mut Value, pick: usize, m: &Mutation) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return;
    }
    let path = &all[pick % all.len()];
    let (last, parent_path) = path.split_last().unwrap();
    let mut parent = &mut *v;
    for step in parent_path {
        parent = match step {
            PathStep::Key(k) => parent.get_mut(k.as_str()).unwrap(),
            PathStep::Index(i) => parent.get_mut(*i).unwrap(),
        };
    }
    let hostile = hostile();
    match (parent, last) {
        (Value::Object(map), PathStep::Key(k)) => match m {
            Mutation::Drop => {
                map.remove(k);
            }
            Mutation::Replace(h) => {
                map.insert(k.clone(), hostile[h % hostile.len()].clone());
            }
            Mutation::Rename => {
                if let Some(val) = map.remove(k) {
                    map.insert(k.to_uppercase(), val);
                }
            }
            Mutation::Duplicate => {
                if let Some(val) = map.get(k).cloned() {
                    map.insert(format!("{k}s"), val);
                }
            }
        },
        (Value::Array(list), PathStep::Index(i)) => match m {
            Mutation::Drop => {
                list.remove(*i);
            }
            Mutation::Replace(h) => list[*i] = hostile[h % hostile.len()].clone(),
            Mutation::Rename | Mutation::Duplicate => {
                let val = list[*i].clone();
                list.push(val);
            }
        },
        _ => {}
    }
}

fn mutation() -> impl Strategy<Value = (usize, Mutation)> {
    (
        any::<usize>(),
        prop_oneof![
            Just(Mutation::Drop),
            any::<usize>().prop_map(Mutation::Replace),
            Just(Mutation::Rename),
            Just(Mutation::Duplicate),
        ],
    )
}

/// Parses `body` on `endpoint`, applies what is accepted to a copy of `state` as the writer
/// does (checks and rails first), and checks the properties. Returns true if accepted.
fn exercise(endpoint: &Route, body: &[u8], state: &DesiredState, facts: &SystemFacts) -> bool {
    match endpoint.parse_noted(body) {
        Err(RequestError::Malformed(m)) => {
            assert!(!m.is_empty());
            assert!(m.len() < 1000, "{m}");
            false
        }
        Err(e @ (RequestError::WrongType { .. } | RequestError::Invalid(_))) => {
            let field = match &e {
                RequestError::WrongType { field, .. } => field.clone(),
                RequestError::Invalid(i) => i.field.clone(),
                RequestError::Malformed(_) => unreachable!(),
            };
            assert!(
                !field.is_empty() && field != ".",
                "{}: a refusal without a field: {e}; body {}",
                endpoint.path,
                String::from_utf8_lossy(body)
            );
            assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
            assert!(e.to_string().len() < 1000, "{e}");
            false
        }
        Ok((Request::Ping | Request::HaStatus | Request::RestartKeepalived, _)) => true,
        Ok((Request::Change(cmd), notes)) => {
            for n in &notes {
                assert!(n.starts_with("dhcpEntries["), "{n}");
            }
            let mut next = state.clone();
            let refused = match next.check_with(&cmd, facts) {
                Err(e) => Some(e),
                Ok(()) => next.apply(&cmd).err(),
            };
            if let Some(e) = refused {
                assert!(!e.field.is_empty(), "{e}");
                assert_eq!(
                    &next, state,
                    "{} refused ({e}) but changed the state",
                    endpoint.path
                );
                false
            } else {
                true
            }
        }
    }
}

#[test]
fn every_decoder_survives_mutated_management_node_bodies() {
    let fixtures = fixtures();
    let endpoints = endpoints();
    let state = populated();
    assert!(!state.eips.is_empty() && !state.dhcp_hosts.is_empty());
    let facts = facts();
    let mut runner = TestRunner::new(Config {
        cases: MUTATED_CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..fixtures.len(),
        proptest::collection::vec(mutation(), 1..4),
        prop_oneof![4 => Just(None), 1 => (0..endpoints.len()).prop_map(Some)],
        prop_oneof![6 => Just(None), 1 => any::<usize>().prop_map(Some)],
    );
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |(f, mutations, other, cut)| {
            let fixture = &fixtures[f];
            let mut body = fixture.body.clone();
            for (pick, m) in &mutations {
                mutate(&mut body, *pick, m);
            }
            let mut bytes = body.to_string().into_bytes();
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            let endpoint = other.map_or(fixture.endpoint, |i| endpoints[i]);
            if exercise(endpoint, &bytes, &state, &facts) {
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // The mutations leave many bodies valid: both sides of every property are exercised.
    let accepted = accepted.get();
    assert!(accepted > MUTATED_CASES / 20, "only {accepted} accepted");
    eprintln!("{MUTATED_CASES} mutated bodies, {accepted} accepted");
}

#[test]
fn every_decoder_survives_random_bytes() {
    let endpoints = endpoints();
    let state = populated();
    let facts = facts();
    let mut runner = TestRunner::new(Config {
        cases: RAW_CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..endpoints.len(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "\\{[\"a-zA-Z:,\\[\\]{}0-9. ]{0,100}".prop_map(String::into_bytes),
        ],
    );
    runner
        .run(&strategy, |(e, bytes)| {
            exercise(endpoints[e], &bytes, &state, &facts);
            Ok(())
        })
        .unwrap();
}
