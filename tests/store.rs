//! The durable state with the real binary: a journal damaged between two runs, a torn last
//! record, a read-only state directory. The data plane must never be emptied by a recovery.

mod common;
mod nat_support;

use common::mgmt::assert_fails;
use nat_support::*;
use serde_json::{Value, json};

const INIT_UUID: &str = "8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f";

/// Guest addresses of the EIPs on [`VIPS`] (all behind guest nic 1).
fn guest_of(i: usize) -> String {
    format!("172.20.0.{}", 31 + i)
}

/// `/init`, then one `/createeip` per VIP: journal records 1 to 6.
fn init_and_eips(net: &Net) {
    net.run(|mn, api| async move {
        ok(&mn, api, "/init", common::fixture("init")).await;
        for (i, vip) in VIPS.iter().enumerate() {
            ok(
                &mn,
                api,
                "/createeip",
                json!({"eip": eip(vip, G1_MAC, &guest_of(i), false)}),
            )
            .await;
        }
    });
}

fn ping(net: &Net) -> Value {
    let mut out = Value::Null;
    let slot = &mut out;
    net.run(|mn, api| async move {
        *slot = mn.call_sync(api, "/ping", &json!({})).await;
    });
    out
}

fn has_eip(tables: &str, i: usize) -> bool {
    tables.contains(&format!("{} : {}", VIPS[i], guest_of(i)))
}

fn assert_all_eips(tables: &str) {
    for (i, vip) in VIPS.iter().enumerate() {
        assert!(has_eip(tables, i), "EIP {vip} missing:\n{tables}");
    }
}

/// Byte ranges of the journal's records.
fn records(journal: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in journal.iter().enumerate() {
        if *b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    out
}

fn restart(net: &mut Net, wrapper: &[String]) {
    let Net { agent, router, .. } = net;
    router.enter(|| agent.restart_wrapped(wrapper));
}

#[test]
fn a_corrupt_middle_record_keeps_the_data_plane_and_ping_names_the_drop() {
    let mut net = Net::new();
    init_and_eips(&net);
    net.agent.stop();
    let path = net.agent.dir.join("state/journal.0");
    let mut journal = std::fs::read(&path).unwrap();
    let recs = records(&journal);
    assert_eq!(recs.len(), 6);
    journal[recs[2].0 + 5] ^= 0x01; // record 3: the second EIP
    std::fs::write(&path, &journal).unwrap();
    let dropped_bytes = journal.len() - recs[2].0;

    restart(&mut net, &[]);
    // every EIP is still in the kernel, those the store lost included
    let tables = net.tables();
    assert_all_eips(&tables);
    let p = ping(&net);
    assert_eq!(p["uuid"], json!(INIT_UUID));
    assert_eq!(p["healthy"], json!(false));
    let detail = p["healthDetail"].as_str().unwrap();
    let want = format!(
        "journal.0: records 3-6 dropped (4 records, {dropped_bytes} bytes; record 3 fails its checksum); kept records 1-2"
    );
    assert!(detail.contains(&want), "{detail}\nwant: {want}");
    assert!(detail.contains("preserving"), "{detail}");
    assert!(
        net.agent
            .log()
            .contains("re-applying without removing anything")
    );

    // /init hands the state back to the management node: the store's state is applied whole
    net.run(|mn, api| async move {
        ok(&mn, api, "/init", common::fixture("init")).await;
    });
    let p = ping(&net);
    assert_eq!(p["healthy"], json!(true), "{p}");
    let tables = net.tables();
    assert!(has_eip(&tables, 0));
    assert!(!has_eip(&tables, 1), "{tables}");
    // and the next start is clean
    restart(&mut net, &[]);
    let p = ping(&net);
    assert_eq!(p["healthy"], json!(true), "{p}");
}

#[test]
fn a_torn_last_record_is_cut_and_later_commands_survive_restarts() {
    let mut net = Net::new();
    init_and_eips(&net);
    net.agent.stop();
    let path = net.agent.dir.join("state/journal.0");
    let journal = std::fs::read(&path).unwrap();
    let recs = records(&journal);
    // power lost in the middle of the last append
    std::fs::write(&path, &journal[..recs[5].0 + 40]).unwrap();

    restart(&mut net, &[]);
    let p = ping(&net);
    assert_eq!(p["healthy"], json!(true), "{p}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        recs[5].0,
        "the torn record is cut away"
    );
    net.run(|mn, api| async move {
        ok(
            &mn,
            api,
            "/createeip",
            json!({"eip": eip(VIPS[4], G1_MAC, &guest_of(4), false)}),
        )
        .await;
    });
    net.agent.stop();
    restart(&mut net, &[]);
    let tables = net.tables();
    assert_all_eips(&tables);
    assert_eq!(ping(&net)["healthy"], json!(true));
}

#[test]
fn a_read_only_state_directory_serves_the_stored_state_and_refuses_changes() {
    let mut net = Net::new();
    init_and_eips(&net);
    net.agent.stop();
    // the kernel lost our tables (a reboot): the agent must rebuild them from the store
    net.router
        .exec_ok(&["nft", "delete", "table", "ip", "vr_nat"]);
    let state = net.agent.dir.join("state").display().to_string();
    // the agent runs in a private mount namespace where its state directory is read-only
    let wrapper: Vec<String> = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -o bind,ro \"$0\" \"$0\" && exec \"$@\"",
        &state,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    restart(&mut net, &wrapper);
    let tables = net.tables();
    assert_all_eips(&tables);
    let p = ping(&net);
    assert_eq!(p["uuid"], json!(INIT_UUID));
    assert_eq!(p["healthy"], json!(false));
    let detail = p["healthDetail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("the state directory {state} is read-only (EROFS)")),
        "{detail}"
    );
    net.run(|mn, api| async move {
        let reply = mn
            .call_sync(
                api,
                "/removeeip",
                &json!({"eip": eip(VIPS[0], G1_MAC, &guest_of(0), false)}),
            )
            .await;
        assert_fails(&reply, "is read-only (EROFS): nothing was changed");
    });
    assert!(has_eip(&net.tables(), 0));
}

#[test]
fn a_full_state_directory_refuses_changes_until_space_is_freed() {
    let mut net = Net::new();
    net.agent.stop();
    let state = net.agent.dir.join("state").display().to_string();
    // the state directory is a 256 KiB tmpfs in the agent's private mount namespace
    let wrapper: Vec<String> = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs -o size=256k vrstate \"$0\" && exec \"$@\"",
        &state,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    restart(&mut net, &wrapper);
    net.run(|mn, api| async move {
        ok(&mn, api, "/init", common::fixture("init")).await;
    });
    // fill it, through the agent's own view of the mounts
    let fill = format!("/proc/{}/root{state}/fill", net.agent.pid());
    let mut f = std::fs::File::create(&fill).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        use std::io::Write;
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "{e}");
            break;
        }
    }
    drop(f);
    // a record larger than a page (a small one may still fit in the journal's last page)
    let servers: Vec<Value> = (0..500u32)
        .map(|i| json!({"dnsAddress": format!("10.1.{}.{}", i / 200, i % 200 + 1)}))
        .collect();
    let body = json!({ "dns": servers });
    let b = body.clone();
    net.run(|mn, api| async move {
        let reply = mn.call_sync(api, "/setdns", &b).await;
        assert_fails(&reply, "is full (ENOSPC)");
    });
    let p = ping(&net);
    assert_eq!(p["healthy"], json!(false));
    let detail = p["healthDetail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("the state directory {state} is full (ENOSPC)")),
        "{detail}"
    );
    std::fs::remove_file(&fill).unwrap();
    net.run(|mn, api| async move {
        ok(&mn, api, "/setdns", body).await;
    });
    assert_eq!(ping(&net)["healthy"], json!(true));
}

