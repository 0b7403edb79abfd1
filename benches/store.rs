//! Store figures, in process, no root: the time to open a store whose journal holds 10,000
//! records, and the bytes on disk after 100 `/synceip` commands of 10,000 EIPs each (with the
//! compaction the writer runs after every command). `cargo bench --bench store`.

use std::net::Ipv4Addr;
use std::time::Instant;
use vr_agent::state::model::Eip;
use vr_agent::state::store::Store;
use vr_agent::state::types::MacAddr;
use vr_agent::state::{Command, DesiredState};

fn dir_bytes(dir: &std::path::Path) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        total += len;
        names.push(format!("{}={len}", e.file_name().to_string_lossy()));
    }
    names.sort();
    (total, names)
}

fn eips(n: u32, round: u32) -> Vec<Eip> {
    (0..n)
        .map(|i| Eip {
            vip_ip: Ipv4Addr::from(0x0b00_0000 + i),
            private_mac: MacAddr([0xfa, 0x16, 0x3e, 0, 0, (round % 250) as u8]),
            guest_ip: Ipv4Addr::from(0x0a00_0000 + ((i + round) % n)),
            snat_inbound: i % 2 == 0,
        })
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run with `cargo bench --bench store`");
        return;
    }
    // 1. open with a 10,000-record journal (no compaction in between)
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open(tmp.path());
    for i in 0..10_000u32 {
        let e = &eips(1, i)[0];
        let cmd = Command::CreateEip(Eip {
            vip_ip: Ipv4Addr::from(0x0b00_0000 + i),
            ..e.clone()
        });
        store.append(&cmd).expect("append");
    }
    let journal = store.journal_bytes();
    drop(store);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (_, loaded) = Store::open(tmp.path());
        times.push(t.elapsed());
        assert_eq!(loaded.state.eips.len(), 10_000);
    }
    times.sort();
    println!(
        "open with a 10,000-record journal ({journal} bytes): median {:.1} ms (min {:.1}, max {:.1})",
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[4].as_secs_f64() * 1e3
    );

    // 2. 100 syncs of 10,000 EIPs, compacting as the writer does
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open(tmp.path());
    let mut state = DesiredState::default();
    let mut compactions = 0;
    let mut peak = 0;
    let t = Instant::now();
    for round in 0..100 {
        let cmd = Command::SyncEips(eips(10_000, round));
        state.apply(&cmd).expect("apply");
        store.append(&cmd).expect("append");
        peak = peak.max(dir_bytes(tmp.path()).0);
        if store.wants_compaction() {
            store.compact(&state).expect("compact");
            compactions += 1;
        }
    }
    let elapsed = t.elapsed();
    let (total, names) = dir_bytes(tmp.path());
    println!(
        "100 syncs of 10,000 EIPs: {total} bytes on disk at the end ({}), peak {peak} bytes, {compactions} compactions, {:.2} s",
        names.join(" "),
        elapsed.as_secs_f64()
    );
    let t = Instant::now();
    let (_, loaded) = Store::open(tmp.path());
    println!("open after them: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(loaded.state, state);
}
