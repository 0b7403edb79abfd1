//! Agent core figures: `/ping` round trip in sync mode (median of 1,000), the cost of a
//! state-changing command through the writer and the journal, `GET /metrics` and `/status`,
//! `vr-agent status`, and the agent's idle RSS.
//! Runs the release binary inside a private network namespace. `cargo bench --bench core`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::agent::AgentProc;
use common::mgmt::MgmtNode;
use common::netns::Netns;
use serde_json::json;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} median={:.3} ms p90={:.3} ms p99={:.3} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run with `cargo bench --bench core`");
        return;
    }
    let ns = Netns::new("vrbc");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://{}/ping", agent.vr);
        for _ in 0..100 {
            client
                .post(&url)
                .body("{}")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
        }
        let mut samples = Vec::new();
        for _ in 0..1000 {
            let t = Instant::now();
            let r = client.post(&url).body("{}").send().await.unwrap();
            r.bytes().await.unwrap();
            samples.push(t.elapsed());
        }
        report("/ping sync round trip", samples);

        // A command with no kernel work: the writer queue and the journal's fdatasync.
        let url = format!("http://{}/appliancevm/init", agent.vr);
        let mut samples = Vec::new();
        for _ in 0..1000 {
            let t = Instant::now();
            let r = client.post(&url).body("{}").send().await.unwrap();
            r.bytes().await.unwrap();
            samples.push(t.elapsed());
        }
        report(
            "/appliancevm/init sync (writer + journal fdatasync)",
            samples,
        );

        let mut samples = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            mn.call(agent.vr, "/appliancevm/init", &json!({})).await;
            samples.push(t.elapsed());
        }
        report("/appliancevm/init async (ack + callback)", samples);

        // /init re-applies everything (links, both nft tables, dnsmasq files).
        let url = format!("http://{}/init", agent.vr);
        let mut samples = Vec::new();
        for i in 0..100 {
            let body = json!({"uuid": format!("u{i}")}).to_string();
            let t = Instant::now();
            let r = client.post(&url).body(body).send().await.unwrap();
            r.bytes().await.unwrap();
            samples.push(t.elapsed());
        }
        report("/init sync (full re-apply of an empty state)", samples);

        // Reads that never wait for the writer: a scrape and the status report, with the
        // counters and histograms of the commands above filled in.
        for path in ["/metrics", "/status"] {
            let url = format!("http://{}{path}", agent.vr);
            let mut samples = Vec::new();
            for _ in 0..1000 {
                let t = Instant::now();
                let r = client.get(&url).send().await.unwrap();
                r.bytes().await.unwrap();
                samples.push(t.elapsed());
            }
            report(&format!("GET {path}"), samples);
        }
        let mut samples = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let out = std::process::Command::new(common::agent::binary())
                .args(["status", "--url", &format!("http://{}", agent.vr)])
                .output()
                .unwrap();
            assert!(out.status.success());
            samples.push(t.elapsed());
        }
        report("vr-agent status --url (process start to exit)", samples);

        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "agent RSS when idle: {} KiB",
            common::rss_kib(agent.pid()).0
        );
    });
    let bin = common::agent::binary();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!("binary {}: {} bytes", bin.display(), size);
}
