//! Golden renderings of the NAT backend: whole tables for representative states and the small
//! transactions of single-entry commands (`fixtures/nat/`). The first test needs no root; run
//! with `UPDATE_GOLDEN=1` to rewrite the files. The second loads every rendering into a real
//! nft inside a namespace and checks that each plan, applied to the rendering of the state
//! before, gives exactly the rendering of the state after.

mod common;

use common::netns::Netns;
use serde_json::Value;
use std::path::{Path, PathBuf};
use vr_agent::nat::inputs::Inputs;
use vr_agent::nat::netlink::{self, Nfnl};
use vr_agent::nat::plan;
use vr_agent::nat::sets;
use vr_agent::state::{Command, DesiredState};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/nat")
}

fn inputs() -> Inputs {
    let text = std::fs::read_to_string(dir().join("inputs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn state_of(case: &str) -> DesiredState {
    let text = std::fs::read_to_string(dir().join(format!("{case}.json"))).unwrap();
    let cmds: Vec<Command> = serde_json::from_str(&text).unwrap();
    let mut s = DesiredState::default();
    for c in &cmds {
        s.apply(c).unwrap();
    }
    s
}

const STATES: &[&str] = &["empty", "full", "skipped", "ha"];

fn plan_cases() -> Vec<(String, Command)> {
    let mut out: Vec<(String, Command)> = std::fs::read_dir(dir().join("plans"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let cmd: Command = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, cmd)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The plan of `cmd` on `base`, with the state after it computed as the agent does.
fn plan_of(
    base: &DesiredState,
    cmd: &Command,
    inputs: &Inputs,
) -> Result<plan::Plan, vr_agent::nat::model::BindError> {
    let mut after = base.clone();
    after.apply(cmd).expect("the command applies to the state");
    plan::plan(base, &after, cmd, inputs)
}

fn plan_text(p: &plan::Plan) -> String {
    let mut out = String::new();
    for f in &p.flush {
        out.push_str(&format!("# then conntrack: {f:?}\n"));
    }
    if p.full {
        out.push_str("# full replace\n");
    }
    out.push_str(&p.nft());
    out
}

fn check(path: &Path, actual: &str) -> bool {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
        return true;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        eprintln!(
            "golden {} differs (UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
        return false;
    }
    true
}

#[test]
fn renderings_match_golden_files() {
    let inputs = inputs();
    let mut ok = true;
    for case in STATES {
        let p = plan::full(&state_of(case), &inputs);
        let mut text = String::new();
        for s in &p.skipped {
            text.push_str(&format!("# left out: {s}\n"));
        }
        text.push_str(&p.nft());
        ok &= check(&dir().join(format!("{case}.nft")), &text);
    }
    // a full re-apply's rules, in place (with a chain found that is not ours), and its sets
    let found = [vr_agent::nat::render::FoundChain {
        table: vr_agent::nat::model::FILTER,
        name: "by_hand".into(),
    }];
    let (p, change) = plan::full_split(&state_of("full"), &inputs, &found);
    ok &= check(&dir().join("full.in-place.nft"), &p.nft());
    let b = netlink::batch(&change.flush, &change.deletes, &change.adds, 1).unwrap();
    let mut text = format!("# acknowledged: {:?}\n", b.acked);
    text.push_str(&netlink::describe(&b.bytes()).unwrap());
    ok &= check(&dir().join("full.sets.netlink.txt"), &text);
    let base = state_of("full");
    for (name, cmd) in plan_cases() {
        base.check(&cmd)
            .unwrap_or_else(|e| panic!("{name}: the core refuses it: {e}"));
        let p = plan_of(&base, &cmd, &inputs).unwrap();
        ok &= check(&dir().join(format!("plans/{name}.nft")), &plan_text(&p));
    }
    assert!(ok, "golden files differ");

    // what the goldens must show
    let skipped = std::fs::read_to_string(dir().join("skipped.nft")).unwrap();
    assert!(skipped.contains("fa:7e:4b:ad:11:09"), "{skipped}");
    assert!(skipped.contains("fa:7e:4b:ad:11:0a"), "{skipped}");
    assert!(skipped.contains("fa:7e:4b:ad:11:0b"), "{skipped}");
    let same = std::fs::read_to_string(dir().join("plans/createeip-same.nft")).unwrap();
    // a command is an ensure: re-creating an identical EIP only re-adds its elements (a no-op
    // when they are there, a repair when they were deleted behind our back)
    assert!(
        same.lines().all(|l| l.starts_with("add element")) && same.contains("eip_dnat"),
        "re-creating an identical EIP re-adds its elements and deletes nothing: {same}"
    );
}

#[test]
fn every_element_has_the_layout_of_its_set() {
    let inputs = inputs();
    let mut seen = std::collections::BTreeSet::new();
    for case in STATES {
        let (rs, _) = vr_agent::nat::model::resolve(&state_of(case), &inputs);
        for e in &rs.elements {
            let spec = sets::find(e.table, e.set)
                .unwrap_or_else(|| panic!("{case}: {} {} is not declared", e.table, e.set));
            assert!(
                spec.fits(&e.key, e.value.as_deref()),
                "{case}: {} does not fit {spec:?}",
                e.text()
            );
            seen.insert(e.set);
        }
    }
    // the fixture states exercise the sets of every layout (ranges, concatenations, marks)
    for set in [
        "eip_snat",
        "pf_tcp",
        "pf_tcp_range",
        "pf_mark",
        "pf_allowed",
        "eip_out",
    ] {
        assert!(seen.contains(set), "no fixture fills {set}");
    }
}

#[test]
fn a_command_with_a_missing_mac_is_refused_naming_it() {
    let base = state_of("full");
    let cmd: Command = serde_json::from_str(
        r#"{"cmd": "create_eip", "args": {"vip_ip": "10.10.1.70", "private_mac": "fa:7e:4b:ad:11:77", "guest_ip": "172.20.0.70", "snat_inbound": false}}"#,
    )
    .unwrap();
    let err = plan_of(&base, &cmd, &inputs()).unwrap_err().to_string();
    assert!(err.contains("fa:7e:4b:ad:11:77"), "{err}");
    assert!(err.contains("eip.privateMac"), "{err}");
}

/// `nft -j list table` of ours, without handles and with set elements sorted.
fn dump(ns: &Netns) -> Value {
    let mut all = Vec::new();
    for table in [["ip", "vr_nat"], ["inet", "vr_filter"]] {
        let out = ns.exec_ok(&["nft", "-j", "list", "table", table[0], table[1]]);
        let v: Value = serde_json::from_str(&out).unwrap();
        for item in v["nftables"].as_array().unwrap() {
            if item.get("metainfo").is_some() {
                continue;
            }
            let mut item = item.clone();
            strip(&mut item);
            all.push(item);
        }
    }
    Value::Array(all)
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("handle");
            if let Some(Value::Array(elems)) = m.get_mut("elem") {
                elems.sort_by_key(|e| e.to_string());
            }
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

fn load(ns: &Netns, text: &str) {
    let path = std::env::temp_dir().join(format!("{}-{}.nft", ns.name, std::process::id()));
    std::fs::write(&path, text).unwrap();
    let out = ns.exec(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft refused:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count_elements(dumped: &Value, set: &str) -> usize {
    dumped
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("set").or_else(|| i.get("map")))
        .filter(|s| s["name"] == set)
        .map(|s| s["elem"].as_array().map_or(0, Vec::len))
        .sum()
}

#[test]
fn golden_renderings_load_into_nft_and_plans_reach_the_state_after() {
    let ns = Netns::new("vrngold");
    let inputs = inputs();
    for case in STATES {
        let text = std::fs::read_to_string(dir().join(format!("{case}.nft"))).unwrap();
        load(&ns, &text);
        // loading twice replaces, never duplicates
        load(&ns, &text);
        let dumped = dump(&ns);
        let (rs, _) = vr_agent::nat::model::resolve(&state_of(case), &inputs);
        for set in [
            "eip_dnat", "eip_snat", "pf_tcp", "pf_udp", "pf_mark", "eip_vips",
        ] {
            let want = rs.elements.iter().filter(|e| e.set == set).count();
            assert_eq!(count_elements(&dumped, set), want, "{case}: set {set}");
        }
    }
    let base = state_of("full");
    let base_text = plan::full(&base, &inputs).nft();
    for (name, cmd) in plan_cases() {
        load(&ns, &base_text);
        let p = plan_of(&base, &cmd, &inputs).unwrap();
        if !p.nft().is_empty() {
            load(&ns, &p.nft());
        }
        let incremental = dump(&ns);
        let mut after = base.clone();
        after.apply(&cmd).unwrap();
        load(&ns, &plan::full(&after, &inputs).nft());
        let replaced = dump(&ns);
        assert_eq!(
            incremental, replaced,
            "{name}: the plan applied to the state before differs from the state after"
        );
        // the same element changes over nfnetlink give the same tables
        if let Some(change) = &p.elements {
            load(&ns, &base_text);
            ns.enter(|| {
                let mut sock = Nfnl::open().unwrap();
                sock.apply(&change.flush, &change.deletes, &change.adds)
                    .unwrap();
            });
            assert_eq!(dump(&ns), replaced, "{name}: over nfnetlink");
        }
    }
    // a refused netlink transaction names the reason and changes nothing
    load(&ns, &base_text);
    let before = dump(&ns);
    let p = plan_of(&base, &plan_cases()[0].1, &inputs).unwrap();
    let adds = p.elements.unwrap().adds;
    let err = ns.enter(|| {
        let mut sock = Nfnl::open().unwrap();
        sock.apply(&[], &adds, &adds).unwrap_err().to_string()
    });
    assert!(err.contains("missing"), "{err}");
    assert_eq!(dump(&ns), before);
}

/// Loads `state` the way a full re-apply does: rules in place through nft, then every set's
/// contents in one nfnetlink batch (the difference to a dump of what they hold).
/// Hash sets are refilled from `refill_from` elements on (0: all of them, `usize::MAX`: none,
/// every set is dumped and compared).
fn load_split(ns: &Netns, state: &DesiredState, inputs: &Inputs, refill_from: usize) {
    let found = ns.block_on(|| async { vr_agent::nat::nft::ours().await.unwrap().chains });
    let (p, change) = plan::full_split(state, inputs, &found);
    load(ns, &p.nft());
    let specs: Vec<_> = sets::SETS.iter().collect();
    ns.enter(|| {
        let mut sock = Nfnl::open().unwrap();
        sock.refill_from(refill_from);
        sock.replace_contents(&specs, &change.adds).unwrap();
        // read back through a dump, the kernel holds exactly our encoding: nothing left to do
        sock.refill_from(usize::MAX);
        assert_eq!(sock.replace_contents(&specs, &change.adds).unwrap(), (0, 0));
    });
}

#[test]
fn a_split_re_apply_gives_exactly_the_full_rendering_from_any_start() {
    let ns = Netns::new("vrnsplit");
    let inputs = inputs();
    let mut expected = Vec::new();
    for case in STATES {
        load(
            &ns,
            &std::fs::read_to_string(dir().join(format!("{case}.nft"))).unwrap(),
        );
        expected.push(dump(&ns));
    }
    for ((i, to), refill_from) in STATES
        .iter()
        .enumerate()
        .flat_map(|c| [(c, usize::MAX), (c, 0)])
    {
        let state = state_of(to);
        // from no tables at all
        ns.exec_ok(&["nft", "flush", "ruleset"]);
        load_split(&ns, &state, &inputs, refill_from);
        assert_eq!(dump(&ns), expected[i], "from nothing to {to}");
        // from every other state, with things changed by hand on top
        for from in STATES {
            load(
                &ns,
                &std::fs::read_to_string(dir().join(format!("{from}.nft"))).unwrap(),
            );
            ns.exec_ok(&[
                "nft",
                "add",
                "chain",
                "inet",
                "vr_filter",
                "by_hand",
                "{ type filter hook input priority 0; policy drop; }",
            ]);
            ns.exec_ok(&[
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
            ns.exec_ok(&[
                "nft",
                "add",
                "element",
                "inet",
                "vr_filter",
                "eip_vips",
                "{ 192.0.2.99 }",
            ]);
            load_split(&ns, &state, &inputs, refill_from);
            assert_eq!(
                dump(&ns),
                expected[i],
                "from {from} to {to} (refills from {refill_from})"
            );
        }
    }
}

#[test]
fn adding_missing_elements_restores_them_and_removes_nothing() {
    let ns = Netns::new("vrnkeep");
    let inputs = inputs();
    let full = state_of("full");
    let text = plan::full(&full, &inputs).nft();
    load(&ns, &text);
    let expected = dump(&ns);
    let (rs, _) = vr_agent::nat::model::resolve(&full, &inputs);
    let desired: Vec<_> = rs.elements.into_iter().collect();
    let specs: Vec<_> = sets::SETS.iter().collect();
    ns.exec_ok(&[
        "nft",
        "delete",
        "element",
        "ip",
        "vr_nat",
        "eip_dnat",
        "{ 10.10.1.55 }",
    ]);
    ns.exec_ok(&[
        "nft",
        "delete",
        "element",
        "ip",
        "vr_nat",
        "pf_mark",
        "{ 10.10.1.56 . tcp . 8080-8082 }",
    ]);
    ns.exec_ok(&[
        "nft",
        "add",
        "element",
        "inet",
        "vr_filter",
        "eip_vips",
        "{ 192.0.2.99 }",
    ]);
    let added = ns.enter(|| Nfnl::open().unwrap().add_missing(&specs, &desired).unwrap());
    assert_eq!(added, 2);
    ns.exec_ok(&[
        "nft",
        "delete",
        "element",
        "inet",
        "vr_filter",
        "eip_vips",
        "{ 192.0.2.99 }",
    ]);
    assert_eq!(
        dump(&ns),
        expected,
        "the missing elements are back, the foreign one stayed"
    );
    // an element there with another value: refused, nothing changed
    ns.exec_ok(&[
        "nft",
        "delete",
        "element",
        "ip",
        "vr_nat",
        "eip_dnat",
        "{ 10.10.1.55 }",
    ]);
    ns.exec_ok(&[
        "nft",
        "add",
        "element",
        "ip",
        "vr_nat",
        "eip_dnat",
        "{ 10.10.1.55 : 192.0.2.1 }",
    ]);
    ns.exec_ok(&[
        "nft",
        "delete",
        "element",
        "inet",
        "vr_filter",
        "eip_vips",
        "{ 10.10.1.57 }",
    ]);
    let before = dump(&ns);
    let err = ns.enter(|| {
        Nfnl::open()
            .unwrap()
            .add_missing(&specs, &desired)
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("exists with another value"), "{err}");
    assert_eq!(dump(&ns), before);
}

#[test]
fn a_refused_set_batch_leaves_every_set_as_it_was() {
    let ns = Netns::new("vrnatomic");
    let inputs = inputs();
    let full = state_of("full");
    load(&ns, &plan::full(&full, &inputs).nft());
    let before = dump(&ns);
    assert!(count_elements(&before, "eip_dnat") > 0);
    let found = ns.block_on(|| async { vr_agent::nat::nft::ours().await.unwrap().chains });
    let (_, mut change) = plan::full_split(&full, &inputs, &found);
    // the last add gives an existing key another value: the kernel refuses the whole batch,
    // flushes included
    let mut clash = change
        .adds
        .iter()
        .find(|e| e.set == "eip_dnat")
        .unwrap()
        .clone();
    clash.value = Some(vec![vr_agent::nat::model::Field::Addr(
        "192.0.2.1".parse().unwrap(),
    )]);
    change.adds.push(clash);
    let err = ns.enter(|| {
        let mut sock = Nfnl::open().unwrap();
        sock.apply(&change.flush, &change.deletes, &change.adds)
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("exists with another value"), "{err}");
    assert_eq!(dump(&ns), before, "a refused batch changed the sets");
    // the same through a diff against a dump: the batch deletes the first elements of every
    // set (left out of the desired ones), then meets the clash
    let specs: Vec<_> = sets::SETS.iter().collect();
    let mut desired = change.adds.clone();
    desired.retain(|e| e.set != "eip_vips" && e.set != "pf_mark");
    let err = ns.enter(|| {
        let mut sock = Nfnl::open().unwrap();
        sock.replace_contents(&specs, &desired)
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("exists with another value"), "{err}");
    assert_eq!(dump(&ns), before, "a refused batch changed the sets");
}

#[test]
fn netlink_batches_match_golden_files() {
    let inputs = inputs();
    let base = state_of("full");
    let mut ok = true;
    for name in [
        "createeip-new",
        "createpf-shifted",
        "removeeip-owner",
        "synceip",
        "syncpf",
    ] {
        let (_, cmd) = plan_cases().into_iter().find(|(n, _)| n == name).unwrap();
        let p = plan_of(&base, &cmd, &inputs).unwrap();
        let c = p.elements.unwrap();
        let b = netlink::batch(&c.flush, &c.deletes, &c.adds, 100).unwrap();
        let bytes = b.bytes();
        // decoded back through netlink-packet-netfilter, in nft syntax
        let mut text = format!("# acknowledged: {:?}\n", b.acked);
        text.push_str(&netlink::describe(&bytes).unwrap());
        ok &= check(&dir().join(format!("plans/{name}.netlink.txt")), &text);
    }
    assert!(ok, "golden files differ");
}

/// Syncs sent as the difference between two states (the agent knows the sets hold the state
/// before): applied over nfnetlink to the tables of the state before, each gives exactly the
/// tables of the state after, as a full replace does. The cases move the owner of a shared
/// guest, change a guest, drop and add entries, and re-send the same content (nothing sent).
#[test]
fn syncs_sent_as_the_difference_of_the_states_reach_the_state_after() {
    let ns = Netns::new("vrndelta");
    let mut inputs = inputs();
    inputs.sets_hold_before = true;
    let base = state_of("full");
    let base_text = plan::full(&base, &inputs).nft();
    let eip = |vip: &str, mac: &str, guest: &str, snat: bool| serde_json::json!({"vip_ip": vip, "private_mac": mac, "guest_ip": guest, "snat_inbound": snat});
    let (m2, m3) = ("fa:7e:4b:ad:11:02", "fa:7e:4b:ad:11:03");
    let same: Vec<serde_json::Value> = base
        .eips
        .values()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let mut cases: Vec<(String, Command)> = plan_cases()
        .into_iter()
        .filter(|(name, _)| name.starts_with("sync") && name != "syncsnat")
        .collect();
    let eips = |list: Vec<serde_json::Value>| -> Command {
        serde_json::from_value(serde_json::json!({"cmd": "sync_eips", "args": list})).unwrap()
    };
    cases.push(("same EIPs".into(), eips(same)));
    cases.push((
        "owner of a shared guest dropped".into(),
        eips(vec![
            eip("10.10.1.57", m2, "172.20.0.15", false),
            eip("10.10.1.58", m3, "172.20.1.20", true),
        ]),
    ));
    cases.push((
        "guests moved and new sharers".into(),
        eips(vec![
            eip("10.10.1.54", m2, "172.20.0.15", false),
            eip("10.10.1.55", m2, "172.20.0.16", true),
            eip("10.10.1.57", m2, "172.20.0.15", false),
            eip("10.10.1.59", m3, "172.20.1.20", false),
        ]),
    ));
    cases.push(("all EIPs gone".into(), eips(vec![])));
    for (name, cmd) in cases {
        load(&ns, &base_text);
        let p = plan_of(&base, &cmd, &inputs).unwrap();
        let change = p.elements.clone().expect("an element change");
        assert!(change.flush.is_empty(), "{name}: no set is emptied");
        if name == "same EIPs" {
            assert!(!p.has_work(), "{name}: nothing to send");
        }
        ns.enter(|| {
            let mut sock = Nfnl::open().unwrap();
            sock.apply(&change.flush, &change.deletes, &change.adds)
                .unwrap();
        });
        let incremental = dump(&ns);
        let mut after = base.clone();
        after.apply(&cmd).unwrap();
        load(&ns, &plan::full(&after, &inputs).nft());
        assert_eq!(
            dump(&ns),
            incremental,
            "{name}: differs from the state after"
        );
    }
}