#[test]
fn a_cut_snapshot_falls_back_to_the_previous_generation_and_keeps_the_data_plane() {
    let mut net = Net::new();
    let state = net.agent.dir.join("state");
    let prev = state.join("state.prev.json");
    let servers: Vec<Value> = (0..500u32)
        .map(|i| json!({"dnsAddress": format!("10.1.{}.{}", i / 200, i % 200 + 1)}))
        .collect();
    let big = json!({ "dns": servers });
    // ~7 KB records: two compactions (by size) give a previous generation
    let p = prev.clone();
    net.run(|mn, api| async move {
        ok(&mn, api, "/init", common::fixture("init")).await;
        for _ in 0..100 {
            if p.exists() {
                break;
            }
            ok(&mn, api, "/setdns", big.clone()).await;
        }
    });
    assert!(prev.exists(), "no compaction happened");
    // EIPs journaled after the last snapshot
    net.run(|mn, api| async move {
        for (i, vip) in VIPS.iter().enumerate() {
            ok(
                &mn,
                api,
                "/createeip",
                json!({"eip": eip(vip, G1_MAC, &guest_of(i), false)}),
            )
            .await;
        }
    });
    net.agent.stop();
    // the current snapshot is cut, and the journal from the previous one has a flipped byte:
    // only the previous snapshot and a prefix of its journal can be read
    let snap = state.join("state.json");
    let bytes = std::fs::read(&snap).unwrap();
    std::fs::write(&snap, &bytes[..bytes.len() / 2]).unwrap();
    let mut journals: Vec<u64> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("journal.")?.parse().ok()
        })
        .collect();
    journals.sort();
    let oldest = state.join(format!("journal.{}", journals[0]));
    let mut j = std::fs::read(&oldest).unwrap();
    j[10] ^= 0x01;
    std::fs::write(&oldest, &j).unwrap();

    restart(&mut net, &[]);
    assert_all_eips(&net.tables());
    let p = ping(&net);
    assert_eq!(p["healthy"], json!(false));
    let detail = p["healthDetail"].as_str().unwrap();
    for want in [
        "state.json is unreadable",
        "fell back to state.prev.json",
        &format!("journal.{}: records 1-", journals[0]),
        "not replayed",
        "preserving",
    ] {
        assert!(detail.contains(want), "{want} missing in: {detail}");
    }
    // the uuid came with /init before both snapshots: still known
    assert_eq!(p["uuid"], json!(INIT_UUID));
}
