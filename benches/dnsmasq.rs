//! DHCP benchmark (issue 6), end to end through the agent's HTTP API with a real dnsmasq in a
//! network namespace. Run as root: `cargo bench --bench dnsmasq`.
//!
//! Reports: an `/adddhcp` rebuild of 10,000 hosts; one incremental `/adddhcp` with 10,000 hosts
//! present (median of 100); the time until a real client (busybox udhcpc) holds its lease after
//! the add; dnsmasq's own CPU time (utime + stime from /proc/<pid>/stat) for a burst of 100
//! single-host adds and for 100 single-host removals with 10,000 hosts present.

#[path = "../tests/common/mod.rs"]
mod common;

use common::agent::AgentProc;
use common::mgmt::{MgmtNode, assert_ok};
use common::netns::{Netns, veth};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const N: usize = 10_000;

fn host(i: usize) -> Value {
    // 10.0.0.0/16, gateway 10.0.0.1; hosts from 10.0.1.0 upwards.
    let n = 256 + i;
    json!({
        "ip": format!("10.0.{}.{}", n / 256, n % 256),
        "mac": format!("fa:16:3e:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
        "netmask": "255.255.0.0", "gateway": "10.0.0.1", "dns": ["10.0.0.1"],
        "vrNicMac": "fa:7e:4b:ad:11:02", "dnsDomain": "bench.local", "isDefaultL3Network": true,
    })
}

/// utime + stime (fields 14, 15) or cutime + cstime (16, 17) of a process, in clock ticks.
fn ticks(pid: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let i = if children { 13 } else { 11 };
    f[i].parse::<f64>().unwrap() + f[i + 1].parse::<f64>().unwrap()
}

/// CPU time of every dnsmasq the agent ran so far: the live one plus the ones it reaped.
fn dnsmasq_cpu_ms(dir: &Path, agent_pid: u32) -> f64 {
    let pid = std::fs::read_to_string(dir.join("dnsmasq.pid")).unwrap();
    let total = ticks(pid.trim(), false) + ticks(&agent_pid.to_string(), true);
    let hz: f64 = String::from_utf8(
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    total * 1000.0 / hz
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("dnsmasq benchmark: run it with `cargo bench --bench dnsmasq`");
        return;
    }
    let router = Netns::new("vrdb");
    let guest = Netns::new("vrdb");
    veth(
        &router,
        "rg0",
        "fa:7e:4b:ad:11:02",
        &guest,
        "g0",
        "fa:3c:91:5e:22:07",
    );
    router.ip(&["addr", "add", "10.0.0.1/16", "dev", "rg0"]);
    let tmp = tempfile::Builder::new()
        .prefix("vrd-bench-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("dnsmasq");
    router.block_on(|| async {
        let agent = AgentProc::start(&[&format!("--dnsmasq-dir={}", dir.display())]);
        let mn = MgmtNode::start().await;
        let all: Vec<Value> = (0..N).map(host).collect();

        let t = Instant::now();
        let r = mn
            .call_sync(
                agent.vr,
                "/adddhcp",
                &json!({"dhcpEntries": all, "rebuild": true}),
            )
            .await;
        let rebuild_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_ok(&r);
        // The same rebuild again (dnsmasq already running, files unchanged but rewritten).
        let all: Vec<Value> = (0..N).map(host).collect();
        let shifted: Vec<Value> = all
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut h = h.clone();
                if i % 2 == 0 {
                    h["mtu"] = json!(1450);
                }
                h
            })
            .collect();
        let t = Instant::now();
        let r = mn
            .call_sync(
                agent.vr,
                "/adddhcp",
                &json!({"dhcpEntries": shifted, "rebuild": true}),
            )
            .await;
        let rebuild2_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_ok(&r);
        let r = mn
            .call_sync(
                agent.vr,
                "/adddhcp",
                &json!({"dhcpEntries": all, "rebuild": true}),
            )
            .await;
        assert_ok(&r);
        tokio::time::sleep(Duration::from_secs(2)).await;

        // 100 incremental adds on top of 10,000.
        let cpu0 = dnsmasq_cpu_ms(&dir, agent.pid());
        let mut lat = Vec::new();
        for i in N..N + 100 {
            let body = json!({"dhcpEntries": [host(i)], "rebuild": false});
            let t = Instant::now();
            let r = mn.call_sync(agent.vr, "/adddhcp", &body).await;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            assert_ok(&r);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let add_cpu = dnsmasq_cpu_ms(&dir, agent.pid()) - cpu0;

        // Time until a client holds its lease after the add.
        let mut client = host(N + 500);
        client["mac"] = json!("fa:3c:91:5e:22:07");
        let t = Instant::now();
        let r = mn
            .call_sync(
                agent.vr,
                "/adddhcp",
                &json!({"dhcpEntries": [client], "rebuild": false}),
            )
            .await;
        assert_ok(&r);
        let add_done = t.elapsed().as_secs_f64() * 1e3;
        let out = guest.exec(&["busybox", "udhcpc", "-i", "g0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", "/bin/true"]);
        let lease_ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(out.status.success(), "no lease: {}", String::from_utf8_lossy(&out.stderr));

        // 100 single-host removals with 10,000 present.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu0 = dnsmasq_cpu_ms(&dir, agent.pid());
        let t = Instant::now();
        let mut rm_lat = Vec::new();
        for i in N..N + 100 {
            let body = json!({"dhcpEntries": [host(i)]});
            let t = Instant::now();
            let r = mn.call_sync(agent.vr, "/removedhcp", &body).await;
            rm_lat.push(t.elapsed().as_secs_f64() * 1e3);
            assert_ok(&r);
        }
        let burst_ms = t.elapsed().as_secs_f64() * 1e3;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rm_cpu = dnsmasq_cpu_ms(&dir, agent.pid()) - cpu0;

        println!("dnsmasq benchmark, {N} hosts (agent release build, real dnsmasq, HTTP sync calls)");
        println!("  /adddhcp rebuild of {N} hosts (dnsmasq start):        {rebuild_ms:8.1} ms");
        println!("  /adddhcp rebuild of {N} hosts (half changed, reload): {rebuild2_ms:8.1} ms");
        println!(
            "  one incremental /adddhcp at {N} hosts, median of 100:  {:8.2} ms (max {:.2})",
            median(lat.clone()),
            lat.iter().cloned().fold(0.0, f64::max)
        );
        println!("  client lease after /adddhcp (reply {add_done:.1} ms, udhcpc included): {lease_ms:8.1} ms");
        println!("  dnsmasq CPU for 100 single-host adds:                 {add_cpu:8.0} ms");
        println!(
            "  dnsmasq CPU for 100 single-host removals:             {rm_cpu:8.0} ms (burst {burst_ms:.0} ms, median removal {:.2} ms)",
            median(rm_lat)
        );
        if std::env::var_os("BENCH_LOG").is_some() {
            for l in agent
                .log()
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("INFO") && l.contains("dnsmasq")
                        || l.contains("removedhcp") && l.contains("synced")
                })
            {
                println!("{l}");
            }
        }
        let log = agent.log();
        println!(
            "  dnsmasq starts: {}, deaths: {}",
            log.matches("dnsmasq started").count(),
            log.matches("dnsmasq exited").count()
        );
        drop(agent);
    });
}
