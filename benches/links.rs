//! Interface benchmarks, as root, in throwaway network namespaces (run:
//! `cargo bench --bench links`):
//! - adding 1,000 VIPs to one nic, one `/createvip` command at a time through the HTTP API
//!   (synchronous style, one keep-alive connection), then removing them the same way;
//! - `vr-agent bootstrap --from` with the three-nic fixture: first apply and a second run.
//!
//! Prints timings; asserts only that the work was done.

#[path = "../tests/common/mod.rs"]
mod common;

use common::agent::{AgentProc, binary};
use common::mgmt::{MgmtNode, assert_ok};
use common::netns::{Netns, veth};
use serde_json::json;
use std::time::{Duration, Instant};

const MAC0: &str = "fa:7e:4b:ad:11:00";
const MAC1: &str = "fa:7e:4b:ad:11:01";
const MAC2: &str = "fa:7e:4b:ad:11:02";
const VIPS: usize = 1000;

fn stats(label: &str, mut each: Vec<Duration>) {
    let total: Duration = each.iter().sum();
    each.sort();
    let pct = |p: f64| each[((each.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{label}: {} commands in {:.3} s; per command mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        each.len(),
        total.as_secs_f64(),
        total.as_secs_f64() * 1e3 / each.len() as f64,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        each.last().unwrap().as_secs_f64() * 1e3,
    );
}

fn vips() {
    let router = Netns::new("vrlb");
    let peer = Netns::new("vrlbp");
    veth(&router, "r1", MAC1, &peer, "p1", "02:00:00:00:00:01");
    router.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        let nic = json!({"nics": [{"ip": "10.10.1.20", "mac": MAC1, "gateway": "10.10.1.1", "netmask": "255.255.255.0", "isDefaultRoute": true}]});
        assert_ok(&mn.call_sync(agent.vr, "/configurenic", &nic).await);
        let body = |i: usize| {
            json!({"vips": [{"ip": format!("10.{}.{}.{}", 100 + i / 60000, (i / 250) % 240, i % 250 + 1),
                              "netmask": "255.255.255.0", "gateway": "10.10.1.1", "ownerEthernetMac": MAC1}]})
        };
        let mut each = Vec::with_capacity(VIPS);
        for i in 0..VIPS {
            let t = Instant::now();
            let reply = mn.call_sync(agent.vr, "/createvip", &body(i)).await;
            each.push(t.elapsed());
            assert_ok(&reply);
        }
        let n = router
            .exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "r1"])
            .lines()
            .count();
        assert_eq!(n, VIPS + 1);
        stats("createvip, 1,000 VIPs one at a time", each);
        let mut each = Vec::with_capacity(VIPS);
        for i in 0..VIPS {
            let t = Instant::now();
            let reply = mn.call_sync(agent.vr, "/removevip", &body(i)).await;
            each.push(t.elapsed());
            assert_ok(&reply);
        }
        stats("removevip, 1,000 VIPs one at a time", each);
    });
}

fn bootstrap() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bootstrap-info.json");
    let mut first = Vec::new();
    let mut again = Vec::new();
    for _ in 0..5 {
        let router = Netns::new("vrlb");
        let peer = Netns::new("vrlbp");
        for (i, (name, mac)) in [("r0", MAC0), ("r1", MAC1), ("r2", MAC2)]
            .iter()
            .enumerate()
        {
            veth(
                &router,
                name,
                mac,
                &peer,
                &format!("p{i}"),
                &format!("02:00:00:00:00:0{i}"),
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let run = || {
            let bin = binary();
            let t = Instant::now();
            let out = router
                .command(bin.to_str().unwrap())
                .arg("bootstrap")
                .arg(format!("--from={}", fixture.display()))
                .arg(format!(
                    "--state-dir={}",
                    tmp.path().join("state").display()
                ))
                .arg(format!(
                    "--authorized-keys={}",
                    tmp.path().join("ssh/authorized_keys").display()
                ))
                .arg("--sysctl-root=/proc/sys")
                .arg(format!(
                    "--error-log={}",
                    tmp.path().join("error.log").display()
                ))
                .output()
                .unwrap();
            let wall = t.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let said = String::from_utf8_lossy(&out.stdout).to_string();
            let applied = said
                .split(" in ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            (wall, applied)
        };
        first.push(run());
        again.push(run());
    }
    for (label, runs) in [
        ("bootstrap, first apply", first),
        ("bootstrap, second run (no change)", again),
    ] {
        let walls: Vec<String> = runs
            .iter()
            .map(|(w, _)| format!("{:.1}", w.as_secs_f64() * 1e3))
            .collect();
        let applied: Vec<String> = runs.iter().map(|(_, a)| format!("{a:.1}")).collect();
        println!(
            "{label}: apply {} ms (process wall incl. start and `ip netns exec`: {} ms), 3 nics, 5 runs",
            applied.join(" / "),
            walls.join(" / ")
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run with `cargo bench --bench links`");
        return;
    }
    vips();
    bootstrap();
}
